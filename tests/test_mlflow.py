"""--mlflow: the run's settings as parameters and its history rows as metrics, step by step,
through MLflow's fluent API (a recording stand-in here: MLflow is an optional dependency)."""

from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest


class _FakeMlflow(types.ModuleType):
    def __init__(self):
        super().__init__("mlflow")
        self.calls = []
        self.metrics = []

    def set_tracking_uri(self, uri):
        self.calls.append(("uri", uri))

    def set_experiment(self, name):
        self.calls.append(("experiment", name))

    def start_run(self, run_name=None):
        self.calls.append(("start", run_name))
        return object()

    def log_params(self, params):
        self.calls.append(("params", dict(params)))

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def end_run(self):
        self.calls.append(("end", None))


@pytest.fixture
def fake_mlflow(monkeypatch):
    module = _FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", module)
    return module


def test_a_run_logs_its_settings_and_every_history_row(cli_here, fake_mlflow, tmp_path):
    out = cli_here(
        "normal-gamma",
        "--steps",
        "20",
        "--record-every",
        "5",
        "--eval-particles",
        "30",
        "--quiet",
        "--run-dir",
        "run",
        "--mlflow",
        "mlruns",
    )
    assert out.returncode == 0, out.stderr
    calls = dict((kind, value) for kind, value in fake_mlflow.calls if kind != "params")
    assert calls["uri"] == (tmp_path / "mlruns").resolve().as_uri()
    assert calls["experiment"] == "normal-gamma" and calls["start"] == "run"
    assert fake_mlflow.calls[-1] == ("end", None)
    params = next(value for kind, value in fake_mlflow.calls if kind == "params")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert params["lr"] == str(config["lr"]) and params["steps"] == "20"
    assert params["options.num_points"] == str(config["options"]["num_points"])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert [step for step, _ in fake_mlflow.metrics] == history["step"].tolist()
    for (_, metrics), (_, row) in zip(fake_mlflow.metrics, history.iterrows(), strict=True):
        assert metrics["elbo/elbo"] == pytest.approx(row["elbo"], rel=1e-12)
        assert metrics["gap"] == pytest.approx(row["gap"], rel=1e-9, abs=1e-12)


def test_without_mlflow_the_flag_is_one_line_and_exit_2(cli_here, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it raises ImportError
    out = cli_here("normal-gamma", "--steps", "5", "--quiet", "--mlflow", "mlruns")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "python -m zoo.run: error: --mlflow needs the mlflow package: pip install mlflow"
    )
    assert not list((cli_here.cwd / "runs").glob("*/*"))
