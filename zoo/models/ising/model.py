"""The 2-D Ising model: variational free energy against the exact partition function.

For a Boltzmann distribution p(s) = exp(-beta E(s)) / Z there is no data: the "evidence" is the
partition function Z, the ELBO E_q[-beta E(s)] + H(q) is a lower bound on log Z, minus the ELBO
over beta is the variational free energy and -log Z / beta the Helmholtz free energy (Feynman
1972, ch. 2; Wu, Wang & Zhang 2019, PRL 122, 080602, eq. 2). Spins s_i = ±1 on an L x L square
lattice, E(s) = -J sum_<ij> s_i s_j - h sum_i s_i with J = 1, periodic or open boundaries.

How the normalisation enters (so the bound is on log Z itself)
----------------------------------------------------------------
The latent site ``spins`` holds z in {0, 1}^(L x L) (s = 2z - 1) under a *uniform prior*,
Bernoulli(½) per spin, log p(z) = -N log 2. The Boltzmann weight enters as the likelihood
factor ``pyro.factor("boltzmann", -beta E(s) + N log 2)``, i.e. the likelihood of the uniform
prior's configuration is L(s) = 2^N exp(-beta E(s)). Then

    log p(x, z) = -beta E(s)        and        p(x) = sum_s 2^-N L(s) = Z,

so every ELBO, IWAE bound and gap the diagnostics report is on log Z itself, and
:meth:`Ising.log_evidence` returns log Z. ``pyro.factor`` is an observed sample site in Pyro's
traces (a ``Unit`` distribution with ``obs``), so the diagnostics' two halves read:
expected log-likelihood = -beta <E>_q + N log 2, and KL(q || prior) = N log 2 - H(q) (the
information of q relative to the uniform distribution). ``num_data`` is N, the number of
spins, so every "per point" number is per site.

Exact log Z (:mod:`zoo.models.ising.exact`): brute force for N <= 16, the row transfer matrix for
L <= 12, the site-by-site transfer matrix for open boundaries up to L = 20 (any h), Kaufman's
(1949) closed form for the periodic torus at h = 0 (any L); Onsager's (1944)
infinite-lattice free energy is the L -> infinity reference in the figures.

Guides (:mod:`guides.autoregressive`), both trained by the score-function gradient of Pyro's
``TraceGraph_ELBO`` (estimator ``graph``) with VAN's batch-mean baseline:

- ``mean-field``: independent spins. Its best ELBO, over the means m_i = E_q s_i,
  -beta <E>_q + sum_i H_i = beta (½ m^T A m + h sum m) + sum_i H((1 + m_i) / 2), is maximised
  where m_i = tanh(beta sum_j A_ij m_j + beta h): :func:`mean_field_optimum` solves it by damped
  iteration from symmetry-broken starts and is :meth:`Ising.best_elbo`;
- ``autoregressive``: the variational autoregressive network of Wu, Wang & Zhang (2019), a
  masked dense network in raster order with Z2 symmetrisation (at h = 0) and beta annealing
  (``--anneal-steps``: beta ramps linearly from beta/steps to beta over the first training
  steps; the diagnostics always use the target beta).

Beta annealing needs the training step: the runner calls :meth:`Ising.on_step` before every
SVI step (and again on ``--resume``), and that step is used. Where nothing calls it (an SVI
loop of one's own), the model counts its own training calls instead (those with gradients
enabled: one per SVI step with vectorized particles; the diagnostics run without gradients).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from guides.autoregressive import AutoregressiveLatticeGuide, FactorisedLatticeGuide
from zoo.diagnostics import effective_sample_size, iwae_with_se, mean_with_se
from zoo.errors import DataError
from zoo.memory import require_memory
from zoo.model import (
    Estimators,
    Option,
    Training,
    ZooModel,
    at_least,
    finite_float,
    non_negative_int,
    positive_int,
)
from zoo.models.ising import figures
from zoo.models.ising.exact import (
    BETA_C,
    SITE_TRANSFER_MAX_COLS,
    adjacency,
    brute_force,
    energy,
    exact_log_z_function,
    kaufman_log_z,
    onsager_log_z_per_site,
    site_transfer_log_z,
    thermodynamics,
    transfer_matrix_log_z,
)
from zoo.psis import pareto_khat
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

#: the largest lattice side whose transfer-matrix thermodynamics the summary computes
TM_SUMMARY_MAX = 10


def _binary_entropy(m: np.ndarray) -> np.ndarray:
    p = np.clip((1 + m) / 2, 1e-300, 1.0)
    q = np.clip((1 - m) / 2, 1e-300, 1.0)
    return -(p * np.log(p) + q * np.log(q))


def mean_field_elbo(m: np.ndarray, a: np.ndarray, beta: float, h: float) -> float:
    """The mean-field ELBO (on log Z) of independent spins with means m, in closed form."""
    return float(beta * (0.5 * m @ a @ m + h * m.sum()) + _binary_entropy(m).sum())


def mean_field_optimum(
    a: np.ndarray,
    beta: float,
    h: float = 0.0,
    *,
    damping: float = 0.5,
    tol: float = 1e-13,
    max_iter: int = 100_000,
) -> tuple[np.ndarray, float]:
    """The best mean-field means and ELBO: damped iteration of m = tanh(beta (A m + h)).

    Started from all +1, all -1 and a near-zero seeded start; the fixed point with the largest
    ELBO wins (for h = 0 the two ordered ones tie and +1 is kept).
    """
    n = a.shape[0]
    rng = np.random.default_rng(0)
    best: tuple[np.ndarray, float] | None = None
    for start in (np.ones(n), -np.ones(n), 1e-3 * rng.standard_normal(n)):
        m = start.copy()
        for _ in range(max_iter):
            new = (1 - damping) * m + damping * np.tanh(beta * (a @ m + h))
            if np.abs(new - m).max() < tol:
                m = new
                break
            m = new
        value = mean_field_elbo(m, a, beta, h)
        if best is None or value > best[1] + 1e-12:
            best = (m, value)
    assert best is not None
    return best


def _z2_option(value: Any) -> str:
    value = str(value).lower()
    if value not in ("auto", "on", "off"):
        raise ValueError("must be auto, on or off")
    return value


@register
class Ising(ZooModel):
    name = "ising"
    title = "Ising free energy"
    application = "Ising free energy"
    smoke_options = {"size": 4}
    reference = (
        "Onsager (1944); Kaufman (1949); Wu, Wang & Zhang, PRL 122, 080602 (2019); "
        "Parisi, Statistical Field Theory (1988) ch. 4 (mean field)"
    )
    options = (
        Option("size", at_least(2), 8, "lattice side L (N = L^2 spins)"),
        Option(
            "beta", finite_float, BETA_C, "inverse temperature (default beta_c = ln(1+sqrt 2)/2)"
        ),
        Option("field", finite_float, 0.0, "external field h"),
        Option("boundary", str, "periodic", "boundary conditions", choices=("periodic", "open")),
        Option("hidden", non_negative_int, 0, "VAN hidden units per layer (0: 4 N, at most 1024)"),
        Option("depth", positive_int, 1, "VAN hidden layers"),
        Option("z2", _z2_option, "auto", "VAN Z2 symmetrisation: auto (on when h = 0), on, off"),
        Option(
            "anneal_steps", non_negative_int, 0, "training steps over which beta ramps up (0: none)"
        ),
    )
    guides = ("mean-field", "autoregressive")
    default_guide = "mean-field"
    #: discrete spins, scored by the score function: no ``meanfield`` (not reparameterised),
    #: no ``enum`` (2^N lattices)
    estimators = Estimators(("trace", "graph", "iwae"), default="graph")
    #: the defaults suit mean field; the autoregressive guide wants --lr 0.01 (see leaderboard)
    training = Training(steps=1000, lr=0.1, lr_final_factor=0.01, quick_steps=150, particles=256)
    max_plate_nesting = 0
    data_plate = None
    leaderboard = ({"guide": "mean-field"}, {"guide": "autoregressive", "lr": 0.01})

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        if data is not None:
            raise DataError("the Ising model has no data: set --size, --beta, --field instead")
        size = opts["size"]
        if size < 2:
            raise DataError("--size must be at least 2")
        if not opts["beta"] > 0:
            raise DataError("--beta must be positive")
        if opts["depth"] < 0 or opts["hidden"] < 0 or opts["anneal_steps"] < 0:
            raise DataError("--depth, --hidden and --anneal-steps must be non-negative")
        self.size = size
        self.shape = (size, size)
        self.num_data = size * size
        self.beta = float(opts["beta"])
        self.h = float(opts["field"])
        self.periodic = opts["boundary"] == "periodic"
        n = self.num_data
        self.hidden = opts["hidden"] or min(4 * n, 1024)
        self.depth = opts["depth"]
        z2 = opts["z2"]
        self.z2 = (self.h == 0.0) if z2 == "auto" else z2 == "on"
        self.anneal_steps = opts["anneal_steps"]
        # the dense N x N couplings, the VAN's masked weights with Adam's state, and the
        # activations of a training batch, in float64
        params = 2 * n * self.hidden + (self.depth - 1) * self.hidden**2
        batch = self.training.particles * (n + self.hidden * self.depth)
        require_memory(8.0 * (n * n + 4 * params + 8 * batch), f"a {size} x {size} lattice")
        self.coupling = adjacency(size, size, periodic=self.periodic)
        self.prior_probs = torch.full(self.shape, 0.5, dtype=torch.float64, device=self.device)
        self._train_calls = 0
        self._hook_step: int | None = None
        self._log_z: float | None = None
        self._mean_field: tuple[np.ndarray, float] | None = None

    # -- beta schedule ----------------------------------------------------------------------------
    def on_step(self, step: int, total: int) -> None:
        """The runner's hook: the SVI step about to run, 1-based."""
        self._hook_step = step

    def training_step(self) -> int:
        """0-based training step: the runner's, else this model's count of training calls."""
        return self._hook_step - 1 if self._hook_step is not None else self._train_calls

    def current_beta(self) -> float:
        """beta of the training objective now: annealed while training, else the target."""
        if not torch.is_grad_enabled() or self.anneal_steps <= 0:
            return self.beta
        t = self.training_step()
        return self.beta * min(1.0, (t + 1) / self.anneal_steps)

    # -- the model ---------------------------------------------------------------------------------
    def log_weight(self, z: torch.Tensor, beta: float | None = None) -> torch.Tensor:
        """log p(x, z) = -beta E(s) for lattices z in {0, 1} (any leading dims)."""
        beta = self.current_beta() if beta is None else beta
        return -beta * energy(2 * z - 1, periodic=self.periodic, h=self.h)

    def model(self, subsample_size: int | None = None) -> None:
        beta = self.current_beta()
        z = pyro.sample("spins", dist.Bernoulli(probs=self.prior_probs).to_event(2))
        # the likelihood relative to the uniform prior: 2^N exp(-beta E), so p(x) = Z
        log_lik = -beta * energy(2 * z - 1, periodic=self.periodic, h=self.h)
        pyro.factor("boltzmann", log_lik + self.num_data * math.log(2.0))
        if torch.is_grad_enabled():
            self._train_calls += 1

    def build_guide(self, name: str):
        if name == "mean-field":
            init = torch.full(self.shape, 0.5 if self.h >= 0 else -0.5, dtype=torch.float64)
            return FactorisedLatticeGuide(
                "spins", self.shape, log_target=self.log_weight, init_logits=init
            )
        if name == "autoregressive":
            return AutoregressiveLatticeGuide(
                "spins",
                self.shape,
                hidden=self.hidden,
                depth=self.depth,
                z2=self.z2,
                log_target=self.log_weight,
                device=self.device,
            )
        return super().build_guide(name)

    # -- exact quantities -------------------------------------------------------------------------
    def log_z_function(self):
        return exact_log_z_function(self.size, self.size, periodic=self.periodic)

    def log_evidence(self) -> float | None:
        """log Z, exactly (brute force, transfer matrix or Kaufman); None if unaffordable."""
        if self._log_z is None:
            found = self.log_z_function()
            if found is None:
                return None
            fn, _ = found
            try:
                self._log_z = fn(self.beta, self.h)
            except ValueError:
                return None
        return self._log_z

    def mean_field(self) -> tuple[np.ndarray, float]:
        """The deterministic mean-field optimum: means and ELBO (on log Z)."""
        if self._mean_field is None:
            self._mean_field = mean_field_optimum(self.coupling, self.beta, self.h)
        return self._mean_field

    def best_elbo(self, guide: str) -> float | None:
        return self.mean_field()[1] if guide == "mean-field" else None

    def exact_thermodynamics(self) -> dict[str, Any] | None:
        """Exact <E>, C and <m^2> (per site) where affordable, and how they were computed."""
        n, b, h = self.num_data, self.beta, self.h
        if n <= 16:
            bf = brute_force(self.size, self.size, b, h=h, periodic=self.periodic)
            return {
                "method": "brute force (exact averages)",
                "energy_per_site": bf["energy"] / n,
                "heat_capacity_per_site": bf["heat_capacity"] / n,
                "m2": bf["m2"],
                "abs_magnetisation": bf["abs_magnetisation"],
            }
        if self.size <= TM_SUMMARY_MAX:

            def fn(bb, hh):
                return transfer_matrix_log_z(self.size, self.size, bb, h=hh, periodic=self.periodic)

            t = thermodynamics(fn, b, h)
            method = "transfer matrix, central differences (step 1e-4)"
        elif not self.periodic and self.size <= SITE_TRANSFER_MAX_COLS:

            def fn(bb, hh):
                return site_transfer_log_z(self.size, self.size, bb, h=hh)

            t = thermodynamics(fn, b, h)
            method = "site-by-site transfer matrix, central differences (step 1e-4)"
        elif self.periodic and h == 0.0:

            def fn(bb, hh):
                return kaufman_log_z(self.size, self.size, bb)

            t = thermodynamics(fn, b, h, with_magnetisation=False)
            method = "Kaufman, central differences in beta (step 1e-4); no field: no <m^2>"
        else:
            return None
        out = {
            "method": method,
            "energy_per_site": t["energy"] / n,
            "heat_capacity_per_site": t["heat_capacity"] / n,
        }
        if "M2" in t:
            out["m2"] = t["M2"] / n**2
        return out

    # -- reporting ---------------------------------------------------------------------------------
    @torch.no_grad()
    def guide_estimates(self, guide, num: int = 4000) -> dict[str, float]:
        """ELBO, energy, magnetisation and heat capacity under q, from ``num`` draws; and from
        the same draws the neural importance sampling estimate of log Z (Nicoli et al., PRE 101,
        023304 (2020)): log mean_k w_k with w = exp(-beta E) / q, its delta-method standard
        error, Kish's effective sample size and the Pareto k-hat of the weights. Z-hat = mean w
        is unbiased for Z; its log is consistent, biased low by about var(w) / (2 K mean(w)^2),
        and not a bound for any single K: what the bound (the ELBO) cannot give."""
        z = guide.distribution().sample((num,)).double()
        log_q = guide.distribution().log_prob(z).double()
        n = self.num_data
        s = 2 * z - 1
        e = energy(s, periodic=self.periodic, h=self.h)
        log_w = -self.beta * e - log_q
        m = s.sum((-1, -2)) / n
        elbo, elbo_se = mean_with_se(log_w)
        nis, nis_se = iwae_with_se(log_w)
        energy_per_site, energy_per_site_se = mean_with_se(e / n)
        return {
            "draws": num,
            "elbo": elbo,
            "elbo_se": elbo_se,
            "energy_per_site": energy_per_site,
            "energy_per_site_se": energy_per_site_se,
            "heat_capacity_per_site": (self.beta**2 * e.var() / n).item(),
            "m2": (m**2).mean().item(),
            "abs_magnetisation": m.abs().mean().item(),
            "nis_log_z": nis.item(),
            "nis_log_z_se": nis_se.item(),
            "nis_ess": effective_sample_size(log_w),
            "nis_khat": pareto_khat(log_w),
        }

    def exact_elbo(self, guide, guide_name: str) -> float | None:
        """Mean field's ELBO in closed form (:func:`mean_field_elbo` at the guide's means
        m = tanh(logit / 2)); the autoregressive guide has none."""
        if guide_name != "mean-field":
            return None
        m = guide.magnetisation().cpu().numpy().reshape(-1)
        return mean_field_elbo(m, self.coupling, self.beta, self.h)

    def summary(self, guide, guide_name: str) -> dict[str, Any]:
        n, name = self.num_data, guide_name
        found = self.log_z_function()
        log_z = self.log_evidence()
        est = self.guide_estimates(guide)
        mf_m, mf_elbo = self.mean_field()
        out: dict[str, Any] = {
            "lattice": f"{self.size}x{self.size} {'periodic' if self.periodic else 'open'}",
            "beta": self.beta,
            "field": self.h,
            "normalisation": (
                "uniform prior Bernoulli(1/2) per spin and likelihood factor "
                "2^N exp(-beta E): the evidence is Z, the ELBO bounds log Z"
            ),
            "guide": name,
            "estimator": (
                f"{self.estimators.default} (TraceGraph_ELBO, score function with VAN's "
                "batch-mean baseline) unless the run named another: see config.elbo"
            ),
            "beta_schedule": (
                f"linear ramp from beta/{self.anneal_steps} to beta over the first "
                f"{self.anneal_steps} training steps"
                if self.anneal_steps
                else "none (target beta throughout)"
            ),
            "log_z": log_z,
            "log_z_method": None if found is None else found[1],
            "log_z_per_site": None if log_z is None else log_z / n,
            "onsager_log_z_per_site": onsager_log_z_per_site(self.beta) if self.h == 0 else None,
            "mean_field_best_elbo": mf_elbo,
            "mean_field_magnetisation": float(np.mean(mf_m)),
            "q": est,
        }
        if name == "autoregressive":
            out["van"] = {"hidden": self.hidden, "depth": self.depth, "z2": self.z2}
        if log_z is not None:
            out["relative_free_energy_error"] = (log_z - est["elbo"]) / log_z
            out["relative_free_energy_error_nis"] = (log_z - est["nis_log_z"]) / log_z
            out["relative_free_energy_error_mean_field_optimum"] = (log_z - mf_elbo) / log_z
        exact = self.exact_thermodynamics()
        if exact is not None:
            out["exact"] = exact
        return out

    # -- figures ---------------------------------------------------------------------------------
    def exact_log_z_at(self, beta: float) -> float | None:
        found = self.log_z_function()
        if found is None:
            return None
        try:
            return found[0](beta, self.h)
        except ValueError:
            return None

    def beta_grid(self, num: int = 41) -> np.ndarray:
        """Inverse temperatures for the figures: 0.1 to 1, with beta_c and this run's beta."""
        grid = np.concatenate([np.linspace(0.1, 1.0, num), [BETA_C, self.beta]])
        return np.unique(np.round(grid, 12))

    def plots(self, run: RunView) -> dict[str, Figure]:
        n, name = self.num_data, run.guide_name
        betas = self.beta_grid()
        exact = np.array([self.exact_log_z_at(b) or np.nan for b in betas], dtype=float)
        mf = np.array([mean_field_optimum(self.coupling, b, self.h)[1] for b in betas])
        onsager = np.array([onsager_log_z_per_site(b) for b in betas]) if self.h == 0.0 else None
        d = run.diagnostics
        label = f"{name} (this run, svi/{run.elbo_estimator})"
        colour = "C0" if name == "autoregressive" else "C3"
        free_energy = figures.free_energy_figure(
            betas,
            exact,
            mf,
            onsager,
            beta=self.beta,
            elbo=d.elbo,
            elbo_se=d.elbo_se,
            num_sites=n,
            label=label,
            colour=colour,
            title=f"{self.title}: {self.size}x{self.size}, h = {self.h:g}",
            exact_label=f"exact, {self.size}x{self.size}",
        )
        relative_error = figures.relative_error_figure(
            betas,
            exact,
            mf,
            beta=self.beta,
            gap=d.gap,
            log_evidence=d.log_evidence,
            elbo_se=d.elbo_se,
            label=label,
            colour=colour,
        )
        rows = self.sample_rows(run.guide, name)
        out = {
            "free_energy": free_energy,
            "relative_error": relative_error,
            "samples": figures.samples_figure(rows, self.shape),
        }
        q = run.summary.get("q", {})
        if d.log_evidence is not None and "nis_log_z" in q:
            h = run.history
            out["free_energy_convergence"] = figures.convergence_figure(
                h["step"].to_numpy(),
                h["elbo"].to_numpy(),
                h["iwae"].to_numpy() if "iwae" in h else np.full(len(h), np.nan),
                h["log_evidence"].to_numpy(),
                final=(q["elbo"], q["elbo_se"], q["nis_log_z"], q["nis_log_z_se"], q["draws"]),
                beta=self.beta,
                num_sites=n,
                record_particles=run.record_particles,
                colour=colour,
                title=f"{name} q, {self.size}x{self.size} at beta = {self.beta:.4g}",
            )
        return out

    @torch.no_grad()
    def sample_rows(self, guide, guide_name: str, per_row: int = 4) -> list[tuple[str, np.ndarray]]:
        """Lattices (spins ±1, shape (per_row, N)) drawn from mean field at three temperatures
        and from the fitted guide, each with its title."""
        gen = np.random.default_rng(0)
        rows = []
        for b in (0.3, BETA_C, 0.6):
            m, _ = mean_field_optimum(self.coupling, b, self.h)
            p = (1 + m) / 2
            draws = gen.random((per_row, self.num_data)) < p
            rows.append((f"mean field, beta = {b:.3f}", 2.0 * draws - 1))
        z = guide.distribution().sample((per_row,))
        s = (2 * z - 1).reshape(per_row, -1).cpu().numpy()
        rows.append((f"{guide_name} q (this run), beta = {self.beta:.3f}", s))
        return rows
