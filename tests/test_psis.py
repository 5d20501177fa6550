"""Tests of zoo.psis.pareto_khat against tails known in closed form (numpy only, torch optional)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from zoo.psis import MIN_DRAWS, pareto_khat

S = 20_000
# ArviZ fits the M = floor(3 sqrt(S)) = 424 largest ratios (arviz 0.x: ceil, 425).
M = math.floor(3 * math.sqrt(S))


def gpd_log_ratios(k: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Log of draws from the generalized Pareto distribution GPD(mu=0, sigma=1, shape k)."""
    u = rng.uniform(size=size)
    return np.log(np.expm1(-k * np.log1p(-u)) / k)  # inverse CDF


def normal_log_ratios(s: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """log p(z) - log q(z) for target p = N(0, 1) and proposal q = N(0, s^2), z ~ q."""
    z = rng.normal(0.0, s, size=size)
    log_p = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    log_q = -0.5 * (z / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    return log_p - log_q


def test_identical_ratios_exact_guide_is_minus_inf() -> None:
    # A proposal equal to the target: every log ratio is log p(x) (here an arbitrary constant).
    assert pareto_khat(np.full(S, -123.456)) == -math.inf
    assert pareto_khat(np.zeros(MIN_DRAWS)) == -math.inf


def test_atom_at_the_largest_ratio_is_minus_inf() -> None:
    # 1000 of the draws share the largest ratio, more than the M = 424 draws of the fitted tail:
    # the weights are bounded by an atom at their maximum, there is no tail to fit.
    rng = np.random.default_rng(0)
    lr = rng.normal(size=S)
    lr[:1000] = lr.max() + 1.0
    assert pareto_khat(lr) == -math.inf


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8])
def test_generalized_pareto_ratios_recover_their_shape(k: float) -> None:
    # The weights are exactly GPD(0, 1, k); a GPD is threshold-stable (its excesses over any
    # threshold are GPD with the same k), so the fitted tail has shape exactly k.
    # Sampling error: the GPD shape estimate from M tail draws has asymptotic sd (1 + k)/sqrt(M)
    # (the MLE's; Zhang-Stephens is as efficient: we measured 0.050, 0.068, 0.085 across
    # replicates against 0.058, 0.073, 0.087). Averaging R = 32 independent replicates of S draws
    # divides it by sqrt(R); we allow 4 of these standard errors, plus the known bias of ArviZ's
    # weak prior, which pulls k-hat towards 0.5 with weight 10 / (M + 10).
    rng = np.random.default_rng(12345)
    reps = 32
    khats = np.array([pareto_khat(gpd_log_ratios(k, S, rng)) for _ in range(reps)])
    expected = (M * k + 10 * 0.5) / (M + 10)
    tol = 4 * (1 + k) / math.sqrt(M * reps)  # 0.029, 0.036, 0.044
    assert abs(khats.mean() - expected) < tol
    # A single replicate is within 4 sds too.
    assert np.all(np.abs(khats - expected) < 4 * (1 + k) / math.sqrt(M))


def test_sign_convention_right_tail_of_the_weights() -> None:
    # log ratios with a light right tail (GPD shape 0.2) and their negation, whose weights
    # exp(-log x) = 1/x have a Pareto tail of index 1 (the GPD density is 1 at x = 0), k = 1.
    # Fitting the wrong end of the ratios swaps the two values.
    rng = np.random.default_rng(7)
    lr = gpd_log_ratios(0.2, S, rng)
    assert abs(pareto_khat(lr) - 0.2) < 4 * 1.2 / math.sqrt(M)  # 0.23
    assert abs(pareto_khat(-lr) - 1.0) < 4 * 2.0 / math.sqrt(M)  # 0.39


def test_normal_good_and_bad_proposals() -> None:
    # Target N(0, 1), proposal N(0, s^2): w(z) = s exp(c z^2 / 2) with c = 1/s^2 - 1.
    # - s < 1: with z = s u, u ~ N(0, 1), P(w > t) = P(u^2 > 2 log(t/s) / (c s^2)), a chi-square(1)
    #   tail ~ (t/s)^(-1 / (c s^2)) / sqrt(log t): a Pareto tail of index 1/(1 - s^2), k = 1 - s^2
    #   (the slowly varying 1/sqrt(log t) biases finite-S estimates a little: we measured 0.90 for
    #   s = 0.3, k = 0.91).
    # - s > 1: w <= s is bounded, its tail has k < 0 (near its maximum, s - w ~ z^2, so
    #   P(w > s - e) ~ sqrt(e) and k = -2 for a 1-D latent).
    # Mean over 8 replicates: sampling sd about (1 + 0.91)/sqrt(424 * 8) = 0.03, so the margins
    # below are over 6 sds.
    rng = np.random.default_rng(2024)
    bad = np.mean([pareto_khat(normal_log_ratios(0.3, S, rng)) for _ in range(8)])
    good = np.mean([pareto_khat(normal_log_ratios(1.5, S, rng)) for _ in range(8)])
    assert bad > 0.7
    assert abs(bad - (1 - 0.3**2)) < 0.1
    assert good < 0.5
    assert good < 0.0


def test_additive_constant_does_not_change_khat() -> None:
    # log p(x, z) is an unnormalized log posterior: shifting every log ratio rescales the weights.
    rng = np.random.default_rng(3)
    lr = normal_log_ratios(0.5, S, rng)
    assert pareto_khat(lr + 1e4) == pytest.approx(pareto_khat(lr), abs=1e-8)
    assert pareto_khat(lr - 1e4) == pytest.approx(pareto_khat(lr), abs=1e-8)


def test_extremely_spread_ratios_are_flagged_unreliable() -> None:
    # Log ratios spread over thousands of nats: all weights but a handful underflow to 0, the
    # tail fit breaks down (arviz 0.x returns a huge k, arviz 1.x NaN, mapped to inf).
    rng = np.random.default_rng(4)
    assert pareto_khat(1000.0 * rng.normal(size=S)) > 0.7


def test_no_warnings_even_for_a_bad_tail() -> None:
    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pareto_khat(gpd_log_ratios(1.5, S, rng)) > 0.7
        assert pareto_khat(1000.0 * rng.normal(size=S)) > 0.7


def test_input_is_not_modified_and_lists_are_accepted() -> None:
    rng = np.random.default_rng(6)
    lr = normal_log_ratios(0.7, 1000, rng)
    before = lr.copy()
    k = pareto_khat(lr)
    np.testing.assert_array_equal(lr, before)
    assert pareto_khat(lr.tolist()) == k
    assert math.isfinite(k)


def test_torch_and_numpy_inputs_agree() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    lr = normal_log_ratios(0.6, 5000, rng)
    k = pareto_khat(lr)
    assert pareto_khat(torch.from_numpy(lr)) == k
    # a float32 tensor that requires grad (as from a model) is detached and read as float64
    lr32 = torch.tensor(lr, dtype=torch.float32, requires_grad=True)
    assert pareto_khat(lr32) == pareto_khat(lr32.detach().numpy().astype(np.float64))
    assert pareto_khat(lr32) == pytest.approx(k, abs=1e-3)


def test_minimum_number_of_draws() -> None:
    rng = np.random.default_rng(9)
    assert math.isfinite(pareto_khat(rng.normal(size=MIN_DRAWS)))
    with pytest.raises(ValueError, match="at least"):
        pareto_khat(rng.normal(size=MIN_DRAWS - 1))
    with pytest.raises(ValueError, match="at least"):
        pareto_khat([])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_ratios_raise(bad: float) -> None:
    lr = np.random.default_rng(10).normal(size=100)
    lr[17] = bad
    with pytest.raises(ValueError, match="finite"):
        pareto_khat(lr)


def test_non_1d_input_raises() -> None:
    with pytest.raises(ValueError, match="1-D"):
        pareto_khat(np.zeros((100, 2)))
    with pytest.raises(ValueError, match="1-D"):
        pareto_khat(1.0)


def test_the_effective_sample_size_is_kish():
    """(sum w)^2 / sum w^2: S for equal weights, 1 for one dominant weight, and invariant to
    a common shift of the log weights (computed relative to the largest)."""
    import torch

    from zoo.diagnostics import effective_sample_size

    assert effective_sample_size(torch.zeros(50)) == pytest.approx(50.0)
    assert effective_sample_size(torch.tensor([0.0, -800.0, -900.0])) == pytest.approx(1.0)
    log_w = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert effective_sample_size(log_w + 1e3) == pytest.approx(100.0 / 30.0)
