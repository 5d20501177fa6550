"""Shared test set-up: one torch thread (tiny models; 2 shared cores) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _default_dtype():
    """Restore torch's default dtype after each test, whatever the test changed."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m zoo.run ARGS`` in ``cwd`` and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "zoo.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def cli(tmp_path):
    """``cli(*args)`` runs the command line in a fresh directory (``cli.cwd``)."""

    def call(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=tmp_path)

    call.cwd = tmp_path
    return call


@pytest.fixture
def cli_here(tmp_path, monkeypatch):
    """``cli_here(*args)``: the command line's ``main`` in this process (no interpreter to
    start: for runs whose subject is the run, not the process), in a fresh directory; returns
    what :func:`run_cli` returns (``returncode``, ``stdout``, ``stderr``)."""
    import contextlib
    import io

    from zoo.run import main

    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> subprocess.CompletedProcess:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())

    call.cwd = tmp_path
    return call
