"""The maths of diffusion models on low-dimensional data, apart from any Pyro program.

Follows Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models" (DDPM), NeurIPS;
Kingma, Salimans, Poole & Ho (2021), "Variational diffusion models" (VDM), NeurIPS; Song,
Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-based generative modeling through
stochastic differential equations", ICLR (the probability-flow ODE); Nichol & Dhariwal (2021),
"Improved denoising diffusion probabilistic models", ICML (the cosine schedule); Karras,
Aittala, Aila & Laine (2022), "Elucidating the design space of diffusion-based generative
models" (EDM: the preconditioning of the denoiser).

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
(DDPM's epsilon parameterisation). :class:`MLPDenoiser` is the learned one;
:meth:`IsotropicMixture.eps_star` is the exact one, ``E[eps | z]``, for the data sets here,
which are all mixtures of isotropic Gaussians (exactly, or by quadrature along a curve).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
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


# --------------------------------------------------------------------------------------------
# The denoiser network
# --------------------------------------------------------------------------------------------
class MLPDenoiser(nn.Module):
    """eps_hat(z, gamma) from an MLP with a Fourier embedding of gamma (DDPM's epsilon
    parameterisation, conditioned on the log-SNR as in VDM rather than on the step index).

    ``parameterization``:

    - ``eps``: eps_hat = F(z, gamma), DDPM's network as it is;
    - ``edm``: EDM's preconditioning (Karras et al. 2022) around the data's mean m and
      variance v: with c^2 = sigma^2 + alpha^2 v and u = (z - alpha m) / c,
      ``eps_hat = (sigma (z - alpha m) - alpha sqrt(v) c F(u, gamma)) / c^2``. With F = 0 it
      is the exact denoiser of N(m, v I) data and F's target has unit scale at every noise
      level; but trained on the ELBO it stays on a plateau near F = 0 far longer than ``eps``
      (measured on the 8 Gaussians), so ``eps`` is the default.

    ``init_scale`` multiplies the last layer's initial weights.

    The network computes in float32 (speed); inputs and outputs are float64.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        frequencies: int = 8,
        parameterization: str = "edm",
        data_mean: torch.Tensor | None = None,
        data_var: float = 1.0,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if parameterization not in ("eps", "edm"):
            raise ValueError(f"unknown parameterization {parameterization!r}; use eps or edm")
        self.parameterization = parameterization
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1.0))
        mean = torch.zeros(dim, dtype=torch.float64) if data_mean is None else data_mean
        self.register_buffer("data_mean", mean.to(torch.float64))
        self.data_var = float(data_var)
        sizes = [dim + 1 + 2 * frequencies] + [hidden] * depth + [dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        if init_scale != 1.0:
            with torch.no_grad():
                layers[-1].weight.mul_(init_scale)
                layers[-1].bias.mul_(init_scale)
        self.net = nn.Sequential(*layers)

    def features(self, u: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        g = (gamma / 10.0).to(torch.float32).unsqueeze(-1)
        angles = g * self.freqs
        g = g.expand((*u.shape[:-1], 1))
        angles = angles.expand(u.shape[:-1] + angles.shape[-1:])
        return torch.cat([u.to(torch.float32), g, torch.sin(angles), torch.cos(angles)], -1)

    def forward(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        gamma = torch.as_tensor(gamma, dtype=torch.float64).expand(z.shape[:-1])
        if self.parameterization == "eps":
            return self.net(self.features(z, gamma)).to(z.dtype)
        alpha, sigma = (s.unsqueeze(-1) for s in alpha_sigma(gamma))
        v = self.data_var
        centred = z - alpha * self.data_mean
        c2 = sigma**2 + alpha**2 * v
        c = c2.sqrt()
        out = self.net(self.features(centred / c, gamma)).to(z.dtype)
        return (sigma * centred - alpha * math.sqrt(v) * c * out) / c2


# --------------------------------------------------------------------------------------------
# The probability-flow ODE with the exact divergence
# --------------------------------------------------------------------------------------------
def _eps_and_divergence(
    eps_fn: Denoiser, z: torch.Tensor, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """eps_hat(z) and its exact divergence tr(d eps_hat / d z), one backward pass per dimension."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        eps = eps_fn(z, gamma)
        dim = z.shape[-1]
        div = torch.zeros(z.shape[:-1], dtype=z.dtype)
        for i in range(dim):
            (grad,) = torch.autograd.grad(eps[..., i].sum(), z, retain_graph=i < dim - 1)
            div = div + grad[..., i]
    return eps.detach(), div.detach()


def ode_drift(
    eps_fn: Denoiser, z: torch.Tensor, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability-flow ODE in log-SNR time and the divergence of its drift.

    For the VP process (Song et al. 2021, eq. 13) dz/dt = f z - g^2 score / 2 with
    f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2; written in gamma (both are
    proportional to d gamma / dt, which cancels) and with score = -eps / sigma:
    ``dz / dgamma = -(sigma^2 z - sigma eps_hat(z, gamma)) / 2``; the divergence is
    ``-(d sigma^2 - sigma tr(d eps_hat / dz)) / 2``.
    """
    sigma2 = torch.sigmoid(gamma)
    sigma = sigma2.sqrt()
    eps, div_eps = _eps_and_divergence(eps_fn, z, gamma.expand(z.shape[:-1]))
    drift = -0.5 * (sigma2 * z - sigma * eps)
    return drift, -0.5 * (z.shape[-1] * sigma2 - sigma * div_eps)


@torch.no_grad()
def ode_sample(
    eps_fn: Denoiser,
    z_end: torch.Tensor,
    gamma_min: float,
    gamma_max: float,
    steps: int = 100,
    keep: Sequence[int] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Integrate the probability-flow ODE from z at gamma_max down to gamma_min (RK4, uniform in
    gamma) and return x = z_1 / alpha_1, with the states after the steps listed in ``keep``
    (step k of ``steps`` is at gamma_max - k h): deterministic sampling, DDIM's continuous limit.
    """
    g0 = torch.tensor(float(gamma_max), dtype=torch.float64)
    h = (float(gamma_min) - float(gamma_max)) / steps
    z = z_end.to(torch.float64)

    def drift(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        sigma2 = torch.sigmoid(g)
        return -0.5 * (sigma2 * z - sigma2.sqrt() * eps_fn(z, g.expand(z.shape[:-1])))

    kept = {0: z} if 0 in keep else {}
    for k in range(steps):
        g = g0 + k * h
        k1 = drift(z, g)
        k2 = drift(z + 0.5 * h * k1, g + 0.5 * h)
        k3 = drift(z + 0.5 * h * k2, g + 0.5 * h)
        k4 = drift(z + h * k3, g + h)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if k + 1 in keep:
            kept[k + 1] = z
    return z / alpha_sigma(torch.tensor(float(gamma_min), dtype=torch.float64))[0], kept


def ode_log_likelihood(
    eps_fn: Denoiser,
    x: torch.Tensor,
    gamma_min: float,
    gamma_max: float,
    steps: int = 100,
    terminal_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """log p(x) under the probability-flow ODE (Song et al. 2021, sec. 4.3 and app. D.2), with
    the exact divergence (autograd, one pass per dimension) and fixed-step RK4 in gamma.

    The model is the continuous normalising flow that maps z_T ~ N(0, I) (or
    ``terminal_log_prob``) at gamma_max to z_1 at gamma_min, and reads x = z_1 / alpha_1 (the
    ODE's latent at gamma_min, rescaled; its density differs from the data's by a blur of
    variance exp(gamma_min), a relative change of order exp(2 gamma_min) in E log p).
    Per point, in nats.
    """
    x = x.to(torch.float64)
    g0 = torch.tensor(float(gamma_min), dtype=torch.float64)
    g1 = torch.tensor(float(gamma_max), dtype=torch.float64)
    alpha0, _ = alpha_sigma(g0)
    z = alpha0 * x
    logdet = torch.zeros(x.shape[:-1], dtype=torch.float64)
    h = (g1 - g0) / steps
    for k in range(steps):
        g = g0 + k * h
        k1, d1 = ode_drift(eps_fn, z, g)
        k2, d2 = ode_drift(eps_fn, z + 0.5 * h * k1, g + 0.5 * h)
        k3, d3 = ode_drift(eps_fn, z + 0.5 * h * k2, g + 0.5 * h)
        k4, d4 = ode_drift(eps_fn, z + h * k3, g + h)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        logdet = logdet + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    if terminal_log_prob is None:
        terminal = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    else:
        terminal = terminal_log_prob(z)
    return terminal + logdet + x.shape[-1] * torch.log(alpha0)


# --------------------------------------------------------------------------------------------
# Data densities: mixtures of isotropic Gaussians
# --------------------------------------------------------------------------------------------
_CHUNK = 2_000_000  # rows x components per chunk


@dataclass
class IsotropicMixture:
    """p(x) = sum_k w_k N(x | mu_k, s^2 I): the data density, exact (``exact``) or a
    quadrature of a curve's density with ``locs`` the nodes and ``log_weights`` the weights.

    Everything about the noised data is then in closed form too: z = alpha x + sigma eps is
    the mixture sum_k w_k N(alpha mu_k, (alpha^2 s^2 + sigma^2) I), and the optimal denoiser
    E[eps | z] (:meth:`eps_star`) is a responsibility-weighted sum of the components' linear
    denoisers.
    """

    locs: torch.Tensor  # (K, D) float64
    log_weights: torch.Tensor  # (K,) float64, logsumexp = 0
    scale: float
    description: str
    exact: bool = True

    @property
    def dim(self) -> int:
        return self.locs.shape[-1]

    def _chunks(self, n: int) -> list[slice]:
        size = max(1, _CHUNK // self.locs.shape[0])
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    def _component_terms(
        self, z: torch.Tensor, gamma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, sigma = alpha_sigma(gamma)
        c2 = alpha**2 * self.scale**2 + sigma**2
        diff = z.unsqueeze(-2) - alpha.unsqueeze(-1).unsqueeze(-1) * self.locs
        log_n = -0.5 * (diff.pow(2).sum(-1) / c2.unsqueeze(-1)) - 0.5 * self.dim * torch.log(
            2 * math.pi * c2
        ).unsqueeze(-1)
        return self.log_weights + log_n, diff, c2, sigma

    def marginal_log_prob(self, z: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
        """log q(z) for z = alpha x + sigma eps at log-SNR ``gamma`` (broadcast over points)."""
        flat = z.reshape(-1, self.dim).to(torch.float64)
        g = torch.as_tensor(gamma, dtype=torch.float64).expand(z.shape[:-1]).reshape(-1)
        out = [
            torch.logsumexp(self._component_terms(flat[c], g[c])[0], -1)
            for c in self._chunks(flat.shape[0])
        ]
        return torch.cat(out).reshape(z.shape[:-1])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of the data density itself (no noise)."""
        flat = x.reshape(-1, self.dim).to(torch.float64)
        out = []
        for c in self._chunks(flat.shape[0]):
            diff = flat[c].unsqueeze(-2) - self.locs
            log_n = -0.5 * diff.pow(2).sum(-1) / self.scale**2 - self.dim * math.log(
                math.sqrt(2 * math.pi) * self.scale
            )
            out.append(torch.logsumexp(self.log_weights + log_n, -1))
        return torch.cat(out).reshape(x.shape[:-1])

    def eps_star(self, z: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
        """The optimal denoiser E[eps | z] = sum_k r_k(z) sigma (z - alpha mu_k) / c^2."""
        flat = z.reshape(-1, self.dim).to(torch.float64)
        g = torch.as_tensor(gamma, dtype=torch.float64).expand(z.shape[:-1]).reshape(-1)
        out = []
        for c in self._chunks(flat.shape[0]):
            logits, diff, c2, sigma = self._component_terms(flat[c], g[c])
            resp = torch.softmax(logits, -1).unsqueeze(-1)
            out.append((resp * diff).sum(-2) * (sigma / c2).unsqueeze(-1))
        return torch.cat(out).reshape(z.shape)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        weights = torch.softmax(self.log_weights, 0).numpy()
        k = rng.choice(len(weights), size=n, p=weights / weights.sum())
        return self.locs.numpy()[k] + self.scale * rng.standard_normal((n, self.dim))


def _gauss_legendre(panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(0.0, 1.0, panels + 1)
    left, width = edges[:-1, None], np.diff(edges)[:, None]
    return (left + width * (nodes + 1) / 2).ravel(), (width * weights / 2).ravel()


def eight_gaussians(
    radius: float = 2 * math.sqrt(2), std: float = 0.5 / math.sqrt(2)
) -> IsotropicMixture:
    """Eight equal-weight isotropic Gaussians on a circle: FFJORD's ``8gaussians``
    (Grathwohl et al. 2019: centres at radius 4, std 0.5, all divided by 1.414). Exact."""
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    locs = radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return IsotropicMixture(
        locs,
        torch.full((8,), -math.log(8), dtype=torch.float64),
        float(std),
        f"8 Gaussians on a circle of radius {radius:.4g}, std {std:.4g} (closed form)",
    )


def expected_log_density(density: IsotropicMixture, nodes: int = 40) -> float:
    """E_{x ~ p} log p(x) = -H[p] of an isotropic Gaussian mixture, by a product Gauss-Hermite
    rule per component (``nodes`` per axis): E = sum_k w_k E_{N(mu_k, s^2 I)} log p(x), and
    log p is smooth, so the rule converges fast (40 nodes: within 5e-10 of 80 on the 8
    Gaussians)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    grid = np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    weights = torch.tensor(np.outer(w, w).ravel())
    total = 0.0
    for log_wk, loc in zip(density.log_weights, density.locs, strict=True):
        points = loc + density.scale * torch.tensor(grid)
        total += float(log_wk.exp() * (weights * density.log_prob(points)).sum())
    return total


def moons_density(noise: float, panels: int = 16, order: int = 8) -> IsotropicMixture:
    """The density of scikit-learn's ``make_moons`` in the limit of many points: each half-moon
    is a uniform curve parameter u in [0, 1] (``make_moons`` spaces it evenly), the outer arc
    (cos pi u, sin pi u) and the inner (1 - cos pi u, 0.5 - sin pi u), plus isotropic noise;
    ``p(x) = 1/2 sum_arcs int_0^1 N(x | c(u), noise^2 I) du`` by composite Gauss-Legendre."""
    u, w = _gauss_legendre(panels, order)
    outer = np.stack([np.cos(np.pi * u), np.sin(np.pi * u)], -1)
    inner = np.stack([1 - np.cos(np.pi * u), 0.5 - np.sin(np.pi * u)], -1)
    locs = np.concatenate([outer, inner])
    weights = np.concatenate([w, w]) / 2
    return IsotropicMixture(
        torch.tensor(locs),
        torch.tensor(np.log(weights)),
        float(noise),
        f"two moons, noise {noise:.4g}: quadrature, {len(weights)} Gauss-Legendre nodes",
        exact=False,
    )


#: the swiss roll is divided by this, so that it spans about [-2.7, 2.9]
SWISS_ROLL_SCALE = 5.0


def swiss_roll_density(noise: float, panels: int = 128, order: int = 8) -> IsotropicMixture:
    """The density of scikit-learn's ``make_swiss_roll`` (its first and third columns, divided
    by :data:`SWISS_ROLL_SCALE`): t ~ U(1.5 pi, 4.5 pi), c(t) = (t cos t, t sin t) / 5, plus
    isotropic noise of std ``noise`` (in the scaled units); quadrature in t."""
    u, w = _gauss_legendre(panels, order)
    t = 1.5 * np.pi * (1 + 2 * u)
    locs = np.stack([t * np.cos(t), t * np.sin(t)], -1) / SWISS_ROLL_SCALE
    return IsotropicMixture(
        torch.tensor(locs),
        torch.tensor(np.log(w)),
        float(noise),
        f"swiss roll, noise {noise:.4g}: quadrature, {len(w)} Gauss-Legendre nodes",
        exact=False,
    )


DATASETS = ("8gaussians", "moons", "swissroll")
#: the noise (component std) of each data set unless told otherwise
DEFAULT_NOISE = {"8gaussians": 0.5 / math.sqrt(2), "moons": 0.1, "swissroll": 0.1}


#: the circle of the 8 Gaussians unless told otherwise
DEFAULT_RADIUS = 2 * math.sqrt(2)


def make_dataset(
    name: str, num_points: int, seed: int, noise: float | None = None, radius: float | None = None
) -> tuple[np.ndarray, IsotropicMixture]:
    """(points (num_points, 2), their density). Moons and the swiss roll come from
    scikit-learn's generators (``random_state=seed``); the mixture from its own sampler, on a
    circle of ``radius`` (8 Gaussians only)."""
    noise = DEFAULT_NOISE[name] if noise is None else float(noise)
    if radius is not None and name != "8gaussians":
        raise ValueError(f"--radius applies to 8gaussians, not to {name}")
    if name == "8gaussians":
        density = eight_gaussians(DEFAULT_RADIUS if radius is None else float(radius), noise)
        return density.sample(num_points, np.random.default_rng(seed)), density
    if name == "moons":
        from sklearn.datasets import make_moons

        points, _ = make_moons(num_points, noise=noise, random_state=seed)
        return points, moons_density(noise)
    if name == "swissroll":
        from sklearn.datasets import make_swiss_roll

        points, _ = make_swiss_roll(num_points, noise=noise * SWISS_ROLL_SCALE, random_state=seed)
        return points[:, [0, 2]] / SWISS_ROLL_SCALE, swiss_roll_density(noise)
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
