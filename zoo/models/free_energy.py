"""The free-energy brain: perception and learning as maximising the ELBO.

Follows Bogacz (2017), "A tutorial on the free-energy framework for modelling perception and
learning", J. Math. Psych. 76, 198-211; Friston (2005), "A theory of cortical responses",
Phil. Trans. R. Soc. B 360, 815-836; Friston (2010), "The free-energy principle: a unified brain
theory?", Nat. Rev. Neurosci. 11, 127-138; Rao & Ballard (1999), "Predictive coding in the
visual cortex", Nat. Neurosci. 2, 79-87.

The brain holds a generative model p(v) p(u | v) of its world and forms a recognition density
q(v) by minimising the free energy, the negative of Bogacz's F (eq. 32),

    F[q] = E_q[ln p(u, v) - ln q(v)] = ln p(u) - KL(q || p(v | u))          (Bogacz eqs. 33, 35)

which is the ELBO. Three registered models:

``free-energy-perception`` (Bogacz §2.1-§2.2, §3). A food item of size v ~ N(v_p, Sigma_p)
reflects light u | v ~ N(g(v), Sigma_u) with g(v) = v^2 (eqs. 1-3; Sigma are variances). The
defaults are Exercise 1 (§2.1): u = 2, v_p = 3, Sigma_p = 1, Sigma_u = 1. Exact:

- ln p(u) = ln ∫ N(v; v_p, Sigma_p) N(u; v^2, Sigma_u) dv by adaptive quadrature, with break
  points at the real roots of dF/dv = 0 (Bogacz eq. 8 set to zero, a cubic in v);
- the ELBO of a Gaussian q = N(m, s^2) in closed form: ln p(u, v) is a quartic polynomial in v,
  so E_q needs only the moments E v^2 = m^2 + s^2 and E v^4 = m^4 + 6 m^2 s^2 + 3 s^4; its
  maximum over (m, s) (the best Gaussian recognition density) is a smooth two-parameter problem
  solved deterministically (:func:`best_gaussian`).

Guides: ``gaussian`` (AutoNormal on the scalar v: the whole Gaussian family); ``point-mass``
(AutoDelta: Bogacz's own phi, found by gradient ascent on F = ln p(u, phi), eqs. 6-9 and
Exercise 2); ``spline-flow`` (a monotonic rational-quadratic spline, Durkan et al. 2019, then an
affine map, pushing N(0, 1) forward: a richer family that can bend to the skewed posterior).

The point mass is not a member of any family the ELBO bounds: its differential entropy is -inf,
and Bogacz's eq. 34 drops it as a constant C_1. What it maximises, ln p(u, phi), is the log joint
at the MAP: it can exceed ln p(u) (by ln p(phi | u), the posterior density at phi), so its
"ELBO" and "gap" are not a bound and not a KL. Every report of it says so.

``free-energy-learning`` (Bogacz §2.4, eqs. 15-21, and §3, eq. 35: learning by maximising F).
N food items with sizes v_i from the world's prior give lights u_i; theta = (v_p, Sigma_p,
Sigma_u) are ``pyro.param`` s learnt together with a Gaussian recognition density per item
(a data plate, mini-batch capable: ``--batch-size 1`` is Bogacz's item-by-item learning). The
exact ln p(u | theta) is a sum of N one-dimensional integrals, done together by the trapezoid
rule on one grid (:func:`grid_log_evidence`, exact to ~1e-12 per item, checked against
adaptive quadrature in the tests). Peers: the maximum-likelihood theta (the exact marginal
likelihood maximised by L-BFGS) and the variational-EM optimum (the closed-form Gaussian ELBO
maximised jointly over theta and every item's (m_i, s_i)). ``point-mass`` learns theta with
Bogacz's F = sum ln p(u_i, phi_i), as the tutorial does. Without the entropy term F rewards
overconfidence: it is unbounded above (Sigma_p -> 0 with every phi_i = v_p), and from the
tutorial's start SVI settles where every phi_i ~ sqrt(u_i) explains its light almost exactly
and Sigma_u collapses (to 0.023 at the defaults, against 0.5 true and 0.84 by ML). Bogacz
(end of §2.4) and Friston (2005) impose a minimum of 1 on the variances, for the convergence of
the prediction-error dynamics; the missing entropy is a second reason such a floor is needed.

``predictive-coding`` (Bogacz §4.2, eqs. 51-56; Rao & Ballard 1999). A linear-Gaussian
hierarchy with two latent layers per data point,

    z2 ~ N(0, I_k2),    z1 | z2 ~ N(W2 z2, s1^2 I_k1),    x | z1 ~ N(W1 z1, s0^2 I_D),

with fixed seeded weights W1, W2 and simulated x. Exact: the evidence
x ~ N(0, W1 W2 W2^T W1^T + s1^2 W1 W1^T + s0^2 I); the posterior of (z1, z2) given x is
Gaussian with one precision Lambda for every point. Guides: ``mean-field`` (AutoNormal per point;
its best ELBO is ln p(x) - N/2 (sum_i ln Lambda_ii - ln |Lambda|)) and ``full-rank``: a full
covariance per point written top-down, q(z2) q(z1 | z2) with q(z1 | z2) linear-Gaussian, which
is every Gaussian on (z1, z2) and so contains the posterior (gap 0). AutoMultivariateNormal would
be one joint Gaussian over all N points' latents: it cannot sit under a subsampled data plate,
and it has O((N k)^2) parameters where the per-point family needs N k (k + 1) / 2 + N k.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.transforms.spline import _monotonic_rational_spline
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from torch.distributions import AffineTransform, Transform

from zoo.data import as_float_array, read_numeric_table
from zoo.errors import DataError, ZooError
from zoo.model import (
    Option,
    Training,
    ZooModel,
    at_least,
    finite_float,
    positive_float,
    positive_int,
    seed_value,
)
from zoo.optimize import maximize
from zoo.quadrature import log_integral, log_trapezoid
from zoo.registry import register
from zoo.run_view import RunView

LOG_2PI = math.log(2 * math.pi)

#: Bogacz (2017), §2.1, Exercise 1: observed light, prior mean and variance, sensory variance
EXERCISE_1 = {"u": 2.0, "v_p": 3.0, "sigma_p": 1.0, "sigma_u": 1.0}

NOT_A_BOUND = (
    "log joint at the point estimate, ln p(u, phi) (Bogacz's F, eqs. 6 and 34, without the "
    "entropy term, which is -inf for a point mass): not a lower bound on ln p(u); its 'gap' "
    "is -ln p(phi | u), not a KL divergence"
)


#: the variances (Sigma_p, Sigma_u) the quadrature of the learning model's evidence serves
VARIANCE_RANGE = (1e-6, 1e6)


def _positive(value: float, flag: str) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise DataError(f"{flag} must be a positive number, got {value!r}")
    return float(value)


def _finite(value: float, flag: str) -> float:
    if not math.isfinite(value):
        raise DataError(f"{flag} must be a finite number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Perception (Bogacz §2.1-§2.2): v ~ N(v_p, Sigma_p), u | v ~ N(v^2, Sigma_u)
# --------------------------------------------------------------------------------------------
def _log(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.log(value)
    return np.log(value) if isinstance(value, np.ndarray) else math.log(value)


def log_normal(x: Any, mean: Any, var: Any) -> Any:
    """ln f(x; mean, var), Bogacz's eq. 2 (var is a variance)."""
    return -0.5 * (LOG_2PI + _log(var) + (x - mean) ** 2 / var)


def log_joint(v: Any, u: Any, v_p: Any, sigma_p: Any, sigma_u: Any) -> Any:
    """ln p(v) + ln p(u | v) with g(v) = v^2: Bogacz's F of eq. 7, constant included."""
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
    :mod:`zoo.quadrature`), and what lies outside is below exp(-cutoff) of the peak. Checked
    against adaptive quadrature in the tests."""
    vp, sp, su = (float(torch.as_tensor(t).detach()) for t in (v_p, sigma_p, sigma_u))
    u_min, u_max = float(u.min()), float(u.max())
    lo = min(integration_range(u_min, vp, sp, su)[0], integration_range(u_max, vp, sp, su)[0])
    hi = max(integration_range(u_min, vp, sp, su)[1], integration_range(u_max, vp, sp, su)[1])

    def log_f(grid: torch.Tensor, vp: Any, sp: Any, su: Any, u: torch.Tensor = u) -> torch.Tensor:
        prior = log_normal(grid, vp, sp)  # one row, shared by every item
        return prior - 0.5 * (LOG_2PI + _log(su)) - (u.unsqueeze(-1) - grid * grid) ** 2 / (2 * su)

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


class ScalarSpline(Transform):
    """A monotonic rational-quadratic spline on [-bound, bound], the identity outside (Durkan,
    Bekasov, Murray & Papamakarios 2019, "Neural spline flows"), acting on scalars.

    Built from unconstrained tensors (``pyro.param`` s): bin widths and heights through a
    softmax, interior knot slopes through a softplus, as in :class:`pyro.distributions.
    transforms.Spline`, whose spline routine it calls."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(
        self,
        widths: torch.Tensor,
        heights: torch.Tensor,
        slopes: torch.Tensor,
        bound: float,
    ) -> None:
        super().__init__(cache_size=1)
        self.params = (
            F.softmax(widths, -1).unsqueeze(0),
            F.softmax(heights, -1).unsqueeze(0),
            F.softplus(slopes).unsqueeze(0),
        )
        self.bound = bound

    def _spline(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w, h, d = self.params
        y, log_det = _monotonic_rational_spline(
            x.unsqueeze(-1), w, h, d, None, inverse=inverse, bound=self.bound
        )
        return y.squeeze(-1), log_det.squeeze(-1)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        y, log_det = self._spline(x, inverse=False)
        self._last = (x, y, log_det)  # ln |T'(x)|, for log_abs_det_jacobian
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x, log_det = self._spline(y, inverse=True)
        self._last = (x, y, -log_det)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        last = getattr(self, "_last", None)
        if last is not None and (x is last[0] or y is last[1]):
            return last[2]
        return self._spline(x, inverse=False)[1]


#: unconstrained slope whose softplus plus the spline's floor of 1e-3 is 1 (identity spline)
IDENTITY_SLOPE = math.log(math.expm1(1.0 - 1e-3))


# --------------------------------------------------------------------------------------------
# Linear-Gaussian hierarchy (Bogacz §4.2; Rao & Ballard 1999)
# --------------------------------------------------------------------------------------------
def gaussian_log_density(x: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """ln N(x_n | 0, cov) for every row x_n, through the Cholesky factor: the one formula."""
    chol = torch.linalg.cholesky(cov)
    alpha = torch.linalg.solve_triangular(chol, x.T, upper=False)  # (D, N)
    log_det = 2.0 * chol.diagonal().log().sum()
    return -0.5 * (x.shape[-1] * LOG_2PI + log_det + alpha.pow(2).sum(0))


def hierarchy_covariance(w1: torch.Tensor, w2: torch.Tensor, s1: float, s0: float) -> torch.Tensor:
    """Cov x = W1 W2 W2^T W1^T + s1^2 W1 W1^T + s0^2 I (z2, then z1 | z2, then x | z1)."""
    a = w1 @ w2
    eye = torch.eye(w1.shape[0], dtype=w1.dtype, device=w1.device)
    return a @ a.T + s1**2 * w1 @ w1.T + s0**2 * eye


def hierarchy_precision(w1: torch.Tensor, w2: torch.Tensor, s1: float, s0: float) -> torch.Tensor:
    """Posterior precision Lambda of (z1, z2) given x: the Hessian of -ln p(x, z1, z2),

    [[I / s1^2 + W1^T W1 / s0^2,  -W2 / s1^2          ],
     [-W2^T / s1^2,                I + W2^T W2 / s1^2 ]]   (the same for every data point)."""
    k1, k2 = w2.shape
    eye1 = torch.eye(k1, dtype=w1.dtype, device=w1.device)
    eye2 = torch.eye(k2, dtype=w1.dtype, device=w1.device)
    top = torch.cat([eye1 / s1**2 + w1.T @ w1 / s0**2, -w2 / s1**2], 1)
    bottom = torch.cat([-w2.T / s1**2, eye2 + w2.T @ w2 / s1**2], 1)
    return torch.cat([top, bottom], 0)


def hierarchy_posterior_means(
    x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, s0: float, precision: torch.Tensor
) -> torch.Tensor:
    """E[(z1, z2) | x_n] = Lambda^{-1} (W1^T x_n / s0^2, 0), one row per point."""
    k2 = w2.shape[1]
    rhs = torch.cat([x @ w1 / s0**2, x.new_zeros(x.shape[0], k2)], 1)
    chol = torch.linalg.cholesky(precision)
    return torch.cholesky_solve(rhs.T, chol).T


def mean_field_gap(precision: torch.Tensor) -> float:
    """KL(q* || p) = 1/2 (sum_i ln Lambda_ii - ln |Lambda|) of the best fully factorised
    Gaussian q*_i = N(m_i, 1 / Lambda_ii) (Bishop, PRML §10.1.2), per data point."""
    log_det = 2.0 * torch.linalg.cholesky(precision).diagonal().log().sum()
    return float(0.5 * (precision.diagonal().log().sum() - log_det))


def gaussian_kl_to_posterior(
    mean: torch.Tensor, cov: torch.Tensor, post_mean: torch.Tensor, precision: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_n, cov_n) || N(post_mean_n, Lambda^{-1})) for every point n, in closed form."""
    k = precision.shape[-1]
    diff = post_mean - mean
    trace = (precision * cov).sum((-1, -2))
    maha = ((diff @ precision) * diff).sum(-1)
    log_det_q = torch.logdet(cov)
    log_det_prec = torch.logdet(precision)
    return 0.5 * (trace + maha - k - log_det_q - log_det_prec)


# --------------------------------------------------------------------------------------------
# Figures shared by the three models
# --------------------------------------------------------------------------------------------
def free_energy_axes(ax: Any, history: Any, floor_label: str, *, bound: bool = True) -> None:
    """The free energy -ELBO over SVI steps, with -ln p (the floor a true ELBO cannot cross)."""
    steps = history["step"].to_numpy()
    elbo = history["elbo"].to_numpy(dtype=float)
    label = "free energy  -ELBO" if bound else "-ln p(u, phi)  (no entropy: not a bound)"
    train = history["train_elbo"].to_numpy(dtype=float) if "train_elbo" in history else None
    if train is not None and np.isfinite(train).any():
        ax.plot(steps, -train, color="C0", alpha=0.25, lw=0.6, label="training estimate")
    ax.plot(steps, -elbo, color="C0", alpha=0.5, lw=0.8)
    window = max(1, len(elbo) // 20)  # a running mean over ~5% of the run tames the MC noise
    smooth = pd.Series(-elbo).rolling(window, min_periods=1, center=True).mean().to_numpy()
    ax.plot(steps, smooth, color="C0", lw=2, label=label + f" (running mean of {window})")
    log_ev = history["log_evidence"].to_numpy(dtype=float)
    if np.isfinite(log_ev).any():
        ax.plot(steps, -log_ev, "--", color="k", label=floor_label)
    finite = np.concatenate([-elbo[len(elbo) // 10 :], -log_ev[np.isfinite(log_ev)]])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = finite.min(), finite.max()
        pad = 0.15 * (hi - lo) + 1e-3 * max(1.0, abs(hi))
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("step (SVI 'time')")
    ax.set_ylabel("nats")
    ax.legend(loc="upper right", fontsize=8)


# --------------------------------------------------------------------------------------------
# free-energy-perception
# --------------------------------------------------------------------------------------------
@register
class FreeEnergyPerception(ZooModel):
    name = "free-energy-perception"
    title = "The free-energy brain: perception"
    application = "Free-energy principle"
    reference = "Bogacz (2017), J. Math. Psych. 76, §2.1-§3 (Exercises 1-2); Friston (2005, 2010)"
    options = (
        Option("u", finite_float, EXERCISE_1["u"], "observed light intensity u (Exercise 1: 2)"),
        Option(
            "v_p", finite_float, EXERCISE_1["v_p"], "prior mean v_p of the size (Exercise 1: 3)"
        ),
        Option(
            "sigma_p",
            positive_float,
            EXERCISE_1["sigma_p"],
            "prior variance Sigma_p (Exercise 1: 1)",
        ),
        Option(
            "sigma_u",
            positive_float,
            EXERCISE_1["sigma_u"],
            "sensory noise variance Sigma_u (Exercise 1: 1)",
        ),
        Option("flow_bins", at_least(2), 8, "bins of the spline-flow guide"),
    )
    guides = ("gaussian", "point-mass", "spline-flow")
    default_guide = "gaussian"
    # 1-D latent: 32 vectorized particles cost little and cut the gradient noise; the step size
    # decays 50-fold so the last steps polish (measured: the Gaussian ends ~2e-4 nats below the
    # best Gaussian; the flow closes ~87% of the Gaussian's gap)
    training = Training(steps=1000, lr=0.03, lr_final_factor=0.02, quick_steps=500, particles=32)
    data_plate = None
    leaderboard = ({"guide": "gaussian"}, {"guide": "spline-flow"}, {"guide": "point-mass"})

    def setup(self, data: Any, **opts: Any) -> None:
        if data is not None:
            raise DataError("free-energy-perception takes no data file; set --u instead")
        self.u_value = _finite(opts["u"], "--u")
        self.v_p_value = _finite(opts["v_p"], "--v-p")
        self.sigma_p_value = _positive(opts["sigma_p"], "--sigma-p")
        self.sigma_u_value = _positive(opts["sigma_u"], "--sigma-u")
        if opts["flow_bins"] < 2:
            raise DataError("--flow-bins must be at least 2")
        self.flow_bins = int(opts["flow_bins"])
        self.u = self.tensor(self.u_value)
        self.v_p = self.tensor(self.v_p_value)
        self.num_data = 1
        self.flow_bound = 5.0  # N(0, 1) puts 6e-7 of its mass outside [-5, 5]

    @property
    def theta(self) -> tuple[float, float, float, float]:
        return self.u_value, self.v_p_value, self.sigma_p_value, self.sigma_u_value

    # -- the model and its guides ----------------------------------------------------------------
    def model(self, subsample_size: int | None = None) -> None:
        v = pyro.sample("v", dist.Normal(self.v_p, math.sqrt(self.sigma_p_value)))
        pyro.sample("u", dist.Normal(v * v, math.sqrt(self.sigma_u_value)), obs=self.u)

    def flow_distribution(self) -> dist.TransformedDistribution:
        """q(v): N(0, 1) through a rational-quadratic spline, then v = loc + scale * (.)."""
        k = self.flow_bins
        zeros = self.tensor(np.zeros(k))
        _, mean, sd = self.best_gaussian()  # the start: the best Gaussian (identity spline)
        loc = pyro.param("flow_loc", lambda: self.tensor(mean))
        scale = pyro.param("flow_scale", lambda: self.tensor(sd), constraint=constraints.positive)
        widths = pyro.param("flow_widths", lambda: zeros.clone())
        heights = pyro.param("flow_heights", lambda: zeros.clone())
        slopes = pyro.param("flow_slopes", lambda: self.tensor(np.full(k - 1, IDENTITY_SLOPE)))
        base = dist.Normal(self.tensor(0.0), self.tensor(1.0))
        spline = ScalarSpline(widths, heights, slopes, self.flow_bound)
        affine = AffineTransform(loc, scale, cache_size=1)  # sampled v maps back without solving
        return dist.TransformedDistribution(base, [spline, affine])

    def flow_guide(self, subsample_size: int | None = None) -> None:
        """The spline flow. An identity spline makes it the Gaussian N(loc, scale^2), so the
        family contains the Gaussian family; it starts at the best Gaussian and climbs."""
        pyro.sample("v", self.flow_distribution())

    def build_guide(self, name: str):
        start = init_to_value(values={"v": self.v_p.clone()})  # Bogacz: phi(0) = v_p
        if name == "gaussian":
            return AutoNormal(
                self.model, init_loc_fn=start, init_scale=math.sqrt(self.sigma_p_value)
            )
        if name == "point-mass":
            return AutoDelta(self.model, init_loc_fn=start)
        if name == "spline-flow":
            return self.flow_guide
        return super().build_guide(name)

    # -- what is known exactly -------------------------------------------------------------------
    @cached_property
    def _exact(self) -> tuple[float, tuple[float, float, float]]:
        # nothing in this model is learnt: compute the exact numbers once
        return perception_log_evidence(*self.theta), best_gaussian(*self.theta)

    def log_evidence(self) -> float:
        return self._exact[0]

    def best_gaussian(self) -> tuple[float, float, float]:
        """(ELBO, mean, sd) of the best Gaussian recognition density."""
        return self._exact[1]

    def best_elbo(self, guide: str) -> float | None:
        if guide == "gaussian":
            return self.best_gaussian()[0]
        return None  # the flow's best is not known in closed form; the point mass has no ELBO

    def posterior_on_grid(self, num: int = 4001) -> tuple[np.ndarray, np.ndarray]:
        """The exact posterior density p(v | u) on a grid spanning its mass."""
        u, v_p, sp, su = self.theta
        modes = stationary_points(u, v_p, sp, su)
        grid = np.linspace(
            min(-0.5, *(modes - 1.5)), max(v_p + 3 * math.sqrt(sp), *(modes + 1.5)), num
        )
        return grid, np.exp(log_joint(grid, u, v_p, sp, su) - self.log_evidence())

    def posterior_moments(self) -> dict[str, float]:
        """Mean, sd and mode of the exact posterior (quadrature on a fine grid)."""
        u, v_p, sp, su = self.theta
        lo, hi = integration_range(u, v_p, sp, su)
        grid = np.linspace(lo, hi, 400_001)
        dens = np.exp(log_joint(grid, u, v_p, sp, su) - self.log_evidence())
        mean = float(np.trapezoid(grid * dens, grid))
        var = float(np.trapezoid((grid - mean) ** 2 * dens, grid))
        modes = stationary_points(u, v_p, sp, su)
        mode = float(modes[np.argmax(log_joint(modes, u, v_p, sp, su))])
        return {"mean": mean, "sd": math.sqrt(var), "mode": mode}

    # -- reading a fitted guide --------------------------------------------------------------------
    def guide_kind(self, guide: Any) -> str:
        if isinstance(guide, AutoDelta):
            return "point-mass"
        if isinstance(guide, AutoNormal):
            return "gaussian"
        if getattr(guide, "__func__", None) is FreeEnergyPerception.flow_guide:
            return "spline-flow"
        raise ZooError(f"unknown guide {guide!r}")

    @torch.no_grad()
    def recognition_log_density(self, guide: Any, v: np.ndarray) -> np.ndarray | None:
        """ln q(v) of a fitted guide on the points v (None for the point mass)."""
        kind = self.guide_kind(guide)
        grid = self.tensor(v)
        if kind == "gaussian":
            q = dist.Normal(guide.locs.v.detach(), guide.scales.v.detach())
        elif kind == "spline-flow":
            q = self.flow_distribution()
        else:
            return None
        return q.log_prob(grid).cpu().numpy()

    @torch.no_grad()
    def flow_elbo(self, nodes: int = 200_001) -> float:
        """The spline flow's ELBO by quadrature, free of Monte Carlo error: with v = T(e),
        e ~ N(0, 1), ELBO = ∫ N(e) [ln p(u, T(e)) + ln |T'(e)|] de + 1/2 ln(2 pi e), by the
        trapezoid rule on [-10, 10] (the spline is piecewise rational, so the error is O(h^2):
        ~1e-9 at h = 1e-4)."""
        q = self.flow_distribution()
        eps = torch.linspace(-10.0, 10.0, nodes, dtype=torch.float64, device=self.device)
        v, log_det = eps, torch.zeros_like(eps)
        for transform in q.transforms:
            y = transform(v)
            log_det = log_det + transform.log_abs_det_jacobian(v, y)
            v = y
        u, v_p, sp, su = self.theta
        integrand = log_normal(eps, 0.0, 1.0).exp() * (log_joint(v, u, v_p, sp, su) + log_det)
        return float(torch.trapezoid(integrand, eps)) + 0.5 * (LOG_2PI + 1.0)

    def exact_elbo(self, guide: Any, guide_name: str) -> float | None:
        """The Gaussian guide's ELBO in closed form, the spline flow's by quadrature; the
        point mass has none (not a bound)."""
        kind = self.guide_kind(guide)
        if kind == "gaussian":
            m, s = guide.locs.v.item(), guide.scales.v.item()
            return float(gaussian_elbo(m, s, *self.theta))
        return self.flow_elbo() if kind == "spline-flow" else None

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        u, v_p, sp, su = self.theta
        log_ev = self.log_evidence()
        best, best_m, best_s = self.best_gaussian()
        _, phi = bogacz_gradient_ascent(*self.theta)
        kind = self.guide_kind(guide)
        out: dict[str, Any] = {
            "values": {"u": u, "v_p": v_p, "Sigma_p": sp, "Sigma_u": su, "g(v)": "v^2"},
            "log_evidence": log_ev,
            "posterior": self.posterior_moments(),
            "best_gaussian": {
                "elbo": best,
                "mean": best_m,
                "sd": best_s,
                "gap": log_ev - best,
            },
            "bogacz_exercise_2": {
                "phi_after_5_time_units": float(phi[-1]),
                "log_joint": float(log_joint(phi[-1], u, v_p, sp, su)),
                "method": "Euler, dt = 0.01, from phi = v_p (Bogacz §2.2, eqs. 8-9)",
            },
            "guide": kind,
            "elbo_is_a_bound": kind != "point-mass",
        }
        if kind == "gaussian":
            m, s = guide.locs.v.item(), guide.scales.v.item()
            elbo = float(gaussian_elbo(m, s, u, v_p, sp, su))
            out["fitted"] = {
                "mean": m,
                "sd": s,
                "elbo_closed_form": elbo,
                "gap_closed_form": log_ev - elbo,
                "below_best_gaussian": best - elbo,
            }
        elif kind == "spline-flow":
            elbo = self.flow_elbo()
            out["fitted"] = {
                "elbo_quadrature": elbo,
                "gap_quadrature": log_ev - elbo,
                "above_best_gaussian": elbo - best,
            }
        else:
            phi_fit = float(guide.median()["v"])
            lj = float(log_joint(phi_fit, u, v_p, sp, su))
            out["objective"] = NOT_A_BOUND
            out["fitted"] = {
                "phi": phi_fit,
                "log_joint": lj,
                "log_joint_minus_log_evidence": lj - log_ev,
                "posterior_density_at_phi": math.exp(lj - log_ev),
            }
        return out

    # -- figures -----------------------------------------------------------------------------------
    def plots(self, run: RunView) -> dict[str, Any]:
        from zoo.plots import plt

        kind = self.guide_kind(run.guide)
        fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
        self.draw_densities(ax, {f"fitted {kind}": run})
        ax.set_title(f"exact posterior vs the {kind} recognition density")
        fe, axes = plt.subplots(1, 2, figsize=(10.4, 4.0), constrained_layout=True)
        free_energy_axes(axes[0], run.history, "-ln p(u)", bound=kind != "point-mass")
        axes[0].set_title(f"{kind} guide: free energy over SVI steps")
        self.draw_bogacz_dynamics(axes[1])
        return {"posterior": fig, "free_energy": fe}

    def draw_densities(self, ax: Any, runs: dict[str, RunView]) -> None:
        """Exact posterior, prior, best Gaussian and the fitted guides of the given runs
        (:class:`~zoo.run_view.RunView` by label) on one axis."""
        _, v_p, sp, _ = self.theta
        grid, post = self.posterior_on_grid()
        ax.fill_between(grid, post, color="0.85", label="exact posterior p(v | u)")
        ax.plot(grid, np.exp(log_normal(grid, v_p, sp)), ":", color="0.4", label="prior p(v)")
        _, m, s = self.best_gaussian()
        ax.plot(grid, np.exp(log_normal(grid, m, s * s)), "--", color="C1", label="best Gaussian")
        for k, (label, run) in enumerate(runs.items()):
            with run.active():  # the flow reads its parameters from Pyro's param store
                log_q = self.recognition_log_density(run.guide, grid)
                median = run.guide.median() if log_q is None else None
            color = f"C{[0, 2, 3][k % 3]}"
            if log_q is None:
                phi = float(median["v"])
                ax.axvline(phi, color=color, lw=2, label=f"{label}: phi = {phi:.3f}")
            else:
                ax.plot(grid, np.exp(log_q), color=color, lw=1.8, label=label)
        ax.set_xlabel("food size v")
        ax.set_ylabel("density")
        ax.set_xlim(grid[0], grid[-1])
        ax.legend(loc="upper left", fontsize=8)

    def draw_bogacz_dynamics(self, ax: Any) -> None:
        """Bogacz's Exercise 2 (his Fig. 2a): phi(t) by Euler steps on F, and -F(phi(t))."""
        u, v_p, sp, su = self.theta
        times, phi = bogacz_gradient_ascent(*self.theta)
        ax.plot(times, phi, color="C2", label="phi(t)")
        ax.axhline(self.posterior_moments()["mode"], color="C2", ls=":", label="posterior mode")
        ax.set_xlabel("time (Bogacz's Exercise 2: Euler steps, dt = 0.01)")
        ax.set_ylabel("phi")
        twin = ax.twinx()
        neg_f = -log_joint(phi, u, v_p, sp, su)
        twin.plot(times, neg_f, color="C3", label="-F = -ln p(u, phi)")
        twin.axhline(-self.log_evidence(), ls="--", color="k", label="-ln p(u)")
        twin.set_ylim(neg_f.min() - 0.5, neg_f.min() + 4.0)
        twin.set_ylabel("nats")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(0.0, times[-1])
        ax.set_title(f"gradient ascent on F: phi(5) = {phi[-1]:.4f}")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)


# --------------------------------------------------------------------------------------------
# free-energy-learning
# --------------------------------------------------------------------------------------------
def _theta_from_unconstrained(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return p[0], p[1].exp(), p[2].exp()


def max_marginal_likelihood(u: torch.Tensor, start: tuple[float, float, float]) -> dict[str, Any]:
    """The theta = (v_p, Sigma_p, Sigma_u) maximising the exact ln p(u | theta) =
    sum_i ln ∫ p(v) p(u_i | v) dv, by L-BFGS on (v_p, ln Sigma_p, ln Sigma_u), with standard
    errors from the inverse Hessian of -ln p(u | theta) in those coordinates."""

    def neg(t: torch.Tensor) -> torch.Tensor:
        return -grid_log_evidence(u, *_theta_from_unconstrained(t)).sum()

    x0 = np.array([start[0], math.log(start[1]), math.log(start[2])])
    top = maximize(lambda t: -neg(t), [x0], what="the maximum-likelihood theta")
    t = torch.tensor(top.x, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(neg, t).numpy()
    se = np.sqrt(np.diag(np.linalg.inv(hess)))
    v_p, sp, su = (float(x) for x in _theta_from_unconstrained(t))
    return {
        "v_p": v_p,
        "Sigma_p": sp,
        "Sigma_u": su,
        "log_evidence": top.value,
        "se_v_p": float(se[0]),
        "se_log_Sigma_p": float(se[1]),
        "se_log_Sigma_u": float(se[2]),
    }


def best_gaussians(
    u: torch.Tensor, theta: tuple[float, float, float]
) -> tuple[float, torch.Tensor]:
    """Total and per-item best Gaussian ELBO at a fixed theta: every item's (m_i, s_i) maximised
    (the items are independent given theta). Started at the positive and the negative root of
    v^2 = u_i (each with its Laplace sd); the better of the two is kept per item."""
    vp, sp, su = theta
    n = u.shape[0]
    best = torch.full((n,), -math.inf, dtype=torch.float64)
    for sign in (1.0, -1.0):
        m0 = sign * u.clamp(min=1e-2).sqrt()
        curv = posterior_curvature(m0, u, sp, su).clamp(min=1.0 / sp)
        x0 = torch.cat([m0, -0.5 * curv.log()]).numpy()

        def neg(t: torch.Tensor) -> torch.Tensor:
            return -gaussian_elbo(t[:n], t[n:].exp(), u, vp, sp, su).sum()

        top = maximize(lambda t: -neg(t), [x0], what="the best Gaussian ELBO per item")
        t = torch.tensor(top.x, dtype=torch.float64)
        values = gaussian_elbo(t[:n], t[n:].exp(), u, vp, sp, su)
        best = torch.maximum(best, values)
    return float(best.sum()), best


def variational_em(u: torch.Tensor, start: tuple[float, float, float]) -> dict[str, Any]:
    """The optimum of learning with Gaussian recognition densities: the closed-form ELBO
    maximised jointly over theta and every item's (m_i, s_i) (deterministic variational EM).
    Started at the positive roots of v^2 = u_i."""
    n = u.shape[0]
    m0 = u.clamp(min=1e-2).sqrt()
    curv = posterior_curvature(m0, u, start[1], start[2]).clamp(min=1.0 / start[1])
    x0 = np.concatenate(
        [
            [start[0], math.log(start[1]), math.log(start[2])],
            m0.numpy(),
            (-0.5 * curv.log()).numpy(),
        ]
    )

    def neg(t: torch.Tensor) -> torch.Tensor:
        vp, sp, su = _theta_from_unconstrained(t[:3])
        return -gaussian_elbo(t[3 : 3 + n], t[3 + n :].exp(), u, vp, sp, su).sum()

    top = maximize(lambda t: -neg(t), [x0], what="the variational-EM optimum")
    v_p, sp, su = (float(x) for x in _theta_from_unconstrained(torch.tensor(top.x[:3])))
    log_ev = float(grid_log_evidence(u, v_p, sp, su).sum())
    return {
        "v_p": v_p,
        "Sigma_p": sp,
        "Sigma_u": su,
        "elbo": top.value,
        "log_evidence": log_ev,
    }


def simulate_items(
    num: int, v_p: float, sigma_p: float, sigma_u: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sizes v_i ~ N(v_p, Sigma_p) and lights u_i ~ N(v_i^2, Sigma_u), seeded."""
    rng = np.random.default_rng(seed)
    v = v_p + math.sqrt(sigma_p) * rng.standard_normal(num)
    return v, v * v + math.sqrt(sigma_u) * rng.standard_normal(num)


@register
class FreeEnergyLearning(ZooModel):
    name = "free-energy-learning"
    title = "The free-energy brain: learning"
    application = "Free-energy principle"
    reference = "Bogacz (2017), J. Math. Psych. 76, §2.4 (eqs. 15-21) and §3 (eq. 35)"
    options = (
        Option("num_points", positive_int, 300, "food items observed"),
        Option("data_seed", seed_value, 0, "seed of the simulated items"),
        Option("true_v_p", finite_float, 2.0, "the world's mean size"),
        Option("true_sigma_p", positive_float, 0.5, "the world's size variance"),
        Option("true_sigma_u", positive_float, 0.5, "the world's sensory noise variance"),
        Option(
            "init_v_p", finite_float, EXERCISE_1["v_p"], "the animal's initial v_p (Exercise 1: 3)"
        ),
        Option(
            "init_sigma_p", positive_float, EXERCISE_1["sigma_p"], "initial Sigma_p (Exercise 1: 1)"
        ),
        Option(
            "init_sigma_u", positive_float, EXERCISE_1["sigma_u"], "initial Sigma_u (Exercise 1: 1)"
        ),
    )
    data_help = "CSV file of observed light intensities u (one numeric column, or a column 'u')"
    guides = ("gaussian", "point-mass")
    default_guide = "gaussian"
    # Sigma_u is weakly identified (the ELBO is flat along it): a large step size decayed
    # 100-fold; measured at the defaults: ln p(u | theta) 0.1 nats below its maximum
    training = Training(steps=2000, lr=0.1, lr_final_factor=0.01, quick_steps=400, particles=8)
    data_plate = "data"
    leaderboard = ({"guide": "gaussian"}, {"guide": "point-mass"})

    def setup(self, data: Any, **opts: Any) -> None:
        for key in ("true_sigma_p", "true_sigma_u", "init_sigma_p", "init_sigma_u"):
            flag = "--" + key.replace("_", "-")
            if not VARIANCE_RANGE[0] <= _positive(opts[key], flag) <= VARIANCE_RANGE[1]:
                low, high = VARIANCE_RANGE
                raise DataError(
                    f"{flag} must be between {low:g} and {high:g} (the exact evidence's "
                    f"quadrature grid), got {opts[key]!r}"
                )
        for key in ("true_v_p", "init_v_p"):
            _finite(opts[key], "--" + key.replace("_", "-"))
        self.true_theta = (opts["true_v_p"], opts["true_sigma_p"], opts["true_sigma_u"])
        self.init_theta = (opts["init_v_p"], opts["init_sigma_p"], opts["init_sigma_u"])
        self.sizes = None
        if data is None:
            if opts["num_points"] < 2:
                raise DataError("--num-points must be at least 2")
            self.sizes, values = simulate_items(
                opts["num_points"], *self.true_theta, opts["data_seed"]
            )
        elif isinstance(data, str | Path):
            table, columns = read_numeric_table(data, allow_constant=True)
            if "u" in columns:
                values = table[:, columns.index("u")]
            elif table.shape[1] == 1:
                values = table[:, 0]
            else:
                raise DataError(
                    f"{str(data)!r} has {table.shape[1]} numeric columns; name the lights 'u'"
                )
        else:
            values = as_float_array(data, "the data")
            if values.ndim != 1 or values.size < 2:
                raise DataError("data must be a finite 1-D array of at least 2 light intensities")
        self.u = self.tensor(values)
        self.num_data = int(values.shape[0])

    # -- the model and its guides ----------------------------------------------------------------
    def parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """theta = (v_p, Sigma_p, Sigma_u), learnt by maximising the ELBO (Bogacz §2.4)."""
        vp, sp, su = self.init_theta
        v_p = pyro.param("v_p", lambda: self.tensor(vp))
        sigma_p = pyro.param("Sigma_p", lambda: self.tensor(sp), constraint=constraints.positive)
        sigma_u = pyro.param("Sigma_u", lambda: self.tensor(su), constraint=constraints.positive)
        return v_p, sigma_p, sigma_u

    def create_plates(self, subsample_size: int | None = None) -> Any:
        return pyro.plate("data", self.num_data, subsample_size=subsample_size)

    def model(self, subsample_size: int | None = None) -> None:
        v_p, sigma_p, sigma_u = self.parameters()
        with self.create_plates(subsample_size) as idx:
            v = pyro.sample("v", dist.Normal(v_p, sigma_p.sqrt()))
            pyro.sample("u", dist.Normal(v * v, sigma_u.sqrt()), obs=self.u[idx])

    def build_guide(self, name: str):
        # every item's recognition density starts at the animal's initial prior
        start = init_to_value(values={"v": self.tensor(np.full(self.num_data, self.init_theta[0]))})
        if name == "gaussian":
            return AutoNormal(
                self.model,
                init_loc_fn=start,
                init_scale=math.sqrt(self.init_theta[1]),
                create_plates=self.create_plates,
            )
        if name == "point-mass":
            return AutoDelta(self.model, init_loc_fn=start, create_plates=self.create_plates)
        return super().build_guide(name)

    # -- what is known exactly -------------------------------------------------------------------
    def theta(self) -> tuple[float, float, float]:
        with torch.no_grad():
            v_p, sigma_p, sigma_u = (p.detach().item() for p in self.parameters())
        return v_p, sigma_p, sigma_u

    def log_evidence(self) -> float:
        with torch.no_grad():
            return float(grid_log_evidence(self.u, *self.theta()).sum())

    def best_elbo(self, guide: str) -> float | None:
        if guide == "gaussian":
            return best_gaussians(self.u, self.theta())[0]
        return None

    def exact_elbo(self, guide: Any, guide_name: str) -> float | None:
        """The Gaussian guides' ELBO in closed form (the point mass has none: not a bound)."""
        return self.fitted_elbo(guide) if self.guide_kind(guide) == "gaussian" else None

    def max_log_evidence(self) -> float:
        """ln p(u | theta) at the verified maximum-likelihood theta."""
        return float(self.peers["max_likelihood"]["log_evidence"])

    @cached_property
    def peers(self) -> dict[str, dict[str, Any]]:
        """The maximum-likelihood theta and the variational-EM optimum (data only: cached)."""
        return {
            "max_likelihood": max_marginal_likelihood(self.u, self.init_theta),
            "variational_em": variational_em(self.u, self.init_theta),
        }

    # -- reporting -------------------------------------------------------------------------------
    def guide_kind(self, guide: Any) -> str:
        return "point-mass" if isinstance(guide, AutoDelta) else "gaussian"

    @torch.no_grad()
    def fitted_elbo(self, guide: Any) -> float:
        """The fitted guide's ELBO in closed form (Gaussian), or F = sum ln p(u_i, phi_i)."""
        theta = self.theta()
        if self.guide_kind(guide) == "gaussian":
            locs, scales = guide.locs.v.detach(), guide.scales.v.detach()
            return float(gaussian_elbo(locs, scales, self.u, *theta).sum())
        phi = guide.median()["v"].detach()
        return float(log_joint(phi, self.u, *theta).sum())

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        names = ("v_p", "Sigma_p", "Sigma_u")
        theta = self.theta()
        log_ev = self.log_evidence()
        kind = self.guide_kind(guide)
        peers = self.peers
        out: dict[str, Any] = {
            "learned": dict(zip(names, theta, strict=True)),
            "initial": dict(zip(names, self.init_theta, strict=True)),
            "log_evidence_learned": log_ev,
            "max_likelihood": peers["max_likelihood"],
            "variational_em": peers["variational_em"],
            "log_evidence_below_max": peers["max_likelihood"]["log_evidence"] - log_ev,
            "guide": kind,
            "elbo_is_a_bound": kind != "point-mass",
        }
        if self.sizes is not None:
            out["true"] = dict(zip(names, self.true_theta, strict=True))
            out["log_evidence_true"] = float(grid_log_evidence(self.u, *self.true_theta).sum())
        fitted = self.fitted_elbo(guide)
        if kind == "gaussian":
            out["fitted_elbo_closed_form"] = fitted
            out["fitted_gap_closed_form"] = log_ev - fitted
            out["elbo_below_variational_em"] = peers["variational_em"]["elbo"] - fitted
        else:
            out["objective"] = NOT_A_BOUND.replace("ln p(u, phi)", "sum_i ln p(u_i, phi_i)")
            out["log_joint_at_phi"] = fitted
        return out

    def plots(self, run: RunView) -> dict[str, Any]:
        from zoo.plots import plt

        kind = self.guide_kind(run.guide)
        theta = self.theta()
        mle = self.peers["max_likelihood"]
        fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.0), constrained_layout=True)
        lo = min(theta[0] - 4 * math.sqrt(theta[1]), mle["v_p"] - 4 * math.sqrt(mle["Sigma_p"]))
        hi = max(theta[0] + 4 * math.sqrt(theta[1]), mle["v_p"] + 4 * math.sqrt(mle["Sigma_p"]))
        grid = np.linspace(lo, hi, 400)
        if self.sizes is not None:
            axes[0].hist(self.sizes, bins=30, density=True, color="0.85", label="true sizes v_i")
            axes[0].plot(
                grid, np.exp(log_normal(grid, *self.true_theta[:2])), "k:", label="true prior"
            )
        axes[0].plot(
            grid,
            np.exp(log_normal(grid, mle["v_p"], mle["Sigma_p"])),
            "--",
            color="C1",
            label="max-likelihood prior",
        )
        axes[0].plot(
            grid, np.exp(log_normal(grid, *theta[:2])), color="C0", label=f"learnt ({kind})"
        )
        axes[0].plot(
            grid,
            np.exp(log_normal(grid, *self.init_theta[:2])),
            color="0.6",
            lw=0.8,
            label="initial prior (Exercise 1)",
        )
        axes[0].set_xlabel("food size v")
        axes[0].set_ylabel("density")
        axes[0].set_title("the learnt prior p(v) against the truth")
        axes[0].legend(fontsize=8)
        free_energy_axes(axes[1], run.history, "-ln p(u | theta_t)", bound=kind != "point-mass")
        axes[1].axhline(-mle["log_evidence"], color="C1", ls=":", label="-ln p(u | theta_ML)")
        axes[1].legend(loc="upper right", fontsize=8)
        axes[1].set_title(f"learning: free energy over steps ({kind} guide)")
        fe_fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
        free_energy_axes(ax, run.history, "-ln p(u | theta_t)", bound=kind != "point-mass")
        ax.set_title(f"{self.title}: free energy over steps ({kind} guide)")
        return {"learned_prior": fig, "free_energy": fe_fig}


# --------------------------------------------------------------------------------------------
# predictive-coding
# --------------------------------------------------------------------------------------------
@register
class PredictiveCoding(ZooModel):
    name = "predictive-coding"
    title = "Predictive coding: a linear-Gaussian hierarchy"
    application = "Free-energy principle"
    reference = "Rao & Ballard (1999), Nat. Neurosci. 2; Bogacz (2017), §4.2 (eqs. 51-56)"
    options = (
        Option("num_points", positive_int, 100, "data points (stimuli) N"),
        Option("obs_dim", positive_int, 8, "dimension D of the sensory input x"),
        Option("layer1", positive_int, 4, "units k1 in the first latent layer z1"),
        Option("layer2", positive_int, 2, "units k2 in the second latent layer z2"),
        Option("noise1", positive_float, 0.5, "sd s1 of z1 around W2 z2"),
        Option("noise0", positive_float, 0.5, "sd s0 of x around W1 z1"),
        Option("weight_seed", seed_value, 0, "seed of the weights W1, W2 (entries N(0, 1))"),
        Option("data_seed", seed_value, 1, "seed of the simulated stimuli"),
    )
    data_help = "CSV file of stimuli x (D = --obs-dim numeric columns, one row per stimulus)"
    guides = ("mean-field", "full-rank")
    default_guide = "full-rank"
    # the excess over each family's best gap shrinks with the last step size (it is the
    # stationary noise of SGD): a step size decayed 1000-fold; measured at the defaults,
    # ~0.002 nats per point (mean field) and ~0.003 (full rank). The full-rank guide's
    # factors are MultivariateNormals like the priors: TraceMeanField_ELBO uses their KL
    # in closed form (AutoNormal's sites are Deltas behind auxiliary draws: nothing to gain)
    training = Training(steps=1000, lr=0.1, lr_final_factor=0.001, quick_steps=300, particles=8)
    elbo_for_guide = {"full-rank": "meanfield"}
    data_plate = "data"
    leaderboard = ({"guide": "mean-field"}, {"guide": "full-rank"})

    def setup(self, data: Any, **opts: Any) -> None:
        for key in ("obs_dim", "layer1", "layer2"):
            if opts[key] < 1:
                raise DataError(f"--{key.replace('_', '-')} must be at least 1")
        self.s1 = _positive(opts["noise1"], "--noise1")
        self.s0 = _positive(opts["noise0"], "--noise0")
        d, k1, k2 = opts["obs_dim"], opts["layer1"], opts["layer2"]
        rng = np.random.default_rng(opts["weight_seed"])
        self.w1 = self.tensor(rng.standard_normal((d, k1)))
        self.w2 = self.tensor(rng.standard_normal((k1, k2)))
        self.k1, self.k2 = k1, k2
        self.eye1 = torch.eye(k1, dtype=torch.float64, device=self.device)
        self.eye2 = torch.eye(k2, dtype=torch.float64, device=self.device)
        self.zeros2 = self.eye2.new_zeros(k2)
        if data is None:
            if opts["num_points"] < 1:
                raise DataError("--num-points must be at least 1")
            values = self.simulate(opts["num_points"], opts["data_seed"])
        else:
            if isinstance(data, str | Path):
                values, _ = read_numeric_table(data, min_rows=1, allow_constant=True)
            else:
                values = as_float_array(data, "the data")
                if values.ndim == 1:
                    values = values[:, None]
            if values.ndim != 2 or not np.isfinite(values).all():
                raise DataError("data must be a finite 2-D array (stimuli x dimensions)")
            if values.shape[1] != d:
                raise DataError(f"the stimuli have {values.shape[1]} columns; --obs-dim is {d}")
        self.x = self.tensor(values)
        self.num_data = int(values.shape[0])
        # everything exact, computed once: the weights are fixed
        self.covariance = hierarchy_covariance(self.w1, self.w2, self.s1, self.s0)
        self.precision = hierarchy_precision(self.w1, self.w2, self.s1, self.s0)
        self.post_cov = torch.cholesky_inverse(torch.linalg.cholesky(self.precision))
        self.post_means = hierarchy_posterior_means(
            self.x, self.w1, self.w2, self.s0, self.precision
        )
        self.point_log_evidence = gaussian_log_density(self.x, self.covariance)

    def simulate(self, num: int, seed: int) -> np.ndarray:
        """Ancestral sampling: z2, then z1 | z2, then x | z1."""
        rng = np.random.default_rng(seed)
        w1, w2 = self.w1.cpu().numpy(), self.w2.cpu().numpy()
        z2 = rng.standard_normal((num, self.k2))
        z1 = z2 @ w2.T + self.s1 * rng.standard_normal((num, self.k1))
        return z1 @ w1.T + self.s0 * rng.standard_normal((num, w1.shape[0]))

    # -- the model and its guides ----------------------------------------------------------------
    def create_plates(self, subsample_size: int | None = None) -> Any:
        return pyro.plate("data", self.num_data, subsample_size=subsample_size)

    def model(self, subsample_size: int | None = None) -> None:
        # the layers' priors are written as MultivariateNormals so that torch has the KL from
        # the full-rank guide's factors to them in closed form (TraceMeanField_ELBO)
        with self.create_plates(subsample_size) as idx:
            z2 = pyro.sample("z2", dist.MultivariateNormal(self.zeros2, scale_tril=self.eye2))
            mean1 = (self.w2 * z2.unsqueeze(-2)).sum(-1)  # W2 z2 per point (and particle)
            z1 = pyro.sample("z1", dist.MultivariateNormal(mean1, scale_tril=self.s1 * self.eye1))
            mean0 = (self.w1 * z1.unsqueeze(-2)).sum(-1)
            pyro.sample("x", dist.Normal(mean0, self.s0).to_event(1), obs=self.x[idx])

    def full_rank_params(self) -> dict[str, torch.Tensor]:
        n, k1, k2 = self.num_data, self.k1, self.k2
        eye1 = torch.eye(k1, dtype=self.x.dtype, device=self.device)
        eye2 = torch.eye(k2, dtype=self.x.dtype, device=self.device)
        lower = constraints.lower_cholesky
        return {
            "loc2": pyro.param("q_loc_z2", lambda: self.x.new_zeros(n, k2)),
            "tril2": pyro.param(
                "q_tril_z2", lambda: 0.1 * eye2.expand(n, k2, k2).clone(), constraint=lower
            ),
            "loc1": pyro.param("q_loc_z1", lambda: self.x.new_zeros(n, k1)),
            "coupling": pyro.param("q_coupling", lambda: self.x.new_zeros(n, k1, k2)),
            "tril1": pyro.param(
                "q_tril_z1", lambda: 0.1 * eye1.expand(n, k1, k1).clone(), constraint=lower
            ),
        }

    def full_rank_guide(self, subsample_size: int | None = None) -> None:
        """A full-covariance Gaussian on (z1, z2) for every point, written top-down:
        q(z2) = N(m2, L2 L2^T), q(z1 | z2) = N(m1 + A (z2 - m2), L1 L1^T). Every Gaussian on
        (z1, z2) factorises so, hence the family contains the exact posterior; its parameters
        are per point and index under a subsampled plate."""
        p = self.full_rank_params()
        with self.create_plates(subsample_size) as idx:
            z2 = pyro.sample(
                "z2", dist.MultivariateNormal(p["loc2"][idx], scale_tril=p["tril2"][idx])
            )
            shift = (p["coupling"][idx] * (z2 - p["loc2"][idx]).unsqueeze(-2)).sum(-1)
            pyro.sample(
                "z1", dist.MultivariateNormal(p["loc1"][idx] + shift, scale_tril=p["tril1"][idx])
            )

    def build_guide(self, name: str):
        if name == "full-rank":
            return self.full_rank_guide
        if name == "mean-field":
            return AutoNormal(self.model, create_plates=self.create_plates)
        return super().build_guide(name)

    # -- what is known exactly -------------------------------------------------------------------
    def log_evidence(self) -> float:
        return float(self.point_log_evidence.sum())

    def best_mean_field_gap(self) -> float:
        """Per point: the least the mean field can fall short of ln p(x_n)."""
        return mean_field_gap(self.precision)

    def best_elbo(self, guide: str) -> float | None:
        if guide == "mean-field":
            return self.log_evidence() - self.num_data * self.best_mean_field_gap()
        if guide == "full-rank":
            return self.log_evidence()
        return None

    @torch.no_grad()
    def guide_gaussians(self, guide: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Every point's q as a Gaussian on (z1, z2): means (N, k) and covariances (N, k, k)."""
        if isinstance(guide, AutoNormal):
            mean = torch.cat([guide.locs.z1, guide.locs.z2], -1).detach()
            var = torch.cat([guide.scales.z1, guide.scales.z2], -1).detach() ** 2
            return mean, torch.diag_embed(var)
        if getattr(guide, "__func__", None) is PredictiveCoding.full_rank_guide:
            p = {k: v.detach() for k, v in self.full_rank_params().items()}
            s22 = p["tril2"] @ p["tril2"].transpose(-1, -2)
            s12 = p["coupling"] @ s22
            s11 = s12 @ p["coupling"].transpose(-1, -2) + p["tril1"] @ p["tril1"].transpose(-1, -2)
            cov = torch.cat(
                [torch.cat([s11, s12], -1), torch.cat([s12.transpose(-1, -2), s22], -1)], -2
            )
            return torch.cat([p["loc1"], p["loc2"]], -1), cov
        raise ZooError(f"cannot read a Gaussian from {type(guide).__name__}")

    def exact_elbo(self, guide: Any, guide_name: str) -> float:
        """Both guides are Gaussian: log p(x) minus every point's closed-form KL to its
        posterior."""
        return self.log_evidence() - float(self.point_gaps(guide).sum())

    def point_gaps(self, guide: Any) -> torch.Tensor:
        """KL(q_n || p(z | x_n)) for every point, in closed form: the per-point gap."""
        mean, cov = self.guide_gaussians(guide)
        return gaussian_kl_to_posterior(mean, cov, self.post_means, self.precision)

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        gaps = self.point_gaps(guide)
        log_ev = self.log_evidence()
        mf_gap = self.best_mean_field_gap()
        sd = self.post_cov.diagonal().sqrt()
        return {
            "log_evidence": log_ev,
            "log_evidence_per_point": log_ev / self.num_data,
            "best_mean_field_gap_per_point": mf_gap,
            "best_mean_field_elbo": log_ev - self.num_data * mf_gap,
            "fitted_elbo_closed_form": log_ev - float(gaps.sum()),
            "fitted_gap_closed_form": float(gaps.sum()),
            "fitted_gap_per_point_max": float(gaps.max()),
            "posterior_correlation": (self.post_cov / torch.outer(sd, sd)).tolist(),
        }

    def plots(self, run: RunView) -> dict[str, Any]:
        from zoo.plots import plt

        kind = run.guide_name
        _, cov = self.guide_gaussians(run.guide)
        gaps = self.point_gaps(run.guide).cpu().numpy()
        sd = self.post_cov.diagonal().sqrt()
        exact_corr = (self.post_cov / torch.outer(sd, sd)).cpu().numpy()
        q_sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
        q_corr = (cov / (q_sd.unsqueeze(-1) * q_sd.unsqueeze(-2))).mean(0).cpu().numpy()
        labels = [f"z1[{i}]" for i in range(self.k1)] + [f"z2[{j}]" for j in range(self.k2)]
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), constrained_layout=True)
        for ax, corr, title in (
            (axes[0], exact_corr, "exact posterior correlation"),
            (axes[1], q_corr, f"fitted {kind}: correlation (mean over points)"),
        ):
            image = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_title(title)
        fig.colorbar(image, ax=axes[:2], shrink=0.8)
        axes[2].bar(np.arange(self.num_data), gaps, color="C0", width=1.0)
        axes[2].axhline(self.best_mean_field_gap(), color="C1", ls="--", label="best mean field")
        axes[2].set_xlabel("data point")
        axes[2].set_ylabel("KL(q_n || p(z | x_n))  [nats]")
        axes[2].set_title(f"per-point gap, total {gaps.sum():.3g} nats")
        axes[2].legend(fontsize=8)
        fe_fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
        free_energy_axes(ax, run.history, "-ln p(x)")
        ax.set_title(f"{self.title}: free energy over steps ({kind})")
        return {"posterior_covariance": fig, "free_energy": fe_fig}
