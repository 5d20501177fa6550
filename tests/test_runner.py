"""The runner: seeding, fresh param stores, checkpoint/resume, non-finite losses, settings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from zoo import runner
from zoo.errors import NonFiniteLossError, ZooError
from zoo.model import DataPlate, Training, ZooModel


def _fit(**kw):
    kw.setdefault("eval_particles", 50)
    return zoo.fit("gmm", progress=False, **kw)


def _params(result):
    return {k: v.clone() for k, v in result.param_state["params"].items()}


def test_same_seed_same_history_different_seed_different():
    a = _fit(steps=40, elbo="trace", seed=3)
    b = _fit(steps=40, elbo="trace", seed=3)
    c = _fit(steps=40, elbo="trace", seed=4)
    cols = ["step", "elbo", "expected_log_likelihood", "kl", "train_elbo", "log_evidence"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])
    assert not np.allclose(a.history["train_elbo"][1:], c.history["train_elbo"][1:])


def test_each_run_starts_from_a_fresh_param_store():
    first = _fit(steps=30, elbo="trace")
    again = _fit(steps=30, elbo="trace")
    for name, value in _params(first).items():
        torch.testing.assert_close(value, _params(again)[name], rtol=0, atol=0)


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    settings = dict(steps=60, elbo="trace", batch_size=100, seed=1, checkpoint_every=25)
    whole = _fit(**settings)

    save = runner._Trainer._save_checkpoint

    def save_then_die(self, step, optim):
        save(self, step, optim)
        if step == 50:
            raise KeyboardInterrupt  # the process is killed right after this checkpoint

    monkeypatch.setattr(runner._Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit(run_dir=tmp_path, **settings)
    monkeypatch.undo()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 50

    resumed = zoo.resume(tmp_path, progress=False)
    for name, value in _params(whole).items():
        torch.testing.assert_close(_params(resumed)[name], value, rtol=0, atol=0)
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="seconds"), whole.history.drop(columns="seconds")
    )
    assert resumed.diagnostics.elbo == whole.diagnostics.elbo


def test_checkpoint_loads_with_weights_only(tmp_path):
    _fit(steps=10, elbo="trace", run_dir=tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(ckpt) >= {"step", "params", "optim", "rng", "history"}


class _Exploding(ZooModel):
    """A likelihood scale that Adam drives through zero: the log-prob of x becomes NaN."""

    name = "exploding"
    title = "test model"
    application = "test"
    reference = "none"
    guides = ("mean-field",)
    training = Training(steps=50, lr=0.5)

    def setup(self, data, **options):
        self.num_data = 1

    def model(self, subsample_size=None):
        z = pyro.sample("z", dist.Normal(torch.tensor(0.0), 0.01))
        scale = pyro.param("scale", torch.tensor(1.0))  # unconstrained on purpose
        pyro.sample("x", dist.Normal(z, scale), obs=torch.tensor(0.0))


def test_non_finite_loss_names_step_and_site():
    with pytest.raises(NonFiniteLossError) as info:
        zoo.fit(_Exploding(), progress=False, eval_particles=50)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.step >= 1
    assert "'x'" in message or "param 'scale'" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"guide": "mean-field"}, "has no guide"),
        ({"elbo": "bogus"}, "elbo: 'bogus' is not one of trace, meanfield"),
        ({"method": "bogus"}, "method: 'bogus' is not one of svi, closed-form"),
        ({"steps": 0}, "steps: 0 is not an integer >= 1"),
        ({"lr": -1.0}, "lr: -1.0 is not a positive number"),
        ({"lr_final_factor": 1.5}, r"lr_final_factor: 1.5 is not a number in \(0, 1\]"),
        ({"eval_particles": 5}, "at least 30"),
        ({"kl_warmup": -1}, "kl_warmup: -1 is not an integer >= 0"),
        ({"seed": 2**32}, r"seed: seed 4294967296 is outside \[0, 2\*\*32\)"),
        ({"device": "tpu"}, "device: 'tpu' is not a device"),
        ({"components": "three"}, "--components"),
        ({"nonsense": 1}, "has no option"),
    ],
)
def test_bad_settings_raise_zoo_errors(kwargs, match):
    with pytest.raises(ZooError, match=match):
        _fit(**{"steps": 5, **kwargs})


def test_unknown_model():
    with pytest.raises(ZooError, match="unknown model 'nope'"):
        zoo.fit("nope")


def test_history_has_terms_and_gap():
    h = _fit(steps=20, elbo="trace", record_every=5).history
    assert list(h["step"]) == [0, 5, 10, 15, 20]
    assert {"elbo", "expected_log_likelihood", "kl", "log_evidence", "gap", "seconds"} <= set(h)
    assert np.isfinite(h.drop(columns="train_elbo").to_numpy()).all()
    assert math.isnan(h["train_elbo"].iloc[0]) and np.isfinite(h["train_elbo"].iloc[1:]).all()


def test_elbo_halves_add_up_within_monte_carlo_error():
    """ELBO = E log p(x|z) - KL. The KL here is analytic (Categorical vs Categorical) while
    the ELBO and the expected log-likelihood are Monte Carlo: they agree within 4 SE."""
    d = _fit(steps=20, elbo="trace", eval_particles=2000).diagnostics
    assert d.kl_method == "analytic"
    assert abs(d.elbo - (d.expected_log_likelihood - d.kl)) < 4 * d.expected_log_likelihood_se


def test_compare_puts_runs_side_by_side():
    from zoo.leaderboard import compare

    runs = {"EM": _fit(steps=5, method="closed-form"), "SVI": _fit(steps=5, elbo="trace")}
    table = compare(runs, extra={"steps": (lambda r: r.config.steps, "{:d}")}).data
    assert list(table["run"]) == ["EM", "SVI"]
    assert list(table.columns[:2]) == ["run", "steps"]
    for label, result in runs.items():
        row = table.set_index("run").loc[label]
        assert row["ELBO"] == result.diagnostics.elbo
        assert row["gap (nats)"] == result.diagnostics.gap
        assert row["log p(x)"] == result.diagnostics.log_evidence


class _LocalMeans(ZooModel):
    """z_i ~ N(0, 1), x_i | z_i ~ N(z_i, 1): one latent per point, log p(x_i) = log N(x_i | 0, 2).

    Evaluated in blocks of 64 of its 250 points."""

    name = "local-means"
    title = "test model"
    application = "test"
    reference = "none"
    guides = ("mean-field",)
    training = Training(steps=1000, lr=0.1, particles=8, lr_final_factor=0.01)
    data_plate = DataPlate("data", block_size=64)

    def setup(self, data, **options):
        self.x = torch.as_tensor(np.random.default_rng(0).normal(0.0, 2.0**0.5, 250))
        self.num_data = 250

    def create_plates(self, subsample_size=None):
        return pyro.plate("data", self.num_data, subsample_size=subsample_size)

    def model(self, subsample_size=None):
        with self.create_plates(subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), dtype=torch.float64), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=self.x[idx])

    def log_evidence(self):
        return dist.Normal(0.0, 2.0**0.5).log_prob(self.x).sum().item()


class _GlobalMean(_LocalMeans):
    """The same with a global latent mu outside the data plate: it cannot be split in blocks."""

    name = "global-mean"

    def model(self, subsample_size=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with self.create_plates(subsample_size) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=self.x[idx])


def test_on_block_gives_unscaled_terms_of_the_total():
    from pyro import poutine

    from zoo.data_blocks import data_blocks, on_block

    model = _LocalMeans()
    blocks = data_blocks(model)
    assert [len(b) for b in blocks] == [64, 64, 64, 58]
    assert torch.equal(torch.cat(blocks), torch.arange(250))

    def log_joint(block, z):
        fn = poutine.condition(on_block(model.model, model, block), data={"z": z})
        trace = poutine.trace(fn).get_trace()
        assert torch.equal(trace.nodes["x"]["value"], model.x if block is None else model.x[block])
        return trace.log_prob_sum().item()

    z = 0.5 * model.x
    total = sum(log_joint(block, z[block]) for block in blocks)
    assert total == pytest.approx(log_joint(None, z), rel=1e-12)


def test_blocked_diagnostics_against_the_exact_evidence():
    """Trained and evaluated in blocks: the ELBO is a bound on the exact log evidence and
    reaches it (the Normal guide contains the posterior N(x_i / 2, 1 / 2)); evaluated whole at
    the same parameters it agrees within Monte Carlo error."""
    from zoo.diagnostics import evaluate

    model = _LocalMeans()
    result = zoo.fit(model, seed=0, progress=False, eval_particles=400)
    d = result.diagnostics
    assert d.iwae_scope == "per data point, K=400" and d.num_data == 250
    assert d.elbo <= d.log_evidence + 3 * d.elbo_se
    # the KL of 250 fitted Normals to their posteriors: measured 0.07-0.11 (SE 0.02) over
    # seeds 0-2; the IWAE with K = 400 is within 0.035 of log p(x) (SE 0.02)
    assert d.gap < 0.2
    assert abs(d.log_evidence - d.iwae) < 4 * d.iwae_se
    model.data_plate = model.data_plate.with_sizes(block_size=None)
    whole = evaluate(model, result.guide, num_particles=400)
    assert abs(whole.elbo - d.elbo) < 4 * math.hypot(whole.elbo_se, d.elbo_se)
    assert abs(whole.iwae - d.iwae) < 4 * math.hypot(whole.iwae_se, d.iwae_se)


def test_blocks_need_ratios_that_factorise():
    with pytest.raises(ZooError, match="do not factorise over the data plate"):
        zoo.fit(_GlobalMean(), steps=2, progress=False, eval_particles=50)


def test_a_notebook_shows_the_report_as_a_table():
    result = _fit(steps=20, elbo="trace", eval_particles=100)
    page = result._repr_html_()
    d = result.diagnostics
    assert page.count("<tr>") == len(d.rows()) + len(d.weight_rows()) + 1 + 1
    for label, value, decimals in d.weight_rows():
        assert label in page and f"{value:.{decimals}f}" in page
    for _, value, _ in d.rows():
        assert f"{value:.4f}" in page and f"{value / d.num_data:.5f}" in page
    assert "exact log evidence" in page and "gap log p(x) - ELBO" in page
    assert repr(result).startswith(f"FitResult({result.model.name!r}, guide=")


def test_history_iwae_is_at_least_the_elbo_of_the_same_particles():
    """Each record's IWAE is log mean_k w_k of the very particles whose mean log w_k is its
    ELBO: never below it (Jensen), equal only when the weights are equal."""
    h = _fit(steps=20, elbo="trace", record_every=5).history
    assert np.isfinite(h["iwae"]).all()
    assert (h["iwae"] >= h["elbo"] - 1e-9 * h["elbo"].abs()).all()


def test_a_point_mass_has_no_history_iwae():
    result = zoo.fit(
        "free-energy-perception", guide="point-mass", steps=10, eval_particles=30, progress=False
    )
    assert result.history["iwae"].isna().all()


def test_held_out_records_do_not_change_the_training(monkeypatch):
    """A model with held-out data gets its held-out ELBO per point in every record (and the
    figure); those particles come from a stream of their own, so the training is the same as
    without them, to the last bit."""
    settings = dict(steps=40, record_every=20, eval_particles=30, progress=False, hidden=32)
    with_held_out = zoo.fit("vae", **settings)
    h = with_held_out.history
    assert np.isfinite(h["held_out_elbo_per_point"]).all()
    figures = with_held_out.figures()
    assert "held_out_trace" in figures
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)
    monkeypatch.setattr(runner._Trainer, "_held_out_terms", lambda self, step, guide: {})
    without = zoo.fit("vae", **settings).history
    assert "held_out_elbo_per_point" not in without
    assert h["elbo"].tolist() == without["elbo"].tolist()
    assert h["train_elbo"].iloc[1:].tolist() == without["train_elbo"].iloc[1:].tolist()


@pytest.mark.parametrize("name", ["normal-gamma", "vae"])
def test_how_often_a_run_records_does_not_change_its_training(name):
    """History rows draw their particles from a stream of their own (seed, step): a run that
    records at every step trains exactly as one that records once."""
    runs = [
        zoo.fit(name, steps=30, record_every=every, seed=3, progress=False, eval_particles=30)
        for every in (1, 10**6)
    ]
    assert len(runs[0].history) == 31 and len(runs[1].history) == 2
    for key, value in runs[0].param_state["params"].items():
        assert torch.equal(value, runs[1].param_state["params"][key]), key
    assert runs[0].history["elbo"].iloc[-1] == runs[1].history["elbo"].iloc[-1]
