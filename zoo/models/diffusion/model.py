"""Diffusion models: the ELBO of a denoising diffusion model against the exact data density.

Follows Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models" (DDPM), NeurIPS,
and Kingma, Salimans, Poole & Ho (2021), "Variational diffusion models" (VDM), NeurIPS; the
probability-flow ODE of Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), ICLR. The
maths is beside it in :mod:`zoo.models.diffusion`: schedules, kernels and KLs in
:mod:`~zoo.models.diffusion.maths`, the network in :mod:`~zoo.models.diffusion.network`, the
ODE in :mod:`~zoo.models.diffusion.ode`, the data densities in :mod:`~zoo.models.diffusion.exact`.

Each data point x_n in R^2 has a chain of latents z_n = (z_1 .. z_T). The guide is the forward
process q(z_{1:T} | x) = prod_t N(z_t | sqrt(1 - beta_t) z_{t-1}, beta_t), z_0 = x, with no
parameters (with ``--learn-schedule`` its two endpoints are learned, as in VDM); the model is the
learned reverse chain p(z_T) prod_t p_theta(z_{t-1} | z_t) p_theta(x | z_1), Gaussian kernels
whose means come from an epsilon-predicting MLP. Everything lives in the data plate ``data``, so
training mini-batches through it. ``--objective`` picks one of three valid ELBO estimators, each
a Pyro model/guide pair trained with ``Trace_ELBO``:

``mc``
    The plain Monte Carlo ELBO E_q[log p(x, z) - log q(z | x)]: the guide samples the whole
    chain as one site ``z`` (event shape (T, 2);
    :class:`~zoo.models.diffusion.maths.ForwardChain`), the model scores it with
    :class:`~zoo.models.diffusion.maths.ReverseChain` (one batched network call over all T steps
    instead of T sites: same numbers, far fewer trace entries). The runner's IWAE is then a
    true per-point importance-weighted bound. Cost per particle grows with T.
``rb``
    DDPM's Rao-Blackwellised bound -L_T - sum_{t=2}^T L_{t-1} - L_0 with the analytic KL of
    each step, estimated with one step t per point (stratified over the batch), weighted by
    T - 1. Sites: ``u`` (the stratification offset), ``z_t`` ~ q(z_t | x) and ``z_1`` ~
    q(z_1 | x) in both programs; the model scores ``z_t`` with the step's KL as a penalty
    (:class:`~zoo.models.diffusion.maths.Penalised`) and observes x ~ p(x | z_1).
``vdm``
    VDM's continuous-time bound (T -> infinity): -L_T - L_0 - 1/2 E_{tau ~ U(0,1)}
    [gamma'(tau) ||eps - eps_hat(z_tau, gamma(tau))||^2], with the same sites as ``rb``.

For ``rb`` and ``vdm`` the per-particle log ratio is an unbiased estimate of the ELBO but not an
importance weight, so IWAE and k-hat mean nothing for them (the model marks ``u`` with
:data:`~zoo.diagnostics.RANDOM_TERM`, and the diagnostics report neither). Their
two halves are DDPM's: the expected log-likelihood is -L_0, the "KL" is L_T + the diffusion term.
``mc`` costs T network rows per particle and point, in training and in the diagnostics (which
score ``--eval-particles`` whole chains per point): use it with a small T or few particles.

Choices, each measured (see the gallery page and ``benchmarks/bench_diffusion.py``):

- the denoiser is DDPM's epsilon-prediction MLP (SiLU, ``--depth`` x ``--hidden``) on (z, Fourier
  features of gamma); ``--parameterization edm`` (EDM's preconditioning around the best
  Gaussian) is available but stalls on a plateau at the Gaussian fit when trained on the ELBO;
- the reverse variance is by default the exact one for Gaussian data with the data's variance
  (``gaussian``): DDPM's beta-tilde (``posterior``, VDM's choice) is right only at high noise,
  and with the exact denoiser its T = 1000 bound on this data is 0.08 nats short (0.02 for
  ``gaussian``, 0.01 for ``forward``);
- the default schedule is VDM's linear log-SNR between DDPM's endpoints (gamma from -9.2 to
  10.1): DDPM's linear beta schedule jumps 0.7 in gamma at its first step, and with the exact
  denoiser and beta-tilde its T = 1000 bound is 0.87 nats short;
- every estimator subtracts a control variate, the same squared error for the exact denoiser of
  N(m, v I) data minus its closed-form mean (zero mean, no parameters: the gradients are
  unchanged), which removes the chi-square noise of the low-noise steps;
- p(x | z_1) is Gaussian with mean x_hat(z_1) (continuous data: DDPM's discretised decoder is for
  8-bit images and is not needed);
- ``--t-sampler`` draws each point's tau (``vdm``, ``rb``): ``stratified`` (the default) is
  VDM's low-discrepancy sampler; ``loss`` and ``gradient`` importance-sample tau from a
  piecewise-constant density p, still stratified in p's quantiles, and divide each point's
  term by p(tau), so the estimate stays unbiased for the same bound (:meth:`Diffusion.tau`).
  p is improved DDPM's loss-aware sampler (Nichol & Dhariwal 2021, §3.3), p proportional to the
  root of the term's second moment, or the same rule for the squared norm of the term's
  gradient in the weights, re-estimated every few steps between steps;
- ``--antithetic`` scores each point's tau at a pair of noises, eps and -eps (z_t and its mirror
  image about alpha_t x; :class:`~zoo.models.diffusion.maths.Antithetic`), and averages the two
  terms: unbiased, and the part of the gradient's noise that is odd in eps cancels (measured on
  a partly trained network: the gradient's variance per network row falls over 100-fold at the
  lowest noise levels and 1.6-fold over all tau); a batch of n points then costs as many
  network rows as 2n points without it;
- ``--ema`` keeps an exponential moving average of the network's weights (Polyak averaging, as
  DDPM and VDM evaluate), which answers every evaluation made without gradients: the history,
  the diagnostics, the report and the figures (the training steps update the raw weights).

Exact: the data sets are mixtures of isotropic Gaussians, 8 on a circle in closed form, and
scikit-learn's two moons and swiss roll by Gauss-Legendre quadrature along their curve (to 1e-11
in log p; ``make_moons`` spaces its curve parameter evenly, so its points are a stratified
rather than an iid sample of that density), so E_data log p_data is known, and so is the exact
denoiser E[eps | z] (``--denoiser oracle``). E log p_data is the best any model can reach in
expectation: on fresh data an ELBO <= E log p_model <= E log p_data. It is *not* this model's
log evidence, which is unknown: :meth:`~Diffusion.log_evidence` stays unset, and
E log p_data is not a "best ELBO" either (a model that memorised its training points could
exceed its sample mean there): the summary reports it as what it is, the exact expectation
(Gauss-Hermite, 8 Gaussians) and its sample mean with its standard error on the training and
on fresh points. ``summary`` reports, in
nats per point and bits per dimension, on the training points and on fresh points:
E log p_data; the continuous-time ELBO; the T-step ELBO with its per-step terms (L_T, L_{t-1},
L_0); the Monte Carlo chain ELBO with its agreement with the analytic one; and the likelihood
under the probability-flow ODE (exact divergence). On fresh points it also reports the
continuous-time gap through the exact denoiser (:meth:`~Diffusion.denoising_gap`): the same
expectation, estimated from the network's squared error against E[eps | z] with a standard
error many times smaller than the direct estimate's once the network is good.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

from zoo.data import as_float_array, read_numeric_table
from zoo.declarations import in_place_schedule
from zoo.diagnostics import RANDOM_TERM
from zoo.errors import DataError
from zoo.model import (
    DataPlate,
    Option,
    Training,
    at_least,
    boolean,
    finite_float,
    positive_float,
    seed_value,
)
from zoo.models.diffusion import figures
from zoo.models.diffusion import maths as dm
from zoo.models.diffusion.evaluation import DiffusionEvaluation
from zoo.models.diffusion.exact import DATASETS, make_dataset
from zoo.models.diffusion.network import MLPDenoiser
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

OBJECTIVES = ("vdm", "rb", "mc")
#: how tau is drawn per point: stratified uniform, or importance-sampled (:meth:`Diffusion.tau`)
T_SAMPLERS = ("stratified", "loss", "gradient")
_MODULE = "denoiser"
#: the moving average of the network's weights, in the param store beside them
_AVERAGE = "denoiser_ema"
#: the importance sampler's density of tau (bin probabilities) and its per-bin second moments
_PROPOSAL, _MOMENTS = "tau_proposal", "tau_moments"
#: its bins, the points scored per update, the steps between updates, the decay of the moments
#: across updates, and the share of the uniform density mixed in (no weight exceeds 1 / share)
_TAU_BINS, _TAU_POINTS, _TAU_EVERY, _TAU_DECAY, _TAU_FLOOR = 32, 512, 50, 0.9, 0.1


def _decay(value: Any) -> float:
    """An option type: a decay in [0, 1)."""
    number = finite_float(value)
    if not 0 <= number < 1:
        raise ValueError(f"{value!r} is not in [0, 1)")
    return number


@register
class Diffusion(DiffusionEvaluation):
    name = "diffusion"
    title = "Diffusion models: DDPM and VDM bounds against the exact data density"
    application = "Diffusion ELBO"
    smoke_options = {
        "num_points": 300,
        "test_points": 300,
        "eval_points": 100,
        "ode_points": 50,
        "ode_steps": 20,
        "timesteps": 100,
    }
    reference = (
        "Ho, Jain & Abbeel (2020), DDPM; Kingma, Salimans, Poole & Ho (2021), VDM; "
        "Song et al. (2021), probability-flow ODE"
    )
    options = (
        Option("dataset", str, "8gaussians", "data set with a known density", DATASETS),
        Option("num_points", at_least(10), 1000, "training points"),
        Option("test_points", at_least(10), 2000, "fresh points for the held-out report"),
        Option(
            "noise",
            positive_float,
            None,
            "data noise std; None: 0.354 (8gaussians), 0.1 (moons, swissroll)",
        ),
        Option("radius", positive_float, None, "radius of the 8 Gaussians' circle; None: 2 sqrt 2"),
        Option("data_seed", seed_value, 0, "seed of the data set (the held-out set uses seed + 1)"),
        Option(
            "objective",
            str,
            "vdm",
            "vdm: continuous time; rb: DDPM's analytic KLs; mc: whole chains (cost x T)",
            OBJECTIVES,
        ),
        Option("timesteps", at_least(2), 1000, "T, latents of the discrete-time chain"),
        Option(
            "schedule", str, "linear-logsnr", "noise schedule between the endpoints", dm.SCHEDULES
        ),
        Option(
            "gamma_min",
            finite_float,
            dm.DDPM_GAMMA_MIN,
            "gamma = -log SNR of z_1 (DDPM: beta_1 = 1e-4)",
        ),
        Option(
            "gamma_max", finite_float, dm.DDPM_GAMMA_MAX, "gamma = -log SNR of z_T (DDPM: T = 1000)"
        ),
        Option("learn_schedule", boolean, False, "learn the two endpoints (VDM)"),
        Option(
            "t_sampler",
            str,
            "stratified",
            "tau of each point (vdm, rb): stratified uniform (VDM), or importance-sampled from "
            "the loss's or the gradient's second moment, weighted 1 / p(tau)",
            T_SAMPLERS,
        ),
        Option(
            "antithetic",
            boolean,
            False,
            "score each point's time at a pair of noises eps and -eps (antithetic variates)",
        ),
        Option(
            "ema",
            _decay,
            0.0,
            "decay of a moving average of the network's weights, which then answers every "
            "evaluation outside training (0: off)",
        ),
        Option(
            "reverse_variance",
            str,
            "gaussian",
            "variance of p(z_{t-1} | z_t): exact for Gaussian data, q's posterior, or beta",
            dm.REVERSE_VARIANCES,
        ),
        Option(
            "control_variate",
            boolean,
            True,
            "subtract the Gaussian denoiser's zero-mean noise from the estimators",
        ),
        Option("denoiser", str, "mlp", "mlp, or oracle: the exact E[eps | z]", ("mlp", "oracle")),
        Option(
            "parameterization",
            str,
            "eps",
            "eps: DDPM's network on z; edm: preconditioned around the best Gaussian",
            ("eps", "edm"),
        ),
        Option("hidden", at_least(1), 128, "hidden units per layer"),
        Option("depth", at_least(1), 3, "hidden layers"),
        Option("eval_points", at_least(2), 300, "points for the per-step and chain report"),
        Option("ode_points", at_least(0), 300, "held-out points for the ODE likelihood (0: off)"),
        Option("ode_steps", at_least(1), 100, "RK4 steps of the probability-flow ODE"),
    )
    data_help = "CSV file of points (numeric columns are the coordinates; no known density)"
    guides = ("forward",)
    default_guide = "forward"
    training = Training(
        steps=8000, lr=3e-3, quick_steps=200, lr_final_factor=0.01, particles=1, batch_size=512
    )
    data_plate = DataPlate("data")

    # -- data ---------------------------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        self.dataset = opts["dataset"]
        self.objective = opts["objective"]
        self.num_steps = opts["timesteps"]
        self.schedule = opts["schedule"]
        self.reverse_variance = opts["reverse_variance"]
        self.learn_schedule = opts["learn_schedule"]
        self.gamma_bounds = (float(opts["gamma_min"]), float(opts["gamma_max"]))
        if not self.gamma_bounds[0] < 0 < self.gamma_bounds[1]:
            raise DataError("need gamma_min < 0 < gamma_max")
        if data is None:
            noise, radius = opts["noise"], opts["radius"]
            try:
                values, self.density = make_dataset(
                    self.dataset, opts["num_points"], opts["data_seed"], noise, radius
                )
            except ValueError as exc:
                raise DataError(str(exc)) from None
            test_seed = (opts["data_seed"] + 1) % 2**32
            test, _ = make_dataset(self.dataset, opts["test_points"], test_seed, noise, radius)
            self.feature_names = ["x1", "x2"]
        else:
            if isinstance(data, str | Path):
                # a constant column is refused: the points would have no density to learn
                values, self.feature_names = read_numeric_table(data, min_rows=10)
                source = repr(str(data))
            else:
                values = as_float_array(data, "the data")
                if values.ndim != 2 or values.shape[0] < 10:
                    raise DataError("data must be a finite 2-D array with at least 10 points")
                if (values.std(0) == 0).any():
                    raise DataError("the data have a constant column: no density to learn")
                self.feature_names = [f"x{i + 1}" for i in range(values.shape[1])]
                source = "the data"
            if values.shape[1] < 2:
                raise DataError(
                    f"{source} has 1 numeric column; the diffusion model needs points in at "
                    "least 2 dimensions (its figures and the trajectory grid are 2-D)"
                )
            self.density, test = None, None
            self.dataset = "user data"
        if opts["denoiser"] == "oracle" and self.density is None:
            raise DataError("the oracle denoiser needs a data set with a known density")
        self.denoiser_kind = opts["denoiser"]
        self.control_variate = opts["control_variate"]
        self.t_sampler, self.ema_decay = opts["t_sampler"], opts["ema"]
        self.antithetic = opts["antithetic"]
        if self.antithetic and self.objective == "mc":
            raise DataError("--antithetic applies to vdm and rb: mc draws whole chains")
        if self.t_sampler != "stratified" and self.objective == "mc":
            raise DataError("--t-sampler applies to vdm and rb: mc scores every step of the chain")
        if self.denoiser_kind == "oracle" and (self.ema_decay > 0 or self.t_sampler == "gradient"):
            raise DataError("the oracle denoiser has no weights to average or differentiate")
        if self.t_sampler != "stratified" or self.ema_decay > 0:
            # between steps: the average and the sampler's density are updated in place, outside
            # the training step (a compiled step reads the density in place, as it reads the
            # weights: the hook is marked so); the hook is this instance's, the class keeps the
            # base one
            self.on_step = self._between_steps
        self.x = self.tensor(values)
        self.x_test = None if test is None else self.tensor(test)
        self.num_data, self.dim = values.shape
        self.data_mean, self.data_var = self.x.mean(0), float(self.x.var(0).mean())
        self.kernel = {"variance": self.reverse_variance, "data_var": self.data_var}
        self.net_options = {
            "dim": self.dim,
            "hidden": opts["hidden"],
            "depth": opts["depth"],
            "parameterization": opts["parameterization"],
            "data_mean": self.data_mean,
            "data_var": self.data_var,
        }
        self.report_sizes = {
            "eval_points": opts["eval_points"],
            "ode_points": opts["ode_points"],
            "ode_steps": opts["ode_steps"],
        }
        self._net: MLPDenoiser | None = None
        # a (particle, point) pair costs two network passes (mc: T + 1): smaller diagnostics chunks
        self.data_plate = type(self).data_plate.with_sizes(
            chunk_budget=max(1_000, 250_000 // (self.num_steps if self.objective == "mc" else 1))
        )

    # -- parameters ---------------------------------------------------------------------------
    def endpoints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma_min, gamma_max): fixed, or learned parameters (``--learn-schedule``)."""
        low, high = self.gamma_bounds
        if not self.learn_schedule:
            return self.tensor(low), self.tensor(high)
        g0 = pyro.param(
            "gamma_min", lambda: self.tensor(low), constraint=constraints.less_than(0.0)
        )
        g1 = pyro.param(
            "gamma_max", lambda: self.tensor(high), constraint=constraints.greater_than(0.0)
        )
        return g0, g1

    def eps_fn(self, averaged: bool | None = None) -> dm.Denoiser:
        """The denoiser eps_hat(z, gamma) at the param store's current values.

        With ``--ema`` the store also holds a moving average of the weights, and ``averaged``
        picks them (None: outside autograd, so the training step has the weights it updates,
        while the history's records, the diagnostics, the report and the figures, all computed
        without gradients, have the average; as Ising's annealed beta follows the same rule)."""
        if self.denoiser_kind == "oracle":
            return self.density.eps_star
        store = pyro.get_param_store()
        if self._net is None or f"{_MODULE}$$$net.0.weight" not in store:
            # a fresh param store (a new run): new weights from the run's seeded RNG
            self._net = MLPDenoiser(**self.net_options)
        net = pyro.module(_MODULE, self._net, update_module_params=True)
        if averaged is None:
            averaged = self.ema_decay > 0 and not torch.is_grad_enabled()
        if not averaged:
            return net
        weights = self._averaged_weights()
        return lambda z, gamma: torch.func.functional_call(net, weights, (z, gamma))

    def _averaged_weights(self) -> dict[str, torch.Tensor]:
        """The moving average of the network's weights (Polyak & Juditsky 1992; the exponential
        average of DDPM's and VDM's evaluations), by parameter name; it starts at the weights it
        first sees (a run's set-up creates it) and lives in the param store, so checkpoints and
        ``param_state`` keep it. Outside every trace: no optimiser sees it."""
        out = {}
        with poutine.block():
            for name, value in self._net.named_parameters():
                out[name] = pyro.param(
                    f"{_AVERAGE}$$${name}", lambda value=value: value.detach().clone()
                ).detach()
        return out

    # -- between training steps -----------------------------------------------------------------
    @in_place_schedule
    def _between_steps(self, step: int, total: int) -> None:
        """Before SVI step ``step`` (the runner's hook, with ``--ema`` or an importance
        sampler): fold the weights after step - 1 into the average, and every
        ``_TAU_EVERY`` steps (from the first) re-estimate the sampler's density."""
        if self.ema_decay > 0:
            self.update_average(step)
        if self.t_sampler != "stratified" and (step - 1) % _TAU_EVERY == 0:
            self.update_tau_proposal()

    @torch.no_grad()
    def update_average(self, step: int) -> None:
        """average <- d average + (1 - d) weights with d = min(ema, (1 + step) / (10 + step)):
        the usual warm-up of the decay, so the initial weights fade fast."""
        if self._net is None:
            self.eps_fn(averaged=False)
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        store = pyro.get_param_store()
        average = self._averaged_weights()
        for name, value in average.items():
            value.mul_(decay).add_(store[f"{_MODULE}$$${name}"].detach(), alpha=1 - decay)

    def gammas(self, num_steps: int | None = None, schedule: str | None = None) -> torch.Tensor:
        g0, g1 = self.endpoints()
        return dm.discrete_gammas(schedule or self.schedule, num_steps or self.num_steps, g0, g1)

    # -- the Pyro programs ----------------------------------------------------------------------
    def model(self, subsample_size: int | None = None) -> None:
        if self.objective == "mc":
            self._chain_program(subsample_size, is_model=True)
        else:
            self._step_program(subsample_size, is_model=True)

    def forward_guide(self, subsample_size: int | None = None) -> None:
        """q(z | x): the fixed forward process (of the sites the objective uses)."""
        if self.objective == "mc":
            self._chain_program(subsample_size, is_model=False)
        else:
            self._step_program(subsample_size, is_model=False)

    def build_guide(self, name: str) -> Callable[..., Any]:
        if name == "forward":
            return self.forward_guide
        return super().build_guide(name)

    def _cv(self, x: torch.Tensor, eps: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """The Gaussian control variate (zero mean; 0 when ``--control-variate`` is off)."""
        if not self.control_variate:
            return torch.zeros(eps.shape[:-1], dtype=eps.dtype)
        return dm.gaussian_control_variate(x, eps, gamma, self.data_mean, self.data_var)

    def _recon_weight(self, gamma_1: torch.Tensor) -> torch.Tensor:
        """log p(x | z_1) = const - w ||eps_1 - eps_hat||^2: w = sigma_1^2 / (2 alpha_1^2 v_1)."""
        v1 = dm.decoder_variance(gamma_1, **self.kernel)
        return 0.5 * torch.sigmoid(gamma_1) / (torch.sigmoid(-gamma_1) * v1)

    def _chain_program(self, subsample_size: int | None, is_model: bool) -> None:
        gammas = self.gammas()
        eps_fn = self.eps_fn() if is_model else None
        with self.create_plates(subsample_size) as idx:
            x = self.x[idx]
            if not is_model:
                pyro.sample("z", dm.ForwardChain(x, gammas))
                return
            chain = dm.ReverseChain(eps_fn, gammas, x.shape[:-1], self.dim, **self.kernel)
            z = pyro.sample("z", chain)
            z1 = z[..., 0, :]
            g1 = gammas[0].expand(z1.shape[:-1])
            pyro.sample("x", dm.decoder(z1, eps_fn(z1, g1), gammas[0], **self.kernel), obs=x)

    def _step_program(self, subsample_size: int | None, is_model: bool) -> None:
        g0, g1 = self.endpoints()
        zero = self.tensor(0.0)
        # u picks the terms of the sum over t that a particle scores: no importance weights
        u = pyro.sample("u", dist.Uniform(zero, zero + 1), infer={RANDOM_TERM: True})
        eps_fn = self.eps_fn() if is_model else None
        with self.create_plates(subsample_size) as idx:
            x = self.x[idx]
            n = x.shape[0]
            # VDM's low-discrepancy sampler: one uniform offset, the batch spread over [0, 1)
            tau, density = self.tau(torch.remainder(u + torch.arange(n, dtype=x.dtype) / n, 1.0))
            gamma_t, const, weight = self._diffusion_weights(tau, g0, g1)
            if density is not None:  # importance sampling: each term over its density
                const, weight = const / density, weight / density
            alpha_t, sigma_t = dm.alpha_sigma(gamma_t)
            base = dist.Normal(alpha_t.unsqueeze(-1) * x, sigma_t.unsqueeze(-1)).to_event(1)
            if self.antithetic:  # z_t and its mirror image about alpha_t x: (n, 2, D)
                base = dm.Antithetic(base)
            alpha_1, sigma_1 = dm.alpha_sigma(g0)
            q1 = dist.Normal(alpha_1 * x, sigma_1.expand(x.shape)).to_event(1)
            if not is_model:
                pyro.sample("z_t", base)
                pyro.sample("z_1", q1)
                return
            prior = dm.prior_kl(x, g1)

            def diffusion_penalty(z: torch.Tensor) -> torch.Tensor:
                if self.antithetic:  # the mean of the pair's terms
                    pairs = (*gamma_t.shape, 2)
                    x2, g2 = x.unsqueeze(-2), gamma_t.unsqueeze(-1).expand(pairs)
                    eps = (z - alpha_t[..., None, None] * x2) / sigma_t[..., None, None]
                    eps_hat = eps_fn(z, g2.expand(z.shape[:-1]))
                    sq = ((eps - eps_hat).pow(2).sum(-1) - self._cv(x2, eps, g2)).mean(-1)
                    return prior + const + weight * sq
                eps = (z - alpha_t.unsqueeze(-1) * x) / sigma_t.unsqueeze(-1)
                eps_hat = eps_fn(z, gamma_t.expand(z.shape[:-1]))
                sq = (eps - eps_hat).pow(2).sum(-1) - self._cv(x, eps, gamma_t)
                return prior + const + weight * sq

            def reconstruction_cv(z: torch.Tensor) -> torch.Tensor:
                eps = (z - alpha_1 * x) / sigma_1
                return -self._recon_weight(g0) * self._cv(x, eps, g0.expand(z.shape[:-1]))

            pyro.sample("z_t", dm.Penalised(base, diffusion_penalty))
            z1 = pyro.sample("z_1", dm.Penalised(q1, reconstruction_cv))
            eps_1 = eps_fn(z1, g0.expand(z1.shape[:-1]))
            pyro.sample("x", dm.decoder(z1, eps_1, g0, **self.kernel), obs=x)

    # -- tau: stratified, or importance-sampled --------------------------------------------------
    def _diffusion_weights(
        self, tau: torch.Tensor, g0: torch.Tensor, g1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gamma_t, const, weight) of the diffusion term at ``tau``: the term a point scores
        is ``const + weight ||eps - eps_hat(z_t, gamma_t)||^2``, whose integral over tau in
        [0, 1) is the bound's diffusion term: VDM's 0.5 gamma'(tau) (``vdm``), or (T - 1)
        times the KL of the step that tau falls in (``rb``, DDPM's L_{t-1})."""
        if self.objective == "vdm":
            gamma_t, dgamma = dm.log_snr(self.schedule, tau, g0, g1)
            return gamma_t, torch.zeros_like(tau), 0.5 * dgamma
        gammas = self.gammas()
        k = 1 + torch.floor(tau * (self.num_steps - 1)).long().clamp(max=self.num_steps - 2)
        gamma_t, gamma_s = gammas[k], gammas[k - 1]
        const, weight = dm.step_kl_weights(gamma_s, gamma_t, dim=self.dim, **self.kernel)
        return gamma_t, (self.num_steps - 1) * const, (self.num_steps - 1) * weight

    def tau_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The importance sampler's bin probabilities and per-bin second moments (uniform and
        zero at first), in the param store outside every trace: no optimiser sees them, and
        checkpoints keep them, so a resumed run samples as the uninterrupted one."""
        zeros = self.x.new_zeros(_TAU_BINS)
        with poutine.block():
            probs = pyro.param(_PROPOSAL, lambda: zeros + 1 / _TAU_BINS)
            moments = pyro.param(_MOMENTS, lambda: zeros)
        return probs.detach(), moments.detach()

    def tau(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tau per point from evenly spread ``grid`` in [0, 1), with its density (None: 1).

        ``stratified``: tau = grid, VDM's low-discrepancy sampler. ``loss`` and ``gradient``:
        tau = F^{-1}(grid) for a piecewise-constant density p over ``_TAU_BINS`` bins
        (:func:`~zoo.models.diffusion.maths.piecewise_quantile`: still stratified, in p's
        quantiles), and each point's term is divided by p(tau), so the estimate of the bound
        stays unbiased whatever p. p is improved DDPM's loss-aware sampler (Nichol & Dhariwal
        2021, §3.3: p(t) proportional to sqrt E[L_t^2], which minimises the variance of the
        loss) in continuous time, or the same rule for the squared norm of the per-point
        gradient of the loss with respect to the network's weights (``gradient``: it minimises
        the trace of the gradient's variance, which is what the training steps feel; VDM's
        learned schedule, Kingma et al. 2021 §4.4 and appendix I, targets the loss's
        variance). :meth:`update_tau_proposal` re-estimates p between steps."""
        if self.t_sampler == "stratified":
            return grid, None
        probs, _ = self.tau_state()
        return dm.piecewise_quantile(probs, grid)

    def update_tau_proposal(self) -> None:
        """Score ``_TAU_POINTS`` random points at times stratified over the bins with the
        current weights, fold each bin's mean second moment (of the loss term, or of its
        gradient's norm) into a moving average (decay ``_TAU_DECAY``), and set
        p proportional to its square root, mixed with ``_TAU_FLOOR`` of the uniform density."""
        stat = self._tau_second_moments(_TAU_POINTS)
        if not bool(torch.isfinite(stat).all()) or not bool((stat > 0).any()):
            return
        probs, moments = self.tau_state()
        with torch.no_grad():
            if bool((moments == 0).all()):
                moments.copy_(stat)
            else:
                moments.mul_(_TAU_DECAY).add_(stat, alpha=1 - _TAU_DECAY)
            root = moments.sqrt()
            probs.copy_((1 - _TAU_FLOOR) * root / root.sum() + _TAU_FLOOR / _TAU_BINS)

    def _tau_second_moments(self, points: int) -> torch.Tensor:
        """Per bin of tau, the mean over ``points`` fresh draws (as many per bin) of the squared
        loss term (``loss``) or of the squared norm of its gradient (``gradient``)."""
        bins = torch.arange(points, device=self.device) % _TAU_BINS
        dtype = self.x.dtype
        tau = (bins + torch.rand(points, dtype=dtype, device=self.device)) / _TAU_BINS
        x = self.x[torch.randint(self.num_data, (points,), device=self.device)]
        with torch.no_grad():
            g0, g1 = (g.detach() for g in self.endpoints())
            gamma, const, weight = self._diffusion_weights(tau, g0, g1)
            gamma, const, weight = gamma.detach(), const.detach(), weight.detach()
            # (points, draws, D): one noise per point, or an antithetic pair
            eps = torch.randn((points, 1, self.dim), dtype=dtype, device=self.device)
            if self.antithetic:
                eps = torch.cat([eps, -eps], dim=1)
            gamma = gamma.unsqueeze(-1).expand(eps.shape[:-1])
            alpha, sigma = (t.unsqueeze(-1) for t in dm.alpha_sigma(gamma))
            x = x.unsqueeze(1)
            z = alpha * x + sigma * eps
            cv = self._cv(x, eps, gamma)
            eps_fn = self.eps_fn(averaged=False)
            if self.t_sampler == "loss":
                sq = ((eps - eps_fn(z, gamma)).pow(2).sum(-1) - cv).mean(-1)
                value = (const + weight * sq).pow(2)
        if self.t_sampler == "gradient":
            value = self._gradient_norms(z, gamma, eps, const, weight, cv)
        per_bin = torch.zeros(_TAU_BINS, dtype=dtype, device=self.device)
        return per_bin.index_add_(0, bins, value.to(dtype)) * (_TAU_BINS / points)

    def _gradient_norms(self, z, gamma, eps, const, weight, cv) -> torch.Tensor:
        """||d term_i / d theta||^2 for each point's loss term, the mean over its draws
        (``z`` is (points, draws, D)), from one batched backward pass: a linear layer's weight
        gradient for point i is sum_k delta_ik a_ik^T (its inputs a_ik, the gradients delta_ik
        at its output), whose squared norm is sum_kl (delta_ik . delta_il)(a_ik . a_il), and
        its bias's is |sum_k delta_ik|^2 (with one draw: |delta_i|^2 |a_i|^2 and |delta_i|^2;
        Goodfellow 2015, "Efficient per-example gradient computations")."""
        layers = [m for m in self._net.modules() if isinstance(m, torch.nn.Linear)]
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        hooks = [
            layer.register_forward_hook(lambda _, args, out: seen.append((args[0], out)))
            for layer in layers
        ]
        try:
            with torch.enable_grad():
                eps_hat = self.eps_fn(averaged=False)(z, gamma)
                sq = ((eps - eps_hat).pow(2).sum(-1) - cv).mean(-1)
                terms = const + weight * sq
                deltas = torch.autograd.grad(terms.sum(), [out for _, out in seen])
        finally:
            for hook in hooks:
                hook.remove()
        total = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
        for (inputs, _), delta in zip(seen, deltas, strict=True):
            inputs, delta = inputs.detach().double(), delta.double()
            gram_delta = delta @ delta.transpose(-1, -2)  # (points, draws, draws)
            gram_inputs = inputs @ inputs.transpose(-1, -2) + 1  # the bias's input is 1
            total += (gram_delta * gram_inputs).sum((-1, -2))
        return total

    # -- what is known exactly -----------------------------------------------------------------

    # -- the bounds, evaluated directly (no Pyro), per data point ----------------------------

    # -- reporting -----------------------------------------------------------------------------

    def summary(self, guide, guide_name: str) -> dict[str, Any]:
        return self.report()

    def plots(self, run: RunView) -> dict[str, Figure]:
        title = f"{self.dataset}, {self.objective} objective, T = {self.num_steps}"
        data = self.x.cpu().numpy()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            draws = self.sample(min(500, self.num_data)).cpu().numpy()
        lims = figures.limits(data[:, :2])
        contours = self.density_contours(lims) if self.dim == 2 else None
        summary = run.summary if "discrete" in run.summary else self.report()
        grid, columns = self.denoising_paths()
        lp = self.log_p_data()
        history = run.history
        return {
            "samples": figures.samples_figure(
                data[:, :2], draws[:, :2], title, lims=lims, contours=contours
            ),
            "elbo_by_step": figures.elbo_split_figure(summary, title),
            "denoising": figures.denoising_figure(grid, columns, data, title),
            "elbo_vs_ideal": figures.elbo_vs_ideal_figure(
                history["step"].to_numpy(),
                (history["elbo"] / self.num_data).to_numpy(),
                None if lp is None else lp.mean().item(),
                title,
            ),
        }
