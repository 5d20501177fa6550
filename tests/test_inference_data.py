"""ArviZ data of the parameter-vector models: groups, coords, weights, LOO and the saved file.

The groups follow ArviZ's InferenceData (Kumar et al. 2019, JOSS 4, 1143); the pointwise
log-likelihood is what PSIS-LOO needs (Vehtari, Gelman & Gabry 2017). Each run is a quick one
(a few steps, 100 evaluation particles): what is checked holds at any parameters.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from pyro import poutine

import zoo
import zoo.models.bayes_linreg as blr
from zoo.errors import ZooError
from zoo.inference_data import NUM_DRAWS, is_internal

torch.set_num_threads(1)

QUICK = {"quick": True, "eval_particles": 100, "progress": False}
GROUPS = {"posterior", "sample_stats", "log_likelihood", "observed_data"}
SCHOOLS = ["A", "B", "C", "D", "E", "F", "G", "H"]
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@pytest.fixture(scope="module")
def runs() -> dict[str, zoo.FitResult]:
    """One quick run of each parameter-vector model and guide the tests read, fitted once."""
    specs = {
        "eight-schools": ("eight-schools", {"steps": 20}),
        "eight-schools/exact": ("eight-schools", {"guide": "exact", "steps": 20}),
        "baseball": ("empirical-bayes", {"guide": "mean-field", "steps": 20}),
        "linreg/exact": ("bayes-linreg", {"guide": "exact"}),
        "linreg/mean-field": ("bayes-linreg", {"guide": "mean-field", "steps": 50}),
        "linreg/full-rank": ("bayes-linreg", {"guide": "full-rank", "steps": 20}),
        "normal-gamma/exact": ("normal-gamma", {"guide": "exact"}),
    }
    return {key: zoo.fit(model, seed=0, **QUICK, **kw) for key, (model, kw) in specs.items()}


def _groups(data) -> set[str]:
    """The group names of InferenceData (ArviZ 0.x) or of a DataTree (ArviZ 1.x)."""
    children = getattr(data, "children", None)
    return set(children) if children is not None else set(data.groups())


def _loo(data) -> tuple[float, np.ndarray]:
    """PSIS-LOO elpd and the Pareto k of each observation, on either ArviZ line."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(data, pointwise=True)
    elpd = getattr(loo, "elpd_loo", None)
    return float(loo.elpd if elpd is None else elpd), np.asarray(loo.pareto_k).ravel()


def _variables(data, group: str) -> set[str]:
    return set(data[group].data_vars)


# -- the groups, their dims and coords -------------------------------------------------------------
@pytest.mark.parametrize("key", ["eight-schools", "baseball", "linreg/mean-field"])
def test_every_group_is_there_with_one_chain_of_draws(runs, key):
    data = runs[key].to_inference_data()
    assert _groups(data) >= GROUPS
    for group in ("posterior", "sample_stats", "log_likelihood"):
        for name in _variables(data, group):
            assert data[group][name].dims[:2] == ("chain", "draw")
            assert data[group][name].shape[:2] == (1, NUM_DRAWS)
    assert data["posterior"].attrs["model"] == runs[key].model.name
    assert data["posterior"].attrs["guide"] == runs[key].config.guide


def test_eight_schools_coords_are_the_school_names(runs):
    data = runs["eight-schools"].to_inference_data()
    assert data["posterior"]["theta"].dims == ("chain", "draw", "school")
    assert list(data["posterior"]["school"].values) == SCHOOLS
    assert data["log_likelihood"]["y"].dims == ("chain", "draw", "school")
    assert data["observed_data"]["y"].dims == ("school",)
    want = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]  # BDA3 Table 5.2
    assert data["observed_data"]["y"].values.tolist() == want


def test_baseball_coords_are_the_player_names(runs):
    data = runs["baseball"].to_inference_data()
    players = list(data["posterior"]["player"].values)
    assert len(players) == 18 and players[0] == "Clemente" and players[-1] == "Alvis"
    assert data["posterior"]["p"].dims == ("chain", "draw", "player")
    assert data["log_likelihood"]["hits"].shape == (1, NUM_DRAWS, 18)
    assert data["observed_data"]["hits"].values[0] == 18  # Clemente: 18 hits in 45 at-bats
    p = data["posterior"]["p"].values
    assert ((p > 0) & (p < 1)).all()  # the logit-normal's draws, in the Beta's support


def test_bayes_linreg_coords_are_the_feature_names(runs):
    data = runs["linreg/exact"].to_inference_data()
    assert data["posterior"]["w"].dims == ("chain", "draw", "feature")
    assert list(data["posterior"]["feature"].values) == FEATURES
    assert data["log_likelihood"]["y"].dims == ("chain", "draw", "observation")
    assert data["log_likelihood"]["y"].shape == (1, NUM_DRAWS, 442)
    assert data["observed_data"]["y"].shape == (442,)


@pytest.mark.parametrize(
    ("key", "latents"),
    [
        ("linreg/mean-field", {"w"}),  # AutoNormal samples w_unconstrained
        ("linreg/full-rank", {"w"}),  # AutoMultivariateNormal samples _..._latent
        ("baseball", {"p"}),
        ("normal-gamma/exact", {"mu", "tau"}),
    ],
)
def test_no_internal_or_auxiliary_site_is_saved(runs, key, latents):
    result = runs[key]
    data = result.to_inference_data()
    assert _variables(data, "posterior") == latents
    assert set(result.posterior_draws) == latents
    for group in _groups(data):
        assert not any(is_internal(str(name)) for name in _variables(data, group)), group


# -- what the numbers mean -------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["eight-schools", "linreg/mean-field"])
def test_loo_runs_and_gives_a_finite_elpd(runs, key):
    elpd, pareto_k = _loo(runs[key].to_inference_data())
    assert math.isfinite(elpd) and np.isfinite(pareto_k).all()
    assert pareto_k.shape == ((8,) if key == "eight-schools" else (442,))


def _exact_loo(result: zoo.FitResult) -> float:
    """sum_i log p(y_i | y_-i) = sum_i [log p(y) - log p(y_-i)], from the exact evidences."""
    model = result.model
    if model.name == "eight-schools":
        # given (mu, tau) the schools are independent: p(y_j | y_-j) = p(y_j | mu, tau)
        result.activate()
        return model.log_evidence()
    evidence = model.log_evidence()
    total = 0.0
    for i in range(model.num_data):
        keep = torch.arange(model.num_data) != i
        rest = blr.log_evidence(model.x[keep], model.y[keep], model.prior_scale, model.noise_scale)
        total += evidence - rest
    return total


@pytest.mark.parametrize("key", ["eight-schools/exact", "linreg/exact"])
def test_loo_of_the_exact_guide_is_the_exact_leave_one_out_elpd(runs, key):
    """With draws from the exact posterior, PSIS-LOO estimates sum_i log p(y_i | y_-i), known
    here in closed form (measured: within 0.04 nats for seed 0, 0.15 over seeds 0-2)."""
    elpd, pareto_k = _loo(runs[key].to_inference_data())
    assert (pareto_k < 0.7).all()
    assert elpd == pytest.approx(_exact_loo(runs[key]), abs=0.5)


@pytest.mark.parametrize("key", ["linreg/exact", "normal-gamma/exact", "eight-schools/exact"])
def test_exact_guide_log_weights_are_the_log_evidence(runs, key):
    """q = p(z | x): log p(x, z) - log q(z) = log p(x) for every draw, to rounding."""
    result = runs[key]
    stats = result.to_inference_data()["sample_stats"]
    log_w = stats["log_weight"].values.ravel()
    np.testing.assert_allclose(log_w, result.diagnostics.log_evidence, rtol=0, atol=1e-9)
    assert stats.attrs["khat"] == -math.inf  # identical weights: no tail at all
    log_q = stats["lp"].values.ravel() - log_w
    assert np.ptp(log_q) > 1  # the draws differ: equal weights are no accident of equal draws


def test_log_weights_average_to_the_elbo(runs):
    """The mean log weight of a mean-field guide is its ELBO, known here in closed form."""
    result = runs["linreg/mean-field"]
    stats = result.to_inference_data()["sample_stats"]
    log_w = stats["log_weight"].values.ravel()
    se = log_w.std(ddof=1) / math.sqrt(log_w.size)
    assert abs(log_w.mean() - result.diagnostics.exact_elbo) < 5 * se
    assert log_w.max() < result.diagnostics.log_evidence + 5  # weights of a too-narrow q
    assert math.isfinite(stats.attrs["khat"])


@pytest.mark.parametrize("key", ["eight-schools", "linreg/mean-field", "normal-gamma/exact"])
def test_pointwise_log_likelihood_sums_to_the_total_of_the_draw(runs, key):
    """Summed over observations, each draw's log p(x_i | z) is log p(x | z) of the model run
    at that draw (conditioned by Pyro, independently of the export)."""
    result = runs[key]
    data = result.to_inference_data()
    (observed,) = _variables(data, "log_likelihood")
    result.activate()
    for s in (0, 7, NUM_DRAWS - 1):
        values = {
            name: torch.as_tensor(data["posterior"][name].values[0, s])
            for name in _variables(data, "posterior")
        }
        model = poutine.condition(result.model.model, data=values)
        trace = poutine.trace(model).get_trace()
        want = trace.nodes[observed]["fn"].log_prob(trace.nodes[observed]["value"]).sum()
        got = data["log_likelihood"][observed].values[0, s].sum()
        assert got == pytest.approx(float(want), abs=1e-9)


@pytest.mark.parametrize("key", ["linreg/exact", "normal-gamma/exact", "eight-schools/exact"])
def test_exact_guide_posterior_means_within_five_monte_carlo_errors(runs, key):
    result = runs[key]
    posterior = result.to_inference_data()["posterior"]
    model = result.model
    result.activate()
    if key == "linreg/exact":
        want = {"w": model.post_mean.numpy()}
    elif key == "normal-gamma/exact":
        want = {"mu": model.posterior.mu, "tau": model.posterior.a / model.posterior.b}
    else:
        with torch.no_grad():
            want = {"theta": model.exact_posterior().mean.numpy()}
    for name, mean in want.items():
        draws = posterior[name].values[0]
        mcse = draws.std(0, ddof=1) / math.sqrt(draws.shape[0])
        assert (np.abs(draws.mean(0) - mean) < 5 * mcse).all(), name


# -- posterior.nc and zoo.load ---------------------------------------------------------------------
@pytest.mark.parametrize("key", ["eight-schools", "linreg/full-rank"])
def test_save_then_load_gives_the_same_data(runs, tmp_path, key):
    result = runs[key]
    result.save(tmp_path / "run")
    loaded, report = zoo.load(tmp_path / "run")
    data = result.to_inference_data()
    assert report["model"]["name"] == result.model.name and "posterior.nc" in report["files"]
    assert _groups(loaded) >= GROUPS
    for group in GROUPS:
        for name in _variables(data, group):
            np.testing.assert_array_equal(loaded[group][name].values, data[group][name].values)
            assert loaded[group][name].dims == data[group][name].dims
    dim = "school" if key == "eight-schools" else "feature"
    assert list(loaded["posterior"][dim].values) == list(data["posterior"][dim].values)
    assert loaded["sample_stats"].attrs["khat"] == pytest.approx(data["sample_stats"].attrs["khat"])
    assert zoo.load(tmp_path / "run").report == report  # a named tuple: .report as well


def test_load_refuses_a_directory_without_a_finished_run(tmp_path):
    for run_dir, message in [
        (tmp_path / "missing", "is not a run directory"),
        (tmp_path, r"holds no run \(no report\.json\)"),
    ]:
        with pytest.raises(ZooError, match=message) as info:
            zoo.load(run_dir)
        assert "\n" not in str(info.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ZooError, match="holds an unfinished run"):
        zoo.load(tmp_path)
    (tmp_path / "report.json").write_text('{"files": ["posterior.nc"]}')
    with pytest.raises(ZooError, match=r"cannot read .*posterior\.nc"):
        zoo.load(tmp_path)
    (tmp_path / "posterior.nc").write_bytes(b"not netCDF")
    with pytest.raises(ZooError, match=r"cannot read .*posterior\.nc") as info:
        zoo.load(tmp_path)
    assert "\n" not in str(info.value)


def test_a_model_with_local_latents_saves_no_draws():
    result = zoo.fit("free-energy-perception", steps=5, **QUICK)
    assert result.posterior_draws is None
    with pytest.raises(ZooError, match="saves no posterior draws"):
        result.to_inference_data()
