"""The scalar model of perception and learning: v ~ N(v_p, Sigma_p), u | v ~ N(v^2, Sigma_u).

Bogacz (2017), J. Math. Psych. 76, §2.1-§2.2 (eqs. 1-9) and §3 (eqs. 32-35). Sigma are
variances. Exact, for every theta = (v_p, Sigma_p, Sigma_u):

- ln p(u) = ln ∫ N(v; v_p, Sigma_p) N(u; v^2, Sigma_u) dv by adaptive quadrature, with break
  points at the real roots of dF/dv = 0 (Bogacz eq. 8 set to zero, a cubic in v)
  (:func:`perception_log_evidence`), and for many items at once by the trapezoid rule on one
  grid (:func:`grid_log_evidence`);
- the ELBO of a Gaussian q = N(m, s^2) in closed form: ln p(u, v) is a quartic polynomial in v,
  so E_q needs only the moments E v^2 = m^2 + s^2 and E v^4 = m^4 + 6 m^2 s^2 + 3 s^4
  (:func:`gaussian_elbo`); its maximum over (m, s), the best Gaussian recognition density, is a
  smooth two-parameter problem solved deterministically (:func:`best_gaussian`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from zoo.errors import DataError, ZooError
from zoo.gaussian import LOG_2PI, log_normal
from zoo.models.free_energy.quadrature import log_integral, log_trapezoid
from zoo.optimize import maximize

#: Bogacz (2017), §2.1, Exercise 1: observed light, prior mean and variance, sensory variance
EXERCISE_1 = {"u": 2.0, "v_p": 3.0, "sigma_p": 1.0, "sigma_u": 1.0}

NOT_A_BOUND = (
    "log joint at the point estimate, ln p(u, phi) (Bogacz's F, eqs. 6 and 34, without the "
    "entropy term, which is -inf for a point mass): not a lower bound on ln p(u); its 'gap' "
    "is -ln p(phi | u), not a KL divergence"
)


#: the variances (Sigma_p, Sigma_u) the quadrature of the learning model's evidence serves
VARIANCE_RANGE = (1e-6, 1e6)


def require_positive(value: float, flag: str) -> float:
    """``value`` as a float, or a :class:`DataError` naming ``flag`` if it is not > 0."""
    if not (value > 0 and math.isfinite(value)):
        raise DataError(f"{flag} must be a positive number, got {value!r}")
    return float(value)


def require_finite(value: float, flag: str) -> float:
    """``value`` as a float, or a :class:`DataError` naming ``flag`` if it is not finite."""
    if not math.isfinite(value):
        raise DataError(f"{flag} must be a finite number, got {value!r}")
    return float(value)


def _log(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.log(value)
    return np.log(value) if isinstance(value, np.ndarray) else math.log(value)


def log_joint(v: Any, u: Any, v_p: Any, sigma_p: Any, sigma_u: Any) -> Any:
    """ln p(v) + ln p(u | v) with g(v) = v^2: Bogacz's F of eq. 7, constant included (the
    normal densities f of Bogacz's eq. 2 are :func:`zoo.gaussian.log_normal`)."""
    return log_normal(v, v_p, sigma_p) + log_normal(u, v * v, sigma_u)


def stationary_points(u: float, v_p: float, sigma_p: float, sigma_u: float) -> np.ndarray:
    """Real roots of dF/dv = (v_p - v) / Sigma_p + 2 v (u - v^2) / Sigma_u (Bogacz eq. 8), in
    increasing order: the modes (and the antimode between two modes) of the posterior."""
    roots = np.roots([-2.0 / sigma_u, 0.0, 2.0 * u / sigma_u - 1.0 / sigma_p, v_p / sigma_p])
    real = roots[np.abs(roots.imag) <= 1e-9 * (1.0 + np.abs(roots))].real
    return np.sort(real)


def posterior_curvature(v: Any, u: Any, sigma_p: Any, sigma_u: Any) -> Any:
    """-d^2/dv^2 ln p(u, v) = 1 / Sigma_p + (6 v^2 - 2 u) / Sigma_u (the Laplace precision)."""
    return 1.0 / sigma_p + (6.0 * v * v - 2.0 * u) / sigma_u


def integration_range(
    u: float, v_p: float, sigma_p: float, sigma_u: float, width: float = 12.0
) -> tuple[float, float]:
    """An interval outside which the integrand of p(u) is negligible: outside it the prior is
    below exp(-width^2 / 2) of its peak and v^2 is more than ``width`` noise sds above u."""
    reach = math.sqrt(max(u + width * math.sqrt(sigma_u), 0.0)) + 1e-3
    sd = math.sqrt(sigma_p)
    return min(v_p - width * sd, -reach), max(v_p + width * sd, reach)


def perception_log_evidence(u: float, v_p: float, sigma_p: float, sigma_u: float) -> float:
    """ln p(u) = ln ∫ N(v; v_p, Sigma_p) N(u; v^2, Sigma_u) dv (Bogacz eq. 5), by adaptive
    quadrature with break points at the stationary points of the integrand."""
    lo, hi = integration_range(u, v_p, sigma_p, sigma_u)

    def log_f(v: np.ndarray) -> np.ndarray:
        return log_joint(v, u, v_p, sigma_p, sigma_u)

    value, _ = log_integral(log_f, lo, hi, stationary_points(u, v_p, sigma_p, sigma_u))
    return value


def gaussian_elbo(m: Any, s: Any, u: Any, v_p: Any, sigma_p: Any, sigma_u: Any) -> Any:
    """The ELBO of q(v) = N(m, s^2), in closed form (torch or floats, broadcasting).

    ln p(u, v) is a quartic in v, so E_q needs E v^2 = m^2 + s^2, E v^4 = m^4 + 6 m^2 s^2 + 3 s^4;
    the entropy of q is 1/2 ln(2 pi e s^2)."""
    ev2 = m * m + s * s
    ev4 = m**4 + 6 * m * m * s * s + 3 * s**4
    e_prior = -0.5 * (LOG_2PI + _log(sigma_p) + ((m - v_p) ** 2 + s * s) / sigma_p)
    e_lik = -0.5 * (LOG_2PI + _log(sigma_u) + (u * u - 2 * u * ev2 + ev4) / sigma_u)
    entropy = 0.5 * (LOG_2PI + 1.0) + _log(s)
    return e_prior + e_lik + entropy


def best_gaussian(
    u: float, v_p: float, sigma_p: float, sigma_u: float
) -> tuple[float, float, float]:
    """max over (m, s) of the closed-form Gaussian ELBO: (ELBO, m, s).

    Verified Newton maxima on (m, ln s) (:func:`zoo.optimize.maximize`), started at every
    stationary point of the posterior (with its Laplace sd where the curvature is positive) and
    at the prior; the best is kept."""

    def elbo(t: torch.Tensor) -> torch.Tensor:
        return gaussian_elbo(t[0], t[1].exp(), u, v_p, sigma_p, sigma_u)

    starts = [(v_p, 0.5 * math.log(sigma_p))]
    for v in stationary_points(u, v_p, sigma_p, sigma_u):
        curv = posterior_curvature(v, u, sigma_p, sigma_u)
        starts.append((float(v), -0.5 * math.log(curv) if curv > 0 else 0.5 * math.log(sigma_p)))
    best = maximize(elbo, [np.array(s) for s in starts], what="the best Gaussian ELBO")
    return best.value, float(best.x[0]), float(math.exp(best.x[1]))


def bogacz_gradient_ascent(
    u: float,
    v_p: float,
    sigma_p: float,
    sigma_u: float,
    *,
    phi0: float | None = None,
    dt: float = 0.01,
    duration: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Bogacz's Exercise 2 (§2.2): Euler steps phi <- phi + dt dF/dphi (eqs. 8-9) from
    phi = v_p for ``duration`` time units. Returns the times and phi(t)."""
    steps = round(duration / dt)
    phi = np.empty(steps + 1)
    phi[0] = v_p if phi0 is None else phi0
    for k in range(steps):
        p = phi[k]
        phi[k + 1] = p + dt * ((v_p - p) / sigma_p + (u - p * p) / sigma_u * 2 * p)
    return dt * np.arange(steps + 1), phi


def grid_log_evidence(
    u: torch.Tensor,
    v_p: Any,
    sigma_p: Any,
    sigma_u: Any,
    *,
    cutoff: float = 100.0,
    max_nodes: int = 200_000,
) -> torch.Tensor:
    """ln p(u_i) for every item at once, by the trapezoid rule on one uniform grid in v
    (differentiable in theta = (v_p, Sigma_p, Sigma_u), which may be tensors).

    A coarse pass over :func:`integration_range` finds where any item's integrand is within
    ``cutoff`` nats of its peak; the fine grid spans that region (plus two coarse spacings)
    with spacing 0.4 / sqrt(c), where c bounds the curvature of -ln p(u_i, v) over the whole
    region, so every bump of every integrand is at least 2.5 spacings wide: the trapezoid
    rule's error for such a bump is about 2 exp(-2 pi^2 2.5^2) ~ 1e-53 (see
    :mod:`zoo.models.free_energy.quadrature`), and what lies outside is below exp(-cutoff) of
    the peak. Checked against adaptive quadrature in the tests."""
    vp, sp, su = (float(torch.as_tensor(t).detach()) for t in (v_p, sigma_p, sigma_u))
    u_min, u_max = float(u.min()), float(u.max())
    lo = min(integration_range(u_min, vp, sp, su)[0], integration_range(u_max, vp, sp, su)[0])
    hi = max(integration_range(u_min, vp, sp, su)[1], integration_range(u_max, vp, sp, su)[1])

    def log_f(grid: torch.Tensor, vp: Any, sp: Any, su: Any, u: torch.Tensor = u) -> torch.Tensor:
        return log_joint(grid, u.unsqueeze(-1), vp, sp, su)  # (items, nodes)

    with torch.no_grad():
        coarse = torch.linspace(lo, hi, 401, dtype=u.dtype, device=u.device)
        values = log_f(coarse, vp, sp, su)
        keep = (values >= values.amax(-1, keepdim=True) - cutoff).any(0).nonzero().squeeze(-1)
        first, last = max(int(keep[0]) - 2, 0), min(int(keep[-1]) + 2, coarse.numel() - 1)
        lo, hi = float(coarse[first]), float(coarse[last])
    reach = max(abs(lo), abs(hi))
    curvature = 1.0 / sp + max(6.0 * reach**2 - 2.0 * u_min, 0.0) / su
    nodes = math.ceil((hi - lo) * math.sqrt(curvature) / 0.4) + 1
    if nodes > max_nodes:
        raise ZooError(
            f"the quadrature grid would need {nodes} nodes: theta = ({vp:.3g}, {sp:.3g}, "
            f"{su:.3g}) is too extreme for the exact evidence"
        )
    grid = torch.linspace(lo, hi, nodes, dtype=u.dtype, device=u.device)
    chunk = max(1, 4_000_000 // nodes)  # items per pass: at most ~32 MB of float64 at a time
    parts = [
        log_trapezoid(log_f(grid, v_p, sigma_p, sigma_u, u[i : i + chunk]), (hi - lo) / (nodes - 1))
        for i in range(0, u.shape[0], chunk)
    ]
    return torch.cat(parts)
