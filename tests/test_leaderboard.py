"""``python -m zoo.run all``: one failing model is a row of the leaderboard, not the end."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from zoo import leaderboard, run
from zoo.errors import ZooError
from zoo.model import ZooModel
from zoo.registry import _MODELS, register


class _Broken(ZooModel):
    """A model whose every run fails at its first step (a deliberately failing model)."""

    name = "broken-for-tests"
    title = "a model that fails"
    application = "tests"
    reference = "none"
    guides = ("mean-field",)
    leaderboard = ({}, {"guide": "mean-field", "steps": 3})

    def setup(self, data, **options):
        self.num_data = 1

    def model(self, subsample_size=None):
        raise RuntimeError("the simulator fell over\nsecond line that must not show")


@pytest.fixture
def broken():
    register(_Broken)
    try:
        yield _Broken.name
    finally:
        _MODELS.pop(_Broken.name, None)


def test_all_reports_a_failing_model_and_goes_on(broken, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(leaderboard, "model_names", lambda: [broken, "normal-gamma"])
    code = run.main(["all", "--quick", "--quiet", "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of " in err[0] and "failed" in err[0]
    table = pd.read_csv(tmp_path / "leaderboard.csv")
    failed = table[table["model"] == broken]
    assert list(failed["status"]) == ["failed", "failed"]
    assert all(e == "RuntimeError: the simulator fell over" for e in failed["error"])
    assert failed["elbo"].isna().all()
    ok = table[table["model"] == "normal-gamma"]
    assert len(ok) == len(_MODELS["normal-gamma"].leaderboard)
    assert (ok["status"] == "ok").all() and ok["elbo"].map(math.isfinite).all()
    # the failed runs leave no directory that looks like a run
    assert not (tmp_path / broken).exists() or not any((tmp_path / broken).iterdir())


def test_every_model_fine_means_exit_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(leaderboard, "model_names", lambda: ["normal-gamma"])
    assert run.main(["all", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "leaderboard.csv")
    assert (table["status"] == "ok").all() and table["error"].isna().all()


def test_one_line_reasons():
    assert leaderboard.one_line(ZooError("bad option --x")) == "bad option --x"
    assert leaderboard.one_line(ValueError("a\nb")) == "ValueError: a"
    assert leaderboard.one_line(MemoryError()) == "MemoryError"


@pytest.mark.parametrize(
    ("name", "overrides", "training"),
    [
        ("eight-schools", {}, "svi/meanfield+local"),
        ("eight-schools", {"local_steps": False}, "svi/meanfield"),
        ("normal-gamma", {"method": "closed-form"}, "closed-form"),
        ("gmm", {"elbo": "enum"}, "svi/enum"),
    ],
)
def test_a_failed_row_is_labelled_as_its_run_would_be(name, overrides, training):
    """A failed run's row names its training as the settled run would have (the model's
    default method and estimator, "+local" where its guide's local step is on by default)."""
    from zoo.settings import resolve

    row = leaderboard._failed_row(name, overrides, RuntimeError("x"))
    assert row["training"] == training
    settled = resolve(_MODELS[name](), overrides)
    label = leaderboard.training_label(
        settled["method"], settled["elbo"], settled["local_steps"]
    )
    assert label == training
