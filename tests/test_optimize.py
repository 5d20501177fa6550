"""Exact references found the same way on every machine (:mod:`zoo.optimize`).

The type-II maximisers are checked from many starting points, on resampled data, and with an
optimiser that reports failure at a good point (the status must not decide anything).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize as scipy_optimize

from zoo import optimize
from zoo.errors import ZooError
from zoo.models.empirical_bayes.data import AT_BATS, BASEBALL, EIGHT_SCHOOLS
from zoo.models.empirical_bayes.maxima import (
    KAPPA_MAX,
    _beta_binomial_torch,
    beta_binomial_log_marginal,
    beta_binomial_profile,
    beta_binomial_type2_max,
    normal_dlogp_dtau2_at_zero,
    normal_log_marginal,
    normal_profile,
    normal_type2_max,
)

HITS = np.array([row[1] for row in BASEBALL], dtype=float)
Y = np.array([row[1] for row in EIGHT_SCHOOLS])
SIGMA = np.array([row[2] for row in EIGHT_SCHOOLS])


def _quadratic(center: np.ndarray, curvature: np.ndarray):
    def fun(t: torch.Tensor) -> torch.Tensor:
        d = t - torch.as_tensor(center)
        return -0.5 * (d * torch.as_tensor(curvature) * d).sum() + 3.0

    return fun


def test_newton_finds_and_verifies_a_quadratic_maximum():
    center, curvature = np.array([1.0, -2.0, 0.5]), np.array([1.0, 1e-4, 1e4])
    top = optimize.maximize(_quadratic(center, curvature), [np.zeros(3)], what="q")
    np.testing.assert_allclose(top.x, center, atol=1e-9)
    assert top.value == pytest.approx(3.0, abs=1e-12)
    assert np.all(top.hessian_eigenvalues < 0)
    assert 0 <= top.decrement <= optimize.RTOL * 4


def test_a_saddle_or_a_minimum_is_never_accepted():
    def saddle(t: torch.Tensor) -> torch.Tensor:
        return t[0] ** 2 - t[1] ** 2  # unbounded above: no maximum anywhere

    with pytest.raises(ZooError, match="no verified maximum"):
        optimize.maximize(saddle, [np.array([0.0, 0.0]), np.array([1.0, 1.0])], what="s")


def test_the_optimiser_status_decides_nothing(monkeypatch):
    """L-BFGS-B that stops with ABNORMAL_TERMINATION (as it can on another CPU's kernels) at a
    point near the maximum: the verified Newton polish still returns the maximum."""
    real = scipy_optimize.minimize

    def abnormal(*args, **kwargs):
        res = real(*args, **kwargs)
        res.x = res.x + 1e-3
        res.success, res.status = False, 2
        res.message = "ABNORMAL_TERMINATION_IN_LNSRCH"
        return res

    monkeypatch.setattr(optimize.optimize, "minimize", abnormal)
    center, curvature = np.array([0.3, 0.7]), np.array([2.0, 5.0])
    top = optimize.maximize(_quadratic(center, curvature), [np.array([5.0, -5.0])], what="q")
    np.testing.assert_allclose(top.x, center, atol=1e-9)


def test_baseball_type2_max_from_many_starts():
    """Newton from 30 random starts over two decades of a and b reaches one point, the same
    as the grid-started search, with a + b = 793.23 and the profile falling on both sides."""
    top = beta_binomial_type2_max(HITS, AT_BATS)
    rng = np.random.default_rng(0)
    fun = _beta_binomial_torch(HITS, np.full_like(HITS, AT_BATS))
    for _ in range(30):
        start = np.log([top.a, top.b]) + rng.uniform(-2.0, 2.0, size=2)
        found = optimize.maximize(fun, [start], what="start")
        a, b = np.exp(found.x)
        assert a + b == pytest.approx(top.concentration, rel=1e-6)
        assert a / (a + b) == pytest.approx(top.mean, abs=1e-9)
    assert top.concentration == pytest.approx(793.2368, abs=1e-3)
    side, _ = beta_binomial_profile(
        HITS, AT_BATS, [top.concentration / 1.5, top.concentration * 1.5]
    )
    assert np.all(side < top.log_marginal)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    log_kappa=st.floats(math.log(2.0), math.log(5e4)),
    mean=st.floats(0.05, 0.95),
)
def test_beta_binomial_type2_max_on_resampled_data(seed, log_kappa, mean):
    """Counts drawn from a beta-binomial: either a maximum that no point of a fine
    (mean, concentration) grid beats, or a one-line error exactly when the data show no
    over-dispersion (the grid's best is the one-common-rate limit)."""
    rng = np.random.default_rng(seed)
    kappa = math.exp(log_kappa)
    p = rng.beta(mean * kappa, (1 - mean) * kappa, size=18)
    y = rng.binomial(AT_BATS, p).astype(float)
    kappas = np.geomspace(1e-2, KAPPA_MAX, 121)
    profile, _ = beta_binomial_profile(y, AT_BATS, kappas)
    try:
        top = beta_binomial_type2_max(y, AT_BATS)
    except ZooError as exc:  # only where the data resolve no over-dispersion
        assert len(str(exc).splitlines()) == 1
        pooled = beta_binomial_profile(y, AT_BATS, [KAPPA_MAX])[0][0]
        assert y.sum() in (0, 18 * AT_BATS) or profile.max() - pooled < 1e-3
        return
    assert profile.max() <= top.log_marginal + 1e-9
    assert top.log_marginal == pytest.approx(beta_binomial_log_marginal(y, AT_BATS, top.a, top.b))
    assert top.log_marginal > top.log_marginal_pooled


def test_eight_schools_boundary_maximum_is_decided_by_the_slope():
    top = normal_type2_max(Y, SIGMA)
    assert top.tau == 0.0 and top.on_boundary
    assert normal_dlogp_dtau2_at_zero(Y, SIGMA) < 0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    tau=st.floats(0.0, 40.0),
    mu=st.floats(-20.0, 20.0),
)
def test_normal_type2_max_on_resampled_data(seed, tau, mu):
    """Eight-schools-like data drawn with a known tau: the maximum beats a fine 2-D grid; at
    tau = 0 the slope in tau^2 is <= 0, inside the profile's derivative vanishes."""
    rng = np.random.default_rng(seed)
    y = rng.normal(mu, np.sqrt(SIGMA**2 + tau**2))
    top = normal_type2_max(y, SIGMA)
    taus = np.linspace(0.0, 4 * (np.ptp(y) + SIGMA.max()), 2001)
    profile, _ = normal_profile(y, SIGMA, taus)
    assert profile.max() <= top.log_marginal + 1e-9
    assert normal_log_marginal(y, SIGMA, top.mu, top.tau) == pytest.approx(top.log_marginal)
    if top.tau == 0.0:
        assert top.dlogp_dtau2_at_zero <= 0
    else:
        h = 1e-4 * top.tau
        up, down = normal_profile(y, SIGMA, [top.tau + h, top.tau - h])[0]
        assert up <= top.log_marginal + 1e-10 and down <= top.log_marginal + 1e-10
