"""The Gaussian formulas of :mod:`zoo.gaussian` against independent references (torch's
distributions and scipy's), on random positive-definite matrices in float64; and the two
estimates from samples of :mod:`zoo.diagnostics` that every model shares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from zoo.diagnostics import log_mean_exp, mean_with_se
from zoo.gaussian import (
    LOG_2PI,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_density,
    log_normal,
    mean_field_gap,
    standard_normal_kl,
)

F64 = torch.float64


def _spd(gen: torch.Generator, d: int, *batch: int) -> torch.Tensor:
    """A random symmetric positive-definite matrix (or a batch of them), float64."""
    a = torch.randn(*batch, d, d, generator=gen, dtype=F64)
    return a @ a.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=F64)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- log-densities -------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 3, 7])
def test_gaussian_log_density_of_rows_matches_torch_and_scipy(d):
    gen = _gen(d)
    cov, mean = _spd(gen, d), torch.randn(d, generator=gen, dtype=F64)
    x = torch.randn(20, d, generator=gen, dtype=F64)
    got = gaussian_log_density(x, mean, cov)
    assert got.shape == (20,) and got.dtype == F64
    want = MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    scipy_want = stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(got.numpy(), scipy_want, rtol=1e-12, atol=1e-12)


def test_gaussian_log_density_of_one_point_a_zero_mean_and_batches():
    gen = _gen(1)
    d = 4
    cov, x = _spd(gen, d), torch.randn(6, d, generator=gen, dtype=F64)
    centred = MultivariateNormal(torch.zeros(d, dtype=F64), covariance_matrix=cov)
    # one point (D,) gives a scalar; a scalar mean 0 is the centred Gaussian
    one = gaussian_log_density(x[0], 0.0, cov)
    assert one.shape == ()
    torch.testing.assert_close(one, centred.log_prob(x[0]), rtol=1e-12, atol=1e-12)
    # leading batch dimensions of the points, under one covariance
    grid = x.reshape(2, 3, d)
    torch.testing.assert_close(
        gaussian_log_density(grid, 0.0, cov), centred.log_prob(grid), rtol=1e-12, atol=1e-12
    )
    # one covariance per row
    covs, means = _spd(gen, d, 6), torch.randn(6, d, generator=gen, dtype=F64)
    want = MultivariateNormal(means, covariance_matrix=covs).log_prob(x)
    torch.testing.assert_close(gaussian_log_density(x, means, covs), want, rtol=1e-12, atol=1e-12)


def test_gaussian_log_density_refuses_a_matrix_that_is_not_positive_definite():
    cov = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)
    with pytest.raises(torch.linalg.LinAlgError):
        gaussian_log_density(torch.zeros(1, 2, dtype=F64), 0.0, cov)


def test_log_normal_elementwise_for_floats_arrays_and_tensors():
    x, mean, var = 0.3, -1.2, 2.5
    want = stats.norm(mean, math.sqrt(var)).logpdf(x)
    assert log_normal(x, mean, var) == pytest.approx(want, rel=1e-14)
    grid = np.linspace(-3.0, 3.0, 7)
    np.testing.assert_allclose(
        log_normal(grid, mean, var), stats.norm(mean, math.sqrt(var)).logpdf(grid), rtol=1e-13
    )
    v = torch.tensor([0.5, 1.0, 4.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.1, -2.0, 3.0], dtype=F64)
    got = log_normal(t, 1.0, v)
    torch.testing.assert_close(got, Normal(1.0, v.sqrt()).log_prob(t), rtol=1e-13, atol=1e-13)
    (grad,) = torch.autograd.grad(got.sum(), v)  # differentiable in the variance
    d_var = -0.5 / v + 0.5 * (t - 1.0) ** 2 / v**2
    torch.testing.assert_close(grad, d_var.detach(), rtol=1e-12, atol=1e-12)
    assert log_normal(0.0, 0.0, 1.0) == pytest.approx(-0.5 * LOG_2PI, rel=1e-15)


# -- divergences and entropy ---------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 5])
def test_gaussian_kl_matches_torch_in_covariance_and_precision_form(d):
    gen = _gen(10 + d)
    cov_p, loc_p = _spd(gen, d), torch.randn(d, generator=gen, dtype=F64)
    covs_q, locs_q = _spd(gen, d, 8), torch.randn(8, d, generator=gen, dtype=F64)
    p = MultivariateNormal(loc_p, covariance_matrix=cov_p)
    want = kl_divergence(MultivariateNormal(locs_q, covariance_matrix=covs_q), p)
    got = gaussian_kl(locs_q, covs_q, loc_p, cov_p)
    assert got.shape == (8,) and got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    by_precision = gaussian_kl(locs_q, covs_q, loc_p, precision_p=torch.linalg.inv(cov_p))
    torch.testing.assert_close(by_precision, want, rtol=1e-10, atol=1e-12)
    # one shared q covariance, one p location per row
    locs_p = torch.randn(8, d, generator=gen, dtype=F64)
    shared = MultivariateNormal(locs_q, covariance_matrix=covs_q[0])
    want = kl_divergence(shared, MultivariateNormal(locs_p, covariance_matrix=cov_p))
    torch.testing.assert_close(
        gaussian_kl(locs_q, covs_q[0], locs_p, cov_p), want, rtol=1e-10, atol=1e-12
    )
    # KL(p || p) = 0
    assert float(gaussian_kl(loc_p, cov_p, loc_p, cov_p)) == pytest.approx(0.0, abs=1e-12)


def test_gaussian_kl_takes_exactly_one_form_of_p():
    eye = torch.eye(2, dtype=F64)
    zero = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="not both"):
        gaussian_kl(zero, eye, zero)
    with pytest.raises(ValueError, match="not both"):
        gaussian_kl(zero, eye, zero, eye, precision_p=eye)


def test_standard_normal_kl_elementwise():
    gen = _gen(3)
    loc = torch.randn(4, 5, generator=gen, dtype=F64)
    scale = torch.rand(4, 5, generator=gen, dtype=F64) * 3 + 0.05
    want = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0))
    got = standard_normal_kl(loc, scale)
    assert got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    # the one-dimensional case of the multivariate formula
    one = gaussian_kl(
        loc[0, :1], scale[0, :1].pow(2).diag(), torch.zeros(1, dtype=F64), torch.eye(1, dtype=F64)
    )
    assert float(one) == pytest.approx(float(got[0, 0]), rel=1e-12)


@pytest.mark.parametrize("d", [1, 3, 6])
def test_gaussian_entropy_matches_torch_and_scipy(d):
    gen = _gen(20 + d)
    cov = _spd(gen, d)
    got = gaussian_entropy(cov)
    want = MultivariateNormal(torch.zeros(d, dtype=F64), covariance_matrix=cov).entropy()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    from_numpy = gaussian_entropy(cov.numpy())
    assert from_numpy.dtype == F64
    scipy_want = stats.multivariate_normal(np.zeros(d), cov.numpy()).entropy()
    assert float(from_numpy) == pytest.approx(float(scipy_want), rel=1e-12, abs=1e-12)
    batch = _spd(gen, d, 3)
    want = MultivariateNormal(torch.zeros(d, dtype=F64), covariance_matrix=batch).entropy()
    torch.testing.assert_close(gaussian_entropy(batch), want, rtol=1e-12, atol=1e-12)


# -- the best mean field ---------------------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 4, 8])
def test_mean_field_gap_is_the_kl_of_the_best_factorised_gaussian(d):
    """1/2 (sum ln Lambda_ii - ln |Lambda|) = KL(q* || p), q*_i = N(m_i, 1 / Lambda_ii),
    computed by torch from the two distributions; and no other factorised q does better."""
    gen = _gen(30 + d)
    precision, m = _spd(gen, d), torch.randn(d, generator=gen, dtype=F64)
    p = MultivariateNormal(m, precision_matrix=precision)
    best_var = 1.0 / precision.diagonal()
    q_star = MultivariateNormal(m, covariance_matrix=torch.diag(best_var))
    gap = mean_field_gap(precision)
    assert isinstance(gap, float)
    assert gap == pytest.approx(float(kl_divergence(q_star, p)), rel=1e-10, abs=1e-12)
    assert gap > 0
    for scale in (0.9, 1.1):  # other variances, or other means, cost more
        other = MultivariateNormal(m, covariance_matrix=torch.diag(best_var * scale))
        assert float(kl_divergence(other, p)) > gap
    shifted = MultivariateNormal(m + 0.1, covariance_matrix=torch.diag(best_var))
    assert float(kl_divergence(shifted, p)) > gap


def test_mean_field_gap_is_zero_for_a_diagonal_precision():
    precision = torch.diag(torch.tensor([0.5, 2.0, 7.0], dtype=F64))
    assert mean_field_gap(precision) == pytest.approx(0.0, abs=1e-15)


# -- estimates from samples ----------------------------------------------------------------------
def test_mean_with_se_over_every_element_in_float64():
    gen = _gen(40)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float32)
    mean, se = mean_with_se(x)
    flat = x.double().numpy().ravel()
    assert mean == pytest.approx(flat.mean(), rel=1e-14)
    assert se == pytest.approx(stats.sem(flat), rel=1e-12)
    assert math.isnan(mean_with_se(torch.tensor([1.5], dtype=F64))[1])


def test_log_mean_exp_is_stable_and_exact():
    gen = _gen(41)
    log_w = torch.randn(50, 3, generator=gen, dtype=F64) * 4 - 1000.0
    want = torch.log(torch.exp(log_w + 1000.0).mean(0)) - 1000.0
    torch.testing.assert_close(log_mean_exp(log_w, 0), want, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(log_mean_exp(log_w.T, 1), want, rtol=1e-13, atol=1e-12)
