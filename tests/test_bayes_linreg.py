"""Bayesian linear regression: closed forms against brute force, guides against their optimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import multivariate_normal, norm

import zoo.models.bayes_linreg as blr
from zoo.errors import DataError
from zoo.models.bayes_linreg import BayesianLinearRegression
from zoo.runner import fit

torch.set_num_threads(1)

NAME = "bayes-linreg"


def _toy(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    return torch.tensor(x), torch.tensor(y)


# -- the closed forms ---------------------------------------------------------------------------
@pytest.mark.parametrize(("prior_scale", "noise_scale"), [(1.0, 0.7), (0.3, 2.0), (5.0, 0.2)])
def test_log_evidence_forms_agree_with_multivariate_normal(prior_scale, noise_scale):
    m = BayesianLinearRegression(prior_scale=prior_scale, noise_scale=noise_scale)
    x, y = m.x, m.y
    cov = noise_scale**2 * torch.eye(m.num_data, dtype=torch.float64) + prior_scale**2 * x @ x.T
    want = torch.distributions.MultivariateNormal(torch.zeros_like(y), cov).log_prob(y).item()
    # three float64 routes to one number of size ~500: they agree to ~1e-12 relative; 1e-8
    # absolute leaves room for the N x N Cholesky's rounding (condition number ~ 1e4)
    assert blr.log_evidence(x, y, prior_scale, noise_scale) == pytest.approx(want, abs=1e-8)
    assert blr.log_evidence_direct(x, y, prior_scale, noise_scale) == pytest.approx(want, abs=1e-8)
    assert m.log_evidence() == pytest.approx(want, abs=1e-8)


def test_log_evidence_and_posterior_by_quadrature_in_one_dimension():
    x, y = _toy(6, 1, seed=0)
    s, sigma = 0.8, 0.6
    xs, ys = x[:, 0].numpy(), y.numpy()

    def joint(w: float) -> float:  # p(w) p(y | w)
        return norm.pdf(w, 0.0, s) * np.prod(norm.pdf(ys, xs * w, sigma))

    evidence, err = integrate.quad(joint, -10, 10, epsabs=0, epsrel=1e-12, points=[0.0])
    first, _ = integrate.quad(lambda w: w * joint(w), -10, 10, epsabs=0, epsrel=1e-12)
    # quad reports its own error estimate (~1e-14 relative); the prior puts < 1e-30 of its
    # mass outside [-10, 10] (12 prior sds), so 1e-9 on the log is far above both
    assert err < 1e-12 * evidence
    assert blr.log_evidence(x, y, s, sigma) == pytest.approx(math.log(evidence), abs=1e-9)
    assert blr.posterior_mean(x, y, s, sigma).item() == pytest.approx(first / evidence, abs=1e-9)


def test_log_evidence_by_quadrature_in_two_dimensions():
    x, y = _toy(5, 2, seed=1)
    s, sigma = 1.0, 0.7
    xs, ys = x.numpy(), y.numpy()
    log_ev = blr.log_evidence(x, y, s, sigma)
    mean = blr.posterior_mean(x, y, s, sigma).numpy()
    sd = blr.posterior_precision(x, s, sigma).inverse().diagonal().sqrt().numpy()

    rows, log_2pi = list(zip(xs.tolist(), ys.tolist(), strict=True)), math.log(2 * math.pi)
    const = -0.5 * (len(rows) + 2) * log_2pi - len(rows) * math.log(sigma) - 2 * math.log(s)

    def ratio(w2: float, w1: float) -> float:  # p(w) p(y | w) / p(y): integrates to 1
        sq = sum((yn - xn[0] * w1 - xn[1] * w2) ** 2 for xn, yn in rows)
        log_joint = const - 0.5 * (w1 * w1 + w2 * w2) / s**2 - 0.5 * sq / sigma**2
        return math.exp(log_joint - log_ev)

    lo, hi = mean - 12 * sd, mean + 12 * sd  # 12 marginal sds: the tails hold < 1e-30
    total, _ = integrate.dblquad(ratio, lo[0], hi[0], lo[1], hi[1], epsabs=1e-11, epsrel=1e-11)
    # the integral of the exact posterior is 1 up to the quadrature's error (~1e-11)
    assert total == pytest.approx(1.0, abs=1e-8)


def test_best_mean_field_gap_is_the_elbo_of_the_diagonal_precision_guide():
    """PRML §10.1.2: the best factorised Gaussian has q_i = N(m_i, 1 / Lambda_ii)."""
    m = BayesianLinearRegression()
    x, y, s, sigma = m.x, m.y, m.prior_scale, m.noise_scale
    lam = blr.posterior_precision(x, s, sigma)
    mean = blr.posterior_mean(x, y, s, sigma)
    diag_cov = torch.diag(1.0 / lam.diagonal())
    best = blr.gaussian_elbo(x, y, s, sigma, mean, diag_cov)
    # the same number two ways (formula vs the Gaussian ELBO): agreement to rounding, ~1e-12
    assert m.best_elbo("mean-field") == pytest.approx(best, abs=1e-9)
    assert m.log_evidence() - best == pytest.approx(blr.mean_field_gap(lam), abs=1e-9)
    assert blr.gaussian_elbo(x, y, s, sigma, mean, lam.inverse()) == pytest.approx(
        m.log_evidence(), abs=1e-9
    )
    # optimality: moving any mean or any variance of the diagonal guide lowers its ELBO
    for i in range(m.dim):
        for dm, dv in ((0.01, 1.0), (-0.01, 1.0), (0.0, 1.1), (0.0, 0.9)):
            mean2, cov2 = mean.clone(), diag_cov.clone()
            mean2[i] += dm
            cov2[i, i] *= dv
            assert blr.gaussian_elbo(x, y, s, sigma, mean2, cov2) < best
    # the analytic gap on the diabetes data is several nats (strongly correlated weights)
    assert blr.mean_field_gap(lam) > 3.0


def test_gaussian_elbo_against_monte_carlo():
    x, y = _toy(20, 3, seed=2)
    s, sigma = 1.5, 0.5
    rng = np.random.default_rng(3)
    mean = rng.normal(size=3)
    a = rng.normal(size=(3, 3))
    cov = 0.05 * (a @ a.T + np.eye(3))
    draws = rng.multivariate_normal(mean, cov, size=200_000)
    log_w = (
        norm.logpdf(draws, 0.0, s).sum(-1)
        + norm.logpdf(y.numpy(), draws @ x.numpy().T, sigma).sum(-1)
        - multivariate_normal(mean, cov).logpdf(draws)
    )
    se = log_w.std() / math.sqrt(log_w.size)
    got = blr.gaussian_elbo(x, y, s, sigma, torch.tensor(mean), torch.tensor(cov))
    assert abs(got - log_w.mean()) < 4 * se  # pure Monte Carlo error: 4 SE fails 1 in 16 000


# -- the guides, trained by the shared runner ---------------------------------------------------
@pytest.fixture(scope="module")
def mean_field():
    return fit(NAME, guide="mean-field", seed=0, eval_particles=2000, progress=False)


@pytest.fixture(scope="module")
def full_rank():
    return fit(NAME, guide="full-rank", seed=0, eval_particles=2000, progress=False)


def test_exact_guide_elbo_is_the_log_evidence_with_zero_variance():
    result = fit(NAME, guide="exact", steps=1, eval_particles=200, progress=False)
    d = result.diagnostics
    # log p(y, w) - log p(w | y) = log p(y) for every draw: only float64 rounding (~1e-13)
    assert d.elbo == pytest.approx(d.log_evidence, abs=1e-6)
    assert d.elbo_se < 1e-9
    assert abs(d.gap) < 1e-6 and abs(d.family_gap) < 1e-6
    assert d.iwae == pytest.approx(d.log_evidence, abs=1e-6)


def test_full_rank_guide_reaches_the_log_evidence(full_rank):
    d, s = full_rank.diagnostics, full_rank.summary
    assert full_rank.config.elbo == "trace"
    # the fitted Gaussian's gap KL(q || p) in closed form: ~0.003-0.005 nats after the default
    # 1200 steps over seeds 0-3; 0.01 is the required accuracy
    assert 0.0 <= s["fitted_gap_analytic"] < 0.01
    # the Monte Carlo ELBO agrees, up to its standard error (3 SE: 1 in 740 two-sided)
    assert d.elbo <= d.log_evidence + 3 * d.elbo_se
    assert abs(d.gap - s["fitted_gap_analytic"]) < 3 * d.elbo_se
    assert d.family_gap == pytest.approx(d.gap)  # full rank's best is the log evidence
    np.testing.assert_allclose(  # posterior means within 0.05 posterior sds
        s["posterior_mean_fitted"],
        s["posterior_mean_exact"],
        atol=0.05 * min(s["posterior_sd_exact"]),
    )


def test_mean_field_guide_reaches_the_best_mean_field_elbo(mean_field):
    d, s = mean_field.diagnostics, mean_field.summary
    assert mean_field.config.elbo == "trace"
    best = s["best_mean_field_elbo"]
    assert d.best_elbo == pytest.approx(best)
    # analytic family gap of the fitted q: ~0.0005-0.002 nats over seeds; required < 0.01
    assert 0.0 <= best - s["fitted_elbo_analytic"] < 0.01
    # Monte Carlo: not above the family's best beyond 3 SE, and within 0.01 + 3 SE of it
    assert d.elbo <= best + 3 * d.elbo_se
    assert abs(d.family_gap) < 0.01 + 3 * d.elbo_se
    # the report carries both gaps: to the evidence (~3.8 nats) and to the family's best (~0)
    assert d.gap == pytest.approx(s["mean_field_gap_analytic"], abs=0.01 + 3 * d.elbo_se)
    assert s["mean_field_gap_analytic"] == pytest.approx(d.log_evidence - best)
    # exact means, too-narrow variances 1 / Lambda_ii (PRML Fig. 10.2); 3% relative on the sds
    # is ~10x the spread left by the optimiser
    sd_fit, sd_best = (
        np.array(s["posterior_sd_fitted"]),
        np.array(s["posterior_sd_best_mean_field"]),
    )
    np.testing.assert_allclose(sd_fit, sd_best, rtol=0.03)
    assert (sd_fit < np.array(s["posterior_sd_exact"])).all()
    # exact means, to the accuracy the family gap above allows: the mean offset d alone costs
    # d' Lambda d / 2 nats of ELBO, so by Cauchy-Schwarz d_i^2 <= 2 gap Sigma_ii, i.e.
    # |d_i| <= sqrt(2 x 0.01) sd_i = 0.14 exact posterior sds (measured: 0.016-0.061 over
    # seeds 0-7, family gaps 0.0005-0.0023 nats)
    offset = np.abs(np.subtract(s["posterior_mean_fitted"], s["posterior_mean_exact"]))
    assert (offset <= math.sqrt(2 * 0.01) * np.array(s["posterior_sd_exact"])).all()


def test_report_keys_and_saved_run(mean_field, tmp_path):
    s = mean_field.summary
    for key in (
        "feature_names",
        "posterior_mean_exact",
        "posterior_sd_exact",
        "posterior_mean_fitted",
        "posterior_sd_fitted",
        "mean_field_gap_analytic",
        "fitted_gap_analytic",
        "log_evidence",
        "best_mean_field_elbo",
    ):
        assert key in s
    assert s["feature_names"] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert s["ols_residual_sd"] == pytest.approx(0.7, abs=0.01)  # why noise_scale defaults to 0.7
    report = mean_field.report()["diagnostics"]
    assert report["gap"] is not None and report["family_gap"] is not None
    assert mean_field.posterior_draws["w"].shape == (1000, 10)
    mean_field.save(tmp_path)
    assert (tmp_path / "posterior_ellipses.png").stat().st_size > 0
    assert (tmp_path / "report.json").exists()


# -- the user's own data -------------------------------------------------------------------------
def test_csv_target_column_reproduces_the_bundled_data(tmp_path):
    import pandas as pd

    features, target, names = blr.load_diabetes_data()
    frame = pd.DataFrame(features, columns=names)
    frame.insert(3, "progression", target)
    frame.insert(0, "patient", [f"p{i}" for i in range(len(frame))])  # non-numeric: dropped
    path = tmp_path / "diabetes.csv"
    frame.to_csv(path, index=False)
    m = BayesianLinearRegression(str(path), target="progression")
    assert m.feature_names == names
    assert m.log_evidence() == pytest.approx(BayesianLinearRegression().log_evidence(), abs=1e-8)


def test_bad_data_files_give_clear_data_errors(tmp_path):
    text = tmp_path / "text.csv"
    text.write_text("name,colour\nann,red\nbob,blue\ncy,green\n")
    with pytest.raises(DataError, match="no numeric column"):
        BayesianLinearRegression(str(text))
    one = tmp_path / "one.csv"
    one.write_text("y\n1\n2\n3\n4\n")
    with pytest.raises(DataError, match="at least one feature column and a target"):
        BayesianLinearRegression(str(one))
    two = tmp_path / "two.csv"
    two.write_text("a,b\n1,2\n2,3\n3,5\n4,4\n")
    with pytest.raises(DataError, match=r"--target 'c' is not a numeric column .* a, b"):
        BayesianLinearRegression(str(two), target="c")
    const = tmp_path / "const.csv"
    const.write_text("a,b\n1,2\n1,3\n1,5\n1,4\n")
    with pytest.raises(DataError, match="constant"):
        BayesianLinearRegression(str(const))
    with pytest.raises(DataError, match="does not exist"):
        BayesianLinearRegression(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="--target"):
        BayesianLinearRegression(target="s1")  # the bundled data has a fixed target
