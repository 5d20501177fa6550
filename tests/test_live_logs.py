"""At home in the ecosystem: the ``elbo-zoo`` console script, ``history.csv`` written as a run
goes (and consistent with its checkpoint on resume), TensorBoard as an optional logger,
``--config FILE``, and ``--elbo`` offering only the estimators that apply to the model.

Runs are normal-gamma with 30 steps and 30 evaluation particles, in this process
(:func:`zoo.run.main`); the console script runs as a subprocess.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import zoo
from zoo import live_logs, run, runner
from zoo.config_file import RUN_CONFIG, read_config_file, to_toml
from zoo.errors import ZooError
from zoo.estimators import ESTIMATORS
from zoo.registry import get_model, model_names

MODEL = "normal-gamma"
FAST = ["--steps", "30", "--record-every", "5", "--eval-particles", "30", "--quiet"]


def _cli(capsys, *args: object) -> tuple[int, str, str]:
    """Run the command line in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = run.main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _watch_history(monkeypatch) -> list[tuple[int, str]]:
    """After every history record, the run directory's history.csv as it is then."""
    seen: list[tuple[int, str]] = []
    record = runner._Trainer._record

    def record_and_read(self, step, guide, train_elbo):
        row = record(self, step, guide, train_elbo)
        text = (self.run_dir / "history.csv").read_text()
        live = pd.read_csv(io.StringIO(text))
        assert len(live) == len(self.history), (step, len(live), len(self.history))
        pd.testing.assert_frame_equal(live, pd.DataFrame(self.history), check_exact=True)
        seen.append((step, text))
        return row

    monkeypatch.setattr(runner._Trainer, "_record", record_and_read)
    return seen


# -- the console script -------------------------------------------------------------------------
def test_the_console_script_runs():
    script = Path(sys.executable).with_name("elbo-zoo")
    assert script.is_file(), "install the package (pip install -e .) for the elbo-zoo script"
    listing = subprocess.run(
        [script, "--list"], capture_output=True, text=True, timeout=300, check=False
    )
    assert listing.returncode == 0, listing.stderr
    assert MODEL in listing.stdout and "gmm" in listing.stdout
    refused = subprocess.run(
        [script, MODEL, "--elbo", "enum"], capture_output=True, text=True, timeout=300, check=False
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"elbo-zoo {MODEL}: error: argument --elbo")


def test_the_package_is_typed_and_guides_is_its_sibling():
    import guides

    assert Path(guides.__file__).parent.parent == Path(zoo.__file__).parent.parent
    assert (Path(zoo.__file__).parent / "py.typed").is_file()


# -- history.csv as the run goes ----------------------------------------------------------------
def test_history_csv_grows_during_the_run_and_ends_as_the_final_history(
    monkeypatch, capsys, tmp_path
):
    seen = _watch_history(monkeypatch)
    run_dir = tmp_path / "live"
    code, _, err = _cli(capsys, MODEL, *FAST, "--run-dir", run_dir)
    assert code == 0, err
    assert [step for step, _ in seen] == list(range(0, 31, 5))
    assert all(text.startswith("step,elbo,") for _, text in seen)
    lengths = [len(text.splitlines()) for _, text in seen]
    assert lengths == list(range(2, 2 + len(seen)))  # the header, then one line per record
    final = (run_dir / "history.csv").read_text()
    assert final == seen[-1][1]  # the live file is the final one, byte for byte
    assert len(pd.read_csv(run_dir / "history.csv")) == 7


def _interrupted_run(monkeypatch, capsys, run_dir: Path, *extra: object) -> None:
    """A run checkpointed at step 10 and stopped after its record of step 15."""
    record = runner._Trainer._record

    def record_then_die(self, step, guide, train_elbo):
        row = record(self, step, guide, train_elbo)
        if step == 15:  # past the checkpoint of step 10: a row the checkpoint does not hold
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(runner._Trainer, "_record", record_then_die)
    code, _, err = _cli(
        capsys, MODEL, *FAST, "--checkpoint-every", "10", "--run-dir", run_dir, *extra
    )
    assert code == 130, err
    assert pd.read_csv(run_dir / "history.csv")["step"].tolist() == [0, 5, 10, 15]
    monkeypatch.setattr(runner._Trainer, "_record", record)


def test_resume_rewrites_history_from_its_checkpoint(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "resumed"
    _interrupted_run(monkeypatch, capsys, run_dir)

    seen = _watch_history(monkeypatch)
    code, _, err = _cli(capsys, "--resume", run_dir, "--quiet")
    assert code == 0, err
    first_step, first_text = seen[0]
    assert first_step == 15
    assert pd.read_csv(io.StringIO(first_text))["step"].tolist() == [0, 5, 10, 15]
    final = pd.read_csv(run_dir / "history.csv")
    assert final["step"].tolist() == list(range(0, 31, 5))
    assert (run_dir / "history.csv").read_text() == seen[-1][1]


def test_history_values_are_written_as_pandas_writes_them():
    rows = [{"step": 0, "a": 0.1 + 0.2, "b": float("nan"), "c": 1e-300, "d": float("-inf")}]
    rows.append({"step": 5, "a": 1.0, "b": 2.5, "c": 3e16, "d": -0.0})
    text = "".join(",".join(live_logs.csv_value(row[c]) for c in rows[0]) + "\n" for row in rows)
    expected = pd.DataFrame(rows).to_csv(index=False).split("\n", 1)[1]
    assert text == expected


# -- TensorBoard --------------------------------------------------------------------------------
def test_tensorboard_missing_is_one_line_and_leaves_no_run(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # importing it fails
    out = tmp_path / "runs"
    code, _, err = _cli(capsys, MODEL, *FAST, "--out", out, "--tensorboard", tmp_path / "tb")
    _one_line_error(code, err, "pip install tensorboard")
    assert not out.exists()


class _FakeWriter:
    """Stands in for torch's SummaryWriter: records what a run logs."""

    made: list[_FakeWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_logs_the_elbo_its_terms_and_the_gap(monkeypatch, capsys, tmp_path):
    _FakeWriter.made.clear()
    monkeypatch.setattr(live_logs, "summary_writer_class", lambda: _FakeWriter)
    run_dir = tmp_path / "tb-run"
    code, _, err = _cli(
        capsys, MODEL, *FAST, "--run-dir", run_dir, "--tensorboard", tmp_path / "tb"
    )
    assert code == 0, err
    (writer,) = _FakeWriter.made
    assert Path(writer.log_dir) == tmp_path / "tb" / MODEL / "tb-run"
    assert writer.purge_step == 0 and writer.closed
    history = pd.read_csv(run_dir / "history.csv")
    for column in ("elbo", "expected_log_likelihood", "kl", "gap"):
        tag = live_logs.TENSORBOARD_TAGS[column]
        logged = [(step, value) for t, value, step in writer.scalars if t == tag]
        assert logged == list(zip(history["step"], history[column], strict=True)), column


def test_tensorboard_continues_a_resumed_run(monkeypatch, capsys, tmp_path):
    _FakeWriter.made.clear()
    monkeypatch.setattr(live_logs, "summary_writer_class", lambda: _FakeWriter)
    run_dir, tb = tmp_path / "tb-resumed", tmp_path / "tb"
    _interrupted_run(monkeypatch, capsys, run_dir, "--tensorboard", tb)
    code, _, err = _cli(capsys, "--resume", run_dir, "--quiet", "--tensorboard", tb)
    assert code == 0, err
    first, second = _FakeWriter.made
    assert first.closed and second.closed
    assert second.purge_step == 11  # the events after the checkpoint's step are hidden
    steps = [step for tag, _, step in second.scalars if tag == "elbo/elbo"]
    assert steps == list(range(0, 31, 5))  # no events in tb yet: the checkpoint's rows first


# -- --config FILE ------------------------------------------------------------------------------
def _parse_with(tmp_path: Path, text: str, *argv: str, model: str = MODEL) -> argparse.Namespace:
    path = tmp_path / "run.toml"
    path.write_text(text)
    parser = run.build_parser()
    full = [model, "--config", str(path), *argv]
    return run._with_config_file(parser, full, parser.parse_args(full))


def test_config_file_values_apply_and_flags_override_them(tmp_path):
    text = 'guide = "full-rank"\nsteps = 40\nlr_final_factor = 0.5\nquick = true\n'
    args = _parse_with(tmp_path, text)
    assert (args.guide, args.steps, args.lr_final_factor, args.quick) == (
        "full-rank",
        40,
        0.5,
        True,
    )
    args = _parse_with(tmp_path, text, "--steps", "20", "--no-quick", "--guide", "exact")
    assert (args.guide, args.steps, args.lr_final_factor, args.quick) == ("exact", 20, 0.5, False)
    args = _parse_with(tmp_path, 'model = "normal-gamma"\ndata-seed = 3\nkl_warmup = 4\n')
    assert (args.data_seed, args.kl_warmup) == (3, 4)
    args = _parse_with(tmp_path, "local-steps = false\n", model="eight-schools")
    assert args.local_steps is False
    args = _parse_with(tmp_path, "local-steps = false\n", "--local-steps", model="eight-schools")
    assert args.local_steps is True


def test_a_run_records_its_config_file(capsys, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('guide = "full-rank"\nsteps = 40\nrecord-every = 5\neval_particles = 30\n')
    run_dir = tmp_path / "configured"
    code, _, err = _cli(
        capsys, MODEL, "--config", path, "--steps", "30", "--quiet", "--run-dir", run_dir
    )
    assert code == 0, err
    config = zoo.RunConfig.from_json((run_dir / "config.json").read_text())
    assert (config.guide, config.steps, config.record_every, config.eval_particles) == (
        "full-rank",
        30,
        5,
        30,
    )
    recorded = tomllib.loads((run_dir / RUN_CONFIG).read_text())
    assert recorded == {
        "model": MODEL,
        "guide": "full-rank",
        "steps": 40,
        "record-every": 5,
        "eval-particles": 30,
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("stepz = 30\n", "unknown option 'stepz' for normal-gamma (did you mean 'steps'?)"),
        ("steps = 0\n", "steps: '0' is not an integer >= 1"),
        ("steps = true\n", "steps:"),
        ("lr = -1.0\n", "lr:"),
        ('guide = "iaf"\n', "guide: 'iaf' is not one of"),
        ('elbo = "enum"\n', "elbo: 'enum' is not one of trace, meanfield, graph, iwae"),
        ('quick = "maybe"\n', "quick:"),
        ("steps = [1, 2]\n", "steps: takes a single string, number or boolean, not a list"),
        ("[training]\nsteps = 3\n", "training: takes a single string"),
        ('model = "gmm"\n', "does not match the command's model 'normal-gamma'"),
        ('resume = "runs/x"\n', "--resume belongs on the command line"),
        ("steps = \n", "is not valid TOML"),
        ("steps = 3\nsteps-x = 1\n", "unknown option 'steps-x'"),
        ("steps = 3\nsteps_ = 1\n", "unknown option 'steps-'"),
    ],
)
def test_bad_config_files_are_one_line_and_exit_2(capsys, tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "runs"
    code, _, err = _cli(capsys, MODEL, "--config", path, "--out", out, "--quiet")
    _one_line_error(code, err, f"error: {path}", needle)
    assert not out.exists()


def test_config_file_errors_beyond_its_content(monkeypatch, capsys, tmp_path):
    code, _, err = _cli(capsys, MODEL, "--config", tmp_path / "absent.toml")
    _one_line_error(code, err, "cannot read config file")
    (tmp_path / "twice.toml").write_text("lr_final_factor = 0.5\nlr-final-factor = 0.5\n")
    code, _, err = _cli(capsys, MODEL, "--config", tmp_path / "twice.toml")
    _one_line_error(code, err, "'lr-final-factor' is given twice")
    monkeypatch.setitem(sys.modules, "yaml", None)
    (tmp_path / "run.yaml").write_text("steps: 30\n")
    code, _, err = _cli(capsys, MODEL, "--config", tmp_path / "run.yaml")
    _one_line_error(code, err, "needs PyYAML (pip install pyyaml)")
    (tmp_path / "run.toml").write_text("steps = 30\n")
    code, _, err = _cli(capsys, MODEL, "--config", tmp_path / "run.toml", "--resume", tmp_path)
    _one_line_error(code, err, "--config does not apply to --resume")


def test_the_record_reads_back_as_written():
    entries = {"data": 'a "quoted",\tpath\x7f/é', "lr": 1e-3, "steps": 30, "quick": True}
    entries["odd key"] = float("inf")
    text = to_toml(entries, comment="two\nlines")
    assert tomllib.loads(text) == entries


def test_read_config_file_normalises_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("--lr_final_factor = 0.5\nkl-warmup = 3\n")
    assert read_config_file(path) == {"lr-final-factor": 0.5, "kl-warmup": 3}


# -- estimators per model -----------------------------------------------------------------------
@pytest.mark.parametrize("name", model_names())
def test_each_model_declares_the_estimators_it_uses(name):
    cls = get_model(name)
    choices = set(cls.estimators.choices)
    assert choices and choices <= set(ESTIMATORS)
    used = {cls.estimators.default, *(g.elbo for g in cls.guides.values() if g.elbo)}
    used |= {entry["elbo"] for entry in cls.leaderboard if "elbo" in entry}
    assert used <= choices, used - choices


def test_estimators_that_do_not_apply_are_refused(capsys):
    parser = run.build_parser()
    assert parser.parse_args(["gmm", "--elbo", "enum"]).elbo == "enum"
    code, _, err = _cli(capsys, MODEL, "--elbo", "enum")
    _one_line_error(code, err, "argument --elbo: invalid choice: 'enum'")
    code, _, err = _cli(capsys, "ising", "--elbo", "meanfield")
    _one_line_error(code, err, "argument --elbo: invalid choice: 'meanfield'")
    with pytest.raises(ZooError, match="estimator 'enum' does not apply to model 'normal-gamma'"):
        zoo.fit(MODEL, elbo="enum", steps=1, progress=False)
    with pytest.raises(ZooError, match="iwae estimator needs --particles of at least 2"):
        zoo.fit(MODEL, elbo="iwae", particles=1, steps=1, progress=False)
