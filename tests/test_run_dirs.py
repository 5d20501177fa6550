"""Run directories: resume checks, no finished run overwritten or lost, data provenance,
Ctrl-C, concurrent runs, full disks, kill -9.

Runs are normal-gamma (the cheapest model with a checkpoint, posterior.nc and figures) with a
handful of steps and the minimum of 30 evaluation particles; most go through the command line
in this process (:func:`zoo.run.main`), the kill tests through a subprocess.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from zoo import outputs, runner, stored_runs
from zoo.errors import ZooError
from zoo.outputs import RunInterrupted
from zoo.run import main

MODEL = "normal-gamma"
FAST = ["--eval-particles", "30", "--quiet"]
REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in zoo.RunConfig.__dataclass_fields__.values()]


# -- helpers ------------------------------------------------------------------------------------
def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code: int, err: str, needle: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m zoo.run: error: "), lines[0]
    assert needle in lines[0], lines[0]
    return lines[0]


def _copy(template: Path, dest: Path, *, finished: bool = True) -> Path:
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns(outputs.LOCK))
    if not finished:
        (dest / "report.json").unlink()
    return dest


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != outputs.LOCK}


def _siblings(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.parent.iterdir() if p.name != run_dir.name)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _start(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    command = [sys.executable, "-m", "zoo.run", *map(str, args)]
    return subprocess.Popen(
        command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


def _wait_for(pattern_dir: Path, pattern: str, proc: subprocess.Popen, timeout=120.0) -> Path:
    """The first file matching ``pattern`` under ``pattern_dir`` while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(pattern_dir.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {pattern} appeared: {proc.stderr.read().decode()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no {pattern} after {timeout} s")


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished normal-gamma run of 5 steps, checkpointed every step."""
    run_dir = tmp_path_factory.mktemp("template") / "run"
    zoo.fit(MODEL, steps=5, eval_particles=30, checkpoint_every=1, run_dir=run_dir, progress=False)
    return run_dir


@pytest.fixture
def finished(template, tmp_path) -> Path:
    return _copy(template, tmp_path / "finished")


@pytest.fixture
def unfinished(template, tmp_path) -> Path:
    return _copy(template, tmp_path / "unfinished", finished=False)


# -- 1. resume: another model's run, --steps, bad checkpoints and configs -----------------------
def test_resume_refuses_another_models_run(capsys, finished):
    before = _snapshot(finished)
    code, _, err = _cli(capsys, "bayes-linreg", "--resume", finished)
    _one_line_error(code, err, f"{finished} holds a 'normal-gamma' run, not a 'bayes-linreg' one")
    assert f"python -m zoo.run --resume {finished}" in err
    assert _snapshot(finished) == before


def test_resume_steps_extends_the_run_and_refuses_shortening_it(capsys, finished):
    code, out, err = _cli(capsys, MODEL, "--resume", finished, "--steps", "8")
    assert code == 0, err
    assert out.splitlines()[0] == f"extending the run in {finished} at step 8 (it planned 5)"
    report = json.loads((finished / "report.json").read_text())
    assert report["config"]["steps"] == 8
    assert json.loads((finished / "config.json").read_text())["steps"] == 8
    assert list(pd.read_csv(finished / "history.csv")["step"]) == list(range(9))
    assert torch.load(finished / "checkpoint.pt", weights_only=True)["step"] == 8
    assert _siblings(finished) == []  # the extension was written beside, then swapped in

    before = _snapshot(finished)
    code, _, err = _cli(capsys, "--resume", finished, "--steps", "3")  # the top-level form
    _one_line_error(code, err, "it has trained 8 steps; --steps must be at least 8")
    code, _, err = _cli(capsys, MODEL, "--resume", finished, "--lr", "0.1")
    _one_line_error(code, err, "--lr does not apply to --resume")
    code, _, err = _cli(capsys, "--steps", "9")
    _one_line_error(code, err, "--steps before the model name goes with --resume DIR only")
    assert _snapshot(finished) == before
    assert "--steps" in _cli(capsys, MODEL, "--help")[1]


class _Exploit:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (lambda m: b"", "is not a readable checkpoint"),
        (lambda m: b"\x00garbage\xff" * 50, "is not a readable checkpoint"),
        (lambda m: _torch_bytes([1, 2, 3]), "it holds a list, not a dict"),
        (lambda m: _torch_bytes({}), "no 'step' entry"),
        (lambda m: _torch_bytes({"step": 1}), "no 'params' entry"),
        (lambda m: pickle.dumps(_Exploit(m)), "objects other than tensors and numbers"),
        (lambda m: _torch_bytes(_Exploit(m)), "objects other than tensors and numbers"),
    ],
    ids=["empty", "garbage", "list", "keyless", "one-key", "pickle", "torch-pickle"],
)
def test_a_bad_checkpoint_is_one_line(capsys, unfinished, tmp_path, content, needle):
    marker = tmp_path / "exploited"
    (unfinished / "checkpoint.pt").write_bytes(content(marker))
    code, _, err = _cli(capsys, "--resume", unfinished)
    _one_line_error(code, err, needle)
    assert not marker.exists()
    assert not (unfinished / "report.json").exists()


def _edit_config(run_dir: Path, edit) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    edit(config)
    (run_dir / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(steps=-3), "field 'steps' is invalid: -3 is not an integer >= 1"),
        (lambda c: c.update(steps="ten"), "field 'steps' must be an integer, got 'ten'"),
        (lambda c: c.update(steps=5.0), "field 'steps' must be an integer"),
        (lambda c: c.update(lr=float("nan")), "field 'lr' is invalid: nan is not a positive"),
        (lambda c: c.update(seed=2**40), "'seed' is invalid: seed 1099511627776 is outside"),
        (lambda c: c.update(eval_particles=3), "'eval_particles' is invalid: 3 particles: k-hat"),
        (lambda c: c.update(quick="no"), "field 'quick' must be true or false"),
        (lambda c: c.update(method="magic"), "'method' is invalid: 'magic' is not one of svi"),
        (lambda c: c.update(bogus=1), "unknown field 'bogus'"),
        (lambda c: c.pop("guide"), "missing field 'guide'"),
        (lambda c: c.pop("data"), "missing field 'data'"),
        (lambda c: c.update(data={"source": "web"}), "field 'data' has source \"web\""),
        (lambda c: c.update(options={"mu0": [1]}), "field 'options' must map option names"),
        (lambda c: c.update(model="nope"), "unknown model 'nope'"),
        (lambda c: c.update(guide="exact"), "checkpoint does not match the model"),
        (lambda c: c.update(steps=4), "is at step 5, past the run's 4 steps"),
    ],
)
def test_a_bad_config_is_one_line(capsys, unfinished, edit, needle):
    _edit_config(unfinished, edit)
    code, _, err = _cli(capsys, "--resume", unfinished)
    _one_line_error(code, err, needle)
    assert not (unfinished / "report.json").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b"[1, 2]", "must hold a JSON object, not a list"),
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        (b"", "is not valid JSON"),
    ],
)
def test_a_config_that_is_no_object_is_one_line(capsys, unfinished, text, needle):
    (unfinished / "config.json").write_bytes(text)
    _one_line_error(*_cli(capsys, "--resume", unfinished)[::2], needle)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["cpu", "cuda", "trace", "svi", "default", "mean-field", "exact"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from([*FIELDS, "<delete>", "<extra>", "<whole>"]),
    value=_JSON,
    victim=st.sampled_from(FIELDS),
)
def test_any_corrupted_config_field_is_a_zoo_error(template, field, value, victim):
    """Any JSON value in any field (or none, or an extra one, or no object at all): loading
    the run for a resume either works or raises a ZooError, never another exception."""
    run_dir = template.parent / "fuzz-config"
    if not run_dir.exists():
        _copy(template, run_dir, finished=False)
    config = json.loads((template / "config.json").read_text())
    if field == "<delete>":
        config.pop(victim)
    elif field == "<extra>":
        config["extra"] = value
    elif field == "<whole>":
        config = value
    else:
        config[field] = value
    (run_dir / "config.json").write_text(json.dumps(config))
    try:
        runner.load_run(run_dir)
    except ZooError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=2000))
def test_random_checkpoint_bytes_are_a_zoo_error(template, content):
    run_dir = template.parent / "fuzz-bytes"
    if not run_dir.exists():
        _copy(template, run_dir, finished=False)
    (run_dir / "checkpoint.pt").write_bytes(content)
    with pytest.raises(ZooError) as info:
        runner.load_run(run_dir)
    assert "\n" not in str(info.value)


_TENSORS = st.builds(
    lambda values, dtype: torch.tensor(values, dtype=dtype),
    st.lists(st.integers(0, 255), max_size=6),
    st.sampled_from([torch.float64, torch.float32, torch.uint8, torch.int64]),
)
_ENTRY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats()
    | st.text(max_size=8)
    | _TENSORS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from((*stored_runs.CHECKPOINT_KEYS, "params.one", "optim.one")), value=_ENTRY)
def test_corrupted_checkpoint_entries_are_a_zoo_error(template, key, value):
    run_dir = template.parent / "fuzz-entries"
    if not run_dir.exists():
        _copy(template, run_dir, finished=False)
    checkpoint = torch.load(template / "checkpoint.pt", weights_only=True)
    if "." in key:  # one parameter, or one parameter's optimizer state
        entry = key.split(".")[0]
        checkpoint[entry][next(iter(checkpoint[entry]))] = value
    else:
        checkpoint[key] = value
    (run_dir / "checkpoint.pt").write_bytes(_torch_bytes(checkpoint))
    try:
        runner.load_run(run_dir)
    except ZooError as exc:
        assert "\n" not in str(exc)


# -- 2. a finished run is never overwritten, and replaced only on success -----------------------
def test_a_finished_run_dir_is_refused_without_overwrite(capsys, finished):
    before = _snapshot(finished)
    code, _, err = _cli(capsys, MODEL, "--steps", "3", "--run-dir", finished, *FAST)
    _one_line_error(code, err, f"{finished} holds a finished run (report.json); pass --overwrite")
    with pytest.raises(ZooError, match="holds a finished run"):
        zoo.fit(MODEL, steps=3, eval_particles=30, run_dir=finished, progress=False)
    assert _snapshot(finished) == before and _siblings(finished) == []


def test_overwrite_replaces_a_run_only_once_the_new_one_succeeds(monkeypatch, finished):
    before = _snapshot(finished)
    real_open = open

    def full_disk(path, mode="r", *args, **kw):
        if Path(path).name.startswith("posterior.nc"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(outputs, "open", full_disk, raising=False)
    with pytest.raises(ZooError, match=r"posterior\.nc: No space left on device"):
        zoo.fit(MODEL, steps=3, seed=1, eval_particles=30, run_dir=finished, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(finished) == before and _siblings(finished) == []

    result = zoo.fit(MODEL, steps=3, seed=1, eval_particles=30, run_dir=finished, overwrite=True)
    assert result.run_dir == finished and _siblings(finished) == []
    report = json.loads((finished / "report.json").read_text())
    config = json.loads((finished / "config.json").read_text())
    assert report["config"] == config and config["seed"] == 1 and config["steps"] == 3
    assert torch.load(finished / "checkpoint.pt", weights_only=True)["step"] == 3
    assert result.save(finished) == finished  # already written there: nothing to redo


def test_a_directory_that_holds_no_run_is_refused(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in ([], ["--overwrite"]):
        code, _, err = _cli(capsys, MODEL, "--run-dir", mine, *FAST, *overwrite)
        _one_line_error(code, err, f"{mine} is not empty and holds no run")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_kill_9_during_an_overwrite_leaves_the_old_run(capsys, finished):
    before = _snapshot(finished)
    proc = _start(
        finished.parent,
        *(MODEL, "--run-dir", finished, "--overwrite", "--seed", "1", "--steps", "5000"),
        *("--checkpoint-every", "10", "--record-every", "1000", *FAST),
    )
    try:
        staged = _wait_for(finished.parent, "finished.tmp-*/checkpoint.pt", proc).parent
        # 5. the directory is locked while the run lives
        code, _, err = _cli(capsys, "--resume", finished)
        _one_line_error(code, err, f"{finished} is in use by another run")
        with pytest.raises(ZooError, match="is in use by another run"):
            zoo.fit(MODEL, steps=2, eval_particles=30, run_dir=finished, overwrite=True)
    finally:
        _kill9(proc)
    assert _snapshot(finished) == before
    report = json.loads((finished / "report.json").read_text())
    config = json.loads((finished / "config.json").read_text())
    assert report["config"] == config and config["seed"] == 0
    # the killed run's partial work is beside it, resumable, and never mistaken for it
    assert json.loads((staged / "config.json").read_text())["seed"] == 1
    assert not (staged / "report.json").exists()


def test_resume_after_kill_9_reproduces_the_uninterrupted_run(capsys, tmp_path):
    settings_ = dict(steps=600, seed=5, checkpoint_every=20, record_every=20)
    whole = zoo.fit(MODEL, eval_particles=30, progress=False, **settings_)
    run_dir = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings_.items()]
    proc = _start(tmp_path, MODEL, "--run-dir", run_dir, *flags, *FAST)
    try:
        _wait_for(run_dir, "checkpoint.pt", proc)
    finally:
        _kill9(proc)
    step = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 600 and not (run_dir / "report.json").exists()

    code, _, err = _cli(capsys, "--resume", run_dir, "--quiet")
    assert code == 0, err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["diagnostics"]["elbo"] == whole.diagnostics.elbo
    history = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(
        history.drop(columns="seconds"), whole.history.drop(columns="seconds"), check_exact=True
    )


# -- 3. data provenance -------------------------------------------------------------------------
def _interrupt_after_checkpoint(monkeypatch, at: int) -> None:
    save = runner._Trainer._save_checkpoint

    def save_then_stop(self, step, optim):
        save(self, step, optim)
        if step == at:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner._Trainer, "_save_checkpoint", save_then_stop)


def test_in_memory_data_is_recorded_by_hash_and_required_to_resume(monkeypatch, tmp_path):
    data = np.random.default_rng(0).normal(1.0, 2.0, 300)
    run_dir = tmp_path / "array"
    _interrupt_after_checkpoint(monkeypatch, 2)
    with pytest.raises(RunInterrupted):
        zoo.fit(MODEL, data, steps=4, checkpoint_every=1, eval_particles=30, run_dir=run_dir)
    monkeypatch.undo()
    recorded = json.loads((run_dir / "config.json").read_text())["data"]
    assert recorded["source"] == "array" and recorded["shape"] == [300]
    assert recorded["dtype"] == "<f8" and len(recorded["sha256"]) == 64

    with pytest.raises(ZooError, match=r"fitted on in-memory data \(a 300 <f8 array\)"):
        zoo.resume(run_dir, progress=False)
    with pytest.raises(ZooError, match=r"the data given \(a 500 array\) is not the run's data"):
        zoo.resume(run_dir, data=np.zeros(500), progress=False)
    with pytest.raises(ZooError, match="is not the run's data"):
        zoo.resume(run_dir, data=data + 1e-12, progress=False)
    result = zoo.resume(run_dir, data=data.copy(), progress=False)
    assert result.diagnostics.num_data == 300 and (run_dir / "report.json").is_file()


def test_a_data_file_is_recorded_by_path_and_hash(monkeypatch, capsys, tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("x\n" + "\n".join(str(v) for v in np.linspace(-1, 3, 40)) + "\n")
    run_dir = tmp_path / "file"
    _interrupt_after_checkpoint(monkeypatch, 2)
    with pytest.raises(RunInterrupted):
        zoo.fit(MODEL, csv, steps=4, checkpoint_every=1, eval_particles=30, run_dir=run_dir)
    monkeypatch.undo()
    recorded = json.loads((run_dir / "config.json").read_text())["data"]
    assert recorded["source"] == "path" and recorded["path"] == str(csv.resolve())

    moved = tmp_path / "moved.csv"
    csv.rename(moved)
    code, _, err = _cli(capsys, "--resume", run_dir)
    _one_line_error(code, err, f"its data file {csv.resolve()} no longer exists")
    csv.write_text(moved.read_text().replace("-1.0", "-2.0"))
    code, _, err = _cli(capsys, "--resume", run_dir)
    _one_line_error(code, err, f"data file {csv.resolve()} is not the run's data (sha256")
    code, _, err = _cli(capsys, MODEL, "--resume", run_dir, "--data", moved, "--quiet")
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["path"] == str(moved.resolve())
    assert json.loads((run_dir / "report.json").read_text())["config"] == config


def test_default_data_is_recorded_as_default(template):
    assert json.loads((template / "config.json").read_text())["data"] == {"source": "default"}
    with pytest.raises(ZooError, match="fitted on the model's own data; give no data"):
        runner.load_run(template, data=np.zeros(3))


# -- 4. Ctrl-C ----------------------------------------------------------------------------------
def test_ctrl_c_checkpoints_the_step_it_stopped_and_resumes_exactly(monkeypatch, tmp_path):
    settings_ = dict(steps=12, seed=3, record_every=2, checkpoint_every=100, eval_particles=30)
    whole = zoo.fit(MODEL, progress=False, **settings_)
    cls = zoo.get_model(MODEL)

    def press_ctrl_c(self, step, total):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cls, "on_step", press_ctrl_c)
    # Python's own Ctrl-C handler, as in a terminal: a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and then a Ctrl-C never arrives at all
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    run_dir = tmp_path / "ctrl-c"
    try:
        with pytest.raises(RunInterrupted) as info:
            zoo.fit(MODEL, progress=False, run_dir=run_dir, **settings_)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert info.value.step == 7 and info.value.run_dir == run_dir
    assert (
        str(info.value)
        == f"interrupted at step 7; resume with: python -m zoo.run --resume {run_dir}"
    )
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 7
    assert not (run_dir / "report.json").exists()

    resumed = zoo.resume(run_dir, progress=False)
    for name, value in whole.param_state["params"].items():
        assert torch.equal(resumed.param_state["params"][name], value), name
    assert resumed.diagnostics.elbo == whole.diagnostics.elbo


def test_ctrl_c_in_the_diagnostics_keeps_the_trained_run(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "diag"

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "evaluate", interrupted)
    code, _, err = _cli(capsys, MODEL, "--steps", "5", "--run-dir", run_dir, *FAST)
    monkeypatch.undo()
    assert code == 130
    assert err == (
        f"python -m zoo.run: interrupted at step 5; resume with: "
        f"python -m zoo.run --resume {run_dir}\n"
    )
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 5
    assert not (run_dir / "report.json").exists()
    code, _, err = _cli(capsys, "--resume", run_dir, "--quiet")
    assert code == 0, err
    assert json.loads((run_dir / "report.json").read_text())["config"]["steps"] == 5


def test_ctrl_c_before_any_checkpoint_leaves_nothing(monkeypatch, capsys, tmp_path):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner._Trainer, "_build", interrupted)
    code, _, err = _cli(capsys, MODEL, "--steps", "5", "--out", tmp_path / "runs", *FAST)
    assert code == 130
    assert err == "python -m zoo.run: interrupted before the first checkpoint; nothing to resume\n"
    assert not (tmp_path / "runs").exists()


# -- 5. concurrent runs -------------------------------------------------------------------------
def test_default_run_dirs_are_unique_when_started_together(tmp_path):
    made: list[Path] = []
    threads = [
        threading.Thread(target=lambda: made.append(outputs.default_run_dir(MODEL, 0, tmp_path)))
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 16 and all(p.is_dir() for p in made)


def test_a_locked_run_dir_is_in_use(capsys, unfinished):
    held = outputs.RunDirectory(unfinished, resume=True)
    held.lock()
    try:
        code, _, err = _cli(capsys, "--resume", unfinished)
        _one_line_error(code, err, f"{unfinished} is in use by another run")
    finally:
        held.release()
    code, _, err = _cli(capsys, "--resume", unfinished, "--quiet")
    assert code == 0, err


# -- 6. write failures --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt", "history.csv", "posterior.nc"])
def test_a_full_disk_is_one_line_and_leaves_no_report(monkeypatch, capsys, tmp_path, name):
    real_open = open

    def full_disk(path, mode="r", *args, **kw):
        if Path(path).name.startswith(name) and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(outputs, "open", full_disk, raising=False)
    code, _, err = _cli(capsys, MODEL, "--steps", "3", "--out", tmp_path / "runs", *FAST)
    _one_line_error(code, err, f"{name}: No space left on device")
    assert not list(tmp_path.rglob("report.json"))
    assert not (tmp_path / "runs").exists()  # the new run directory is gone again


def test_a_file_size_limit_while_writing_posterior_nc_is_one_line(tmp_path):
    """A real refused write (RLIMIT_FSIZE: EFBIG) where posterior.nc, the largest file,
    crosses the limit: one line and exit 2, not HDF5's crash."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    run_dir = tmp_path / "limited"
    args = ["bayes-linreg", "--steps", "3", "--run-dir", run_dir, *FAST]
    proc = _start(tmp_path, *args, preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, err.decode()
    assert len(lines) == 1 and "posterior.nc: File too large" in lines[0], lines
    assert not run_dir.exists()
