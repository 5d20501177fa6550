"""Empirical Bayes: the hyperparameters of a hierarchical prior chosen by maximising the ELBO.

In empirical Bayes (type-II maximum likelihood) the hyperparameters theta of a prior are fitted
to the data by maximising the marginal likelihood p(y | theta) = int p(y | z) p(z | theta) dz.
Here theta are ``pyro.param`` sites of the joint, phi parameterise the guide, and SVI maximises
the ELBO L(theta, phi) = E_q[log p(y, z | theta) - log q_phi(z)] <= log p(y | theta) jointly
over both. When the guide family contains the conditional posterior p(z | y, theta) for every
theta, max_phi L(theta, phi) = log p(y | theta), so maximising the ELBO is type-II maximum
likelihood (Neal & Hinton 1998; Bishop, PRML §3.5 and §9.4; Blei, Kucukelbir & McAuliffe 2017).

Two conjugate hierarchies, where p(y | theta) and p(z | y, theta) are closed forms:

``empirical-bayes`` -- Efron & Morris's baseball averages. B. Efron and C. Morris, "Data
analysis using Stein's estimator and its generalizations", JASA 70 (1975) 311-319, Table 1: the
hits y_i of 18 major-league players in their first n = 45 at-bats of the 1970 season, and each
player's batting average over the rest of that season (the "truth" to shrink towards). The
beta-binomial

    p_i ~ Beta(a, b),    y_i | p_i ~ Binomial(45, p_i),

has p(y | a, b) = prod_i C(n, y_i) B(a + y_i, b + n - y_i) / B(a, b) and conditional posterior
Beta(a + y_i, b + n - y_i). (Efron & Morris shrank arcsine-transformed averages with the
James-Stein estimator; the beta-binomial is the conjugate version of the same idea.) The
hyperparameters are stored as the prior mean m = a / (a + b) (``prior_mean``) and concentration
kappa = a + b (``prior_concentration``), and a = m kappa, b = (1 - m) kappa: the marginal
likelihood is a long, flat ridge along kappa (the type-II maximum kappa = 793 is 0.014 nats
above kappa -> infinity), and in (log a, log b) that ridge is diagonal, which Adam's
per-coordinate steps cross slowly. Measured with the exact guide from a = b = 1 (lr 0.3, 1000
steps): 0.003 nats below the maximum in (a, b), 1e-7 in (m, kappa).

``eight-schools`` -- the SAT coaching experiments. D. B. Rubin, "Estimation in parallel
randomized experiments", J. Educational Statistics 6 (1981) 377-401; Gelman et al., *Bayesian
Data Analysis*, 3rd ed. (BDA3), §5.5 and Table 5.2: estimated coaching effects y_j with standard
errors sigma_j in eight schools, and

    theta_j ~ N(mu, tau^2),    y_j | theta_j ~ N(theta_j, sigma_j^2),

with p(y | mu, tau) = prod_j N(y_j | mu, sigma_j^2 + tau^2) and conditional posterior
N(mu + tau^2 / (tau^2 + sigma_j^2) (y_j - mu), tau^2 sigma_j^2 / (tau^2 + sigma_j^2)). The
type-II maximum of these data is on the boundary tau = 0 (complete pooling, mu = the
precision-weighted mean 7.69): the profile max_mu log p(y | mu, tau) has derivative 0 in tau at
tau = 0 and a negative derivative in tau^2 (the y_j spread less than their standard errors
alone explain) and decreases in tau from there. Nothing is clipped: tau is a positive-constrained
parameter (log tau unconstrained), SVI drives it towards 0, the gradient in log tau vanishes
like tau^2, and tau creeps. The report gives the profile, the SVI tau, how far (in nats) the
profile at that tau is below the boundary maximum, and the largest tau within 0.01 nats of it.

Guides (both models):

- ``prior-family`` (default): :class:`guides.prior_family.AutoPriorFamily`, a free Beta per
  player / Normal per school. The family contains the conditional posterior, so its best ELBO is
  the exact log marginal likelihood at the current hyperparameters. By default every SVI step is
  followed by the closed-form local step (CAVI: each factor set to p(z_j | y_j, theta) at the
  current theta; Hoffman, Blei, Wang & Paisley 2013, §3), so the gradient steps move theta only
  (``local_steps=False``, ``--no-local-steps`` turns it off).
- ``mean-field``: :class:`~pyro.infer.autoguide.AutoNormal`, a Normal per latent in
  unconstrained space: a logit-normal per player, which does *not* contain the Beta posterior
  (its best ELBO, by Gauss-Hermite quadrature and a deterministic optimiser per player, is below
  the evidence), and for eight schools a Normal per school again (identity transform).
- ``exact``: the conditional posterior at the current hyperparameters, in closed form and
  differentiable in them. Every particle's log weight is log p(y | theta) exactly, so the ELBO is
  the log marginal likelihood with zero variance and SVI is gradient ascent on it.

Why the local step. With free guide parameters moved by gradient steps alone, SVI is variational
EM: theta can only move as fast as the guide follows p(z | y, theta), and along a flat ridge that
is slow. Closed-form EM (exact E-step, exact M-step) has rate 0.9996 per iteration in the
baseball concentration at the type-II maximum (largest eigenvalue of the EM map's Jacobian: the
fraction of missing information), and for eight schools tau^2 falls like 1 / iteration. After
the local step the guide *is* the conditional posterior, so the gradient of the ELBO in theta is
the gradient of log p(y | theta) (Neal & Hinton 1998), and with the analytic KL of
``TraceMeanField_ELBO`` (theta enters the ELBO only through KL(q || p(z | theta))) it is exact:
SVI becomes deterministic gradient ascent on the marginal likelihood. Measured after the
default 1500 steps, identical for seeds 0-2: baseball 1.1e-6 nats below the type-II maximum
(a + b = 800.5 for 793, prior mean 0.26543), eight schools tau = 0.126 and 2.0e-4 nats below the
boundary maximum; gap 0 to 1e-12. Without the local step (``--no-local-steps``) the same runs
stop short along the ridges: a + b = 208-215, 0.079-0.086 nats below the maximum, and
tau = 0.41-0.44, 0.002 nats below (within the 0.01 nats that resolve tau: any tau < 0.894); the
mean-field fit of eight schools (AutoNormal, scales starting at 0.1) has tau = 1.69, 0.036 nats
below. The exact type-II maxima are found by a grid over the profile in the concentration (tau),
refined by Newton's method on the exact Hessian (Brent's method in tau) and verified by
conditions scaled to the problem (:mod:`zoo.optimize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from scipy.optimize import brentq, minimize_scalar
from scipy.special import betaln, gammaln

from guides.prior_family import AutoPriorFamily
from zoo.errors import DataError, ZooError
from zoo.model import Option, Training, ZooModel, positive_float
from zoo.optimize import maximize
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

# --------------------------------------------------------------------------------------------
# The data, typed in from the papers
# --------------------------------------------------------------------------------------------
#: Efron & Morris (1975), Table 1: player, hits in the first 45 at-bats of the 1970 season,
#: batting average over the remainder of that season.
BASEBALL: tuple[tuple[str, int, float], ...] = (
    ("Clemente", 18, 0.346),
    ("F. Robinson", 17, 0.298),
    ("F. Howard", 16, 0.276),
    ("Johnstone", 15, 0.222),
    ("Berry", 14, 0.273),
    ("Spencer", 14, 0.270),
    ("Kessinger", 13, 0.263),
    ("L. Alvarado", 12, 0.210),
    ("Santo", 11, 0.269),
    ("Swoboda", 11, 0.230),
    ("Unser", 10, 0.264),
    ("Williams", 10, 0.256),
    ("Scott", 10, 0.303),
    ("Petrocelli", 10, 0.264),
    ("E. Rodriguez", 10, 0.226),
    ("Campaneris", 9, 0.286),
    ("Munson", 8, 0.316),
    ("Alvis", 7, 0.200),
)
#: at-bats of every player in Efron & Morris's Table 1
AT_BATS = 45

#: BDA3 Table 5.2 (Rubin 1981): school, estimated coaching effect y_j, its standard error.
EIGHT_SCHOOLS: tuple[tuple[str, float, float], ...] = (
    ("A", 28.0, 15.0),
    ("B", 8.0, 10.0),
    ("C", -3.0, 16.0),
    ("D", 7.0, 11.0),
    ("E", -1.0, 9.0),
    ("F", 1.0, 11.0),
    ("G", 18.0, 10.0),
    ("H", 12.0, 18.0),
)


# --------------------------------------------------------------------------------------------
# Beta-binomial closed forms (numpy / scipy, float64)
# --------------------------------------------------------------------------------------------
def beta_binomial_log_pmf(y: Any, n: Any, a: float, b: float) -> np.ndarray:
    """log p(y_i | a, b) = log C(n, y_i) + log B(a + y_i, b + n - y_i) - log B(a, b)."""
    y, n = np.asarray(y, dtype=float), np.asarray(n, dtype=float)
    log_choose = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
    return log_choose + betaln(a + y, b + n - y) - betaln(a, b)


def beta_binomial_log_marginal(y: Any, n: Any, a: float, b: float) -> float:
    """log p(y | a, b), the total over the players."""
    return float(beta_binomial_log_pmf(y, n, a, b).sum())


def _binomial_log_likelihood(y: np.ndarray, n: np.ndarray, p: float) -> float:
    """log prod_i Binomial(y_i | n, p): the beta-binomial's limit as a + b -> infinity."""
    log_choose = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
    return float((log_choose + y * math.log(p) + (n - y) * math.log1p(-p)).sum())


@dataclass(frozen=True)
class BetaBinomialMax:
    """The type-II maximum of the beta-binomial marginal likelihood."""

    a: float
    b: float
    log_marginal: float
    #: log p(y | a, b) as a + b -> infinity at the same mean (one common p for every player)
    log_marginal_pooled: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def concentration(self) -> float:
        return self.a + self.b


def _as_counts(y: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float)
    return y, np.broadcast_to(np.asarray(n, dtype=float), y.shape)


#: the largest prior concentration a + b searched for a type-II maximum
KAPPA_MAX = 1e6


def _beta_binomial_torch(y: np.ndarray, n: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """log p(y | a, b) as a torch function of t = (log a, log b), up to the binomial
    coefficients (constant in a, b), for exact gradients and Hessians by autograd."""
    yt = torch.tensor(np.array(y, dtype=float))
    nt = torch.tensor(np.array(n, dtype=float))

    def log_marginal(t: torch.Tensor) -> torch.Tensor:
        a, b = t.exp().unbind(-1)
        lbeta = torch.lgamma(a + yt) + torch.lgamma(b + nt - yt) - torch.lgamma(a + b + nt)
        return (lbeta - torch.lgamma(a) - torch.lgamma(b) + torch.lgamma(a + b)).sum()

    return log_marginal


def beta_binomial_type2_max(y: Any, n: Any) -> BetaBinomialMax:
    """argmax_{a, b} log p(y | a, b), found and verified the same way on every machine.

    The profile over the prior mean, max_m log p(y | m kappa, (1 - m) kappa), is evaluated on
    a grid of log kappa from 1e-2 to :data:`KAPPA_MAX`; its three best interior local maxima
    are starts for Newton's method on the exact Hessian in (log a, log b)
    (:func:`zoo.optimize.maximize`), which accepts a point only where the Hessian is negative
    definite and the Newton decrement is below 1e-9 of the log marginal likelihood. The profile
    must also fall on both sides of the maximum. Raises :class:`ZooError` when there is no
    interior maximum: no over-dispersion (the likelihood rises towards a + b -> infinity, one
    common rate) or counts all at 0 or n.
    """
    y, n = _as_counts(y, n)
    total = float(y.sum())
    if total == 0 or total == float(n.sum()):
        raise ZooError(
            "the beta-binomial marginal likelihood has no interior maximum: every count is "
            + ("0" if total == 0 else "at its maximum n")
        )
    m = total / float(n.sum())
    pooled = _binomial_log_likelihood(y, n, m)  # the binomial MLE of p is the pooled rate
    # beyond KAPPA_MAX the profile is within rounding of its limit (betaln of huge arguments)
    kappas = np.geomspace(1e-2, KAPPA_MAX, 81)
    profile, means = beta_binomial_profile(y, n, kappas)
    peaks = [j for j in range(1, len(kappas) - 1) if profile[j] >= max(profile[j - 1 : j + 2])]
    peaks = sorted(peaks, key=lambda j: -profile[j])[:3]
    rising = profile.argmax() == len(kappas) - 1
    if not peaks or rising or profile.max() <= pooled + 1e-9 * (1 + abs(pooled)):
        raise ZooError(
            "the beta-binomial marginal likelihood has no interior maximum for these data: it "
            f"rises towards a + b -> infinity (up to a + b = {KAPPA_MAX:.0e}), one common rate "
            f"{m:.4g} with log p = {pooled:.4f}: no over-dispersion these data can resolve"
        )
    starts = [np.log([means[j] * kappas[j], (1 - means[j]) * kappas[j]]) for j in peaks]
    top = maximize(
        _beta_binomial_torch(y, n), starts, what="beta-binomial type-II maximum", prefit=False
    )
    a, b = (float(v) for v in np.exp(top.x))
    value = beta_binomial_log_marginal(y, n, a, b)
    side, _ = beta_binomial_profile(y, n, [(a + b) * math.exp(-0.25), (a + b) * math.exp(0.25)])
    if not (np.all(side < value) and value > pooled):
        raise ZooError(
            "the beta-binomial marginal likelihood has no verified interior maximum for these "
            f"data (the profile does not fall on both sides of a + b = {a + b:.4g})"
        )
    return BetaBinomialMax(a, b, value, pooled)


def beta_binomial_profile(y: Any, n: Any, concentration: Any) -> tuple[np.ndarray, np.ndarray]:
    """The profile max_m log p(y | m kappa, (1 - m) kappa) at each kappa, and the maximising m."""
    y, n = _as_counts(y, n)
    values, means = [], []
    for kappa in np.atleast_1d(np.asarray(concentration, dtype=float)):

        def negative(logit: float, kappa: float = kappa) -> float:
            m = 1 / (1 + math.exp(-logit))
            return -beta_binomial_log_marginal(y, n, m * kappa, (1 - m) * kappa)

        res = minimize_scalar(
            negative, bounds=(-8.0, 8.0), method="bounded", options={"xatol": 1e-10}
        )
        values.append(-res.fun)
        means.append(1 / (1 + math.exp(-res.x)))
    return np.array(values), np.array(means)


def concentration_interval(y: Any, n: Any, nats: float = 0.01) -> tuple[float, float]:
    """The concentrations kappa whose profile log marginal likelihood is within ``nats`` of the
    maximum: how precisely the data determine a + b. The upper end is inf when the limit
    kappa -> infinity is itself within ``nats``."""
    top = beta_binomial_type2_max(y, n)

    def excess(log_kappa: float) -> float:
        return beta_binomial_profile(y, n, [math.exp(log_kappa)])[0][0] - top.log_marginal + nats

    centre = math.log(top.concentration)
    lo = math.exp(brentq(excess, math.log(1e-3), centre, xtol=1e-10))
    if top.log_marginal_pooled >= top.log_marginal - nats:
        return lo, math.inf
    # betaln loses precision beyond ~1e8 (a difference of huge numbers); the profile there is
    # within 1e-5 nats of its limit, which the test above has already compared
    return lo, math.exp(brentq(excess, centre, math.log(1e8), xtol=1e-10))


def logit_normal_best_elbo(y: Any, n: Any, a: float, b: float, nodes: int = 80) -> float:
    """The largest ELBO of a logit-normal q(p_i) per player (AutoNormal's family), in total.

    For each player, E_q[log Binomial(y_i | n, p) + log Beta(p | a, b) - log q(p)] with
    u = logit p ~ N(m, s^2) is a Gauss-Hermite sum over ``nodes`` points, maximised over
    (m, log s) by verified Newton steps (:func:`zoo.optimize.maximize`). The family does not
    contain the Beta posterior, so this is below log p(y | a, b): by 0.002 nats in total at
    the baseball type-II maximum, 0.04 at a = b = 1.
    """
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    xt, wt = torch.tensor(x), torch.tensor(w / w.sum())
    y, n = _as_counts(y, n)
    total = 0.0
    for yi, ni in zip(y, n, strict=True):
        log_choose = gammaln(ni + 1) - gammaln(yi + 1) - gammaln(ni - yi + 1) - betaln(a, b)

        def elbo(t: torch.Tensor, yi: float = yi, ni: float = ni) -> torch.Tensor:
            u = t[0] + t[1].exp() * xt
            log_p, log_q = -torch.nn.functional.softplus(-u), -torch.nn.functional.softplus(u)
            # log p(y, p) + log |dp/du|: the Jacobian turns q(p) into the Normal q(u)
            integrand = (yi + a) * log_p + (ni - yi + b) * log_q
            return (wt * integrand).sum() + 0.5 * math.log(2 * math.pi * math.e) + t[1]

        alpha, beta = a + yi, b + ni - yi  # start at the Beta posterior's logit moments
        start = np.array([math.log(alpha / beta), 0.5 * math.log(1 / alpha + 1 / beta)])
        top = maximize(elbo, [start], what="the logit-normal best ELBO", prefit=False)
        total += top.value + float(log_choose)
    return total


# --------------------------------------------------------------------------------------------
# Normal-normal closed forms
# --------------------------------------------------------------------------------------------
def normal_log_marginal(y: Any, sigma: Any, mu: float, tau: float) -> float:
    """log p(y | mu, tau) = sum_j log N(y_j | mu, sigma_j^2 + tau^2)."""
    y, sigma = np.asarray(y, dtype=float), np.asarray(sigma, dtype=float)
    var = sigma**2 + tau**2
    return float(np.sum(-0.5 * np.log(2 * math.pi * var) - 0.5 * (y - mu) ** 2 / var))


def normal_mu_hat(y: Any, sigma: Any, tau: float) -> float:
    """argmax_mu log p(y | mu, tau): the mean of the y_j weighted by 1 / (sigma_j^2 + tau^2)."""
    y, sigma = np.asarray(y, dtype=float), np.asarray(sigma, dtype=float)
    w = 1.0 / (sigma**2 + tau**2)
    return float((w * y).sum() / w.sum())


def normal_profile(y: Any, sigma: Any, taus: Any) -> tuple[np.ndarray, np.ndarray]:
    """The profile max_mu log p(y | mu, tau) at each tau, and the maximising mu."""
    taus = np.atleast_1d(np.asarray(taus, dtype=float))
    mus = np.array([normal_mu_hat(y, sigma, t) for t in taus])
    values = [normal_log_marginal(y, sigma, m, t) for m, t in zip(mus, taus, strict=True)]
    return np.array(values), mus


def normal_dlogp_dtau2_at_zero(y: Any, sigma: Any) -> float:
    """d/d(tau^2) of the profile log marginal likelihood at tau = 0.

    = 1/2 sum_j [(y_j - mu_hat)^2 / sigma_j^4 - 1 / sigma_j^2], mu_hat the precision-weighted
    mean (the derivative through mu_hat vanishes: d/dmu = 0 there). The derivative in tau is
    2 tau times this, zero at tau = 0; when this is negative, tau = 0 is a maximum on the
    boundary of tau >= 0.
    """
    y, sigma = np.asarray(y, dtype=float), np.asarray(sigma, dtype=float)
    mu = normal_mu_hat(y, sigma, 0.0)
    return float(0.5 * np.sum((y - mu) ** 2 / sigma**4 - 1 / sigma**2))


@dataclass(frozen=True)
class NormalMax:
    """The type-II maximum of the normal-normal marginal likelihood over mu and tau >= 0."""

    mu: float
    tau: float
    log_marginal: float
    #: d/d(tau^2) of the profile at tau = 0 (negative: tau = 0 is a boundary maximum)
    dlogp_dtau2_at_zero: float

    @property
    def on_boundary(self) -> bool:
        return self.tau == 0.0


def normal_type2_max(y: Any, sigma: Any) -> NormalMax:
    """argmax over (mu, tau >= 0) of log p(y | mu, tau), found and verified the same way on
    every machine.

    mu has a closed-form maximiser at each tau (:func:`normal_mu_hat`), so the search is over
    the 1-D profile in tau: a grid from 0 to far beyond the spread of the y_j finds the best
    region, and Brent's bounded method refines it inside the bracket of its grid neighbours.
    tau = 0 is the maximum exactly when it beats every other point and the profile's derivative
    in tau^2 there is <= 0 (:func:`normal_dlogp_dtau2_at_zero`): a boundary maximum is decided
    by that sign, never by where an optimiser happens to stop.
    """
    y, sigma = np.asarray(y, dtype=float), np.asarray(sigma, dtype=float)
    slope0 = normal_dlogp_dtau2_at_zero(y, sigma)
    spread = float(np.ptp(y)) + float(np.max(sigma))
    taus = np.concatenate([[0.0], np.geomspace(1e-6 * spread, 1e3 * spread, 400)])
    profile, _ = normal_profile(y, sigma, taus)
    j = int(profile.argmax())
    if j == 0 and slope0 <= 0:
        return NormalMax(normal_mu_hat(y, sigma, 0.0), 0.0, float(profile[0]), slope0)
    lo, hi = taus[max(j - 1, 0)], taus[min(j + 1, len(taus) - 1)]
    res = minimize_scalar(
        lambda t: -normal_profile(y, sigma, [t])[0][0],
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-12 * hi},
    )
    tau = float(res.x)
    value = -float(res.fun)
    if value < profile.max():  # the refinement must not fall below the grid point it refines
        tau, value = float(taus[j]), float(profile[j])
    return NormalMax(normal_mu_hat(y, sigma, tau), tau, value, slope0)


def tau_within(y: Any, sigma: Any, nats: float = 0.01) -> float:
    """The largest tau whose profile log marginal likelihood is within ``nats`` of the maximum
    (the profile decreases in tau for these data): how precisely the data pin tau to 0."""
    top = normal_type2_max(y, sigma)

    def excess(tau: float) -> float:
        return normal_profile(y, sigma, [tau])[0][0] - top.log_marginal + nats

    hi = max(1.0, 10 * float(np.max(sigma)))
    return float(brentq(excess, top.tau, hi, xtol=1e-12))


def mse(estimate: Any, truth: Any) -> float:
    """Mean squared error of ``estimate`` against ``truth``."""
    diff = np.asarray(estimate, dtype=float) - np.asarray(truth, dtype=float)
    return float(np.mean(diff**2))


# --------------------------------------------------------------------------------------------
# What the two models share
# --------------------------------------------------------------------------------------------


def _unit(value: Any) -> float:
    x = float(value)
    if not 0 < x < 1:
        raise ValueError(f"{value!r} is not strictly between 0 and 1")
    return x


def _finite(value: Any) -> float:
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not a finite number")
    return x


class _EmpiricalBayes(ZooModel):
    """A conjugate two-level hierarchy: two hyperparameters as ``pyro.param``, one latent per
    group inside the data plate, and its conditional posterior in closed form."""

    application = "Empirical Bayes (type-II maximum likelihood)"
    guides = ("prior-family", "mean-field", "exact")
    default_guide = "prior-family"
    # the Beta / Normal factors of AutoPriorFamily have analytic KLs to their priors; the exact
    # guide keeps Trace_ELBO, whose per-particle log weights are all log p(y | theta)
    elbo_for_guide = {"prior-family": "meanfield"}
    # Measured (seeds 0-2): 1500 steps from lr 0.3 decayed 100-fold take the exact guide and
    # the prior-family guide with its local step to 1e-6 nats of the baseball maximum
    # (a + b = 800 for 793) and to tau = 0.13 for eight schools (2e-4 nats below the boundary
    # maximum); 32 vectorized particles. Without local steps the free guides' hyperparameters
    # stop short along the flat ridges (module docstring). About 3 ms a step on one free core.
    training = Training(steps=1500, lr=0.3, quick_steps=300, lr_final_factor=0.01, particles=32)
    leaderboard = (
        {"guide": "prior-family"},
        {"guide": "prior-family", "local_steps": False},
        {"guide": "mean-field"},
        {"guide": "exact"},
    )
    local_step_guides = ("prior-family",)
    max_plate_nesting = 1
    # one latent per group of a small hierarchy: ArviZ data with the groups' names as coords
    save_posterior_draws = True

    #: the latent site, one per group
    latent: ClassVar[str]
    groups: list[str]

    def arviz_coords(self) -> dict[str, list[Any]]:
        """The groups' names (players, schools) as the coordinates of the data plate's dim."""
        return {self.arviz_dims[self.latent][0]: list(self.groups)}

    # -- what each model provides ------------------------------------------------------------------
    def hyperparameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def exact_posterior(self, idx: torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(z | y, theta) at the current hyperparameters (differentiable in them)."""
        raise NotImplementedError

    def initial_posterior_mean(self) -> torch.Tensor:
        """E[z | y, theta] at the initial hyperparameters: where the mean-field guide starts."""
        raise NotImplementedError

    # -- guides ------------------------------------------------------------------------------------
    def create_plates(self, subsample_size: int | None = None) -> pyro.plate:
        return pyro.plate(self.data_plate, self.num_data, subsample_size=subsample_size)

    def exact_guide(self, subsample_size: int | None = None) -> None:
        """q(z) = p(z | y, theta): every draw's log weight is log p(y | theta)."""
        with self.create_plates(subsample_size) as idx:
            pyro.sample(self.latent, self.exact_posterior(idx))

    def local_step(self, guide: Any, guide_name: str) -> None:
        """CAVI for the group factors: each set to the conditional posterior p(z_j | y_j, theta)
        at the current hyperparameters (Bishop, PRML §10.1.1; Hoffman et al. 2013, §3)."""
        guide.set_factor(self.latent, self.exact_posterior())

    def build_guide(self, name: str) -> Callable[..., Any]:
        if name not in self.guides:
            raise ZooError(
                f"model {self.name!r} has no guide {name!r}; choose from {', '.join(self.guides)}"
            )
        if name == "exact":
            return self.exact_guide
        if name == "mean-field":
            init = init_to_value(values={self.latent: self.initial_posterior_mean()})
            return AutoNormal(self.model, init_loc_fn=init, create_plates=self.create_plates)
        # each factor starts at the prior, as AutoPriorFamily does for any model
        return AutoPriorFamily(self.model, create_plates=self.create_plates)

    def best_elbo(self, guide: str) -> float | None:
        # prior-family and exact: the family contains p(z | y, theta)
        return self.log_evidence()

    def max_log_evidence(self) -> float:
        """log p(y | theta) at the verified type-II maximum."""
        return self.type2_max.log_marginal

    # -- reading the fit ---------------------------------------------------------------------------
    def hyper_values(self) -> tuple[float, float]:
        """The two hyperparameters as floats, read through ``pyro.param``."""
        first, second = self.hyperparameters()
        return float(first.detach()), float(second.detach())

    def is_exact(self, guide: Any) -> bool:
        return getattr(guide, "__func__", None) is _EmpiricalBayes.exact_guide

    @torch.no_grad()
    def guide_factor(self, guide: Any) -> dist.TorchDistribution:
        """q(z) of a fitted guide as one distribution over the groups (full plate).

        AutoNormal's is the Normal of the unconstrained latent (logit p for the baseball)."""
        if self.is_exact(guide):
            return self.exact_posterior()
        if isinstance(guide, AutoPriorFamily):
            return guide.get_factors()[self.latent]
        if isinstance(guide, AutoNormal):
            loc = getattr(guide.locs, self.latent).detach()
            scale = getattr(guide.scales, self.latent).detach()
            return dist.Normal(loc, scale)
        raise ZooError(f"cannot read q({self.latent}) from a {type(guide).__name__}")


# --------------------------------------------------------------------------------------------
# Efron & Morris's baseball: beta-binomial
# --------------------------------------------------------------------------------------------
@register
class BaseballEmpiricalBayes(_EmpiricalBayes):
    name = "empirical-bayes"
    title = "Empirical Bayes: Efron & Morris's baseball averages"
    reference = "Efron & Morris (1975), JASA 70, 311-319, Table 1; Neal & Hinton (1998)"
    options = (
        Option("init_mean", _unit, 0.5, "initial prior mean a / (a + b)"),
        Option("init_concentration", positive_float, 2.0, "initial prior concentration a + b"),
    )
    data_plate = "players"
    latent = "p"
    arviz_dims = {"p": ("player",), "hits": ("player",)}

    def setup(self, data: Any, **opts: Any) -> None:
        if data is not None:
            raise DataError("empirical-bayes uses Efron & Morris's bundled data; it takes no data")
        self.groups = [row[0] for row in BASEBALL]
        self.hits = self.tensor([row[1] for row in BASEBALL])
        self.season = np.array([row[2] for row in BASEBALL])
        self.at_bats = AT_BATS
        self.num_data = len(BASEBALL)
        self.init = {
            "prior_mean": self.tensor(opts["init_mean"]),
            "prior_concentration": self.tensor(opts["init_concentration"]),
        }

    # -- the model ---------------------------------------------------------------------------------
    def hyperparameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) = (m kappa, (1 - m) kappa) from the parameters m and kappa."""
        init = self.init  # pyro.param adopts its initial tensor: hand it copies
        m = pyro.param(
            "prior_mean", lambda: init["prior_mean"].clone(), constraint=constraints.unit_interval
        )
        kappa = pyro.param(
            "prior_concentration",
            lambda: init["prior_concentration"].clone(),
            constraint=constraints.positive,
        )
        return m * kappa, (1 - m) * kappa

    def model(self, subsample_size: int | None = None) -> None:
        a, b = self.hyperparameters()
        with self.create_plates(subsample_size) as idx:
            p = pyro.sample("p", dist.Beta(a, b))
            pyro.sample("hits", dist.Binomial(self.at_bats, p), obs=self.hits[idx])

    def exact_posterior(self, idx: torch.Tensor | None = None) -> dist.TorchDistribution:
        a, b = self.hyperparameters()
        y = self.hits if idx is None else self.hits[idx]
        return dist.Beta(a + y, b + self.at_bats - y)

    def initial_posterior_mean(self) -> torch.Tensor:
        m, kappa = self.init["prior_mean"], self.init["prior_concentration"]
        return (m * kappa + self.hits) / (kappa + self.at_bats)

    # -- exact quantities --------------------------------------------------------------------------
    def _counts(self) -> np.ndarray:
        return self.hits.cpu().numpy()

    def log_evidence(self) -> float:
        a, b = self.hyper_values()
        return beta_binomial_log_marginal(self._counts(), self.at_bats, a, b)

    @cached_property
    def type2_max(self) -> BetaBinomialMax:
        return beta_binomial_type2_max(self._counts(), self.at_bats)

    @cached_property
    def concentration_interval(self) -> tuple[float, float]:
        return concentration_interval(self._counts(), self.at_bats, 0.01)

    def best_elbo(self, guide: str) -> float | None:
        if guide == "mean-field":
            a, b = self.hyper_values()
            return logit_normal_best_elbo(self._counts(), self.at_bats, a, b)
        return self.log_evidence()

    # -- reading the fit ---------------------------------------------------------------------------
    def posterior_means(self, guide: Any) -> np.ndarray:
        """E_q[p_i]: exact for the Beta guides, Gauss-Hermite (80 points) for the logit-normal."""
        q = self.guide_factor(guide)
        if isinstance(q, torch.distributions.Beta):
            return q.mean.cpu().numpy()
        x, w = np.polynomial.hermite_e.hermegauss(80)
        u = q.loc.cpu().numpy()[:, None] + q.scale.cpu().numpy()[:, None] * x
        return (1 / (1 + np.exp(-u))) @ (w / w.sum())

    def shrinkage(self, guide: Any) -> dict[str, Any]:
        """Raw, empirical-Bayes and season averages per player, and their MSEs against the
        season averages (Efron & Morris's truth)."""
        raw = self._counts() / self.at_bats
        eb = self.posterior_means(guide)
        top = self.type2_max
        at_max = (top.a + self._counts()) / (top.concentration + self.at_bats)
        return {
            "player": self.groups,
            "hits": [int(h) for h in self._counts()],
            "raw_average": raw.tolist(),
            "eb_posterior_mean": eb.tolist(),
            "eb_posterior_mean_at_type2_max": at_max.tolist(),
            "season_average": self.season.tolist(),
            "mse_raw": mse(raw, self.season),
            "mse_eb": mse(eb, self.season),
            "mse_eb_at_type2_max": mse(at_max, self.season),
            "mse_grand_mean": mse(np.full_like(raw, raw.mean()), self.season),
        }

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        a, b = self.hyper_values()
        top = self.type2_max
        log_ev = self.log_evidence()
        lo, hi = self.concentration_interval
        return {
            "prior_mean": a / (a + b),
            "prior_concentration": a + b,
            "a": a,
            "b": b,
            # weight of the prior mean in every exact posterior mean: (a + b) / (a + b + n)
            "shrinkage_factor": (a + b) / (a + b + self.at_bats),
            "log_evidence": log_ev,
            "type2_max": {
                "a": top.a,
                "b": top.b,
                "prior_mean": top.mean,
                "prior_concentration": top.concentration,
                "shrinkage_factor": top.concentration / (top.concentration + self.at_bats),
                "log_marginal": top.log_marginal,
                "log_marginal_one_common_p": top.log_marginal_pooled,
                "concentration_within_0.01_nats": [lo, hi],
            },
            "log_marginal_below_max": top.log_marginal - log_ev,
            **self.shrinkage(guide),
        }

    def plots(self, run: RunView) -> dict[str, Figure]:
        from zoo.plots import plt

        table = self.shrinkage(run.guide)
        guide = run.guide_name
        fig, ax = plt.subplots(figsize=(6.4, 5.4), constrained_layout=True)
        columns = ("raw_average", "eb_posterior_mean", "season_average")
        for i in range(self.num_data):
            ax.plot([0, 1, 2], [table[c][i] for c in columns], "-", color="0.7", lw=0.8)
        n = self.num_data
        ax.plot(
            [0] * n,
            table["raw_average"],
            "o",
            color="C0",
            label=f"first 45 at-bats: MSE {table['mse_raw']:.5f}",
        )
        ax.plot(
            [1] * n,
            table["eb_posterior_mean"],
            "o",
            color="C3",
            label=f"empirical Bayes ({guide}): MSE {table['mse_eb']:.5f}",
        )
        ax.plot([2] * n, table["season_average"], "ks", ms=5, label="rest of season (truth)")
        ax.plot(
            [],
            [],
            " ",
            label=f"EB at the exact type-II max: MSE {table['mse_eb_at_type2_max']:.5f}",
        )
        for i in np.argsort(table["raw_average"])[[0, -1]]:
            ax.annotate(
                self.groups[i],
                (0, table["raw_average"][i]),
                xytext=(-6, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=8,
            )
        ax.set_xticks([0, 1, 2], ["raw y / 45", "EB posterior mean", "season average"])
        ax.set_xlim(-0.6, 2.4)
        ax.set_ylabel("batting average (MSEs against the season average)")
        a, b = self.hyper_values()
        ax.set_title(f"Shrinkage, Beta({a:.3g}, {b:.3g}) prior by {run.method}")
        ax.legend(loc="upper right", fontsize=8)

        top = self.type2_max
        kappas = np.geomspace(10.0, 1e5, 150)
        prof, _ = beta_binomial_profile(self._counts(), self.at_bats, kappas)
        fig2, ax2 = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
        ax2.semilogx(kappas, prof - top.log_marginal, "k-", label="profile over a / (a + b)")
        ax2.axhline(
            top.log_marginal_pooled - top.log_marginal,
            color="0.5",
            ls=":",
            label="a + b -> infinity (one common p)",
        )
        ax2.axvline(
            top.concentration,
            color="k",
            ls="--",
            lw=0.8,
            label=f"type-II max (scipy): a + b = {top.concentration:.0f}",
        )
        ax2.plot(
            [a + b],
            [self.log_evidence() - top.log_marginal],
            "C3o",
            label=f"{guide}: a + b = {a + b:.0f}",
        )
        lo, hi = self.concentration_interval
        ax2.axvspan(lo, hi, color="0.92", zorder=0, label="within 0.01 nats of the max")
        ax2.set_ylim(-1.0, 0.1)
        ax2.set_xlabel("prior concentration a + b")
        ax2.set_ylabel("log p(y | a, b) - maximum  [nats]")
        ax2.set_title("Profile log marginal likelihood: a long flat ridge")
        ax2.legend(loc="lower right", fontsize=8)
        return {"shrinkage": fig, "profile": fig2}


# --------------------------------------------------------------------------------------------
# The eight schools: normal-normal
# --------------------------------------------------------------------------------------------
@register
class EightSchools(_EmpiricalBayes):
    name = "eight-schools"
    title = "Empirical Bayes: the eight schools"
    reference = "Rubin (1981), J. Educ. Stat. 6, 377-401; Gelman et al., BDA3 §5.5, Table 5.2"
    options = (
        Option("init_mu", _finite, 0.0, "initial prior mean mu"),
        Option(
            "init_tau", positive_float, 10.0, "initial prior sd tau (10: about the sd of the y_j)"
        ),
    )
    data_plate = "schools"
    latent = "theta"
    arviz_dims = {"theta": ("school",), "y": ("school",)}

    def setup(self, data: Any, **opts: Any) -> None:
        if data is not None:
            raise DataError("eight-schools uses the bundled BDA3 Table 5.2 data; it takes no data")
        self.groups = [row[0] for row in EIGHT_SCHOOLS]
        self.y = self.tensor([row[1] for row in EIGHT_SCHOOLS])
        self.sigma = self.tensor([row[2] for row in EIGHT_SCHOOLS])
        self.num_data = len(EIGHT_SCHOOLS)
        self.init = {"mu": self.tensor(opts["init_mu"]), "tau": self.tensor(opts["init_tau"])}

    # -- the model ---------------------------------------------------------------------------------
    def hyperparameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        init = self.init
        mu = pyro.param("mu", lambda: init["mu"].clone())
        tau = pyro.param("tau", lambda: init["tau"].clone(), constraint=constraints.positive)
        return mu, tau

    def model(self, subsample_size: int | None = None) -> None:
        mu, tau = self.hyperparameters()
        with self.create_plates(subsample_size) as idx:
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, self.sigma[idx]), obs=self.y[idx])

    def exact_posterior(self, idx: torch.Tensor | None = None) -> dist.TorchDistribution:
        mu, tau = self.hyperparameters()
        y, sigma = (self.y, self.sigma) if idx is None else (self.y[idx], self.sigma[idx])
        # written without dividing by tau: well defined however small tau gets
        shrink = tau**2 / (tau**2 + sigma**2)
        return dist.Normal(mu + shrink * (y - mu), tau * sigma / (tau**2 + sigma**2).sqrt())

    def initial_posterior_mean(self) -> torch.Tensor:
        mu, tau = self.init["mu"], self.init["tau"]
        return mu + tau**2 / (tau**2 + self.sigma**2) * (self.y - mu)

    # -- exact quantities --------------------------------------------------------------------------
    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.y.cpu().numpy(), self.sigma.cpu().numpy()

    def log_evidence(self) -> float:
        mu, tau = self.hyper_values()
        return normal_log_marginal(*self._data(), mu, tau)

    @cached_property
    def type2_max(self) -> NormalMax:
        return normal_type2_max(*self._data())

    @cached_property
    def tau_within_001(self) -> float:
        return tau_within(*self._data(), 0.01)

    def profile_at(self, tau: float) -> float:
        """max_mu log p(y | mu, tau)."""
        return float(normal_profile(*self._data(), [tau])[0][0])

    # -- reading the fit ---------------------------------------------------------------------------
    def posterior_moments(self, guide: Any) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd of q(theta_j) (every guide of this model is a Normal per school)."""
        q = self.guide_factor(guide)
        return q.mean.cpu().numpy(), q.stddev.cpu().numpy()

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        mu, tau = self.hyper_values()
        top = self.type2_max
        y, sigma = self._data()
        log_ev = self.log_evidence()
        means, sds = self.posterior_moments(guide)
        grid = np.array([0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0])
        return {
            "mu": mu,
            "tau": tau,
            "log_evidence": log_ev,
            "type2_max": {
                "mu": top.mu,
                "tau": top.tau,
                "on_boundary": top.on_boundary,
                "log_marginal": top.log_marginal,
                "dlogp_dtau_at_zero": 0.0,  # log p depends on tau through tau^2 only
                "dlogp_dtau2_at_zero": top.dlogp_dtau2_at_zero,
                "tau_within_0.01_nats": self.tau_within_001,
            },
            "log_marginal_below_max": top.log_marginal - log_ev,
            # the profile max_mu log p(y | mu, tau) at the fitted tau, below the boundary max
            "profile_below_max_at_tau": top.log_marginal - self.profile_at(tau),
            "profile": {
                "tau": grid.tolist(),
                "log_marginal": normal_profile(y, sigma, grid)[0].tolist(),
            },
            "school": self.groups,
            "y": y.tolist(),
            "sigma": sigma.tolist(),
            "eb_posterior_mean": means.tolist(),
            "eb_posterior_sd": sds.tolist(),
        }

    def plots(self, run: RunView) -> dict[str, Figure]:
        from zoo.plots import plt

        y, sigma = self._data()
        means, sds = self.posterior_moments(run.guide)
        mu, tau = self.hyper_values()
        guide = run.guide_name
        top = self.type2_max
        fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
        x = np.arange(self.num_data)
        ax.errorbar(
            x - 0.12, y, yerr=sigma, fmt="o", color="C0", capsize=3, label="estimate y_j ± sigma_j"
        )
        ax.errorbar(
            x + 0.12,
            means,
            yerr=sds,
            fmt="s",
            color="C3",
            capsize=3,
            label=f"EB posterior mean ± sd ({guide})",
        )
        ax.axhline(mu, color="k", ls="--", lw=0.8, label=f"mu = {mu:.2f}  (tau = {tau:.2g})")
        ax.set_xticks(x, self.groups)
        ax.set_xlabel("school")
        ax.set_ylabel("coaching effect (SAT points)")
        ax.set_title(f"Eight schools: shrinkage by {run.method}")
        ax.legend(loc="upper right", fontsize=8)

        taus = np.linspace(0.0, 25.0, 251)
        prof = normal_profile(y, sigma, taus)[0] - top.log_marginal
        at = self.profile_at(tau) - top.log_marginal
        fig2, ax2 = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
        ax2.plot(taus, prof, "k-", label="profile max_mu log p(y | mu, tau)")
        ax2.plot([tau], [at], "C3o", label=f"{guide}: tau = {tau:.3g}")
        ax2.plot(
            [0.0],
            [0.0],
            "k^",
            ms=8,
            clip_on=False,
            label=f"type-II max: tau = 0 (boundary), mu = {top.mu:.2f}",
        )
        ax2.set_xlabel("tau")
        ax2.set_ylabel("nats below the maximum")
        ax2.set_xlim(0.0, taus[-1])
        ax2.set_title("Profile log marginal likelihood: the maximum is on the boundary")
        ax2.legend(loc="lower left", fontsize=8)
        # the neighbourhood of the boundary, where the data cannot tell tau values apart
        t01 = self.tau_within_001
        zoom = ax2.inset_axes((0.55, 0.52, 0.42, 0.4))
        near = np.linspace(0.0, max(1.5 * t01, 1.2 * tau), 200)
        zoom.plot(near, normal_profile(y, sigma, near)[0] - top.log_marginal, "k-")
        zoom.axhline(-0.01, color="0.5", ls=":", lw=0.8)
        zoom.axvspan(0.0, t01, color="0.9", zorder=0)
        zoom.plot([tau], [at], "C3o")
        zoom.plot([0.0], [0.0], "k^", ms=6, clip_on=False)
        zoom.set_xlim(0.0, near[-1])
        zoom.set_title(f"within 0.01 nats: tau < {t01:.3f}", fontsize=8)
        zoom.tick_params(labelsize=7)
        return {"shrinkage": fig, "profile": fig2}
