"""EM for a full-covariance Gaussian mixture, and what stops it: collapsed components.

Dempster, Laird & Rubin (1977); Neal & Hinton (1998); Bishop, PRML §9.2. With theta = (pi, mu,
Sigma) and q(z_n = k) = r_nk proportional to pi_k N(x_n | mu_k, Sigma_k) (the E-step), the
M-step maximises E_q log p(x, z | theta) in closed form (PRML eqs. 9.24-9.26), and
log p(x | theta) = sum_n log sum_k pi_k N(x_n | mu_k, Sigma_k) never decreases (PRML §9.4).

Degenerate components
---------------------
The likelihood of a full-covariance mixture is unbounded: a component that shrinks onto fewer
than D + 1 points has a singular covariance and an infinite density there (Day 1969, Biometrika
56, 463-474; PRML §9.2.1). A component has collapsed when it holds no responsibility, when
its covariance's Cholesky factorisation fails, or when min over directions v of
v' Sigma_k v / v' Sigma_data v falls below :data:`SINGULAR_VARIANCE`; the M-step then raises a
one-line :class:`CollapsedComponentError` naming the component and suggesting ``--reg-covar``
(added to every covariance's diagonal in the M-step) or fewer components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from zoo.errors import ZooError

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


def whitened_min_variance(scale_trils: torch.Tensor, data_scale_tril: torch.Tensor) -> torch.Tensor:
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
        ratio = whitened_min_variance(scale_trils, data_scale_tril)
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
