"""One-dimensional log-evidence integrals, done exactly enough to be called exact.

A model with a single scalar latent v has log evidence ``log ∫ exp(log_f(v)) dv`` with
``log_f(v) = log p(x, v)``. Two tools, both working in log space so that evidences of
``exp(-1000)`` cost nothing in accuracy:

- :func:`log_integral`: adaptive Gauss–Kronrod quadrature (QUADPACK ``qagp`` through
  :func:`scipy.integrate.quad`) with break points at the places the integrand peaks, after
  scaling by its maximum. Accurate to ~1e-12 relative for the smooth, peaked integrands of a
  posterior; one scalar integral per call.
- :func:`log_trapezoid`: the trapezoid rule on a uniform grid, vectorised over many integrals
  at once (one per data point) and differentiable in torch. For an integrand that is analytic
  in a strip around the real axis and negligible at the ends of the grid, the trapezoid rule
  converges geometrically (Trefethen & Weideman 2014, "The exponentially convergent trapezoidal
  rule", SIAM Review 56, §5): for a Gaussian bump of standard deviation s and spacing h the
  relative error is about ``2 exp(-2 π² s² / h²)``, below 1e-30 already at ``h = s / 2``.

References: Piessens et al. (1983), *QUADPACK*; Trefethen & Weideman (2014), SIAM Review 56,
385-458.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from scipy import integrate


def log_integral(
    log_f: Callable[[np.ndarray], np.ndarray],
    lo: float,
    hi: float,
    points: Iterable[float] = (),
    *,
    epsrel: float = 1e-12,
    limit: int = 500,
) -> tuple[float, float]:
    """``log ∫_lo^hi exp(log_f(v)) dv`` by adaptive quadrature, and a bound on its error.

    ``points`` are break points (the modes of the integrand, where its mass is) inside
    ``(lo, hi)``; the integrand is divided by its largest value at those points and on a coarse
    grid first, so the integral QUADPACK sees is of order one. Returns the log integral and
    QUADPACK's estimate of the absolute error of the log (the relative error of the integral).
    """
    if not hi > lo:
        raise ValueError(f"empty interval [{lo}, {hi}]")
    inside = sorted({float(p) for p in points if lo < p < hi})
    probe = np.concatenate([np.linspace(lo, hi, 2001), np.asarray(inside, dtype=float)])
    shift = float(np.max(log_f(probe)))
    if not math.isfinite(shift):
        raise ValueError("the integrand is not finite on the interval")

    def scaled(v: float) -> float:
        return float(np.exp(log_f(np.asarray([v]))[0] - shift))

    value, abserr = integrate.quad(
        scaled, lo, hi, points=inside or None, epsabs=0.0, epsrel=epsrel, limit=limit
    )
    if not value > 0:
        raise ValueError("the integral vanished: the integrand has no mass on the interval")
    return shift + math.log(value), abserr / value


def log_trapezoid(log_values: torch.Tensor, spacing: float) -> torch.Tensor:
    """``log ∫ exp(log_f)`` by the trapezoid rule, from log-integrand values on a uniform grid
    of the given spacing along the last dimension (one integral per leading index)."""
    n = log_values.shape[-1]
    weights = torch.full((n,), math.log(spacing), dtype=log_values.dtype, device=log_values.device)
    weights[0] = weights[-1] = math.log(spacing / 2)
    return torch.logsumexp(log_values + weights, dim=-1)
