"""Maximising a smooth objective the same way on every machine.

An optimiser's stopping status ("ABNORMAL_TERMINATION_IN_LNSRCH") and an absolute gradient
threshold depend on the floating-point kernels of the machine: the same maximum can be
"converged" on one CPU and "failed" on another. The zoo's exact references (type-II maxima,
maximum-likelihood parameters, best ELBOs of a family) are therefore found and *verified*
here by conditions scaled to the problem (Nocedal & Wright, Numerical Optimization, 2nd ed.,
§2.2 and §3.5; Boyd & Vandenberghe, Convex Optimization, §9.5.1):

- Newton's method on the exact Hessian (torch autograd, float64), with a backtracking line
  search and the Hessian's eigenvalues made negative where they are not (a saddle-free step);
- a start is accepted only at a point where the Hessian is negative definite and the Newton
  decrement ``g' (-H)^-1 g / 2`` (the rise that a quadratic model still predicts, in the
  objective's own units: nats) is below ``rtol * (1 + |f|)``;
- several starts; the best verified maximum wins, and none verified is a one-line
  :class:`~zoo.errors.ZooError`.

L-BFGS-B may bring a start close first (its result is a point, never a verdict).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize

from zoo.errors import ZooError

#: accepted Newton decrement, relative to 1 + |f| (f in nats: 1e-9 of a 100-nat objective is
#: 1e-7 nats; Newton's quadratic convergence ends far below that once it is near)
RTOL = 1e-9


@dataclass(frozen=True)
class Maximum:
    """A verified local maximum of an objective."""

    x: np.ndarray
    value: float
    #: g' (-H)^-1 g / 2 at x: how far below the local maximum x may still be, in nats
    decrement: float
    #: eigenvalues of the Hessian at x (all negative)
    hessian_eigenvalues: np.ndarray


def _value_grad_hess(
    fun: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    t = torch.tensor(x, dtype=torch.float64)
    with torch.enable_grad():
        leaf = t.clone().requires_grad_(True)
        value = fun(leaf)
        (grad,) = torch.autograd.grad(value, leaf)
    hess = torch.func.hessian(fun)(t).detach().numpy()
    return float(value.detach()), grad.numpy(), 0.5 * (hess + hess.T)


def _value(fun: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> float:
    with torch.no_grad():
        value = float(fun(torch.as_tensor(x, dtype=torch.float64)))
    return value if math.isfinite(value) else -math.inf


def _ascent_direction(grad: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """Newton's direction -H^-1 g where H < 0; elsewhere the Hessian with its eigenvalues
    replaced by -|lambda| (floored), which is still an ascent direction. Returns the
    direction, the Newton decrement g' d / 2 and whether H was negative definite."""
    evals, evecs = np.linalg.eigh(hess)
    scale = max(float(np.max(np.abs(evals))), 1e-300)
    definite = bool(np.all(evals < 0))
    curv = np.maximum(np.abs(evals), 1e-10 * scale)
    direction = evecs @ ((evecs.T @ grad) / curv)
    return direction, 0.5 * float(grad @ direction), definite


def newton_polish(
    fun: Callable[[torch.Tensor], torch.Tensor], x0: np.ndarray, *, max_iter: int = 100
) -> Maximum | None:
    """Newton's method from ``x0`` with a backtracking (Armijo) line search; the verified
    maximum it reaches, or None where it stops elsewhere (not negative definite, or a
    decrement above ``RTOL``)."""
    x = np.asarray(x0, dtype=float).copy()
    value, grad, hess = _value_grad_hess(fun, x)
    if not (math.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
        return None
    for _ in range(max_iter):
        direction, decrement, definite = _ascent_direction(grad, hess)
        if definite and decrement <= RTOL * (1 + abs(value)):
            # close enough that the objective's rounding may hide the rise: full Newton steps
            # (quadratic convergence) while the decrement shrinks, until the step is
            # negligible beside x
            if np.max(np.abs(direction)) <= 1e-12 * (1 + np.max(np.abs(x))):
                break
            t_value, t_grad, t_hess = _value_grad_hess(fun, x + direction)
            if not np.all(np.isfinite(t_hess)):
                break
            _, t_decrement, t_definite = _ascent_direction(t_grad, t_hess)
            if not (t_definite and t_decrement < decrement):
                break
            x, value, grad, hess = x + direction, t_value, t_grad, t_hess
            continue
        step, accepted = 1.0, False
        while step > 2.0**-50:
            trial = x + step * direction
            new = _value(fun, trial)
            if new >= value + 1e-4 * step * 2 * decrement:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        x = trial
        value, grad, hess = _value_grad_hess(fun, x)
        if not (math.isfinite(value) and np.all(np.isfinite(hess))):
            return None
    direction, decrement, definite = _ascent_direction(grad, hess)
    if not definite or decrement > RTOL * (1 + abs(value)):
        return None
    return Maximum(x, value, decrement, np.linalg.eigvalsh(hess))


def maximize(
    fun: Callable[[torch.Tensor], torch.Tensor],
    starts: Iterable[np.ndarray],
    *,
    what: str,
    prefit: bool = True,
) -> Maximum:
    """The best verified local maximum of ``fun`` (a torch function of one float64 vector)
    over several ``starts``. ``prefit`` runs L-BFGS-B from each start first (its stopping
    status is ignored; only its point is used). Raises a one-line :class:`ZooError` naming
    ``what`` when no start ends at a verified maximum."""
    best: Maximum | None = None
    tried = 0
    for start in starts:
        tried += 1
        x = np.asarray(start, dtype=float)
        if prefit:
            x = _lbfgs_point(fun, x)
        found = newton_polish(fun, x)
        if found is not None and (best is None or found.value > best.value):
            best = found
    if best is None:
        raise ZooError(
            f"{what}: no verified maximum from {tried} starting point(s) (the Hessian is not "
            "negative definite or Newton's method does not settle there)"
        )
    return best


def _lbfgs_point(fun: Callable[[torch.Tensor], torch.Tensor], x0: np.ndarray) -> np.ndarray:
    """L-BFGS-B's last point from ``x0`` (whatever its status), or ``x0`` if it is worse."""

    def negative(x: np.ndarray) -> tuple[float, np.ndarray]:
        with torch.enable_grad():
            t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            value = -fun(t)
            (grad,) = torch.autograd.grad(value, t)
        v = float(value.detach())
        if not math.isfinite(v):
            return math.inf, np.zeros_like(x)
        return v, grad.numpy()

    res = optimize.minimize(
        negative, x0, jac=True, method="L-BFGS-B", options={"maxiter": 20_000, "maxcor": 30}
    )
    return res.x if _value(fun, res.x) >= _value(fun, x0) else x0
