"""Where EM starts: the best of several k-means++ starts.

EM climbs to a local maximum of log p(x | theta), and which one depends on where it starts: on
iris with three components, about one start in twelve of the kind below misses the best
maximum, and EM from k-means++ means with every component on the data's covariance misses it
four times in five (9.3 nats below it from seed 0). So ``n_init`` starts are tried, each a
k-means++ draw of K centres (Arthur & Vassilvitskii 2007) with every point assigned to its
nearest centre and the weights, means and covariances of those clusters as the initial theta
(scikit-learn's ``init_params="k-means++"``); cheap closed-form EM runs from each to a loose
tolerance, the best continues to convergence, and the actual run (SVI or EM) starts from it:
the short-runs strategy of Biernacki, Celeux & Govaert (2003), "Choosing starting values for
the EM algorithm for getting the highest likelihood in multivariate Gaussian mixture models",
Comput. Stat. Data Anal. 41, 561-575.

A start whose EM collapses a component (:mod:`zoo.models.gmm.em`) is discarded with one
:class:`CollapsedStartWarning`; only when every start collapses is the run refused, with a
one-line :class:`~zoo.models.gmm.em.CollapsedComponentError`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from zoo.models.gmm.em import (
    POLISH_MAX_ITER,
    SCREEN_MAX_ITER,
    SCREEN_TOL,
    CollapsedComponentError,
    EMFit,
    fit_em,
)


class CollapsedStartWarning(UserWarning):
    """Some EM starts collapsed a component and were discarded."""


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


def run_restarts(
    x: torch.Tensor,
    num_components: int,
    n_init: int,
    seed: int,
    *,
    jitter: float,
    reg_covar: float,
    data_scale_tril: torch.Tensor,
) -> Restarts:
    """``n_init`` k-means++ starts drawn from ``seed``, each followed by closed-form EM to
    :data:`~zoo.models.gmm.em.SCREEN_TOL` per point; the best continues to convergence
    (Biernacki et al. 2003). Starts that collapse a component are discarded with one
    :class:`CollapsedStartWarning`; when every one does, a one-line
    :class:`~zoo.models.gmm.em.CollapsedComponentError` says so."""

    def tensor(value: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(value, dtype=x.dtype, device=x.device)

    values = x.cpu().numpy()
    starts = []
    for s in start_seeds(seed, n_init):
        try:
            init = kmeans_plusplus_start(values, num_components, s, jitter)
        except CollapsedComponentError as exc:
            starts.append(Start(s, None, error=exc))
            continue
        trils, info = torch.linalg.cholesky_ex(tensor(init["covariances"]))
        if info.any():
            k = int(info.nonzero()[0, 0])
            reason = "its k-means++ cluster has a singular covariance"
            error = CollapsedComponentError(k, num_components, reason)
            starts.append(Start(s, None, error=error))
            continue
        theta = {
            "weights": tensor(init["weights"]),
            "locs": tensor(init["locs"]),
            "scale_trils": trils,
        }
        starts.append(Start(s, theta))
    restarts = Restarts(seed, starts)
    if not restarts.screened:  # one start: the run itself is its EM
        if starts[0].error is not None:
            raise starts[0].error
        return restarts
    em = {"reg_covar": reg_covar, "data_scale_tril": data_scale_tril}
    for start in starts:
        if start.init is not None:
            _run_start(x, start, tol=SCREEN_TOL * len(values), max_iter=SCREEN_MAX_ITER, **em)
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
        if _run_start(x, starts[best], tol=None, max_iter=POLISH_MAX_ITER, **em):
            break
    restarts.best = best
    errors = [s.error for s in starts if s.error is not None]
    if errors:
        warnings.warn(
            f"gmm: {len(errors)} of {len(starts)} EM starts collapsed a component and were "
            f"discarded; the best of the other {len(starts) - len(errors)} is used (first "
            f"discarded: {errors[0]})",
            CollapsedStartWarning,
            stacklevel=3,
        )
    for start in starts:
        start.fit = None
    return restarts


def _run_start(
    x: torch.Tensor,
    start: Start,
    *,
    tol: float | None,
    max_iter: int,
    reg_covar: float,
    data_scale_tril: torch.Tensor,
) -> bool:
    """EM from where ``start`` stands (its initial theta, or where it last ended); False
    and ``start.error`` set where a component collapses."""
    theta = start.init if start.fit is None else vars(start.fit)
    assert theta is not None
    try:
        fit = fit_em(
            x,
            theta["weights"],
            theta["locs"],
            theta["scale_trils"],
            reg_covar=reg_covar,
            tol=tol,
            max_iter=max_iter,
            data_scale_tril=data_scale_tril,
        )
    except CollapsedComponentError as exc:
        start.error, start.log_likelihood, start.fit = exc, None, None
        return False
    start.fit, start.log_likelihood = fit, fit.log_likelihood
    start.iterations += fit.iterations
    start.converged = fit.converged
    return True
