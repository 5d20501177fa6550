"""Each model's tightness ladder, read back from the runs already made (zoo.ladder)."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from zoo import ladder, leaderboard, run
from zoo.errors import ZooError
from zoo.ladder import (
    COLUMNS,
    LADDER_FILE,
    comparison_key,
    ladder_panels,
    model_ladder,
    model_table,
    model_tables,
    run_table,
)
from zoo.runner import fit

torch.set_num_threads(1)

MODEL = "normal-gamma"
#: two guides of a fast model, short runs (the ladder reads them; their values do not matter)
RUNS = {"a": {"guide": "mean-field"}, "b": {"guide": "exact"}}
SHORT = {"quick": True, "steps": 40, "eval_particles": 200}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs root with two finished runs of one model, ``a`` written before ``b``."""
    root = tmp_path_factory.mktemp("runs")
    results = {}
    for name, settings in RUNS.items():
        results[name] = fit(MODEL, run_dir=root / MODEL / name, progress=False, **settings, **SHORT)
    return root, results


@pytest.fixture
def root(runs, tmp_path):
    """A copy of the runs root that a test may change (modification times kept)."""
    shutil.copytree(runs[0], tmp_path / "runs")
    return tmp_path / "runs"


def _rows(*results) -> pd.DataFrame:
    rows = [{**r.leaderboard_row(), "status": "ok", "error": None} for r in results]
    return pd.DataFrame(rows, columns=COLUMNS)


def _edit_report(run_dir, edit, *, newest: bool) -> None:
    """Change a stored run's report with ``edit(report)``; make it the newest or the oldest."""
    path = run_dir / "report.json"
    report = json.loads(path.read_text())
    edit(report)
    path.write_text(json.dumps(report))
    stamp = os.stat(path).st_mtime + (1000 if newest else -1000)
    os.utime(path, (stamp, stamp))


def test_the_table_of_stored_runs_equals_the_fits_rows(runs):
    root, results = runs
    table = model_table(root, MODEL)
    pd.testing.assert_frame_equal(table, _rows(results["a"], results["b"]))
    assert table.attrs["runs"] == [str(root / MODEL / "a"), str(root / MODEL / "b")]
    assert table.attrs["left_out"] == 0
    assert "2 runs" in table.attrs["compared"] and "seed 0, --quick" in table.attrs["compared"]
    assert list(model_tables(root)) == [MODEL]


def test_every_finished_run_draws_its_ladder_beside_its_siblings(runs):
    root, results = runs
    for name in RUNS:
        run_dir = root / MODEL / name
        assert (run_dir / LADDER_FILE).stat().st_size > 0
        assert LADDER_FILE in json.loads((run_dir / "report.json").read_text())["files"]
    # b's ladder: b itself first (highlighted), then a, its comparable sibling
    table = run_table(results["b"], root / MODEL / "b")
    pd.testing.assert_frame_equal(table, _rows(results["b"], results["a"]))
    assert table.attrs["highlight"] == ("exact", "svi/trace")
    figure = model_ladder(table)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert sum(label.endswith("(this run)") for label in labels) == 1
    plt.close(figure)


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["config"].update(seed=1),
        lambda r: r["config"].update(quick=False),
        lambda r: r["config"].update(eval_particles=500),
        lambda r: r["config"]["options"].update(num_points=51),
        lambda r: r["config"].update(data={"source": "path", "path": "/x", "sha256": "0" * 64}),
        lambda r: r["config"].update(data={"source": "object", "type": "NormalGamma object"}),
    ],
    ids=["seed", "quick", "eval-particles", "options", "data", "unhashable-data"],
)
def test_runs_with_other_settings_are_not_compared(runs, root, edit):
    _, results = runs
    newer = shutil.copytree(root / MODEL / "a", root / MODEL / "c")
    _edit_report(newer, edit, newest=True)
    table = model_table(root, MODEL)  # the newest run is alone: the others differ from it
    assert len(table) == 1 and table.attrs["left_out"] == 2
    assert "2 runs with other settings left out" in table.attrs["compared"]
    _edit_report(newer, lambda r: None, newest=False)  # now the oldest: it is left out
    table = model_table(root, MODEL)
    pd.testing.assert_frame_equal(table, _rows(results["a"], results["b"]))
    assert table.attrs["left_out"] == 1


def test_the_latest_run_of_a_family_stands_for_it(root):
    newer = shutil.copytree(root / MODEL / "a", root / MODEL / "a2")
    _edit_report(newer, lambda r: r.update(seconds=123.0), newest=True)
    table = model_table(root, MODEL)
    assert list(table["guide"]) == ["exact", "mean-field"]
    assert table.loc[table["guide"] == "mean-field", "seconds"].item() == 123.0


def test_a_data_file_compares_by_content_not_by_path():
    config = {"model": "m", "options": {"data": "x.csv", "k": 2}, "seed": 0, "quick": False}
    at = {"source": "path", "path": "/one/x.csv", "sha256": "a" * 64}
    moved = {**config, "options": {"data": "y.csv", "k": 2}, "data": {**at, "path": "/two/y"}}
    assert comparison_key({**config, "data": at}) == comparison_key(moved)
    other = {**config, "data": {**at, "sha256": "b" * 64}}
    assert comparison_key({**config, "data": at}) != comparison_key(other)
    assert comparison_key({**config, "data": {"source": "object", "type": "M"}}) is None


def test_unfinished_and_broken_run_directories_are_skipped(runs, root):
    _, results = runs
    here = root / MODEL
    (here / "unfinished").mkdir()
    shutil.copy(here / "a" / "config.json", here / "unfinished")
    (here / "broken").mkdir()
    (here / "broken" / "report.json").write_text('{"config": ')
    wrong = shutil.copytree(here / "a", here / "wrong")
    _edit_report(wrong, lambda r: r["diagnostics"].update(elbo="high"), newest=True)
    odd = shutil.copytree(here / "a", here / "odd")
    _edit_report(odd, lambda r: r["config"].update(data=5, guide=["x"]), newest=True)
    odder = shutil.copytree(here / "a", here / "odder")
    _edit_report(odder, lambda r: r["config"].update(data=[1]), newest=True)
    staged = shutil.copytree(here / "a", here / "b.tmp-4242")  # a run being written beside b
    _edit_report(staged, lambda r: r["config"].update(seed=5), newest=True)
    other = shutil.copytree(here / "a", here / "another-model")
    _edit_report(other, lambda r: r["config"].update(model="gmm"), newest=True)
    (here / "notes.txt").write_text("not a run")
    table = model_table(root, MODEL)
    pd.testing.assert_frame_equal(table, _rows(results["a"], results["b"]))
    assert table.attrs["left_out"] == 0


def test_a_run_written_beside_the_one_it_replaces_does_not_count_it(runs):
    root, results = runs
    # b's result being written beside a, to replace it: a (mean-field) is no sibling
    table = run_table(results["b"], root / MODEL / "a.tmp-77")
    pd.testing.assert_frame_equal(table, _rows(results["b"]))
    assert table.attrs["runs"] == [str(root / MODEL / "a")]


def test_a_ladder_that_cannot_be_drawn_does_not_fail_the_run(tmp_path, monkeypatch):
    def broken(table):
        raise RuntimeError("the ladder fell over\nsecond line")

    monkeypatch.setattr(ladder, "model_ladder", broken)
    run_dir = tmp_path / MODEL / "x"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(MODEL, run_dir=run_dir, progress=False, guide="exact", **SHORT)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [f"no {LADDER_FILE} in {run_dir}: RuntimeError: the ladder fell over"]
    report = json.loads((run_dir / "report.json").read_text())
    assert LADDER_FILE not in report["files"] and not (run_dir / LADDER_FILE).exists()


def test_one_panel_per_model(runs):
    root, _ = runs
    tables = model_tables(root)
    figure = ladder_panels({**tables, "again": tables[MODEL]})
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible() and ax.axison]
    assert [t.splitlines()[0] for t in titles] == [MODEL, "again"]
    assert "2 runs, seed 0, --quick" in titles[0]
    plt.close(figure)
    empty = model_table(root, "gmm")
    assert empty.empty and list(empty.columns) == COLUMNS
    plt.close(model_ladder(empty))


def test_all_with_unknown_models_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(["all", "--models", "normal-gamma,bad"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'bad'" in err[0] and "normal-gamma" in err[0]
    with pytest.raises(ZooError, match="unknown model 'bad'"):
        leaderboard.run_all(models=["bad"], echo=False)


def test_all_runs_the_models_named(monkeypatch, tmp_path):
    asked = {}

    def fake_run_all(**kwargs):
        asked.update(kwargs)
        return pd.DataFrame({"status": ["ok"]})

    monkeypatch.setattr(leaderboard, "run_all", fake_run_all)
    argv = ["all", "--quiet", "--models", "normal-gamma, bayes-linreg,normal-gamma"]
    assert run.main([*argv, "--out", str(tmp_path)]) == 0
    assert asked["models"] == ["normal-gamma", "bayes-linreg"]
