"""What a run logs as it goes: ``history.csv`` row by row, and any loggers the caller adds.

The runner writes a run directory's ``history.csv`` while it trains: the header with the first
row, then one appended (and flushed) line per history record, so ``tail -f`` or pandas can read
the trace of a live run. A resumed run first rewrites the file from its checkpoint's history
(rows recorded after that checkpoint are dropped, as the checkpoint drops them) and appends from
there. The final save writes the same complete file again (:func:`zoo.outputs.save_run`).

Other loggers see the same rows: a :class:`RunLogger` has ``start(run_dir, step, history)``,
called once when a run begins training (at step 0, or at its checkpoint's step with the
history so far), and ``record(row)``, called after each history record. Add them around any
:func:`zoo.fit` or :func:`zoo.resume` call::

    from zoo.live_logs import TensorBoardLogger, logging_to

    with logging_to(TensorBoardLogger("tb/normal-gamma")):
        zoo.fit("normal-gamma", run_dir="runs/mine")

:class:`TensorBoardLogger` writes the ELBO, its two halves, the exact log evidence and the gap
as TensorBoard scalars (it needs the ``tensorboard`` package, which the zoo does not depend
on); :class:`RunFile` writes a file into the run directory as the run starts (the command line
records a ``--config`` file's content with it). MLflow has no logger here: a
:class:`RunLogger` of a few lines calling ``mlflow.log_metrics(row, step=row["step"])`` is one.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

from zoo.errors import ZooError, first_line
from zoo.outputs import write_atomic
from zoo.run_files import CONFIG

#: the live (and final) history file in a run directory
HISTORY = "history.csv"


class RunLogger(Protocol):
    """Something that follows a run's history records (see the module docstring)."""

    def start(self, run_dir: Path | None, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        """The run begins training at ``step`` (0, or its checkpoint's) with ``history``."""

    def record(self, row: Mapping[str, Any]) -> None:
        """A history row was recorded (``step``, ``elbo``, ``gap``... as in ``history.csv``)."""


_LOGGERS: ContextVar[tuple[RunLogger, ...]] = ContextVar("zoo_run_loggers", default=())


@contextlib.contextmanager
def logging_to(*loggers: RunLogger) -> Iterator[None]:
    """Every run trained inside the block reports to ``loggers`` too; on leaving, each that
    has a ``close()`` is closed."""
    token = _LOGGERS.set(_LOGGERS.get() + tuple(loggers))
    try:
        yield
    finally:
        _LOGGERS.reset(token)
        for logger in loggers:
            close = getattr(logger, "close", None)
            if callable(close):
                close()


def active_loggers() -> tuple[RunLogger, ...]:
    """The loggers of the enclosing :func:`logging_to` blocks, outermost first."""
    return _LOGGERS.get()


# -- history.csv --------------------------------------------------------------------------------
def csv_value(value: Any) -> str:
    """One history value as pandas' ``to_csv`` writes it (NaN and None as an empty field)."""
    if value is None:
        return ""
    if hasattr(value, "item") and not isinstance(value, str):  # numpy and torch scalars
        value = value.item()
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    text = str(value)
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column names in order of first appearance (as ``pandas.DataFrame(rows)`` orders them)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _line(values: Sequence[str]) -> str:
    return ",".join(values) + "\n"


class HistoryFile:
    """A run directory's ``history.csv``, kept equal to the history recorded so far."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None

    def rewrite(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Write the whole file from ``history`` (none yet: remove any file there)."""
        if not history:
            self.columns = None
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise _write_error(self.path, exc) from None
            return
        columns = _columns(history)
        text = _line(columns) + "".join(
            _line([csv_value(row.get(c)) for c in columns]) for row in history
        )
        write_atomic(self.path, text.encode())
        self.columns = columns

    def append(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Add ``history``'s last row (the whole file again where it brings a new column)."""
        row = history[-1]
        if self.columns is None or not set(row) <= set(self.columns) or not self.path.is_file():
            self.rewrite(history)
            return
        line = _line([csv_value(row.get(c)) for c in self.columns])
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
        except OSError as exc:
            raise _write_error(self.path, exc) from None


def _write_error(path: Path, exc: OSError) -> ZooError:
    return ZooError(f"cannot write {path}: {exc.strerror or exc}")


class LiveLogs:
    """What the runner calls: the run directory's ``history.csv`` (where there is a run
    directory) and the loggers active when the run was set up."""

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.history_file = None if run_dir is None else HistoryFile(Path(run_dir) / HISTORY)
        self.loggers = active_loggers()

    def start(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        """The run begins training at ``step`` with ``history`` (a checkpoint's, or none)."""
        if self.history_file is not None:
            self.history_file.rewrite(history)
        for logger in self.loggers:
            logger.start(self.run_dir, step, history)

    def record(self, history: Sequence[Mapping[str, Any]]) -> None:
        """``history``'s last row was just recorded."""
        if self.history_file is not None:
            self.history_file.append(history)
        for logger in self.loggers:
            logger.record(history[-1])


# -- other loggers ------------------------------------------------------------------------------
class RunFile:
    """Writes ``name`` with ``payload`` into the run directory as each run starts (no-op for
    a run without a directory). The file goes with the run: kept on success and on Ctrl-C,
    removed with it on failure."""

    def __init__(self, name: str, payload: bytes) -> None:
        self.name = name
        self.payload = payload

    def start(self, run_dir: Path | None, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        if run_dir is not None:
            write_atomic(run_dir / self.name, self.payload)

    def record(self, row: Mapping[str, Any]) -> None:
        """Nothing to do per row."""


#: history columns -> TensorBoard tags (the ELBO and its terms under ``elbo/``)
TENSORBOARD_TAGS = {
    "elbo": "elbo/elbo",
    "expected_log_likelihood": "elbo/expected_log_likelihood",
    "kl": "elbo/kl",
    "iwae": "elbo/iwae_joint",
    "log_evidence": "elbo/log_evidence",
    "gap": "gap",
    "train_elbo": "training/train_elbo",
    "kl_weight": "training/kl_weight",
}

TENSORBOARD_MISSING = "--tensorboard needs the tensorboard package: pip install tensorboard"


def summary_writer_class() -> type:
    """:class:`torch.utils.tensorboard.SummaryWriter`; a one-line :class:`ZooError` saying to
    ``pip install tensorboard`` where the package is not importable."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ZooError(TENSORBOARD_MISSING) from None
    return SummaryWriter


class TensorBoardLogger:
    """The history rows as TensorBoard scalars in ``log_dir`` (tags :data:`TENSORBOARD_TAGS`,
    global step the training step; NaN values, such as the gap of a model without an exact
    log evidence, are left out). Checks at construction that TensorBoard is importable.

    A run hides the events ``log_dir`` holds from its steps on (TensorBoard's ``purge_step``):
    a fresh run all of them (a run that replaces another under the same name), a resumed run
    those after its checkpoint's step, so the curves continue where the checkpoint left them;
    where ``log_dir`` holds no events yet, a resumed run logs its checkpoint's history first.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer_class = summary_writer_class()
        self.writer: Any = None

    def start(self, run_dir: Path | None, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        self.close()
        fresh = not any(self.log_dir.glob("events.out.tfevents.*"))
        try:
            self.writer = self._writer_class(
                log_dir=str(self.log_dir), purge_step=step + 1 if step else 0
            )
        except OSError as exc:
            raise _write_error(self.log_dir, exc) from None
        if step and fresh:
            for row in history:
                self._scalars(row)
            self.writer.flush()

    def record(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        self._scalars(row)
        self.writer.flush()

    def _scalars(self, row: Mapping[str, Any]) -> None:
        step = int(row["step"])
        for column, tag in TENSORBOARD_TAGS.items():
            value = row.get(column)
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        """Flush and close the event file (the next :meth:`start` opens another)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# -- MLflow -------------------------------------------------------------------------------------
MLFLOW_MISSING = "--mlflow needs the mlflow package: pip install mlflow"


def tracking_uri(where: str) -> str:
    """An MLflow tracking URI: ``where`` itself where it has a scheme (``http://...``,
    ``file:///...``, ``databricks``), else a local directory's absolute ``file:`` URI."""
    if "://" in where or where in ("databricks",):
        return where
    return Path(where).expanduser().resolve().as_uri()


class MLflowLogger:
    """The history rows as MLflow metrics (named as :data:`TENSORBOARD_TAGS`, step the
    training step, NaN values left out) in a run named ``run_name`` of the experiment
    ``experiment``, with the run's settings (its ``config.json``) as parameters. Checks at
    construction that MLflow is importable. A resumed run is a new MLflow run that logs its
    checkpoint's history first."""

    def __init__(self, where: str, experiment: str, run_name: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise ZooError(MLFLOW_MISSING) from None
        self.mlflow = mlflow
        self.uri = tracking_uri(where)
        self.experiment = experiment
        self.run_name = run_name
        self.active: Any = None

    def start(self, run_dir: Path | None, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        self.close()
        m = self.mlflow
        try:
            m.set_tracking_uri(self.uri)
            m.set_experiment(self.experiment)
            name = self.run_name if not step else f"{self.run_name} (resumed at step {step})"
            self.active = m.start_run(run_name=name)
            params = _config_params(run_dir)
            if params:
                m.log_params(params)
            for row in history:
                self._metrics(row)
        except ZooError:
            raise
        except Exception as exc:  # mlflow raises its own types for a bad store or URI
            raise ZooError(f"--mlflow {self.uri}: {first_line(exc, 160)}") from None

    def record(self, row: Mapping[str, Any]) -> None:
        if self.active is None:
            return
        try:
            self._metrics(row)
        except Exception as exc:
            raise ZooError(f"--mlflow {self.uri}: {first_line(exc, 160)}") from None

    def _metrics(self, row: Mapping[str, Any]) -> None:
        metrics = {
            tag: float(value)
            for column, tag in TENSORBOARD_TAGS.items()
            if isinstance(value := row.get(column), int | float) and math.isfinite(value)
        }
        if metrics:
            self.mlflow.log_metrics(metrics, step=int(row["step"]))

    def close(self) -> None:
        """End the MLflow run (the next :meth:`start` begins another)."""
        if self.active is not None:
            self.active = None
            self.mlflow.end_run()


def _config_params(run_dir: Path | None) -> dict[str, str]:
    """The run's settings and model options from its ``config.json``, as MLflow parameters
    (``options.<name>`` for the model's options; the data's provenance left out)."""
    if run_dir is None or not (run_dir / CONFIG).is_file():
        return {}
    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    params = {k: str(v) for k, v in config.items() if k not in ("options", "data")}
    params.update({f"options.{k}": str(v) for k, v in (config.get("options") or {}).items()})
    return params
