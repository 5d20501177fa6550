"""``eval_subsample``: the diagnostics, the history records and a model's own evaluations estimated
from a uniformly random subset of the data points, with standard errors that include the
subsampling (two-stage sampling: Cochran 1977, *Sampling Techniques*, ch. 10)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from zoo.diagnostics import (
    PointSubsample,
    evaluate,
    evaluation_subsample,
    quick_terms,
    run_subsample,
    subsample_total,
)
from zoo.errors import ZooError
from zoo.model import DataPlate, Training, ZooModel
from zoo.results import RunConfig

N = 250


class _LocalMeans(ZooModel):
    """z_i ~ N(0, 1), x_i | z_i ~ N(z_i, 1), one latent per point; with a mean-field Gaussian
    q(z_i) = N(m_i, s_i^2) every point's ELBO is in closed form (:func:`_exact_point_elbo`)."""

    name = "eval-points-local-means"
    title = "test model"
    application = "test"
    reference = "none"
    guides = ("mean-field",)
    training = Training(steps=200, lr=0.1, particles=4, lr_final_factor=0.1)
    data_plate = DataPlate("data", block_size=64)

    def setup(self, data, **options):
        # uniform, not normal: per-point ELBOs ~ -x^2 / 4 with a light tail, so that the
        # normal approximation of a 60-point subsample's total holds
        self.x = torch.as_tensor(np.random.default_rng(0).uniform(-4.0, 4.0, N))
        self.num_data = N

    def create_plates(self, subsample_size=None):
        return pyro.plate("data", self.num_data, subsample_size=subsample_size)

    def model(self, subsample_size=None):
        with self.create_plates(subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), dtype=torch.float64), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=self.x[idx])

    def log_evidence(self):
        return dist.Normal(0.0, 2.0**0.5).log_prob(self.x).sum().item()


class _GlobalMean(_LocalMeans):
    """A latent mu outside the data plate: the log ratios do not factorise over the points."""

    name = "eval-points-global-mean"

    def model(self, subsample_size=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with self.create_plates(subsample_size) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=self.x[idx])


def _exact_point_elbo(model: _LocalMeans) -> torch.Tensor:
    """E_q[log p(x_i | z_i) + log p(z_i) - log q(z_i)] of every point, from the guide's means
    and standard deviations in the param store."""
    params = {k: v.detach() for k, v in pyro.get_param_store().items()}
    (loc,) = [v for k, v in params.items() if "loc" in k and v.shape == (N,)]
    (scale,) = [v for k, v in params.items() if "scale" in k and v.shape == (N,)]
    x, var = model.x, scale**2
    log2pi = math.log(2 * math.pi)
    likelihood = -0.5 * log2pi - 0.5 * ((x - loc) ** 2 + var)
    prior = -0.5 * log2pi - 0.5 * (loc**2 + var)
    entropy = 0.5 * (log2pi + 1.0) + torch.log(scale)
    return (likelihood + prior + entropy).double()


@pytest.fixture(scope="module")
def fitted():
    result = zoo.fit(_LocalMeans(), steps=80, eval_particles=30, progress=False)
    result.activate()
    return result


# -- the estimator and its standard error -------------------------------------------------------
def test_indices_are_a_seeded_uniform_subset():
    sample = PointSubsample(50, seed=7)
    index = sample.indices(1000)
    assert len(index) == 50 and len(np.unique(index)) == 50
    assert np.all(np.diff(index) > 0) and index.min() >= 0 and index.max() < 1000
    assert np.array_equal(index, PointSubsample(50, seed=7).indices(1000))
    assert not np.array_equal(index, PointSubsample(50, seed=8).indices(1000))
    assert PointSubsample(1000, seed=7).indices(1000) is None  # every point: no subsample
    with pytest.raises(ValueError, match="at least 2 points"):
        PointSubsample(1)
    # uniform: every point about equally often over many seeds
    hits = np.bincount(
        np.concatenate([PointSubsample(20, s).indices(40) for s in range(400)]), minlength=40
    )
    assert hits.min() > 0.7 * 200 and hits.max() < 1.3 * 200


def test_the_standard_error_matches_a_simulation_over_subsample_seeds(fitted):
    """On fixed per-point values (this model's exact per-point ELBOs) the estimator's spread
    over subsample seeds is the formula's; with particle noise added (S draws per point of a
    known spread), both sources together."""
    values = _exact_point_elbo(fitted.model)
    total, n, repeats = values.sum().item(), 40, 400
    rng = np.random.default_rng(0)
    noise_sd = 0.5 + rng.gamma(2.0, 0.5, N)  # a different particle spread at each point
    for particles in (None, 8):
        estimates, variances = [], []
        for seed in range(repeats):
            index = PointSubsample(n, seed).indices(N)
            if particles is None:
                point, point_var = values[index], torch.zeros(n)
            else:
                draws = values[index].numpy()[:, None] + noise_sd[index, None] * rng.normal(
                    size=(n, particles)
                )
                point = torch.as_tensor(draws.mean(1))
                point_var = torch.as_tensor(draws.var(1, ddof=1) / particles)
            estimate, se = subsample_total(point, point_var, N)
            estimates.append(estimate)
            variances.append(se**2)
        spread, stated = np.std(estimates, ddof=1), math.sqrt(np.mean(variances))
        assert stated == pytest.approx(spread, rel=0.12), particles
        assert abs(np.mean(estimates) - total) < 4 * spread / math.sqrt(repeats)
        if particles is None:  # the exact variance of a mean without replacement
            exact = N**2 * (1 - n / N) * values.var().item() / n
            assert spread == pytest.approx(math.sqrt(exact), rel=0.1)
            assert stated == pytest.approx(math.sqrt(exact), rel=0.05)
        else:  # the particle noise: (N / n) sum_i sd_i^2 / S, on average N mean(sd^2) / S
            noise = N * np.mean(noise_sd**2) / particles
            sampling = N**2 * (1 - n / N) * values.var().item() / n
            assert spread == pytest.approx(math.sqrt(sampling + noise), rel=0.12)


def test_with_every_point_the_error_is_the_particle_noise_alone():
    values, particle_var = torch.arange(10.0), torch.full((10,), 0.25)
    total, se = subsample_total(values, particle_var, 10)
    assert total == pytest.approx(45.0) and se == pytest.approx(math.sqrt(2.5))
    with pytest.raises(ValueError):
        subsample_total(torch.ones(1), torch.zeros(1), 10)


# -- evaluate(points=...) against the exact values --------------------------------------------
def test_a_subsample_is_within_four_standard_errors_of_the_full_value(fitted):
    model, guide = fitted.model, fitted.guide
    exact = _exact_point_elbo(model)
    full = evaluate(model, guide, num_particles=200)
    for seed in range(3):
        d = evaluate(model, guide, num_particles=200, points=60, seed=seed)
        assert d.eval_points == 60 and d.num_data == N
        assert abs(d.elbo - exact.sum().item()) < 4 * d.elbo_se
        assert abs(d.iwae - full.iwae) < 4 * math.hypot(d.iwae_se, full.iwae_se)
        ell_se = math.hypot(d.expected_log_likelihood_se, full.expected_log_likelihood_se)
        assert abs(d.expected_log_likelihood - full.expected_log_likelihood) < 4 * ell_se
        # the estimate is N x the mean over exactly the seeded subset: against that subset's
        # exact total it is off by the particle noise alone (that of the full evaluation)
        index = PointSubsample(60, seed).indices(N)
        assert abs(d.elbo - N * exact[index].mean().item()) < 5 * full.elbo_se
        # the subsample's error is mostly the sampling of the points
        assert d.elbo_se > 3 * full.elbo_se
        assert d.khat_scope == f"max over 60 of {N} data points"
    assert full.eval_points is None


def test_evaluate_reads_the_runs_subsample_and_every_point_outside_it(fitted):
    model, guide = fitted.model, fitted.guide
    assert run_subsample() is None
    with evaluation_subsample(30, seed=2):
        inside = evaluate(model, guide, num_particles=50, with_khat=False)
        whole = evaluate(model, guide, num_particles=50, with_khat=False, points=None)
    assert run_subsample() is None
    again = evaluate(model, guide, num_particles=50, with_khat=False, points=30, seed=2)
    assert inside.eval_points == 30 and whole.eval_points is None
    assert inside.elbo == again.elbo and inside.elbo_se == again.elbo_se


def test_records_score_the_subsample_scaled_to_every_point(fitted):
    model, guide = fitted.model, fitted.guide
    terms = quick_terms(model, guide, 64, points=100, seed=1, step=5)
    assert math.isnan(terms["iwae"])
    exact = _exact_point_elbo(model)
    index = PointSubsample(100, seed=1).indices(N)
    assert terms["elbo"] == pytest.approx(N * exact[index].mean().item(), rel=0.02)
    assert terms == quick_terms(model, guide, 64, points=100, seed=1, step=5)
    state = torch.get_rng_state()
    quick_terms(model, guide, 64, points=100, seed=1, step=6)
    assert torch.equal(state, torch.get_rng_state())  # a stream of its own


# -- a run with eval_subsample ---------------------------------------------------------------------
def test_a_run_says_its_figures_are_estimated_from_a_subsample():
    from zoo.run import format_result

    result = zoo.fit(_LocalMeans(), steps=40, eval_subsample=50, eval_particles=60, progress=False)
    d = result.diagnostics
    assert result.config.eval_subsample == 50 and d.eval_points == 50
    assert any(f"estimated from 50 of {N} data points" in note for note in d.notes())
    assert f"estimated from 50 of {N} data points" in format_result(result)
    report = json.loads(json.dumps(result.report(), default=str))
    assert report["diagnostics"]["eval_points"] == 50
    assert report["config"]["eval_subsample"] == 50
    assert result.summary["eval_subsample"] == 50
    assert result.history["iwae"].isna().all()
    config = RunConfig.from_json(result.config.to_json())
    assert config.eval_subsample == 50
    stored = json.loads(result.config.to_json())
    del stored["eval_subsample"]  # a config.json written before the setting existed
    assert RunConfig.from_json(json.dumps(stored)).eval_subsample is None


def test_a_subsample_of_at_least_the_data_is_todays_run():
    kwargs = {"steps": 30, "eval_particles": 40, "progress": False}
    today = zoo.fit(_LocalMeans(), **kwargs)
    for points in (N, 10**6):
        again = zoo.fit(_LocalMeans(), eval_subsample=points, **kwargs)
        assert again.config.eval_subsample is None
        pd.testing.assert_frame_equal(
            today.history.drop(columns="seconds"), again.history.drop(columns="seconds")
        )
        assert again.diagnostics.as_dict() == today.diagnostics.as_dict()
        assert again.summary == today.summary


def test_the_subsample_does_not_touch_the_training_stream():
    kwargs = {"steps": 30, "eval_particles": 40, "record_every": 5, "progress": False}
    a = zoo.fit(_LocalMeans(), eval_subsample=20, **kwargs)
    b = zoo.fit(_LocalMeans(), eval_subsample=80, **kwargs)
    for name, value in a.param_state["params"].items():
        assert torch.equal(value, b.param_state["params"][name]), name
    assert not np.allclose(a.history["elbo"], b.history["elbo"])


def test_a_subsample_is_refused_without_a_factorising_data_plate(capsys):
    with pytest.raises(ZooError, match="has no data plate") as info:
        zoo.fit("bayes-linreg", steps=5, eval_subsample=10, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(ZooError, match="do not factorise over its data plate") as info:
        zoo.fit(_GlobalMean(), steps=10**9, eval_subsample=10, progress=False)  # before step 1
    assert "\n" not in str(info.value)
    model = _GlobalMean()
    pyro.clear_param_store()
    guide = model.build_guide("mean-field")
    with pytest.raises(ZooError, match="do not factorise"):
        evaluate(model, guide, num_particles=30, points=10)
    from zoo.run import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bayes-linreg", "--eval-subsample", "10", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--eval-subsample" in err
    with pytest.raises(ZooError, match="eval_subsample"):
        zoo.fit(_LocalMeans(), steps=5, eval_subsample=1, progress=False)


# eight steps leave the inverse dispersions equal: their correlation with the truth is NaN
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")
def test_scvi_summary_and_figures_score_the_subsample():
    result = zoo.fit(
        "scvi",
        dataset="simulated",
        num_cells=300,
        num_genes=40,
        test_particles=20,
        steps=8,
        eval_particles=30,
        trace_particles=2,
        eval_subsample=20,
        progress=False,
    )
    summary = result.summary
    assert summary["eval_subsample"] == 20
    assert summary["test"]["eval_points"] == 20  # 20 of the 30 held-out cells
    assert result.diagnostics.eval_points == 20
    assert summary["collapse"]["latent_dim"] == 10
    assert summary["work_estimate"]["line"].endswith("(1,000 particles per cell of 20 cells)")
    with evaluation_subsample(20, 0):
        blocks = result.model.evaluation_blocks()
    assert sum(len(b) for b in blocks) == 20
    assert sum(len(b) for b in result.model.evaluation_blocks()) == result.model.num_data


def test_the_large_file_writer_writes_a_csr_h5ad_a_block_at_a_time(tmp_path):
    """``benchmarks/make_big_h5ad.py``: seeded scVI counts, written in blocks, read back whole
    and backed (rows on demand) as the drawn blocks; fewer cells are the first cells."""
    import importlib.util
    from pathlib import Path

    import scipy.sparse as sp

    from zoo.models.scvi.data import load_counts

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "make_big_h5ad.py"
    spec = importlib.util.spec_from_file_location("make_big_h5ad", script)
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    kwargs = {"seed": 3, "block": 128, "latent_dim": 2, "hidden": 16}
    info = writer.write_big_h5ad(tmp_path / "big.h5ad", 300, 25, **kwargs)
    expected = sp.vstack(list(writer.count_blocks(300, 25, **kwargs))).toarray()
    assert info["nnz"] == int((expected > 0).sum()) and 0 < info["zero_fraction"] < 1
    assert not list(tmp_path.glob("*.tmp"))
    backed = load_counts(tmp_path / "big.h5ad", backed=True)
    assert backed.source.backed and backed.source.shape == (300, 25)
    rows = np.array([0, 5, 127, 128, 299])
    assert np.array_equal(backed.source.rows(rows), expected[rows])
    whole = load_counts(tmp_path / "big.h5ad")
    assert np.array_equal(whole.source.to_csr().toarray(), expected)
    assert list(whole.cell_names[:2]) == ["cell1", "cell2"]
    fewer = sp.vstack(list(writer.count_blocks(256, 25, **kwargs))).toarray()
    assert np.array_equal(fewer, expected[:256])  # whole blocks: the same cells
