"""Every model x guide: each figure of the report means what its label says.

A few training steps are enough: these are identities and inequalities that hold at any
parameters, so the runs are short and the checks are exact up to Monte Carlo error.

- ELBO = E_q log p(x | z) - KL(q || prior), per particle when the KL is a Monte Carlo estimate
  and to Monte Carlo error where it is analytic (the KL must be the KL of the actual q);
- ELBO <= IWAE (K particles) <= log p(x) where the objective is a bound, each to 4 SE;
- a point-mass guide has no importance weights: no IWAE, no k-hat;
- the closed-form ELBO, where a model has one, is <= log p(x) and agrees with the estimate;
- the shortfall from the maximum is reported, and >= 0, where the model knows the maximum.
"""

from __future__ import annotations

import math

import pytest

import zoo
from zoo.registry import get_model, model_names

CASES = [(name, guide) for name in model_names() for guide in get_model(name).guides]
EVAL_PARTICLES = 200


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}/{g}" for m, g in CASES])
def result(request):
    name, guide = request.param
    options = {}
    if "test_particles" in {opt.name for opt in get_model(name).options}:
        options["test_particles"] = 100
    return zoo.fit(
        name,
        guide=guide,
        quick=True,
        steps=5,
        eval_particles=EVAL_PARTICLES,
        progress=False,
        **options,
    )


def test_elbo_is_expected_log_likelihood_minus_kl(result):
    d = result.diagnostics
    tol = 5 * (d.elbo_se + d.expected_log_likelihood_se) + 1e-9 * abs(d.elbo)
    assert abs(d.elbo - (d.expected_log_likelihood - d.kl)) <= tol
    if d.kl_method == "monte-carlo":  # the same particles: an identity, up to the rounding
        # of float32 sums in the networks' models (1e-7 relative per term)
        assert d.elbo == pytest.approx(d.expected_log_likelihood - d.kl, rel=1e-6, abs=1e-6)


def test_bounds_are_ordered(result):
    d = result.diagnostics
    if not d.elbo_is_bound:
        assert math.isnan(d.iwae) and math.isnan(d.khat)
        assert d.gap is None and d.exact_elbo is None
        return
    if math.isfinite(d.iwae):
        assert d.elbo <= d.iwae + 4 * (d.elbo_se + d.iwae_se) + 1e-9 * abs(d.elbo)
        if d.log_evidence is not None:
            assert d.iwae <= d.log_evidence + 4 * d.iwae_se + 1e-9 * abs(d.log_evidence)
    if d.log_evidence is not None:
        assert d.gap >= -4 * d.gap_se - 1e-9 * abs(d.log_evidence)


def test_closed_form_elbo_agrees_with_the_estimate(result):
    d = result.diagnostics
    if d.exact_elbo is None:
        return
    assert abs(d.exact_elbo - d.elbo) <= 5 * d.elbo_se + 1e-8 * abs(d.elbo)
    if d.log_evidence is not None:
        assert d.exact_elbo <= d.log_evidence + 1e-8 * abs(d.log_evidence)
        assert d.gap_se == 0.0


def test_shortfall_where_the_maximum_is_known(result):
    d = result.diagnostics
    if d.max_log_evidence is None:
        assert d.shortfall is None
        return
    assert d.shortfall is not None
    assert d.shortfall >= -1e-7 * (1 + abs(d.max_log_evidence))


def test_khat_threshold_follows_the_sample_size(result):
    d = result.diagnostics
    assert d.khat_threshold == pytest.approx(min(1 - 1 / math.log10(EVAL_PARTICLES), 0.7))
    assert d.khat_unreliable == (math.isfinite(d.khat) and d.khat > d.khat_threshold)


def test_the_models_that_know_a_closed_form_elbo_report_it():
    want = {
        ("bayes-linreg", "mean-field"),
        ("bayes-linreg", "full-rank"),
        ("normal-gamma", "mean-field"),
        ("normal-gamma", "full-rank"),
        ("free-energy-perception", "gaussian"),
        ("free-energy-perception", "spline-flow"),
        ("free-energy-learning", "gaussian"),
        ("linear-vae", "diagonal"),
        ("linear-vae", "full-covariance"),
        ("predictive-coding", "mean-field"),
        ("predictive-coding", "full-rank"),
        ("ising", "mean-field"),
    }
    for name, guide in sorted(want):
        r = zoo.fit(name, guide=guide, quick=True, steps=2, eval_particles=100, progress=False)
        assert r.diagnostics.exact_elbo is not None, (name, guide)
