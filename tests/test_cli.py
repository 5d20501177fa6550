"""The command line: every registered model end to end, --list, all, and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from zoo.registry import get_model, model_names

#: the run settings of a quick CLI run; the model's own smoke_options make it small
SMOKE_RUN = ["--steps", "30", "--eval-particles", "50", "--record-every", "10"]


def smoke_args(name: str) -> list[str]:
    """``zoo.run <name>`` arguments for a quick run: the model's smoke options as flags."""
    cls = get_model(name)
    flags = {opt.name: opt.flag for opt in cls.options}
    args = list(SMOKE_RUN)
    for option, value in cls.smoke_options.items():
        args += [flags[option], str(value)]
    return args


def _only_run_dir(root):
    dirs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize("name", model_names())
def test_smoke(cli_here, name):
    cli = cli_here
    out = cli(name, *smoke_args(name), "--quiet")
    assert out.returncode == 0, out.stderr
    run_dir = _only_run_dir(cli.cwd / "runs")
    report = json.loads((run_dir / "report.json").read_text())
    d = report["diagnostics"]
    assert d["elbo"] is not None and d["per_point"]["elbo"] is not None
    history = pd.read_csv(run_dir / "history.csv")
    assert {"step", "elbo", "expected_log_likelihood", "kl", "seconds"} <= set(history)
    for name_ in report["files"]:
        assert (run_dir / name_).stat().st_size > 0
    assert "elbo_trace.png" in report["files"] and "elbo_terms.png" in report["files"]


def test_summary_is_printed(cli):
    out = cli("gmm", "--steps", "5", "--eval-particles", "50", "--method", "closed-form")
    assert out.returncode == 0, out.stderr
    assert "exact log evidence" in out.stdout and "gap" in out.stdout and "EM" in out.stdout


def test_local_steps_flag(cli_here):
    """Models with a closed-form local step take --local-steps / --no-local-steps."""
    cli = cli_here
    out = cli("empirical-bayes", "--help")
    assert "--local-steps" in out.stdout and "--no-local-steps" in out.stdout
    args = ("--steps", "5", "--eval-particles", "50", "--quiet")
    for flag, expected in (("--no-local-steps", False), (None, True)):
        run = cli("empirical-bayes", *args, *([flag] if flag else []), "--run-dir", str(expected))
        assert run.returncode == 0, run.stderr
        report = json.loads((cli.cwd / str(expected) / "report.json").read_text())
        assert report["config"]["local_steps"] is expected


def test_list(cli):
    out = cli("--list")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "exact", "evidence"]
    assert any(line.split()[:2] == ["gmm", "yes"] for line in lines)


def test_model_help_lists_its_options(cli):
    out = cli("gmm", "--help")
    assert out.returncode == 0
    for flag in ("--components", "--data", "--guide", "--elbo", "--method", "--resume"):
        assert flag in out.stdout


@pytest.mark.slow  # every model's leaderboard runs; CI runs it with -m slow
def test_all_quick_writes_a_leaderboard(cli):
    out = cli("all", "--quick", "--quiet")
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(cli.cwd / "runs" / "leaderboard.csv")
    assert list(table.columns[:3]) == ["model", "guide", "training"]
    assert {"elbo", "log_evidence", "gap", "iwae", "khat", "seconds"} <= set(table.columns)
    assert set(table["model"]) == set(model_names())
    exact = table[table["bound"]].dropna(subset=["log_evidence"])
    assert table.loc[~table["bound"], "gap"].isna().all()  # no "gap" for a non-bound
    assert len(exact) > 0
    # the exact log evidence bounds every ELBO, up to 3 Monte Carlo standard errors (and
    # float64 rounding of the sums: 1e-9 relative)
    slack = 3 * exact["elbo_se"] + 1e-9 * exact["log_evidence"].abs()
    assert (exact["gap"] >= -slack).all(), exact[["model", "guide", "gap", "elbo_se"]]


def _fails_cleanly(out, needle):
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nope"], "invalid choice: 'nope'"),
        (["gmm", "--steps", "-3"], "is not an integer >= 1"),
        (["gmm", "--steps", "ten"], "is not an integer >= 1"),
        (["gmm", "--components", "x"], "--components"),
        (["gmm", "--guide", "mean-field"], "invalid choice"),
        (["gmm", "--method", "magic"], "invalid choice"),
        (["gmm", "--bogus"], "unrecognized arguments"),
        (["gmm", "--device", "tpu", "--steps", "2"], "is not a device; use cpu or cuda"),
        (["gmm", "--data", "missing.csv", "--steps", "2"], "does not exist"),
        (["--resume", "nowhere"], "not a run directory"),
        (["gmm", "--steps", "2", "--out", "/proc/no-such-dir"], "/proc/no-such-dir"),
        (["gmm", "--local-steps"], "unrecognized arguments"),
        (["all", "--run-dir", "one", "--quick"], "unrecognized arguments: --run-dir"),
        (["all", "--overwrite", "--quick"], "unrecognized arguments: --overwrite"),
        (
            ["empirical-bayes", "--guide", "exact", "--local-steps", "--steps", "2"],
            "no closed-form local step for guide 'exact'",
        ),
        ([], "name a model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, args, needle):
    out = cli(*args)
    _fails_cleanly(out, needle)
    assert not (cli.cwd / "runs").exists() or not list((cli.cwd / "runs").glob("*/*/report.json"))


def test_non_count_or_malformed_csv(cli):
    (cli.cwd / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    out = cli("gmm", "--data", "bad.csv", "--steps", "2")
    _fails_cleanly(out, "bad.csv")
    assert not (cli.cwd / "runs").exists() or not any((cli.cwd / "runs").rglob("*"))


def test_resume_from_the_cli(cli):
    first = cli("gmm", "--steps", "20", "--run-dir", "r", "--eval-particles", "50", "--quiet")
    assert first.returncode == 0, first.stderr
    again = cli("--resume", "r", "--quiet")
    assert again.returncode == 0, again.stderr
    assert json.loads((cli.cwd / "r" / "report.json").read_text())["config"]["steps"] == 20
