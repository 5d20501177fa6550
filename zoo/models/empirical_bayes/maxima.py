"""Closed forms and exact type-II maxima of the two conjugate hierarchies (numpy / scipy, float64).

- Beta-binomial (Efron & Morris 1975, JASA 70, 311-319): p_i ~ Beta(a, b),
  y_i | p_i ~ Binomial(n, p_i); p(y | a, b) = prod_i C(n, y_i) B(a + y_i, b + n - y_i) / B(a, b).
- Normal-normal (Rubin 1981; Gelman et al., BDA3 §5.5): theta_j ~ N(mu, tau^2),
  y_j | theta_j ~ N(theta_j, sigma_j^2); p(y | mu, tau) = prod_j N(y_j | mu, sigma_j^2 + tau^2).

The type-II maxima (argmax of the marginal likelihood over the hyperparameters; Bishop, PRML
§3.5) are found by a grid over the profile in the concentration (tau), refined by Newton's method
on the exact Hessian (Brent's method in tau) and verified by conditions scaled to the problem
(:mod:`zoo.optimize`), so every machine finds the same maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.special import betaln, gammaln

from zoo.errors import ZooError
from zoo.optimize import maximize


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
