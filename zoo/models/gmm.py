"""EM for Gaussian mixtures as ELBO maximisation.

Follows Dempster, Laird & Rubin (1977) and Neal & Hinton (1998), "A view of the EM algorithm
that justifies incremental, sparse, and other variants"; Bishop, PRML §9.2–9.4.

x_n in R^D are the points, z_n in {1..K} their component labels, theta = (pi, mu, Sigma) the
mixture weights, means and full covariances:

    z_n ~ Categorical(pi),    x_n | z_n = k ~ N(mu_k, Sigma_k).

The guide is the exact posterior of the labels given the current theta,
q(z_n = k) = r_nk proportional to pi_k N(x_n | mu_k, Sigma_k), held fixed (detached) while theta
moves. With that q the ELBO equals log p(x | theta) exactly after every E-step, so

- closed-form coordinate ascent (``method="closed-form"``) is EM: E-step = recompute q,
  M-step = the argmax of E_q log p(x, z | theta), and the ELBO never decreases;
- SVI with ``Trace_ELBO`` samples z from q (an unbiased gradient of the M-step objective), and
  ``TraceEnum_ELBO`` sums over z exactly.

The exact log evidence is the log-sum-exp log-likelihood; scikit-learn's ``GaussianMixture``
started from the same initialisation is the peer.

Where the run starts: restarts
------------------------------
EM climbs to a local maximum of log p(x | theta), and which one depends on where it starts: on
iris with three components, about one start in twelve of the kind below misses the best
maximum, and EM from k-means++ means with every component on the data's covariance misses it
four times in five (9.3 nats below it from seed 0). The model therefore tries ``n_init``
starts, each a k-means++ draw of K centres (Arthur & Vassilvitskii 2007) with every point
assigned to its nearest centre and the weights, means and covariances of those clusters as the
initial theta (scikit-learn's ``init_params="k-means++"``), runs cheap closed-form EM from each
to a loose tolerance, continues the best to convergence, and starts the actual run (SVI or EM)
from the best start: the short-runs strategy of Biernacki, Celeux & Govaert (2003), "Choosing
starting values for the EM algorithm for getting the highest likelihood in multivariate
Gaussian mixture models", Comput. Stat. Data Anal. 41, 561-575. The starts are drawn from
``init_seed``, by default the run's ``seed``: the same seed gives the same numbers. The summary
reports every start's final log-likelihood and the run's shortfall from the best of them.

Degenerate components
---------------------
The likelihood of a full-covariance mixture is unbounded: a component that shrinks onto fewer
than D + 1 points has a singular covariance and an infinite density there (Day 1969, Biometrika
56, 463-474; PRML §9.2.1). A start whose EM collapses a component (no responsibility left, a
covariance whose Cholesky factorisation fails, or min over directions v of
v' Sigma_k v / v' Sigma_data v below :data:`SINGULAR_VARIANCE`) is discarded with one
:class:`CollapsedStartWarning`; only when every start collapses is the run refused, with a
one-line :class:`CollapsedComponentError` naming the component and suggesting ``--reg-covar``
(added to every covariance's diagonal in the M-step) or fewer components. The run's own EM
steps raise the same error, and SVI, which has no M-step to regularise, refuses parameters
with a collapsed component before each step (:meth:`GaussianMixture.on_step`).

Many points
-----------
The labels z_n are the only latents and live in the data plate, so the runner and the
diagnostics pass over the data a block of points at a time (``data_block_size``, smaller in
many dimensions) with particle chunks sized to the D x D factor the model gathers per
(particle, point) pair (``eval_chunk_budget``): memory does not grow with the number of points
beyond the data themselves and the (N, K) responsibilities of an EM step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from zoo.data import read_numeric_table
from zoo.errors import DataError, ZooError
from zoo.model import Option, Training, ZooModel, at_least, positive_int, seed_value
from zoo.registry import register
from zoo.run_view import RunView

#: a component whose variance along some direction falls below this fraction of the data's
#: variance along it has collapsed (float64 Cholesky factors stay unreliable well before the
#: factorisation itself fails, near 1e-16)
SINGULAR_VARIANCE = 1e-12
#: restarts: EM from every start until one iteration gains less than this, in nats per point
SCREEN_TOL = 1e-7
SCREEN_MAX_ITER = 1000
#: the best start continues until an iteration gains no more than rounding error of the total
#: log-likelihood (this many ulps of its absolute terms), or this many more iterations
POLISH_ULPS = 64
POLISH_MAX_ITER = 5000
#: bytes one chunk of a pass over the data may take: the model gathers a D x D scale factor
#: and a mean per (particle, point) pair (measured 2.0-2.8 x 8 D^2 bytes a pair for D = 4-20;
#: budgeted as 4 x 8 (D^2 + D + K))
CHUNK_BYTES = 1 << 27
#: particles of a history record (the runner's ``trace_particles``): a record traces a whole
#: block with this many particles at once
RECORD_PARTICLES = 16
#: the most EM starts one run may ask for
MAX_N_INIT = 1000


def non_negative_float(value: Any) -> float:
    """An option type: a finite number >= 0 (``"1e-6"`` and ``0`` pass; nan, inf, -1 do not)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a finite number >= 0")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{value!r} is not a finite number >= 0")
    return number


def n_init_value(value: Any) -> int:
    """An option type: the number of EM starts, an integer in [1, :data:`MAX_N_INIT`]."""
    number = positive_int(value)
    if number > MAX_N_INIT:
        raise ValueError(f"{value!r} is more than {MAX_N_INIT} starts")
    return number


def optional_seed(value: Any) -> int | None:
    """An option type: a seed, an integer in [0, 2**32) (``"7"``, ``7.0``), or None (``"none"``)
    for "not set"."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a seed")
    number = float(value)
    if not (math.isfinite(number) and number == int(number) and 0 <= number < 2**32):
        raise ValueError(f"{value!r} is not a seed (an integer in [0, 2**32), or none)")
    return int(number)


class CollapsedComponentError(ZooError):
    """A component's covariance became singular (or it lost every point) during EM: one line
    naming the component (counted from 1) and suggesting ``--reg-covar`` or fewer components."""

    def __init__(
        self,
        component: int,
        num_components: int,
        reason: str,
        *,
        iteration: int | None = None,
        context: str = "",
        advice: str = "add --reg-covar (e.g. 1e-6) or use fewer --components",
    ) -> None:
        self.component = component
        self.num_components = num_components
        self.reason = reason
        self.iteration = iteration
        when = "" if iteration is None else f" at EM iteration {iteration}"
        super().__init__(
            f"{context}component {component + 1} of {num_components} collapsed{when}: "
            f"{reason}; {advice}"
        )

    def at_iteration(self, iteration: int) -> CollapsedComponentError:
        """The same error, saying at which EM iteration it happened."""
        return CollapsedComponentError(
            self.component, self.num_components, self.reason, iteration=iteration
        )


class CollapsedStartWarning(UserWarning):
    """Some EM starts collapsed a component and were discarded."""


def component_log_joint(
    x: torch.Tensor, weights: torch.Tensor, locs: torch.Tensor, scale_trils: torch.Tensor
) -> torch.Tensor:
    """log pi_k + log N(x_n | mu_k, Sigma_k), shape (N, K): the one formula everything uses.

    One component at a time, so that memory is O(N (D + K)) rather than O(N K D)."""
    columns = [
        dist.MultivariateNormal(locs[k], scale_tril=scale_trils[k]).log_prob(x)
        for k in range(locs.shape[0])
    ]
    return weights.log() + torch.stack(columns, dim=-1)


def _whitened_min_variance(
    scale_trils: torch.Tensor, data_scale_tril: torch.Tensor
) -> torch.Tensor:
    """min over directions v of v' Sigma_k v / v' Sigma_data v, per component k."""
    a = torch.linalg.solve_triangular(data_scale_tril, scale_trils, upper=False)
    return torch.linalg.svdvals(a).amin(-1).square()


def em_update(
    x: torch.Tensor,
    log_joint: torch.Tensor,
    reg_covar: float = 0.0,
    data_scale_tril: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The M-step: weights, means and Cholesky factors maximising E_q log p(x, z | theta).

    Raises :class:`CollapsedComponentError` for a component left with no responsibility, or
    whose covariance (plus ``reg_covar`` on its diagonal) is singular: its Cholesky
    factorisation fails, or, given ``data_scale_tril`` (a Cholesky factor of the data's
    covariance), its variance along some direction is below :data:`SINGULAR_VARIANCE` times
    the data's.
    """
    resp = torch.softmax(log_joint, dim=-1)  # the E-step: q(z_n = k)
    counts = resp.sum(0)
    num_components, dim = counts.shape[0], x.shape[-1]
    for k in range(num_components):
        if not (counts[k] > 0 and torch.isfinite(counts[k])):
            raise CollapsedComponentError(k, num_components, "no point is assigned to it")
    weights = counts / counts.sum()
    locs = (resp.T @ x) / counts[:, None]
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    covs = []
    for k in range(num_components):  # O(N D) memory per component
        centred = x - locs[k]
        covs.append((resp[:, k, None] * centred).T @ centred / counts[k] + reg_covar * eye)
    scale_trils, info = torch.linalg.cholesky_ex(torch.stack(covs))
    for k in range(num_components):
        points = f"{counts[k].item():.3g} points' worth of responsibility in {dim} dimensions"
        if info[k] != 0 or not torch.isfinite(scale_trils[k]).all():
            raise CollapsedComponentError(k, num_components, f"singular covariance ({points})")
    if data_scale_tril is not None:
        ratio = _whitened_min_variance(scale_trils, data_scale_tril)
        for k in range(num_components):
            if not ratio[k] >= SINGULAR_VARIANCE:
                reason = (
                    f"its variance along one direction is {ratio[k].item():.2g} of the data's "
                    f"({counts[k].item():.3g} points' worth of responsibility in {dim} "
                    "dimensions)"
                )
                raise CollapsedComponentError(k, num_components, reason)
    return weights, locs, scale_trils


def log_likelihood(log_joint: torch.Tensor) -> float:
    """log p(x | theta) = sum_n log sum_k pi_k N(x_n | mu_k, Sigma_k), from ``log_joint``."""
    return torch.logsumexp(log_joint, -1).sum().item()


@dataclass
class EMFit:
    """Where closed-form EM ended: theta, log p(x | theta), iterations, whether it converged."""

    weights: torch.Tensor
    locs: torch.Tensor
    scale_trils: torch.Tensor
    log_likelihood: float
    iterations: int
    converged: bool


def fit_em(
    x: torch.Tensor,
    weights: torch.Tensor,
    locs: torch.Tensor,
    scale_trils: torch.Tensor,
    *,
    reg_covar: float = 0.0,
    tol: float | None = None,
    max_iter: int = SCREEN_MAX_ITER,
    data_scale_tril: torch.Tensor | None = None,
) -> EMFit:
    """Closed-form EM from theta until one iteration changes log p(x | theta) by at most ``tol``
    nats (total over the points), or ``max_iter`` iterations. ``tol=None``: until the change is
    rounding error (:data:`POLISH_ULPS` ulps of sum_n |log p(x_n | theta)|). With
    ``reg_covar`` = 0 every iteration raises log p(x | theta) (Dempster et al. 1977); with
    ``reg_covar`` > 0 the M-step is no longer its argmax and the change may be negative.

    Raises :class:`CollapsedComponentError` (with the iteration) where a component collapses.
    """
    log_joint = component_log_joint(x, weights, locs, scale_trils)
    point_ll = torch.logsumexp(log_joint, -1)
    ll = point_ll.sum().item()
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):
        try:
            weights, locs, scale_trils = em_update(x, log_joint, reg_covar, data_scale_tril)
        except CollapsedComponentError as exc:
            raise exc.at_iteration(iteration) from None
        log_joint = component_log_joint(x, weights, locs, scale_trils)
        point_ll = torch.logsumexp(log_joint, -1)
        new = point_ll.sum().item()
        if not math.isfinite(new):
            k = int(torch.isfinite(log_joint).all(0).logical_not().nonzero()[0, 0])
            reason = "its log-density is not finite"
            raise CollapsedComponentError(k, len(weights), reason, iteration=iteration)
        gain, ll = new - ll, new
        limit = tol if tol is not None else POLISH_ULPS * 2.0**-52 * point_ll.abs().sum().item()
        if abs(gain) <= limit:  # with reg_covar > 0 EM need not raise log p(x | theta)
            converged = True
            break
    return EMFit(weights, locs, scale_trils, ll, iteration, converged)


@dataclass
class Start:
    """One EM start: its k-means++ seed, its initial theta, and where EM from it ended."""

    seed: int
    init: dict[str, torch.Tensor] | None
    #: final log p(x | theta) of EM from this start; None where it collapsed
    log_likelihood: float | None = None
    iterations: int = 0
    converged: bool = False
    error: CollapsedComponentError | None = None
    fit: EMFit | None = field(default=None, repr=False)


@dataclass
class Restarts:
    """The starts drawn from ``seed`` and the index of the best one that did not collapse.

    With one start there is nothing to choose: it is not run ahead of the run itself
    (``screened`` is False and no start has a log-likelihood)."""

    seed: int
    starts: list[Start]
    best: int = 0

    @property
    def init(self) -> dict[str, torch.Tensor]:
        init = self.starts[self.best].init
        assert init is not None
        return init

    @property
    def screened(self) -> bool:
        return len(self.starts) > 1

    @property
    def best_log_likelihood(self) -> float | None:
        return self.starts[self.best].log_likelihood if self.screened else None


def start_seeds(seed: int, n_init: int) -> list[int]:
    """The k-means++ seeds of ``n_init`` starts, from one seed (the first n of n + 1 are the n)."""
    state = np.random.SeedSequence(seed % 2**64).generate_state(n_init)
    return [int(s) for s in state]


def kmeans_plusplus_start(
    values: np.ndarray, k: int, seed: int, jitter: float
) -> dict[str, np.ndarray]:
    """k-means++ centres (Arthur & Vassilvitskii 2007), every point given to its nearest centre,
    and those clusters' weights, means and covariances (plus ``jitter`` on the diagonal):
    scikit-learn's ``init_params="k-means++"``. Raises :class:`CollapsedComponentError` for a
    centre with no points (duplicated points)."""
    from sklearn.cluster import kmeans_plusplus

    centres, _ = kmeans_plusplus(values, k, random_state=seed)
    # nearest centre by |x|^2 - 2 x.c + |c|^2, in blocks of points: O(block * K) memory
    labels = np.empty(len(values), dtype=np.int64)
    c2 = (centres**2).sum(1)
    for start in range(0, len(values), 65536):
        block = values[start : start + 65536]
        labels[start : start + len(block)] = (c2 - 2.0 * block @ centres.T).argmin(1)
    counts = np.bincount(labels, minlength=k)
    dim = values.shape[1]
    means = np.empty((k, dim))
    covs = np.empty((k, dim, dim))
    for j in range(k):
        if counts[j] == 0:
            raise CollapsedComponentError(j, k, "no point is nearest its k-means++ centre")
        members = values[labels == j]
        means[j] = members.mean(0)
        centred = members - means[j]
        covs[j] = centred.T @ centred / counts[j] + jitter * np.eye(dim)
    return {"weights": counts / counts.sum(), "locs": means, "covariances": covs}


def simulate_mixture(num_points: int, seed: int) -> np.ndarray:
    """A seeded 2-D mixture of three well-separated, correlated Gaussians."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[-3.0, 0.0], [2.0, 2.0], [1.5, -3.0]])
    covs = np.array(
        [[[1.0, 0.6], [0.6, 1.0]], [[0.5, -0.2], [-0.2, 0.8]], [[1.2, 0.0], [0.0, 0.3]]]
    )
    labels = rng.choice(3, size=num_points, p=weights)
    noise = rng.standard_normal((num_points, 2))
    chol = np.linalg.cholesky(covs)
    return means[labels] + np.einsum("nij,nj->ni", chol[labels], noise)


@register
class GaussianMixture(ZooModel):
    name = "gmm"
    title = "EM for Gaussian mixtures"
    application = "EM algorithm"
    reference = (
        "Dempster, Laird & Rubin (1977); Neal & Hinton (1998); Bishop, PRML §9.2-9.4; "
        "Biernacki, Celeux & Govaert (2003)"
    )
    options = (
        Option("components", positive_int, 3, "number of mixture components K"),
        Option("dataset", str, "synthetic", "bundled data set", choices=("synthetic", "iris")),
        Option("num_points", at_least(2), 500, "points in the synthetic data set"),
        Option("data_seed", seed_value, 0, "seed of the synthetic data set"),
        Option(
            "n_init",
            n_init_value,
            10,
            "k-means++ starts, each followed by closed-form EM; the run starts from the best "
            "(1: a single start, no restarts)",
        ),
        Option(
            "init_seed",
            optional_seed,
            None,
            "seed of the k-means++ starts (None: the run's --seed)",
        ),
        Option(
            "reg_covar",
            non_negative_float,
            0.0,
            "a finite number >= 0 added to each covariance's diagonal in EM's M-step (the "
            "restarts and --method closed-form)",
        ),
    )
    data_help = "CSV file of points (numeric columns are the features)"
    guides = ("posterior",)
    default_guide = "posterior"
    default_elbo = "trace"
    #: discrete labels: ``enum`` sums them out exactly; no ``meanfield`` (not reparameterised)
    estimators = ("trace", "enum", "graph", "iwae")
    training = Training(
        steps=1500, lr=0.05, lr_final_factor=0.05, quick_steps=300, closed_form_steps=200
    )
    data_plate = "data"
    #: every pass over all the points (records, diagnostics) goes a block at a time (the labels
    #: z_n are the only latents and live in the data plate); fewer points per block in many
    #: dimensions, see :meth:`setup`
    data_block_size = 8192
    closed_form_name = "EM"
    leaderboard = ({"method": "closed-form"}, {"elbo": "trace"}, {"elbo": "enum"})

    # -- data and initial parameters ------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        if opts["components"] < 1:
            raise DataError("--components must be at least 1")
        if data is None:
            if opts["dataset"] == "iris":
                from sklearn.datasets import load_iris

                values, self.feature_names = (
                    load_iris(return_X_y=True)[0],
                    [
                        "sepal length",
                        "sepal width",
                        "petal length",
                        "petal width",
                    ],
                )
            else:
                if opts["num_points"] < 2:
                    raise DataError("--num-points must be at least 2")
                values = simulate_mixture(opts["num_points"], opts["data_seed"])
                self.feature_names = ["x1", "x2"]
        elif isinstance(data, str | Path):
            values, self.feature_names = read_numeric_table(data)
        else:
            values = np.asarray(data, dtype=np.float64)
            if values.ndim != 2 or not np.isfinite(values).all():
                raise DataError("data must be a finite 2-D array (points x features)")
            self.feature_names = [f"x{i + 1}" for i in range(values.shape[1])]
        k = opts["components"]
        if values.shape[0] <= k * values.shape[1]:
            raise DataError(
                f"{values.shape[0]} points are too few for {k} full-covariance components "
                f"in {values.shape[1]} dimensions"
            )
        self.x = self.tensor(values)
        self.num_data, self.dim = values.shape
        self.num_components = k
        self.reg_covar = opts["reg_covar"]
        self.n_init = opts["n_init"]
        self.init_seed = opts["init_seed"]
        cov = np.cov(values, rowvar=False, bias=True).reshape(self.dim, self.dim)
        self.jitter = 1e-6 * np.trace(cov) / self.dim
        self.data_scale_tril = self.tensor(np.linalg.cholesky(cov + self.jitter * np.eye(self.dim)))
        # passes over the data hold a mean and a D x D scale factor per (particle, point) pair:
        # a record's RECORD_PARTICLES particles of one block, or a chunk of the diagnostics'
        # particles, stay within CHUNK_BYTES
        pair_bytes = 4 * 8 * (self.dim * self.dim + self.dim + k)
        block = CHUNK_BYTES // (RECORD_PARTICLES * pair_bytes)
        self.data_block_size = int(min(type(self).data_block_size, max(64, block)))
        self.eval_chunk_budget = max(2 * self.data_block_size, CHUNK_BYTES // pair_bytes)
        self.restarts: Restarts | None = None

    def start_seed(self) -> int:
        """``init_seed``, or else the run's seed: the runner seeds torch with it
        (:func:`pyro.set_rng_seed`) before it creates the parameters."""
        return torch.initial_seed() if self.init_seed is None else self.init_seed

    def run_restarts(self, seed: int) -> Restarts:
        """``n_init`` k-means++ starts drawn from ``seed``, each followed by closed-form EM to
        :data:`SCREEN_TOL`; the best continues to convergence (Biernacki et al. 2003). Starts
        that collapse a component are discarded with one :class:`CollapsedStartWarning`; when
        every one does, a one-line :class:`CollapsedComponentError` says so."""
        values = self.x.cpu().numpy()
        starts = []
        for s in start_seeds(seed, self.n_init):
            try:
                init = kmeans_plusplus_start(values, self.num_components, s, self.jitter)
            except CollapsedComponentError as exc:
                starts.append(Start(s, None, error=exc))
                continue
            trils, info = torch.linalg.cholesky_ex(self.tensor(init["covariances"]))
            if info.any():
                k = int(info.nonzero()[0, 0])
                reason = "its k-means++ cluster has a singular covariance"
                error = CollapsedComponentError(k, self.num_components, reason)
                starts.append(Start(s, None, error=error))
                continue
            theta = {
                "weights": self.tensor(init["weights"]),
                "locs": self.tensor(init["locs"]),
                "scale_trils": trils,
            }
            starts.append(Start(s, theta))
        restarts = Restarts(seed, starts)
        if not restarts.screened:  # one start: the run itself is its EM
            if starts[0].error is not None:
                raise starts[0].error
            return restarts
        for start in starts:
            if start.init is not None:
                self._run_start(start, tol=SCREEN_TOL * self.num_data, max_iter=SCREEN_MAX_ITER)
        while True:  # the best start, to convergence; one that collapses on the way is dropped
            alive = [i for i, s in enumerate(starts) if s.error is None]
            if not alive:
                first = next(s.error for s in starts if s.error is not None)
                raise CollapsedComponentError(
                    first.component,
                    first.num_components,
                    first.reason,
                    iteration=first.iteration,
                    context=f"every one of the {len(starts)} EM starts collapsed a component; "
                    "in the first, ",
                )
            best = max(alive, key=lambda i: starts[i].log_likelihood)
            if self._run_start(starts[best], tol=None, max_iter=POLISH_MAX_ITER):
                break
        restarts.best = best
        errors = [s.error for s in starts if s.error is not None]
        if errors:
            warnings.warn(
                f"gmm: {len(errors)} of {len(starts)} EM starts collapsed a component and were "
                f"discarded; the best of the other {len(starts) - len(errors)} is used (first "
                f"discarded: {errors[0]})",
                CollapsedStartWarning,
                stacklevel=2,
            )
        for start in starts:
            start.fit = None
        return restarts

    def _run_start(self, start: Start, *, tol: float | None, max_iter: int) -> bool:
        """EM from where ``start`` stands (its initial theta, or where it last ended); False
        and ``start.error`` set where a component collapses."""
        theta = start.init if start.fit is None else vars(start.fit)
        assert theta is not None
        try:
            fit = fit_em(
                self.x,
                theta["weights"],
                theta["locs"],
                theta["scale_trils"],
                reg_covar=self.reg_covar,
                tol=tol,
                max_iter=max_iter,
                data_scale_tril=self.data_scale_tril,
            )
        except CollapsedComponentError as exc:
            start.error, start.log_likelihood, start.fit = exc, None, None
            return False
        start.fit, start.log_likelihood = fit, fit.log_likelihood
        start.iterations += fit.iterations
        start.converged = fit.converged
        return True

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        """The run's starting theta: the best EM start drawn from :meth:`start_seed` (drawn and
        run once per seed, when the run creates its parameters)."""
        seed = self.start_seed()
        if self.restarts is None or self.restarts.seed != seed:
            self.restarts = self.run_restarts(seed)
        return self.restarts.init

    def restarts_in_use(self) -> Restarts:
        """The starts the current parameters were created from (drawn now if none were)."""
        if self.restarts is None:
            self.initial_parameters()
        assert self.restarts is not None
        return self.restarts

    # -- the model and its guide ----------------------------------------------------------------
    def parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # pyro.param adopts its initial tensor: hand it copies
        init = self.initial_parameters
        weights = pyro.param(
            "weights", lambda: init()["weights"].clone(), constraint=constraints.simplex
        )
        locs = pyro.param("locs", lambda: init()["locs"].clone())
        trils = pyro.param(
            "scale_trils",
            lambda: init()["scale_trils"].clone(),
            constraint=constraints.lower_cholesky,
        )
        return weights, locs, trils

    def model(self, subsample_size: int | None = None) -> None:
        weights, locs, trils = self.parameters()
        with pyro.plate("data", self.num_data, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("x", dist.MultivariateNormal(locs[z], scale_tril=trils[z]), obs=self.x[idx])

    def posterior_guide(self, subsample_size: int | None = None) -> None:
        """q(z_n) = p(z_n | x_n, theta) at the current theta, held fixed (detached)."""
        weights, locs, trils = (p.detach() for p in self.parameters())
        with pyro.plate("data", self.num_data, subsample_size=subsample_size) as idx:
            logits = component_log_joint(self.x[idx], weights, locs, trils)
            pyro.sample("z", dist.Categorical(logits=logits))

    def build_guide(self, name: str):
        if name == "posterior":
            return self.posterior_guide
        return super().build_guide(name)

    # -- exact quantities and EM ----------------------------------------------------------------
    def log_joint(self) -> torch.Tensor:
        with torch.no_grad():
            return component_log_joint(self.x, *(p.detach() for p in self.parameters()))

    def log_evidence(self) -> float:
        return log_likelihood(self.log_joint())

    def best_elbo(self, guide: str) -> float | None:
        # the guide is the exact posterior given theta: its ELBO is the log-likelihood
        return self.log_evidence()

    #: what :meth:`max_log_evidence` is: the best local maximum EM found, not a proven global
    #: one (with ``reg_covar`` = 0 the likelihood is unbounded at degenerate components)
    maximum_label = "best EM restart's log p(x)"

    def max_log_evidence(self) -> float | None:
        """The log-likelihood of the best EM restart, continued to convergence."""
        return self.restarts_in_use().best_log_likelihood

    def on_step(self, step: int, total: int) -> None:
        """Before SVI step ``step``: refuse parameters with a collapsed component (one line).

        SVI has no M-step to add ``reg_covar`` to, and nothing stops a component from
        shrinking onto a few points, where the likelihood is unbounded (PRML §9.2.1)."""
        store = pyro.get_param_store()
        if "scale_trils" not in store:
            return
        with torch.no_grad():
            trils = store["scale_trils"].detach()
            if not torch.isfinite(trils).all():
                return  # the runner names non-finite parameters itself
            ratio = _whitened_min_variance(trils, self.data_scale_tril)
            weights = store["weights"].detach()
        for k in range(self.num_components):
            if not ratio[k] >= SINGULAR_VARIANCE:
                reason = (
                    f"before SVI step {step}, its variance along one direction is "
                    f"{ratio[k].item():.2g} of the data's (weight {weights[k].item():.3g})"
                )
                raise CollapsedComponentError(
                    k,
                    self.num_components,
                    reason,
                    advice="use fewer --components, or --method closed-form with --reg-covar "
                    "(e.g. 1e-6)",
                )

    def closed_form_step(self, guide, guide_name: str) -> float:
        """One EM iteration; returns the ELBO after it, which equals log p(x | theta_new).

        A component that collapses is a one-line :class:`CollapsedComponentError`."""
        weights, locs, trils = em_update(
            self.x, self.log_joint(), self.reg_covar, self.data_scale_tril
        )
        store = pyro.get_param_store()
        store["weights"], store["locs"], store["scale_trils"] = weights, locs, trils
        return self.log_evidence()

    # -- reporting -------------------------------------------------------------------------------
    def fitted(self) -> dict[str, np.ndarray]:
        weights, locs, trils = (p.detach() for p in self.parameters())
        covs = trils @ trils.transpose(-1, -2)
        return {
            "weights": weights.cpu().numpy(),
            "means": locs.cpu().numpy(),
            "covariances": covs.cpu().numpy(),
        }

    def peer_log_likelihood(self) -> float | None:
        """Mean log-likelihood per point of scikit-learn's EM from the same initialisation
        (the best start); None where scikit-learn's EM collapses a component."""
        from sklearn.mixture import GaussianMixture as SkGaussianMixture

        init = self.restarts_in_use().init
        init_covs = init["scale_trils"] @ init["scale_trils"].transpose(-1, -2)
        peer = SkGaussianMixture(
            n_components=self.num_components,
            covariance_type="full",
            reg_covar=self.reg_covar,
            tol=1e-10,
            max_iter=5000,
            weights_init=init["weights"].cpu().numpy(),
            means_init=init["locs"].cpu().numpy(),
            precisions_init=np.linalg.inv(init_covs.cpu().numpy()),
        )
        x = self.x.cpu().numpy()
        try:
            peer.fit(x)
        except ValueError:  # "ill-defined empirical covariance": a collapsed component
            return None
        return float(peer.score(x))

    def summary(self, guide, guide_name: str) -> dict[str, Any]:
        """The fitted theta and log-likelihood, the peer's, and the restarts: every start's
        final log-likelihood (None where it collapsed; the best one continued to convergence)
        and the run's shortfall from the best, best - log p(x | theta_fit) in nats. The
        shortfall is >= 0 up to rounding for EM with ``reg_covar`` = 0, and 0 once the run
        has had as many EM steps as the best start needed; SVI may end short of it, or above
        it in another basin or on a component shrinking towards a singularity."""
        fitted = self.fitted()
        loglik = self.log_evidence()
        restarts = self.restarts_in_use()
        starts = restarts.starts if restarts.screened else []
        best = restarts.best_log_likelihood
        return {
            "weights": fitted["weights"].tolist(),
            "means": fitted["means"].tolist(),
            "covariances": fitted["covariances"].tolist(),
            "log_likelihood": loglik,
            "log_likelihood_per_point": loglik / self.num_data,
            # N pi_k: the points' worth of responsibility each component holds at the fit
            "component_points": (fitted["weights"] * self.num_data).tolist(),
            "peer_sklearn_log_likelihood_per_point": self.peer_log_likelihood(),
            "restart_seed": restarts.seed,
            "restart_log_likelihoods": [s.log_likelihood for s in starts],
            "restart_iterations": [s.iterations for s in starts],
            "restarts_collapsed": sum(s.error is not None for s in restarts.starts),
            "best_restart": restarts.best,
            "best_restart_log_likelihood": best,
            "best_restart_converged": restarts.starts[restarts.best].converged if starts else None,
            "shortfall_from_best_restart": None if best is None else best - loglik,
        }

    def plots(self, run: RunView) -> dict:
        from zoo.plots import mixture_components

        fig = mixture_components(
            self.x.cpu().numpy(),
            torch.softmax(self.log_joint(), -1).cpu().numpy(),
            self.fitted(),
            self.feature_names,
            title=f"{self.title}: {run.method}",
        )
        return {"components": fig}
