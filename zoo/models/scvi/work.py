"""The work of an scVI run, estimated before it is done.

A full transcriptome (tens of thousands of genes) or a large atlas can make a run take hours;
the user should know within seconds. :class:`WorkClock` times the first training steps (after
the first, which pays one-off costs), :func:`seconds_per_pair` times one evaluation pass on a few
cells, and :func:`estimate_work` adds up training, history records and the evaluation after
training. The line is printed to stderr where a person watches (a terminal) or where the run is
long (:data:`ANNOUNCE_SECONDS`). The probe's random draws come from a forked stream: the run's
numbers do not change.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zoo.diagnostics import evaluate, run_subsample

if TYPE_CHECKING:  # pragma: no cover
    from zoo.models.scvi.model import SingleCellVI

#: training steps timed (after the first, which pays one-off costs) for the work estimate
TIMED_STEPS = 4
#: an estimated run at least this long (seconds) is announced even when stderr is no terminal
ANNOUNCE_SECONDS = 60.0


def _duration(seconds: float) -> str:
    """A duration as a person reads it: seconds below two minutes, else minutes."""
    return f"{seconds:.2g} s" if seconds < 120 else f"{seconds / 60:.2g} min"


class WorkClock:
    """The clock of a run's first steps (a resumed run starts it again)."""

    def __init__(self) -> None:
        self.clock: list[float] = []
        self.last_step: int | None = None
        self.first_step = 0

    def tick(self, model: SingleCellVI, step: int, total: int) -> dict[str, Any] | None:
        """Called before step ``step`` of ``total``; once :data:`TIMED_STEPS` steps after the
        first are timed, the estimate (:func:`estimate_work`, at the median step), announced;
        None before and after."""
        now = time.perf_counter()
        last, self.last_step = self.last_step, step
        if last is None or step != last + 1:  # a new run, or a resumed one
            self.clock, self.first_step = [now], step
            return None
        if len(self.clock) > TIMED_STEPS + 1:  # estimated already
            return None
        self.clock.append(now)
        if len(self.clock) != TIMED_STEPS + 2:
            return None
        per_step = float(np.median(np.diff(self.clock[1:])))
        estimate = estimate_work(model, per_step, remaining=total - self.first_step + 1)
        if estimate is not None and (
            sys.stderr.isatty() or estimate["total_seconds"] >= ANNOUNCE_SECONDS
        ):
            print(estimate["line"], file=sys.stderr, flush=True)
        return estimate


@torch.no_grad()
def seconds_per_pair(model: SingleCellVI, cells: int = 32, particles: int = 32) -> float | None:
    """Seconds per (particle, cell) pair of an evaluation pass (:func:`evaluate`, what the
    diagnostics, the history records and the held-out likelihood run), timed on a few
    training cells with the run's guide; the probe's random draws come from a forked
    stream, so the run's own are untouched. None before a guide is built."""
    guide = model._guide
    if guide is None:
        return None
    idx = np.arange(min(cells, model.num_data))
    bound = model.data
    probe = model.with_data(  # the model's Cells (type(bound): its module imports this one)
        type(bound)(bound.source.subset(idx), bound.log_library[idx], bound.names[idx])
    )
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        tic = time.perf_counter()
        evaluate(probe, guide.bind(probe), num_particles=particles, with_khat=False, points=None)
        elapsed = time.perf_counter() - tic
    return elapsed / (len(idx) * particles)


def estimate_work(
    model: SingleCellVI, seconds_per_step: float, remaining: int
) -> dict[str, Any] | None:
    """The estimated seconds of a run: ``remaining`` training steps at ``seconds_per_step``
    plus the history records (``trace_particles``, 16 by default, of every cell about
    ``training.records`` times), and the evaluation after training at the measured cost
    of a (particle, cell) pair (:func:`seconds_per_pair`): the diagnostics (the default
    ``eval_particles`` per training cell: the model does not see the run's own), the
    held-out likelihood (``test_particles`` per held-out cell) and the reconstruction
    error (16 per training cell); of at most the run's ``eval_subsample`` cells of each split
    where it sets one (:func:`~zoo.diagnostics.run_subsample`). Estimates, stated with "~";
    None before a guide is built."""
    from zoo.settings import BY_NAME

    pair = seconds_per_pair(model)
    if pair is None:
        return None
    n_train, n_test = model.num_data, len(model.test_index)
    sample = run_subsample()
    train_scored, test_scored = (
        (n_train, n_test)
        if sample is None
        else (min(n_train, sample.points), min(n_test, sample.points))
    )
    eval_particles = int(BY_NAME["eval_particles"].default)
    trace_particles = int(BY_NAME["trace_particles"].default)
    records = trace_particles * (train_scored + test_scored) * model.training.records
    train_s = remaining * seconds_per_step + records * pair
    pairs = eval_particles * train_scored + model.test_particles * test_scored + 16 * train_scored
    eval_s = pairs * pair
    scored = "" if sample is None else f" of {train_scored:,} cells"
    genes = f"{model.dataset.num_genes:,} genes"
    if model.gene_selection is not None:
        genes += f" ({model.num_genes:,} kept)"
    line = (
        f"{model.name}: {n_train + n_test:,} cells x {genes}, ~{seconds_per_step:.2g} s per "
        f"step, ~{_duration(train_s)} for {remaining:,} steps + ~{_duration(eval_s)} "
        f"evaluation ({eval_particles:,} particles per cell{scored})"
    )
    return {
        "seconds_per_step": seconds_per_step,
        "seconds_per_particle_cell": pair,
        "steps": remaining,
        "training_seconds": train_s,
        "evaluation_seconds": eval_s,
        "total_seconds": train_s + eval_s,
        "line": line,
    }
