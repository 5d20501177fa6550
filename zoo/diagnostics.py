"""Model-agnostic diagnostics of a guide against its model, in nats.

For S particles z_s ~ q drawn at once (vectorized), the log importance ratios
``log w_s = log p(x, z_s) - log q(z_s)`` give

- the ELBO, ``mean_s log w_s``, with its Monte Carlo standard error;
- its two halves, the expected log-likelihood ``E_q log p(x | z)`` and ``KL(q || p(z))``
  (analytic per site where torch registers the pair, Monte Carlo otherwise);
- the importance-weighted bound ``log mean_s w_s`` (Burda, Grosse & Salakhutdinov 2016), with a
  delta-method standard error, which tends to log p(x) from below as S grows;
- the PSIS tail index k-hat of the ratios (Yao, Vehtari, Simpson & Gelman 2018): below 0.5
  the guide is a good proposal, above 0.7 importance sampling with it is unreliable.

When every latent lives inside the model's data plate (one latent per data point, as in a
mixture or an autoencoder), the ratios factorise over points: the IWAE bound and k-hat are then
computed per point, which is the bound users of those models expect.

The gap to the exact log evidence, ``log p(x) - ELBO = KL(q || p(z | x)) >= 0``, is reported
whenever the model knows log p(x).

On large data the figures can be estimated from a subsample of the points (the run setting
``eval_subsample``, :class:`PointSubsample`): where the ratios factorise over the data plate,
n of the N points are drawn uniformly without replacement, each total is N times the mean of
its per-point estimates, and its standard error adds the sampling of the points to the particle
noise (:func:`subsample_total`, two-stage sampling: Cochran 1977, *Sampling Techniques*, 3rd
ed., ch. 10, Theorem 10.2). Under ``torchrun`` each rank scores its share of the subsample's
points and every rank combines all of them (:func:`zoo.distributed.map_points`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro.poutine.util import site_is_subsample

from zoo.data_blocks import on_block
from zoo.distributed import active, map_blocks, map_points
from zoo.errors import ZooError
from zoo.model import ZooModel
from zoo.particles import vectorized_or_named
from zoo.psis import MIN_DRAWS, pareto_khat

#: a particle chunk holds at most this many (particle, data point) pairs
_CHUNK_BUDGET = 2_000_000
#: the ``infer`` key that marks a model site drawing which terms of a sum a particle scores (a
#: Rao-Blackwellised or stratified objective, as DDPM's one random step t per point): the
#: per-particle log ratio is then an unbiased estimate of the ELBO but not an importance weight,
#: so the diagnostics report no IWAE, no k-hat and no effective sample size
RANDOM_TERM = "random_term"


@dataclass
class Diagnostics:
    """Everything the diagnostics measured for one guide; totals over the data, in nats."""

    num_data: int
    num_particles: int
    elbo: float
    elbo_se: float
    expected_log_likelihood: float
    expected_log_likelihood_se: float
    kl: float
    kl_method: str
    kl_by_site: dict[str, float]
    iwae: float
    iwae_se: float
    iwae_scope: str
    khat: float
    khat_scope: str
    log_evidence: float | None = None
    #: the fitted guide's ELBO in closed form or by quadrature, where the model has it: the
    #: headline figure and the one the gap is taken from (``elbo`` stays the Monte Carlo check)
    exact_elbo: float | None = None
    best_elbo: float | None = None
    #: max over the model's parameters theta of log p(x | theta), where the model knows it
    #: (a closed-form or type-II maximum): the fit's shortfall is measured from it
    max_log_evidence: float | None = None
    #: what ``max_log_evidence`` is (an exact maximum, the best of several EM restarts...)
    max_log_evidence_label: str = "max over theta of log p(x)"
    #: False for a point-mass guide: its objective log p(x, z*) drops the entropy of q
    #: (which is -inf for a point mass) and is not a lower bound on log p(x)
    elbo_is_bound: bool = True
    #: k-hat above this makes the IWAE and its SE untrustworthy: min(1 - 1/log10 S, 0.7)
    #: for S draws (Vehtari et al. 2024, §3.2.4)
    khat_threshold: float = 0.7
    #: Kish's effective sample size of the joint importance weights (NaN where the IWAE is
    #: per data point or not computed): how many of the ``num_particles`` draws count
    ess: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)
    #: the data points scored where the figures are estimated from a uniformly random subset
    #: of the ``num_data`` points (:class:`PointSubsample`); None: every point was scored
    eval_points: int | None = None

    @property
    def headline_elbo(self) -> float:
        """The ELBO a report leads with: the exact one where known, else the estimate."""
        return self.elbo if self.exact_elbo is None else self.exact_elbo

    @property
    def gap(self) -> float | None:
        """log p(x) - ELBO, the KL from the guide to the exact posterior (None if no bound);
        from the exact ELBO where the model has it, else from the Monte Carlo estimate."""
        if self.log_evidence is None or not self.elbo_is_bound:
            return None
        return self.log_evidence - self.headline_elbo

    @property
    def gap_se(self) -> float | None:
        """Monte Carlo standard error of the gap (0 when both terms are exact)."""
        if self.gap is None:
            return None
        return 0.0 if self.exact_elbo is not None else self.elbo_se

    @property
    def shortfall(self) -> float | None:
        """max_theta log p(x | theta) - log p(x | theta_fit) >= 0: how far the fitted parameters
        are from the maximum (the gap cannot show it: with the exact posterior as guide the gap
        is zero at any theta). None where the model does not know its maximum."""
        if self.max_log_evidence is None or self.log_evidence is None:
            return None
        return self.max_log_evidence - self.log_evidence

    @property
    def khat_unreliable(self) -> bool:
        """k-hat above the sample-size-aware threshold: the IWAE and its SE are not to be
        trusted (importance sampling with this guide is unreliable)."""
        return math.isfinite(self.khat) and self.khat > self.khat_threshold

    @property
    def family_gap(self) -> float | None:
        """How far the ELBO is below the best the guide family can reach (>= 0)."""
        return None if self.best_elbo is None else self.best_elbo - self.headline_elbo

    def rows(self) -> list[tuple[str, float, float | None]]:
        """The report's figures in order, as (label, total, standard error or None): every
        report (the command line's summary, a notebook's table) reads them from here, so a
        label means the same figure everywhere. Figures the run does not have are left out."""
        out: list[tuple[str, float | None, float | None]] = []
        if self.exact_elbo is not None:
            out.append(("ELBO (closed form)", self.exact_elbo, None))
            out.append((f"ELBO (Monte Carlo, S={self.num_particles})", self.elbo, self.elbo_se))
        else:
            label = "ELBO" if self.elbo_is_bound else "objective log p(x, z*)"
            out.append((label, self.elbo, self.elbo_se))
        out.append(("exact log evidence", self.log_evidence, None))
        out.append(("gap log p(x) - ELBO", self.gap, self.gap_se))
        out.append(("best ELBO of the family", self.best_elbo, None))
        out.append((self.max_log_evidence_label, self.max_log_evidence, None))
        out.append(("shortfall from it", self.shortfall, None))
        if math.isfinite(self.iwae):
            out.append((f"IWAE ({self.iwae_scope})", self.iwae, self.iwae_se))
        ell = ("expected log-likelihood", self.expected_log_likelihood)
        out.append((*ell, self.expected_log_likelihood_se))
        if self.elbo_is_bound:
            out.append((f"KL(q || prior) [{self.kl_method}]", self.kl, None))
        else:  # the KL of a point mass to a density is infinite: say what the number is
            out.append(("-log p(z*) (not a KL)", self.kl, None))
        return [(label, v, se) for label, v, se in out if v is not None]

    def weight_rows(self) -> list[tuple[str, float, int]]:
        """The report's figures about the importance weights, which are not in nats, as
        (label, value, decimals): k-hat (-inf: identical weights, an exact guide) and the
        effective sample size, where the run has them."""
        out = []
        if not math.isnan(self.khat):
            out.append((f"PSIS k-hat ({self.khat_scope})", self.khat, 3))
        if math.isfinite(self.ess):
            out.append((f"effective sample size (of {self.num_particles})", self.ess, 1))
        return out

    def notes(self) -> list[str]:
        """What a reader must know to read the figures: a point mass's objective is not a
        bound; an unreliable k-hat makes the IWAE untrustworthy."""
        out = []
        if not self.elbo_is_bound:
            out.append(
                "note: a point-mass guide; its objective log p(x, z*) drops the entropy of q and"
                " is not a lower bound on log p(x)"
            )
        if self.eval_points is not None:
            out.append(
                f"note: estimated from {self.eval_points:,} of {self.num_data:,} data points (a "
                "uniformly random subset): totals are N x the subset's mean, their standard "
                "errors include the subsampling; k-hat is over the subset's points"
            )
        if self.khat_unreliable:
            out.append(
                f"warning: k-hat {self.khat:.2f} > {self.khat_threshold:.2f}: importance "
                "sampling with this guide is unreliable; do not trust the IWAE or its SE"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gap"] = self.gap
        out["gap_se"] = self.gap_se
        out["headline_elbo"] = self.headline_elbo
        out["family_gap"] = self.family_gap
        out["shortfall"] = self.shortfall
        out["khat_unreliable"] = self.khat_unreliable
        n = self.num_data
        per_point = {
            key: (out[key] / n if isinstance(out[key], float) else None)
            for key in (
                "elbo",
                "elbo_se",
                "exact_elbo",
                "headline_elbo",
                "expected_log_likelihood",
                "kl",
                "iwae",
                "log_evidence",
                "gap",
                "best_elbo",
                "family_gap",
                "max_log_evidence",
                "shortfall",
            )
        }
        out["per_point"] = per_point
        return finite_or_none(out)


def finite_or_none(obj: Any) -> Any:
    """JSON has no inf/nan: -inf (a k-hat with no tail) becomes "-inf", other non-finite None."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "-inf" if obj == -math.inf else None
    return obj


# --------------------------------------------------------------------------------------------
# A subsample of the data points
# --------------------------------------------------------------------------------------------
#: ``evaluate(points=RUN_POINTS)``: the subsample of the run under way
#: (:func:`evaluation_subsample`), every point outside one
RUN_POINTS = "run"
#: the keys of the random streams a subsample evaluation draws from (with the run's seed)
_SUBSET_STREAM, _EVALUATE_STREAM, _RECORD_STREAM = 0, 1, 2


@dataclass(frozen=True)
class PointSubsample:
    """``points`` of a model's data points, drawn uniformly at random without replacement from a
    stream of their own seeded by ``seed`` (the training's random stream is not touched): the
    same points for every pass over the same data."""

    points: int
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.points, bool) or not isinstance(self.points, int) or self.points < 2:
            raise ValueError(f"a subsample needs at least 2 points, not {self.points!r}")

    def indices(self, num_data: int) -> np.ndarray | None:
        """The sorted indices of the subsample of ``num_data`` points; None where it would hold
        them all (``points >= num_data``: every point is scored, as without a subsample)."""
        if self.points >= num_data:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SUBSET_STREAM]))
        return np.sort(rng.choice(num_data, size=self.points, replace=False))


_RUN_SUBSAMPLE: ContextVar[PointSubsample | None] = ContextVar("zoo_run_subsample", default=None)


@contextmanager
def evaluation_subsample(points: int | None, seed: int = 0) -> Iterator[PointSubsample | None]:
    """Inside the block, :func:`evaluate` called without ``points`` scores a subsample of
    ``points`` data points (None: every point): the runner sets the run's ``eval_subsample`` so
    for the evaluations a model's summary and figures make (:func:`run_subsample`)."""
    sample = None if points is None else PointSubsample(points, seed)
    token = _RUN_SUBSAMPLE.set(sample)
    try:
        yield sample
    finally:
        _RUN_SUBSAMPLE.reset(token)


def run_subsample() -> PointSubsample | None:
    """The subsample of the run under way (:func:`evaluation_subsample`), or None."""
    return _RUN_SUBSAMPLE.get()


def subsample_total(
    values: torch.Tensor, particle_var: torch.Tensor, num_data: int
) -> tuple[float, float]:
    """A total over ``num_data`` = N points from a uniformly random subset of n of them, and its
    standard error.

    ``values`` are the subset's per-point estimates, each unbiased for its point's term with
    variance ``particle_var`` (the particle noise: the variance over particles / S). The total
    is N mean(values), unbiased over the subset and the particles both; its variance is
    estimated without bias by

        N^2 (1 - n / N) s^2 / n + (N / n) sum_i particle_var_i,

    s^2 the sample variance of the values (divisor n - 1): two-stage sampling, the points the
    first stage (finite-population corrected) and the particles the second (Cochran 1977,
    *Sampling Techniques*, 3rd ed., ch. 10, Theorem 10.2). With n = N it is the particle noise
    alone; without particle noise, the sampling variance of a mean without replacement."""
    values = torch.as_tensor(values).detach().reshape(-1).double()
    particle_var = torch.as_tensor(particle_var).detach().reshape(-1).double()
    n = values.numel()
    if n < 2:
        raise ValueError("a subsample total needs at least 2 points")
    total = num_data * values.mean().item()
    sampling = num_data**2 * (1.0 - n / num_data) * values.var().item() / n
    noise = num_data / n * particle_var.sum().item()
    return total, math.sqrt(max(sampling, 0.0) + noise)


def _subset_index(zoo_model: ZooModel, sample: PointSubsample | None) -> np.ndarray | None:
    """The subsample's indices of ``zoo_model``'s data points (None: every point), refusing a
    model without a data plate."""
    if sample is None:
        return None
    if zoo_model.data_plate is None:
        raise ZooError(_NO_SUBSAMPLE.format(name=zoo_model.name, why="it has no data plate"))
    return sample.indices(zoo_model.num_data)


_NO_SUBSAMPLE = (
    "eval_subsample: model {name!r} cannot be evaluated on a subsample of its data points ({why}); "
    "leave eval_subsample unset to score every point"
)


def _not_factorising(zoo_model: ZooModel) -> ZooError:
    why = "its log ratios do not factorise over its data plate: a latent is outside it"
    return ZooError(_NO_SUBSAMPLE.format(name=zoo_model.name, why=why))


@contextmanager
def _own_stream(seed: int, key: int, step: int, device: torch.device) -> Iterator[None]:
    """Torch's random stream seeded by (``seed``, ``key``, ``step``) inside the block, and as it
    was after it: the particles of a subsample evaluation do not touch the training's stream."""
    devices = [device] if device.type == "cuda" else []
    state = np.random.SeedSequence([seed, key, step]).generate_state(2, np.uint32)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
        yield


def _subset_blocks(zoo_model: ZooModel, index: np.ndarray) -> list[torch.Tensor]:
    """The subsample's indices in blocks of the data plate's ``block_size`` (one block without)."""
    size = zoo_model.data_plate.block_size or len(index)
    device = zoo_model.device
    return [
        torch.as_tensor(index[start : start + size], device=device)
        for start in range(0, len(index), size)
    ]


def _map_subset(
    zoo_model: ZooModel,
    fn: Callable[[torch.Tensor], Any],
    index: np.ndarray,
    particles: int,
    stream: tuple[int, int, int],
) -> list[Any]:
    """``fn(block)`` for every block of the subsample ``index``, in order, its particles from
    a random stream of its own seeded by ``stream`` (the seed, the pass's key, the step): in
    one process, the blocks of the data plate's ``block_size`` one after the other from one
    stream; under a process group, each rank its share of the subsample's pieces, each piece
    seeded by ``stream`` and its index, gathered on every rank
    (:func:`zoo.distributed.map_points`)."""
    if active():
        return map_points(zoo_model, fn, index, stream, particles=particles)
    with _own_stream(*stream, zoo_model.device):
        return [fn(block) for block in _subset_blocks(zoo_model, index)]


# --------------------------------------------------------------------------------------------
# Reducing site log-probabilities to one number per particle (and per data point)
# --------------------------------------------------------------------------------------------
def _latent_sites(trace) -> dict[str, dict]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def _observed_sites(trace) -> dict[str, dict]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"]
    }


def _particle_axis(lp: torch.Tensor, max_plate_nesting: int) -> int:
    axis = lp.dim() - (max_plate_nesting + 1)
    if axis < 0:  # a site whose log-prob did not broadcast over the particles
        raise RuntimeError("a site's log-probability has no particle dimension")
    return axis


def _per_particle(lp: torch.Tensor, num: int, mpn: int) -> torch.Tensor:
    """Sum a site's log-prob over everything but the particle dimension -> shape (num,)."""
    lp = torch.as_tensor(lp)
    if lp.dim() == 0:
        return lp.expand(num)
    axis = _particle_axis(lp, mpn)
    lp = lp.movedim(axis, 0)
    return lp.reshape(lp.shape[0], -1).sum(-1).expand(num)


def _per_point(site: dict, lp: torch.Tensor, num: int, plate: str, size: int, mpn: int):
    """Sum a site's log-prob over everything but particles and the data plate -> (num, size).

    Returns None when the site is not inside the data plate.
    """
    frames = [f for f in site["cond_indep_stack"] if f.name == plate]
    if not frames:
        return None
    lp = torch.as_tensor(lp)
    p_axis = _particle_axis(lp, mpn)
    d_axis = lp.dim() + frames[0].dim
    lp = lp.movedim((p_axis, d_axis), (0, 1))
    lp = lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)
    return lp.expand(num, size)


def _analytic_kl(q_site: dict, p_site: dict, num: int, mpn: int) -> torch.Tensor | None:
    """KL(q || p) of one site in closed form, only where it is the KL of the actual q: not for
    a Delta site, whose q lives in an auxiliary latent and whose log-density carries the
    Jacobian of a transform (an autoguide's constrained latents); torch's KL(Delta, p) is
    -log p(v) and drops that Jacobian."""
    fn = q_site["fn"]
    while isinstance(fn, dist.Independent | torch.distributions.Independent):
        fn = fn.base_dist
    if isinstance(fn, dist.Delta):
        return None
    try:
        kl = torch.distributions.kl_divergence(q_site["fn"], p_site["fn"])
    except NotImplementedError:
        return None
    if q_site.get("mask") is not None or p_site.get("mask") is not None:
        return None
    if not torch.isfinite(kl).all():
        return None
    return _per_particle(kl, num, mpn)


@dataclass
class _Chunk:
    log_w: torch.Tensor  # (n,)
    ell: torch.Tensor  # (n,)
    kl: torch.Tensor  # (n,)
    kl_by_site: dict[str, torch.Tensor]
    analytic_sites: set[str]
    unpaired_sites: set[str]  # latents only in the guide (auxiliary) or only in the model
    is_bound: bool  # False when the guide is a point mass (no auxiliary latent, Delta sites)
    weights: bool  # the log ratios are importance weights (a bound, no random term drawn)
    point_log_w: torch.Tensor | None  # (n, N) when ratios factorise over the data plate
    point_ell: torch.Tensor | None = None  # (n, N) of the observations, where asked for


def _evaluate_chunk(
    zoo_model: ZooModel,
    guide: Callable,
    num: int,
    block: torch.Tensor | None = None,
    per_point: bool = False,
) -> _Chunk:
    mpn = zoo_model.max_plate_nesting
    _, model_trace, guide_trace = vectorized_or_named(
        on_block(zoo_model.model, zoo_model, block),
        on_block(guide, zoo_model, block),
        num,
        mpn,
        zoo_model.name,
    )
    # the particles sit at dim -(max_plate_nesting + 1) of every log-prob
    q_sites = _latent_sites(guide_trace)
    p_sites = _latent_sites(model_trace)
    obs_sites = _observed_sites(model_trace)
    zero = torch.zeros(num, device=zoo_model.device)

    ell = sum((_per_particle(s["log_prob"], num, mpn) for s in obs_sites.values()), zero)
    log_q = {n: _per_particle(s["log_prob"], num, mpn) for n, s in q_sites.items()}
    log_p = {n: _per_particle(s["log_prob"], num, mpn) for n, s in p_sites.items()}
    log_w = ell + sum(log_p.values(), zero) - sum(log_q.values(), zero)

    kl_by_site: dict[str, torch.Tensor] = {}
    analytic: set[str] = set()
    for name in q_sites.keys() & p_sites.keys():
        kl = _analytic_kl(q_sites[name], p_sites[name], num, mpn)
        if kl is None:
            kl = log_q[name] - log_p[name]
        else:
            analytic.add(name)
        kl_by_site[name] = kl
    # guide-only sites (auxiliary latents of joint guides) and model-only latents
    rest = sum((log_q[n] for n in q_sites.keys() - p_sites.keys()), zero) - sum(
        (log_p[n] for n in p_sites.keys() - q_sites.keys()), zero
    )
    kl_total = sum(kl_by_site.values(), zero) + rest

    point_log_w = point_ell = None
    plate = zoo_model.data_plate
    if plate is not None:
        size = zoo_model.num_data if block is None else len(block)
        point_log_w = _point_log_weights(plate.name, size, model_trace, guide_trace, num, mpn)
        if per_point and point_log_w is not None:  # every site with a log-prob is in the plate
            point_ell = torch.zeros(num, size, device=zoo_model.device)
            for site in obs_sites.values():
                lp = _per_point(site, site["log_prob"], num, plate.name, size, mpn)
                point_ell = point_ell if lp is None else point_ell + lp
    unpaired = q_sites.keys() ^ p_sites.keys()
    is_bound = _is_bound(q_sites)
    weights = is_bound and not (draws_random_term(model_trace) or draws_random_term(guide_trace))
    return _Chunk(
        log_w,
        ell,
        kl_total,
        kl_by_site,
        analytic,
        unpaired,
        is_bound,
        weights,
        point_log_w,
        point_ell,
    )


def draws_random_term(trace: Any) -> bool:
    """Whether a program drew which terms a particle scores (a site marked
    :data:`RANDOM_TERM`): its log ratios are then not importance weights. (A model replayed
    on a guide's draws takes the guide's ``infer`` for the sites the guide drew: mark both.)"""
    return any(
        site["type"] == "sample" and site["infer"].get(RANDOM_TERM) for site in trace.nodes.values()
    )


def _is_bound(q_sites: dict[str, dict]) -> bool:
    """A guide whose latents are point masses (Delta sites, as ``AutoDelta`` makes) gives
    log p(x, z*), not an ELBO. Joint guides also emit Delta sites, but sample an auxiliary
    latent whose density carries q: those remain bounds."""
    if any(site["infer"].get("is_auxiliary") for site in q_sites.values()):
        return True
    for site in q_sites.values():
        fn = site["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, dist.Delta):
            return False
    return True


def _point_log_weights(plate, size, model_trace, guide_trace, num, mpn):
    """Per-point log ratios, or None if some site lies outside the data plate."""
    total = None
    for sign, sites in (
        (1.0, {**_latent_sites(model_trace), **_observed_sites(model_trace)}),
        (-1.0, _latent_sites(guide_trace)),
    ):
        for site in sites.values():
            lp = _per_point(site, site["log_prob"], num, plate, size, mpn)
            if lp is None:
                if torch.as_tensor(site["log_prob"]).abs().sum() == 0:
                    continue
                return None
            total = sign * lp if total is None else total + sign * lp
    return total


# --------------------------------------------------------------------------------------------
# Estimates from log ratios
# --------------------------------------------------------------------------------------------
def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log(mean(exp(log_w))) along ``dim``, computed stably: logsumexp minus the log of the
    count (over K particles: the importance-weighted bound of Burda et al. 2016)."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def iwae_with_se(log_w: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The importance-weighted bound log mean w and its delta-method standard error."""
    n = log_w.shape[dim]
    w = torch.exp(log_w - log_w.amax(dim, keepdim=True))
    se = w.std(dim) / (w.mean(dim) * math.sqrt(n))
    return log_mean_exp(log_w, dim), se


def effective_sample_size(log_w: torch.Tensor) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of the importance weights exp(log_w):
    between 1 (one draw carries all the weight) and the number of draws (q is the posterior)."""
    w = torch.exp(log_w.double() - log_w.max())
    return float(w.sum() ** 2 / w.pow(2).sum())


def mean_with_se(x: torch.Tensor) -> tuple[float, float]:
    """The mean of every element of ``x`` (any shape, any dtype; computed in float64) and its
    standard error s / sqrt(n), s the sample standard deviation (divisor n - 1); the standard
    error is nan for a single element."""
    x = torch.as_tensor(x).detach().reshape(-1).double()
    n = x.numel()
    se = x.std().item() / math.sqrt(n) if n > 1 else math.nan
    return x.mean().item(), se


@dataclass
class _Block:
    """One block of data points, every particle: per-particle totals and per-point summaries."""

    log_w: torch.Tensor  # (num,), float64
    ell: torch.Tensor
    kl: torch.Tensor
    kl_by_site: dict[str, torch.Tensor]
    analytic_sites: set[str]
    unpaired_sites: set[str]
    is_bound: bool
    weights: bool
    factorises: bool  # the ratios factorise over the data plate (per-point summaries below)
    iwae: float = math.nan  # sum over the block's points of log mean_s w_is
    iwae_var: float = math.nan  # sum of their squared standard errors
    khat: float = math.nan  # max over the block's points
    #: per point, where asked for: the estimates ``elbo``, ``ell`` (and ``iwae``) and their
    #: particle variances ``elbo_var``, ``ell_var`` (``iwae_var``), float64 of the block's size
    points: dict[str, torch.Tensor] | None = None


def _evaluate_block(
    zoo_model: ZooModel,
    guide: Callable,
    num_particles: int,
    block: torch.Tensor | None,
    *,
    khat: bool,
    per_point: bool = False,
) -> _Block:
    size = zoo_model.num_data if block is None else len(block)
    plate = zoo_model.data_plate
    budget = (plate.chunk_budget if plate is not None else None) or _CHUNK_BUDGET
    per_chunk = max(2, min(num_particles, budget // max(size, 1)))
    chunks: list[_Chunk] = []
    remaining = num_particles
    while remaining > 0:
        n = min(per_chunk, remaining)
        n = n if n > 1 or not chunks else 2  # a single particle would drop the particle dim
        chunks.append(_evaluate_chunk(zoo_model, guide, n, block, per_point))
        remaining -= n

    def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors).double().cpu()

    first = chunks[0]
    out = _Block(
        log_w=cat([c.log_w for c in chunks]),
        ell=cat([c.ell for c in chunks]),
        kl=cat([c.kl for c in chunks]),
        kl_by_site={s: cat([c.kl_by_site[s] for c in chunks]) for s in first.kl_by_site},
        analytic_sites=first.analytic_sites,
        unpaired_sites=first.unpaired_sites,
        is_bound=first.is_bound,
        weights=first.weights,
        factorises=all(c.point_log_w is not None for c in chunks),
    )
    if out.factorises and out.weights:
        point_log_w = cat([c.point_log_w for c in chunks])  # (num, size)
        iwae_i, se_i = iwae_with_se(point_log_w, 0)
        out.iwae, out.iwae_var = iwae_i.sum().item(), se_i.pow(2).sum().item()
        if khat and point_log_w.shape[0] >= MIN_DRAWS:
            out.khat = float(np.max([pareto_khat(c) for c in point_log_w.numpy().T]))
    if per_point and out.factorises:
        point_log_w = cat([c.point_log_w for c in chunks])
        point_ell = cat([c.point_ell for c in chunks])
        count = point_log_w.shape[0]
        out.points = {
            "elbo": point_log_w.mean(0),
            "elbo_var": point_log_w.var(0) / count,
            "ell": point_ell.mean(0),
            "ell_var": point_ell.var(0) / count,
        }
        if out.weights:
            iwae_i, se_i = iwae_with_se(point_log_w, 0)
            out.points["iwae"], out.points["iwae_var"] = iwae_i, se_i.pow(2)
    return out


def _blocks(
    zoo_model: ZooModel, guide: Callable, num_particles: int, *, khat: bool = False
) -> list[_Block]:
    """Every data block of ``zoo_model`` evaluated with ``num_particles`` particles."""
    blocks = map_blocks(  # data-parallel: each rank its share of the blocks, gathered on all
        zoo_model,
        lambda block: _evaluate_block(zoo_model, guide, num_particles, block, khat=khat),
        lambda b: b.factorises,
        particles=num_particles,
    )
    if len(blocks) > 1 and not all(b.factorises for b in blocks):
        raise ZooError(
            f"model {zoo_model.name!r} gives its data plate a block_size, but its log ratios "
            "do not factorise over the data plate (a latent or an observation outside it): "
            "evaluate it whole"
        )
    return blocks


@torch.no_grad()
def evaluate(
    zoo_model: ZooModel,
    guide: Callable,
    *,
    num_particles: int = 1000,
    guide_name: str | None = None,
    with_khat: bool = True,
    points: int | str | None = RUN_POINTS,
    seed: int = 0,
) -> Diagnostics:
    """Diagnose ``guide`` against ``zoo_model`` at the current parameters (full data).

    Models whose data plate has a ``block_size`` are evaluated a block of points at a time; the
    ratios then factorise over the points, so each particle's totals are sums over blocks, and
    the per-point IWAE and k-hat are computed within each block.

    ``points`` (an int: n of the N data points, a :class:`PointSubsample` seeded by ``seed``;
    None: every point; by default the run's subsample, :func:`evaluation_subsample`, where one
    is set) estimates the figures from a uniformly random subset of the points, for a model
    whose log ratios factorise over its data plate (a one-line :class:`ZooError` for any other):
    totals are N times the subset's mean, their standard errors add the sampling of the points
    to the particle noise (:func:`subsample_total`), k-hat is the largest over the subset's
    points, and the particles come from a stream seeded by ``seed`` (under ``torchrun``, each
    rank scores its share of the subsample's points: :func:`zoo.distributed.map_points`).
    ``points >= N`` scores every point, exactly as None.
    """
    if num_particles < 2:
        raise ValueError("the diagnostics need at least 2 particles")
    if points == RUN_POINTS:
        sample = run_subsample()
    else:
        sample = None if points is None else PointSubsample(int(points), seed)
    index = _subset_index(zoo_model, sample)
    if index is not None:
        return _evaluate_subset(
            zoo_model, guide, num_particles, guide_name, with_khat, sample, index
        )
    blocks = _blocks(zoo_model, guide, num_particles, khat=with_khat)
    log_w = sum(b.log_w for b in blocks)
    ell = sum(b.ell for b in blocks)
    kl = sum(b.kl for b in blocks)
    first = blocks[0]
    sites = first.kl_by_site.keys()
    kl_by_site = {s: sum(b.kl_by_site[s].mean().item() for b in blocks) for s in sites}
    kl_method = _kl_method(first)

    elbo, elbo_se = mean_with_se(log_w)
    ell_mean, ell_se = mean_with_se(ell)
    num = int(log_w.shape[0])

    weights = first.weights
    ess = math.nan
    if not first.is_bound:
        iwae, iwae_se = math.nan, math.nan
        iwae_scope = "not computed: a point-mass guide has no importance weights"
    elif not weights:
        iwae, iwae_se = math.nan, math.nan
        iwae_scope = "not computed: the log ratios are not importance weights"
    elif all(b.factorises for b in blocks):
        iwae = sum(b.iwae for b in blocks)
        iwae_se = math.sqrt(sum(b.iwae_var for b in blocks))
        iwae_scope = f"per data point, K={num}"
    else:
        iwae_t, se_t = iwae_with_se(log_w, 0)
        iwae, iwae_se = iwae_t.item(), se_t.item()
        iwae_scope = f"joint, K={num}"
        ess = effective_sample_size(log_w)

    khat, khat_scope = math.nan, "not computed" if first.is_bound else "not computed: no weights"
    if with_khat and weights and num >= MIN_DRAWS:
        if all(b.factorises for b in blocks):
            khat, khat_scope = float(np.max([b.khat for b in blocks])), "max over data points"
        else:
            khat, khat_scope = pareto_khat(log_w.numpy()), "joint"

    exact_figures = _exact_figures(zoo_model, guide, guide_name, first.is_bound)
    return Diagnostics(
        num_data=zoo_model.num_data,
        num_particles=num,
        elbo=elbo,
        elbo_se=elbo_se,
        expected_log_likelihood=ell_mean,
        expected_log_likelihood_se=ell_se,
        kl=kl.mean().item(),
        kl_method=kl_method,
        kl_by_site=kl_by_site,
        iwae=iwae,
        iwae_se=iwae_se,
        iwae_scope=iwae_scope,
        khat=khat,
        ess=ess,
        khat_scope=khat_scope,
        elbo_is_bound=first.is_bound,
        khat_threshold=khat_threshold(num),
        **exact_figures,
    )


def _kl_method(first: _Block) -> str:
    """How the KL was computed: every site analytic, none, or some."""
    analytic, sites = first.analytic_sites, set(first.kl_by_site)
    if not analytic:
        return "monte-carlo"
    if analytic == sites and not first.unpaired_sites:
        return "analytic"
    return "mixed"


def _exact_figures(
    zoo_model: ZooModel, guide: Callable, guide_name: str | None, is_bound: bool
) -> dict[str, Any]:
    """What the model knows in closed form about the whole data: the log evidence, the best
    ELBO of the guide's family, the maximum over theta, the guide's exact ELBO."""
    log_evidence = zoo_model.log_evidence()
    best = zoo_model.best_elbo(guide_name) if guide_name is not None else None
    top = zoo_model.max_log_evidence()
    exact = None
    if guide_name is not None and is_bound:
        exact = zoo_model.exact_elbo(guide, guide_name)
    return {
        "log_evidence": None if log_evidence is None else float(log_evidence),
        "best_elbo": None if best is None else float(best),
        "exact_elbo": None if exact is None else float(exact),
        "max_log_evidence": None if top is None else float(top),
        "max_log_evidence_label": zoo_model.maximum_label,
    }


def _evaluate_subset(
    zoo_model: ZooModel,
    guide: Callable,
    num_particles: int,
    guide_name: str | None,
    with_khat: bool,
    sample: PointSubsample,
    index: np.ndarray,
) -> Diagnostics:
    """:func:`evaluate` on the data points ``index`` (a :class:`PointSubsample`), a block of
    them at a time (each rank its share of them under a process group, :func:`_map_subset`),
    the figures scaled to all the points."""
    blocks = _map_subset(  # data-parallel: each rank its share of the points, gathered on all
        zoo_model,
        lambda block: _evaluate_block(
            zoo_model, guide, num_particles, block, khat=with_khat, per_point=True
        ),
        index,
        num_particles,
        (sample.seed, _EVALUATE_STREAM, 0),
    )
    if not all(b.factorises for b in blocks):
        raise _not_factorising(zoo_model)
    big_n, n = zoo_model.num_data, len(index)
    first = blocks[0]
    per = {key: torch.cat([b.points[key] for b in blocks]) for key in first.points}
    elbo, elbo_se = subsample_total(per["elbo"], per["elbo_var"], big_n)
    ell, ell_se = subsample_total(per["ell"], per["ell_var"], big_n)
    scale = big_n / n
    kl = scale * sum(b.kl for b in blocks).mean().item()
    kl_by_site = {
        s: scale * sum(b.kl_by_site[s].mean().item() for b in blocks) for s in first.kl_by_site
    }
    num = int(first.log_w.shape[0])
    iwae, iwae_se = math.nan, math.nan
    if not first.is_bound:
        iwae_scope = "not computed: a point-mass guide has no importance weights"
    elif not first.weights:
        iwae_scope = "not computed: the log ratios are not importance weights"
    else:
        iwae, iwae_se = subsample_total(per["iwae"], per["iwae_var"], big_n)
        iwae_scope = f"per data point, K={num}"
    khat, khat_scope = math.nan, "not computed" if first.is_bound else "not computed: no weights"
    if with_khat and first.weights and num >= MIN_DRAWS:
        khat = float(np.max([b.khat for b in blocks]))
        khat_scope = f"max over {n:,} of {big_n:,} data points"
    return Diagnostics(
        num_data=big_n,
        num_particles=num,
        elbo=elbo,
        elbo_se=elbo_se,
        expected_log_likelihood=ell,
        expected_log_likelihood_se=ell_se,
        kl=kl,
        kl_method=_kl_method(first),
        kl_by_site=kl_by_site,
        iwae=iwae,
        iwae_se=iwae_se,
        iwae_scope=iwae_scope,
        khat=khat,
        khat_scope=khat_scope,
        elbo_is_bound=first.is_bound,
        khat_threshold=khat_threshold(num),
        eval_points=n,
        **_exact_figures(zoo_model, guide, guide_name, first.is_bound),
    )


def khat_threshold(num_draws: int) -> float:
    """The largest k-hat at which PSIS with ``num_draws`` draws is reliable:
    min(1 - 1 / log10 S, 0.7) (Vehtari et al. 2024, §3.2.4)."""
    if num_draws < 11:
        return 0.0
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


@torch.no_grad()
def quick_terms(
    zoo_model: ZooModel,
    guide: Callable,
    num_particles: int,
    *,
    points: int | None = None,
    seed: int = 0,
    step: int = 0,
) -> dict[str, float]:
    """ELBO (with ``elbo_se``, its Monte Carlo standard error; NaN on a subsample) and its two
    halves from a few particles: cheap enough to log during training; and from the same
    particles ``iwae``, log mean_k w_k of the weights of all the latents jointly
    (a bound on log p(x) too, NaN where the ratios are not importance weights).

    With ``points`` (n of the N data points, a :class:`PointSubsample` seeded by ``seed``: the
    same points at every ``step``) the terms are N times their mean over the subset, from
    particles seeded by (``seed``, ``step``); ``iwae`` is then NaN (a joint bound over all the
    points is not a sum over them). ``points >= N`` (or None) scores every point.

    The particles come from a random stream of their own, seeded by (``seed``, ``step``): how
    often a run records does not change its training."""
    num = max(2, num_particles)
    index = _subset_index(zoo_model, None if points is None else PointSubsample(points, seed))
    if index is not None:
        return _quick_terms_subset(zoo_model, guide, num, index, seed, step)
    with _own_stream(seed, _RECORD_STREAM, step, zoo_model.device):
        chunks = map_blocks(  # data-parallel: each rank its share of the blocks, gathered on all
            zoo_model,
            lambda block: _evaluate_chunk(zoo_model, guide, num, block),
            lambda c: c.point_log_w is not None,
            particles=num,
        )
    terms = {
        key: sum(getattr(c, attr).mean().item() for c in chunks)
        for key, attr in (("elbo", "log_w"), ("expected_log_likelihood", "ell"), ("kl", "kl"))
    }
    weights = all(c.weights for c in chunks)
    joint = sum(c.log_w.double() for c in chunks)
    terms["elbo_se"] = (joint.std() / math.sqrt(joint.numel())).item()
    terms["iwae"] = log_mean_exp(joint).item() if weights else math.nan
    return terms


def _quick_terms_subset(
    zoo_model: ZooModel, guide: Callable, num: int, index: np.ndarray, seed: int, step: int
) -> dict[str, float]:
    """:func:`quick_terms` on the data points ``index`` (each rank its share of them under a
    process group, :func:`_map_subset`), scaled to all the points."""

    def means(block: torch.Tensor) -> tuple[bool, float, float, float]:
        chunk = _evaluate_chunk(zoo_model, guide, num, block)
        factorises = chunk.point_log_w is not None
        return (
            factorises,
            chunk.log_w.mean().item(),
            chunk.ell.mean().item(),
            chunk.kl.mean().item(),
        )

    pieces = _map_subset(  # data-parallel: each rank its share of the points, gathered on all
        zoo_model, means, index, num, (seed, _RECORD_STREAM, step)
    )
    if not all(piece[0] for piece in pieces):
        raise _not_factorising(zoo_model)
    terms = {"elbo": 0.0, "expected_log_likelihood": 0.0, "kl": 0.0}
    for _, elbo, ell, kl in pieces:
        terms["elbo"] += elbo
        terms["expected_log_likelihood"] += ell
        terms["kl"] += kl
    scale = zoo_model.num_data / len(index)
    out = {key: scale * value for key, value in terms.items()}
    out["elbo_se"] = out["iwae"] = math.nan
    return out
