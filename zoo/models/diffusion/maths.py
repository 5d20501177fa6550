"""The maths of diffusion models on low-dimensional data, apart from any Pyro program: the
schedules, the forward and reverse kernels, the KL terms of the bound, and the forward process
and the reverse chain as distributions over a whole chain.

Follows Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models" (DDPM), NeurIPS;
Kingma, Salimans, Poole & Ho (2021), "Variational diffusion models" (VDM), NeurIPS; Nichol &
Dhariwal (2021), "Improved denoising diffusion probabilistic models", ICML (the cosine
schedule). Beside it: the denoiser network (:mod:`zoo.models.diffusion.network`, with EDM's
preconditioning, Karras, Aittala, Aila & Laine 2022), the probability-flow ODE of Song,
Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), ICLR (:mod:`zoo.models.diffusion.ode`),
and the data densities (:mod:`zoo.models.diffusion.exact`).

Notation
--------
Everything is written in the log signal-to-noise ratio ``gamma`` of VDM: a latent at
``gamma`` is ``z = alpha x + sigma eps`` with ``alpha^2 = sigmoid(-gamma)`` and
``sigma^2 = sigmoid(gamma)`` (variance preserving, ``alpha^2 + sigma^2 = 1``), so
``SNR = alpha^2 / sigma^2 = exp(-gamma)``. A *schedule* is a monotone map from time
``tau in [0, 1]`` to ``gamma(tau)`` with ``gamma(0) = gamma_min`` (the least noisy latent) and
``gamma(1) = gamma_max`` (the most noisy one).

The discrete-time model has DDPM's indexing: latents ``z_1 .. z_T`` at
``gamma_t = gamma((t - 1) / (T - 1))``; the forward process (the encoder, no parameters)
``z_t = sqrt(1 - beta_t) z_{t-1} + sqrt(beta_t) eps_t`` with ``z_0 = x`` and
``1 - beta_t = alpha_t^2 / alpha_{t-1}^2``; the reverse (generative) chain
``p(z_T) prod_t p_theta(z_{t-1} | z_t) p_theta(x | z_1)`` with ``p(z_T) = N(0, I)``. The
continuous-time (VDM) bound is the limit ``T -> infinity`` at fixed endpoints, so the two share
their prior term ``L_T = KL(q(z_T | x) || N(0, I))`` and reconstruction term
``L_0 = -E log p(x | z_1)``; only the diffusion term differs.

A denoiser is any callable ``eps_hat(z, gamma)``: the prediction of the noise ``eps`` in ``z``
(DDPM's epsilon parameterisation). :class:`~zoo.models.diffusion.network.MLPDenoiser` is
the learned one; :meth:`~zoo.models.diffusion.exact.IsotropicMixture.eps_star` is the exact
one, ``E[eps | z]``, for the data sets here, which are all mixtures of isotropic Gaussians
(exactly, or by quadrature along a curve).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.nn import functional as F

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_EMPTY = torch.Size()

#: the named schedules (shapes between the endpoints gamma_min, gamma_max)
SCHEDULES = ("linear", "cosine", "linear-logsnr")
#: DDPM's linear beta schedule: beta_1 = 1e-4 ... beta_T = 0.02 at T = 1000 (Ho et al. 2020)
DDPM_BETA_RATIO = 200.0


def _ddpm_endpoints() -> tuple[float, float]:
    betas = np.linspace(1e-4, 0.02, 1000)
    total = -np.log1p(-betas).sum()  # -log alpha_bar_T
    return math.log(math.expm1(-math.log1p(-1e-4))), math.log(math.expm1(total))


#: gamma at DDPM's first and last latents (alpha_bar_1 = 1 - 1e-4, alpha_bar_1000 ~ 4e-5)
DDPM_GAMMA_MIN, DDPM_GAMMA_MAX = _ddpm_endpoints()


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------
def log_snr(
    name: str, tau: torch.Tensor, gamma_min: torch.Tensor | float, gamma_max: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gamma(tau)`` and ``d gamma / d tau`` of the schedule ``name`` between the endpoints.

    - ``linear``: DDPM's linear beta schedule in continuous time (the VP SDE of Song et al.
      2021): ``-log alpha^2 = A(tau)`` is quadratic in ``tau``, with ``beta(tau)`` rising
      linearly by DDPM's factor 200 between the two ends. With the default endpoints and
      T = 1000 it is DDPM's schedule (beta_1 = 1e-4, beta_T = 0.02).
    - ``cosine``: Nichol & Dhariwal's ``alpha_bar = cos^2(pi u / 2)`` (without their offset),
      i.e. ``gamma = 2 log tan(pi u / 2)``, with ``u`` linear in ``tau`` between the values that
      give the endpoints.
    - ``linear-logsnr``: ``gamma`` linear in ``tau``: VDM's fixed schedule.
    """
    gamma_min = torch.as_tensor(gamma_min, dtype=tau.dtype)
    gamma_max = torch.as_tensor(gamma_max, dtype=tau.dtype)
    if name == "linear-logsnr":
        width = gamma_max - gamma_min
        return gamma_min + width * tau, width.expand(tau.shape)
    if name == "cosine":
        u0 = (2 / math.pi) * torch.atan(torch.exp(gamma_min / 2))
        u1 = (2 / math.pi) * torch.atan(torch.exp(gamma_max / 2))
        theta = (math.pi / 2) * (u0 + (u1 - u0) * tau)
        gamma = 2 * torch.log(torch.tan(theta))
        return gamma, math.pi * (u1 - u0) / (torch.sin(theta) * torch.cos(theta))
    if name == "linear":
        a0, a1 = F.softplus(gamma_min), F.softplus(gamma_max)  # -log alpha^2 at the ends
        half = 0.5 * (DDPM_BETA_RATIO - 1)
        w = (tau + half * tau**2) / (1 + half)
        dw = (1 + 2 * half * tau) / (1 + half)
        a = a0 + (a1 - a0) * w
        gamma = torch.log(torch.expm1(a))
        return gamma, (a1 - a0) * dw / -torch.expm1(-a)
    raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


def discrete_gammas(
    name: str, num_steps: int, gamma_min: torch.Tensor | float, gamma_max: torch.Tensor | float
) -> torch.Tensor:
    """gamma_1 .. gamma_T at tau_t = (t - 1) / (T - 1): the latents of the T-step model."""
    if num_steps < 2:
        raise ValueError("a discrete-time diffusion needs T >= 2 latents")
    tau = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
    return log_snr(name, tau, gamma_min, gamma_max)[0]


def piecewise_quantile(probs: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance sampling of ``tau`` from a piecewise-constant density on [0, 1].

    ``probs`` (K,) are the probabilities of K equal bins (summing to 1), so the density is
    ``p(tau) = K probs_k`` on bin k. Returns ``(tau, p(tau))`` with ``tau = F^{-1}(u)``, the
    inverse CDF at ``u`` in [0, 1): a uniform ``u`` gives ``tau ~ p``, and evenly spread ``u``
    (VDM's low-discrepancy sampler) give ``tau`` stratified in p's quantiles. Any integral
    ``int_0^1 f(tau) d tau`` is then ``E_p[f(tau) / p(tau)]``, unbiased whatever ``probs``.
    """
    bins = probs.shape[-1]
    upper = torch.cumsum(probs, -1)
    k = torch.searchsorted(upper, u.contiguous(), right=True).clamp(max=bins - 1)
    mass = probs[k]
    frac = ((u - (upper[k] - mass)) / mass).clamp(0.0, 1.0)
    return (k + frac) / bins, bins * mass


def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) at log-SNR ``gamma``: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def forward_kernels(gammas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM's forward kernels q(z_t | z_{t-1}) = N(sqrt(1 - beta_t) z_{t-1}, beta_t), z_0 = x.

    Returns (sqrt(1 - beta_t), beta_t) for t = 1..T, computed from the log-SNRs without
    cancellation: 1 - beta_t = alpha_t^2 / alpha_{t-1}^2 with alpha_0 = 1.
    """
    log_a2 = -F.softplus(gammas)
    prev = torch.cat([log_a2.new_zeros(1), log_a2[:-1]])
    log_r2 = log_a2 - prev
    return torch.exp(0.5 * log_r2), -torch.expm1(log_r2)


def posterior_coefficients(
    gamma_s: torch.Tensor, gamma_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(z_s | z_t, x) = N(a z_t + b x, v) for s < t (DDPM eqs. 6-7; VDM appendix A).

    With r = alpha_t / alpha_s and beta = 1 - r^2: a = r sigma_s^2 / sigma_t^2,
    b = alpha_s beta / sigma_t^2, v = beta sigma_s^2 / sigma_t^2.
    """
    log_r2 = F.softplus(gamma_s) - F.softplus(gamma_t)
    beta = -torch.expm1(log_r2)
    sig2_s, sig2_t = torch.sigmoid(gamma_s), torch.sigmoid(gamma_t)
    alpha_s = torch.sigmoid(-gamma_s).sqrt()
    return (
        torch.exp(0.5 * log_r2) * sig2_s / sig2_t,
        alpha_s * beta / sig2_t,
        beta * sig2_s / sig2_t,
    )


REVERSE_VARIANCES = ("gaussian", "posterior", "forward")


def reverse_kernel(
    gamma_s: torch.Tensor,
    gamma_t: torch.Tensor,
    variance: str = "gaussian",
    data_var: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """p_theta(z_s | z_t) = N((z_t - c eps_hat) / r, v): (r, c, v).

    The mean is q's posterior mean with x replaced by the denoised
    x_hat = (z_t - sigma_t eps_hat) / alpha_t, which is DDPM's eq. 11,
    mu = (z_t - beta / sigma_t eps_hat) / sqrt(1 - beta). The variance ``v`` is

    - ``posterior``: q's posterior variance beta-tilde = beta sigma_s^2 / sigma_t^2 (DDPM's
      lower choice, VDM's), right when x is known given z_t (high noise);
    - ``forward``: beta (DDPM's upper choice), right when the data are locally flat (low noise);
    - ``gaussian``: the exact reverse variance if the data were N(m, v I),
      ``beta-tilde + (alpha_s beta / sigma_t^2)^2 Var(x | z_t)`` with
      Var(x | z_t) = v sigma_t^2 / (sigma_t^2 + alpha_t^2 v): the posterior variance at high
      noise, beta / (1 - beta) at low noise. A fixed-variance relative of Analytic-DPM (Bao,
      Li, Zhu & Zhang 2022).
    """
    log_r2 = F.softplus(gamma_s) - F.softplus(gamma_t)
    beta = -torch.expm1(log_r2)
    sig2_s, sig2_t = torch.sigmoid(gamma_s), torch.sigmoid(gamma_t)
    if variance == "posterior":
        var = beta * sig2_s / sig2_t
    elif variance == "forward":
        var = beta
    elif variance == "gaussian":
        a2_s, a2_t = torch.sigmoid(-gamma_s), torch.sigmoid(-gamma_t)
        post_x = data_var * sig2_t / (sig2_t + a2_t * data_var)
        var = beta * sig2_s / sig2_t + a2_s * beta**2 / sig2_t**2 * post_x
    else:
        raise ValueError(
            f"unknown reverse variance {variance!r}; choose from {', '.join(REVERSE_VARIANCES)}"
        )
    return torch.exp(0.5 * log_r2), beta / sig2_t.sqrt(), var


def step_kl_weights(
    gamma_s: torch.Tensor,
    gamma_t: torch.Tensor,
    variance: str = "gaussian",
    data_var: float = 1.0,
    dim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM's L_{t-1} = KL(q(z_s | z_t, x) || p_theta(z_s | z_t)) is
    ``const + weight ||eps - eps_hat||^2`` with z_t = alpha_t x + sigma_t eps: (const, weight).

    The means differ by (alpha_s beta / sigma_t^2)(x - x_hat) and
    x - x_hat = (sigma_t / alpha_t)(eps_hat - eps), so weight = beta^2 / (2 r^2 sigma_t^2 v)
    and const = d (rho - 1 - log rho) / 2 with rho = beta-tilde / v. For the posterior variance
    const = 0 and weight = (SNR_s / SNR_t - 1) / 2 = expm1(gamma_t - gamma_s) / 2: VDM's eq. 13.
    """
    log_r2 = F.softplus(gamma_s) - F.softplus(gamma_t)
    beta = -torch.expm1(log_r2)
    sig2_s, sig2_t = torch.sigmoid(gamma_s), torch.sigmoid(gamma_t)
    if variance == "posterior":
        return torch.zeros_like(beta), 0.5 * torch.expm1(gamma_t - gamma_s)
    _, _, var = reverse_kernel(gamma_s, gamma_t, variance, data_var)
    rho = beta * sig2_s / sig2_t / var
    const = 0.5 * dim * (rho - 1 - torch.log(rho))
    return const, 0.5 * beta**2 / (torch.exp(log_r2) * sig2_t * var)


def step_kl(
    eps: torch.Tensor,
    eps_hat: torch.Tensor,
    gamma_s: torch.Tensor,
    gamma_t: torch.Tensor,
    variance: str = "gaussian",
    data_var: float = 1.0,
) -> torch.Tensor:
    """DDPM's L_{t-1} in closed form (see :func:`step_kl_weights`), summed over the last
    (data) dimension."""
    const, weight = step_kl_weights(gamma_s, gamma_t, variance, data_var, eps.shape[-1])
    return const + weight * (eps - eps_hat).pow(2).sum(-1)


def gaussian_control_variate(
    x: torch.Tensor,
    eps: torch.Tensor,
    gamma: torch.Tensor,
    data_mean: torch.Tensor,
    data_var: float,
) -> torch.Tensor:
    """``||eps - eps_G||^2 - E_eps ||eps - eps_G||^2`` for z = alpha x + sigma eps, where
    eps_G(z) = sigma (z - alpha m) / (sigma^2 + alpha^2 v) is the exact denoiser of N(m, v I)
    data. Zero mean for every x and gamma and free of theta, so subtracting it (times a term's
    weight) from ``||eps - eps_hat||^2`` leaves an estimator's mean and gradients unchanged,
    while it cancels the chi-square noise that a good denoiser shares with eps_G (all of it at
    low noise, where both are nearly zero and ||eps - eps_hat||^2 ~ chi^2_d)."""
    alpha, sigma = (s.unsqueeze(-1) for s in alpha_sigma(gamma))
    c2 = sigma**2 + alpha**2 * data_var
    a = alpha**2 * data_var / c2
    b = sigma * alpha / c2
    return (a**2 * (eps.pow(2) - 1) - 2 * a * b * (x - data_mean) * eps).sum(-1)


def prior_kl(x: torch.Tensor, gamma_max: torch.Tensor | float) -> torch.Tensor:
    """DDPM's L_T = KL(q(z_T | x) || N(0, I)), i.e.
    0.5 (alpha^2 |x|^2 + d (sigma^2 - 1 - log sigma^2)) at gamma_max."""
    gamma_max = torch.as_tensor(gamma_max, dtype=x.dtype)
    a2 = torch.sigmoid(-gamma_max)
    d = x.shape[-1]
    # sigma^2 - 1 - log sigma^2 = -alpha^2 + softplus(-gamma)
    return 0.5 * (a2 * x.pow(2).sum(-1) + d * (F.softplus(-gamma_max) - a2))


def denoised(z: torch.Tensor, eps_hat: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x_hat = (z - sigma eps_hat) / alpha."""
    alpha, sigma = alpha_sigma(gamma)
    return (z - sigma.unsqueeze(-1) * eps_hat) / alpha.unsqueeze(-1)


def decoder_variance(
    gamma_1: torch.Tensor, variance: str = "gaussian", data_var: float = 1.0
) -> torch.Tensor:
    """The variance of p_theta(x | z_1): DDPM's beta_1 = sigma_1^2, or for ``gaussian``
    Var(x | z_1) of N(m, v I) data, v sigma_1^2 / (sigma_1^2 + alpha_1^2 v) (the same to
    relative order exp(gamma_1) / v)."""
    sig2 = torch.sigmoid(gamma_1)
    if variance == "gaussian":
        return data_var * sig2 / (sig2 + torch.sigmoid(-gamma_1) * data_var)
    return sig2


def decoder(
    z1: torch.Tensor,
    eps_hat: torch.Tensor,
    gamma_1: torch.Tensor,
    variance: str = "gaussian",
    data_var: float = 1.0,
) -> dist.Independent:
    """p_theta(x | z_1) = N(x_hat(z_1), v_1 I): the reverse chain's last step, from z_1 to the
    data, with the variance of :func:`decoder_variance`. A Gaussian, because the data are
    continuous (DDPM's discretised decoder is for 8-bit images and has no use here)."""
    scale = decoder_variance(gamma_1, variance, data_var).sqrt()
    loc = denoised(z1, eps_hat, gamma_1.expand(z1.shape[:-1]))
    return dist.Normal(loc, scale.expand(loc.shape[:-1]).unsqueeze(-1)).to_event(1)


# --------------------------------------------------------------------------------------------
# The forward process and the reverse chain as distributions over a whole chain z_{1:T}
# --------------------------------------------------------------------------------------------
class ForwardChain(TorchDistribution):
    """q(z_{1:T} | x), the fixed forward process, as one distribution with event shape (T, D).

    Sampled in one vectorised pass: with a_t = alpha_t and b_t = sqrt(beta_t),
    ``z_t = a_t (x + sum_{s <= t} (b_s / a_s) eps_s)``, which is the recursion
    ``z_t = sqrt(1 - beta_t) z_{t-1} + b_t eps_t`` unrolled. Reparameterised.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, x: torch.Tensor, gammas: torch.Tensor, validate_args=None) -> None:
        self.x, self.gammas = x, gammas
        batch_shape = x.shape[:-1]
        super().__init__(batch_shape, (gammas.shape[0], x.shape[-1]), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> ForwardChain:
        batch_shape = torch.Size(batch_shape)
        return ForwardChain(self.x.expand(batch_shape + self.x.shape[-1:]), self.gammas)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.x.dtype, device=self.x.device)
        alpha = torch.sigmoid(-self.gammas).sqrt()
        _, beta = forward_kernels(self.gammas)
        walk = torch.cumsum((beta.sqrt() / alpha).unsqueeze(-1) * eps, dim=-2)
        return alpha.unsqueeze(-1) * (self.x.unsqueeze(-2) + walk)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        root, beta = forward_kernels(self.gammas)
        x = self.x.unsqueeze(-2).expand((*value.shape[:-2], 1, value.shape[-1]))
        prev = torch.cat([x, value[..., :-1, :]], dim=-2)
        normal = dist.Normal(root.unsqueeze(-1) * prev, beta.sqrt().unsqueeze(-1))
        return normal.log_prob(value).sum((-1, -2))


class ReverseChain(TorchDistribution):
    """p(z_T) prod_{t=2..T} p_theta(z_{t-1} | z_t), the learned reverse chain, as one
    distribution over z_{1:T} (event shape (T, D)).

    ``log_prob`` scores a whole chain with one batched call of the denoiser over all steps
    (this is why the chain is one Pyro site rather than T: the same numbers, T times fewer
    network calls and trace entries); ``sample`` runs the chain ancestrally.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(
        self,
        eps_fn: Denoiser,
        gammas: torch.Tensor,
        batch_shape: torch.Size | Sequence[int],
        dim: int,
        variance: str = "gaussian",
        data_var: float = 1.0,
        validate_args=None,
    ) -> None:
        self.eps_fn, self.gammas, self.dim = eps_fn, gammas, dim
        self.kernel = {"variance": variance, "data_var": data_var}
        super().__init__(torch.Size(batch_shape), (gammas.shape[0], dim), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> ReverseChain:
        return ReverseChain(self.eps_fn, self.gammas, batch_shape, self.dim, **self.kernel)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        g = self.gammas
        zt, zs = value[..., 1:, :], value[..., :-1, :]
        eps_hat = self.eps_fn(zt, g[1:].expand(zt.shape[:-1]))
        root, coef, var = reverse_kernel(g[:-1], g[1:], **self.kernel)
        mean = (zt - coef.unsqueeze(-1) * eps_hat) / root.unsqueeze(-1)
        steps = dist.Normal(mean, var.sqrt().unsqueeze(-1)).log_prob(zs).sum((-1, -2))
        prior = dist.Normal(0.0, 1.0).log_prob(value[..., -1, :]).sum(-1)
        return steps + prior

    @torch.no_grad()
    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        chain = ancestral_chain(self.eps_fn, self.gammas, shape[:-2], self.dim, **self.kernel)
        return torch.stack(chain[-2::-1], dim=-2)  # z_1 .. z_T


class Antithetic(TorchDistribution):
    """Antithetic pairs of a symmetric distribution: a draw z of ``base`` and its mirror image
    2 mean - z about the mean, stacked on a new event dimension (event shape (2,) + base's).

    Each of the two is marginally a draw of ``base``, so the mean of any term over the pair is
    an unbiased estimate of its expectation, with less variance wherever the term is nearly
    odd in z - mean (antithetic variates; Hammersley & Morton 1956). ``log_prob`` is ``base``'s
    density of the first draw (the second is determined by it): not a density on the pair,
    but a :class:`Penalised` copy of this distribution scores a pair with the same value minus
    its penalty, so the model-to-guide log ratio of the two is exactly minus the penalty, which
    is all that ``Trace_ELBO`` and the diagnostics read from a site.
    """

    arg_constraints: dict = {}

    def __init__(self, base: TorchDistribution, validate_args=None) -> None:
        self.base = base
        super().__init__(base.batch_shape, torch.Size((2, *base.event_shape)), validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    def expand(self, batch_shape, _instance=None) -> Antithetic:
        return Antithetic(self.base.expand(batch_shape))

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        z = self.base.rsample(sample_shape)
        return torch.stack([z, 2 * self.base.mean - z], dim=-1 - len(self.base.event_shape))

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value.select(-1 - len(self.base.event_shape), 0))


class Penalised(TorchDistribution):
    """``base`` with ``log_prob(v) = base.log_prob(v) - penalty(v)``.

    The device that puts a Rao-Blackwellised (DDPM) or continuous-time (VDM) loss term into a
    Pyro model: the guide samples z_t from q(z_t | x), the model scores the same value with this
    distribution, and the log ratio of the two is exactly ``-penalty``, the step's analytic KL
    term. Not normalised (like ``pyro.factor``), but the diagnostics then file the term under
    KL(q || p), where DDPM's decomposition puts it, rather than under the likelihood.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(
        self, base: TorchDistribution, penalty: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.base, self.penalty = base, penalty
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    def expand(self, batch_shape, _instance=None) -> Penalised:
        return Penalised(self.base.expand(batch_shape), self.penalty)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        return self.base.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value) - self.penalty(value)


@torch.no_grad()
def ancestral_chain(
    eps_fn: Denoiser,
    gammas: torch.Tensor,
    batch_shape: Sequence[int],
    dim: int,
    variance: str = "gaussian",
    data_var: float = 1.0,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Run the reverse chain from z_T ~ N(0, I) (or ``start``) down to a sample of x.

    Returns ``[z_T, z_{T-1}, ..., z_1, x]`` (T + 1 tensors of shape batch_shape + (dim,));
    x ~ p_theta(x | z_1).
    """
    shape = (*tuple(batch_shape), dim)

    def noise() -> torch.Tensor:
        return torch.randn(shape, dtype=gammas.dtype, generator=generator)

    z = noise() if start is None else start.to(gammas.dtype)
    chain = [z]
    num = gammas.shape[0]
    root, coef, var = reverse_kernel(gammas[:-1], gammas[1:], variance, data_var)
    for t in range(num - 1, 0, -1):  # z_{t+1} -> z_t in 0-based indexing
        g = gammas[t].expand(shape[:-1])
        eps_hat = eps_fn(z, g)
        z = (z - coef[t - 1] * eps_hat) / root[t - 1] + var[t - 1].sqrt() * noise()
        chain.append(z)
    g1 = gammas[0].expand(shape[:-1])
    x_hat = denoised(z, eps_fn(z, g1), g1)
    chain.append(x_hat + decoder_variance(gammas[0], variance, data_var).sqrt() * noise())
    return chain
