"""The contract, checked for every registered model x guide by one shared validator
(:mod:`zoo.contract`): the declaration, a build from the model's smoke options, particles that
broadcast, ELBO <= log p(x) at initialisation, a JSON summary, and the figures and tables of a
short run. Then each figure of the report means what its label says.

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

import functools
import importlib
import inspect
import math
import pkgutil
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
import zoo.models
from zoo.contract import ContractError, build, check_declaration, check_model, check_outputs
from zoo.declarations import (
    ArviZ,
    ClosedForm,
    Estimators,
    Guide,
    Training,
    elbo_for,
    local_step_guides,
    training_for,
)
from zoo.model import Option, ZooModel, positive_int
from zoo.particles import ParticleBroadcastError
from zoo.registry import get_model, model_names

CASES = [(name, guide) for name in model_names() for guide in get_model(name).guides]
IDS = [f"{m}/{g}" for m, g in CASES]
EVAL_PARTICLES = 200


@functools.cache
def _short_run(name: str, guide: str) -> zoo.FitResult:
    model = check_model(name, guide)  # every clause, at initialisation
    return zoo.fit(
        model, guide=guide, quick=True, steps=5, eval_particles=EVAL_PARTICLES, progress=False
    )


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def result(request):
    return _short_run(*request.param)


def _figures_case(name: str, guide: str) -> Any:
    """The figures of every model's default guide in the default run; those of its other
    guides with the slow tests (drawing is most of their cost, and the same code)."""
    slow = () if guide == get_model(name).default_guide else pytest.mark.slow
    return pytest.param(name, guide, marks=slow, id=f"{name}/{guide}")


@pytest.mark.parametrize(("name", "guide"), [_figures_case(*case) for case in CASES])
def test_figures_tables_and_report(name, guide):
    figures = check_outputs(_short_run(name, guide))
    assert {"elbo_trace", "elbo_terms"} <= set(figures)


def test_every_model_class_is_registered():
    """A model is found by being under zoo/models: every concrete ZooModel subclass there (one
    that declares its own name) is in the registry."""
    found = {}
    for info in pkgutil.walk_packages(zoo.models.__path__, "zoo.models."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, ZooModel) and "name" in vars(cls):
                found[cls.name] = cls
    assert found, "no model classes found"
    for name, cls in found.items():
        assert get_model(name) is cls, f"{cls.__name__} ({name}) is not registered"


class _Regression(ZooModel):
    """A Bayesian linear regression written three ways: broadcasting, with ``X @ w`` (fails
    under vectorized particles) and with a sum over every dim (mixes particles silently)."""

    name = "planted-regression"
    title = "planted"
    application = "Mean-field variational Bayes"
    reference = "none"
    options = (Option("way", str, "broadcast", "how the mean is written"),)

    def setup(self, data, way):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
        self.y = self.x.sum(-1) + torch.randn(12, generator=gen, dtype=torch.float64)
        self.way = way
        self.num_data = 12

    def model(self, subsample_size=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))
        if self.way == "matmul":
            mean = self.x @ w
        elif self.way == "mixing":
            mean = (self.x * w).sum(-1).mean() + 0 * self.y
        else:
            mean = (self.x * w).sum(-1)
        with pyro.plate("data", 12):
            pyro.sample("y", dist.Normal(mean, 1.0), obs=self.y)


def test_a_model_that_broadcasts_passes():
    check_model(_Regression, "mean-field")


@pytest.mark.parametrize("way", ["matmul", "mixing"])
def test_a_model_that_does_not_broadcast_is_named(way):
    model = build(_Regression, way=way)
    with pytest.raises(ParticleBroadcastError, match="planted-regression") as info:
        check_model(type("P", (_Regression,), {"smoke_options": {"way": way}}), "mean-field")
    assert "\n" not in str(info.value)
    if way == "matmul":  # the diagnostics name it too, instead of a shape error from Pyro
        pyro.clear_param_store()
        guide = model.build_guide("mean-field")
        guide()
        with pytest.raises(ParticleBroadcastError, match="leading particle dimension"):
            zoo.evaluate(model, guide, num_particles=10)


def test_a_bad_declaration_is_named():
    bad = type("Bad", (_Regression,), {"name": "Not Kebab"})
    with pytest.raises(ContractError, match="kebab-case"):
        check_declaration(bad)
    bad = type("Bad", (_Regression,), {"guides": ("mean-field", "diagonal")})
    with pytest.raises(ContractError, match=r"guides \['diagonal'\] are not in the vocabulary"):
        check_declaration(bad)
    bad = type("Bad", (_Regression,), {"default_guide": "exact"})
    with pytest.raises(ContractError, match="default guide"):
        check_declaration(bad)
    bad = type("Bad", (_Regression,), {"smoke_options": {"size": 3}})
    with pytest.raises(ContractError, match="smoke_options"):
        check_declaration(bad)
    bad = type("Bad", (_Regression,), {"options": (Option("n", positive_int, 0, "n"),)})
    with pytest.raises(ContractError, match="default of --n"):
        check_declaration(bad)
    bad = type("Bad", (_Regression,), {"options": (Option("steps", positive_int, 3, "n"),)})
    with pytest.raises(ContractError, match="named like run settings"):
        check_declaration(bad)


@pytest.mark.parametrize(
    ("declared", "clause"),
    [
        ({"estimators": ("trace", "iwae")}, "estimators is not a zoo.declarations.Estimators"),
        ({"estimators": Estimators(("trace", "bogus"))}, r"unknown estimators \['bogus'\]"),
        ({"estimators": Estimators(("trace",), default="iwae")}, "default estimator 'iwae'"),
        ({"guides": {"mean-field": Guide(elbo="enum")}}, "estimator 'enum' is not a choice"),
        ({"guides": {"mean-field": "fast"}}, "declared with 'fast', not a Guide"),
        ({"guides": {"mean-field": Guide(local_step=3)}}, "local_step is not callable"),
        ({"closed_form": ClosedForm("EM")}, "exactly when closed_form_step is written"),
        ({"closed_form_step": lambda self, g, n: 0.0}, "exactly when closed_form_step"),
        ({"arviz": {"w": ("feature",)}}, "arviz is not a zoo.declarations.ArviZ"),
    ],
)
def test_a_bad_declaration_value_is_named(declared, clause):
    with pytest.raises(ContractError, match=clause) as info:
        check_declaration(type("Bad", (_Regression,), declared))
    assert "\n" not in str(info.value)


def test_guide_declarations_settle_the_runs_defaults():
    """A guide's own estimator, training and local step; the model's wherever it has none."""
    calls = []
    own = Training(steps=7)
    declared = type(
        "Declared",
        (_Regression,),
        {
            "guides": {
                "mean-field": Guide(elbo="meanfield", local_step=lambda m, g: calls.append(g)),
                "full-rank": Guide(training=own),
            },
            "estimators": Estimators(("trace", "meanfield"), default="trace"),
        },
    )
    check_declaration(declared)
    assert (elbo_for(declared, "mean-field"), elbo_for(declared, "full-rank")) == (
        "meanfield",
        "trace",
    )
    assert training_for(declared, "full-rank") is own
    assert training_for(declared, "mean-field") is declared.training
    assert local_step_guides(declared) == ("mean-field",)
    # a tuple of names is the same as a mapping of names to plain declarations
    assert type("T", (_Regression,), {"guides": ("mean-field",)}).guides == {"mean-field": Guide()}


def test_arviz_coordinates_name_attributes():
    declared = type("A", (_Regression,), {"arviz": ArviZ(coords={"feature": "names"})})
    with pytest.raises(ContractError, match=r"arviz coords name no attribute: \['names'\]"):
        build(declared)
    model = build(type("B", (declared,), {"names": ["age", "bmi", "bp"]}))
    assert model.arviz.coordinates(model) == {"feature": ["age", "bmi", "bp"]}


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
        ("linear-vae", "mean-field"),
        ("linear-vae", "full-rank"),
        ("predictive-coding", "mean-field"),
        ("predictive-coding", "full-rank"),
        ("ising", "mean-field"),
    }
    for name, guide in sorted(want):
        r = zoo.fit(name, guide=guide, quick=True, steps=2, eval_particles=100, progress=False)
        assert r.diagnostics.exact_elbo is not None, (name, guide)
