"""Writing a run to disk: ``runs/<model>/<run-id>/``, and never losing one.

``history.csv`` (step, ELBO, its two halves, exact log evidence, gap, seconds), the PNG figures,
a model's tables (a data frame as ``<stem>.csv``, an ``AnnData`` as ``<stem>.h5ad``), ArviZ
posterior draws where the latent is a parameter vector (``posterior.nc``), and last of all
``report.json``. The report is written atomically after everything else, so a directory
without one is an unfinished (or resumable) run, never a valid-looking partial result.

Every file is rendered in memory and then written by :func:`write_atomic` (a temporary file
renamed into place), so a full disk or any other refused write is a one-line
:class:`~zoo.errors.ZooError` naming the file, never a half-written file under its final name
(nor a crash inside the HDF5 library, which writing ``posterior.nc`` straight to a full disk
can cause).

:class:`RunDirectory` holds a run's directory for the run's lifetime: an exclusive lock
(``fcntl.flock`` on ``.lock`` inside it), so two runs never write one directory; and, where
the directory already holds a run, a fresh sibling (``<dir>.tmp-<pid>``) that replaces it only
once the new run has written its report, so a failure, Ctrl-C or ``kill -9`` at any point
leaves the old run as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError
from zoo.run_files import CONFIG, LOCK, REPORT

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX: no locking)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from zoo.inference_data import PosteriorDraws
    from zoo.results import FitResult


def default_run_dir(model: str, seed: int, root: str | Path = "runs") -> Path:
    """A new, empty ``runs/<model>/<timestamp>-seed<seed>`` directory, created here.

    Made unique atomically: each candidate is created with ``mkdir`` (which fails when the
    directory exists), so two runs started in the same second never share one; the second
    gets ``-2``, the third ``-3``.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / model / f"{stamp}-seed{seed}"
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        except OSError as exc:
            raise _write_error("create", path, exc) from None


# -- writing files ------------------------------------------------------------------------------
def _write_error(verb: str, path: Path, exc: OSError) -> ZooError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename and str(exc.filename) != str(path) else None
    return ZooError(f"cannot {verb} {path}: {reason}" + (f" ({where})" if where else ""))


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file renamed into place.

    A refused write (a full disk, no permission) raises a one-line :class:`ZooError` naming
    ``path`` and leaves neither the temporary file nor a partial ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _write_error("write", path, exc) from None


def to_inference_data(
    draws: PosteriorDraws | dict[str, torch.Tensor | np.ndarray],
    attrs: dict[str, Any] | None = None,
) -> Any:
    """ArviZ data of a run's posterior draws, on ArviZ 0.x and 1.x alike: every group from a
    :class:`~zoo.inference_data.PosteriorDraws`, the posterior alone from a plain mapping of
    site names to draws (see :func:`zoo.inference_data.to_inference_data`)."""
    from zoo.inference_data import to_inference_data as convert

    return convert(draws, attrs)


def netcdf_bytes(data: Any) -> bytes:
    """ArviZ data (InferenceData or DataTree) as the bytes of a netCDF-4 file.

    Rendered in memory (h5netcdf on a buffer): HDF5 never writes to the disk itself, so a
    disk that fills is a plain :class:`OSError` in :func:`write_atomic`, not a crash.
    """
    tree = data.to_datatree() if hasattr(data, "to_datatree") else data
    buffer = io.BytesIO()
    tree.to_netcdf(buffer, engine="h5netcdf")
    return buffer.getvalue()


def is_anndata(value: Any) -> bool:
    """Whether ``value`` is an ``anndata.AnnData`` (checked without importing anndata: such
    an object exists only once anndata is imported)."""
    module = sys.modules.get("anndata")
    return module is not None and isinstance(value, module.AnnData)


def h5ad_bytes(adata: Any) -> bytes:
    """An ``AnnData`` as the bytes of an ``.h5ad`` file, rendered in memory (h5py on a
    buffer, anndata's own element writer) like :func:`netcdf_bytes`."""
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write_elem(f, "/", adata)
    return buffer.getvalue()


def save_run(result: FitResult, run_dir: Path) -> Path:
    """Write ``result``'s outputs into ``run_dir``; ``report.json`` last.

    A no-op where :func:`zoo.fit` or :func:`zoo.resume` wrote this very result there already.
    """
    import matplotlib.pyplot as plt  # here, not at import: the command line's start stays light

    from zoo.diagnostics import finite_or_none
    from zoo.ladder import write_run_ladder

    run_dir = Path(run_dir)
    done = getattr(result, "run_dir", None)
    if done is not None and _same_dir(done, run_dir) and (run_dir / REPORT).is_file():
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / REPORT).unlink(missing_ok=True)
    except OSError as exc:
        raise _write_error("write", run_dir, exc) from None
    write_atomic(run_dir / "history.csv", result.history.to_csv(index=False).encode())
    files = []
    figures = result.figures()
    try:
        for stem, fig in figures.items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110)
            plt.close(fig)
            path = run_dir / f"{stem}.png"
            write_atomic(path, buffer.getvalue())
            files.append(path)
    finally:
        for fig in figures.values():
            plt.close(fig)
    for stem, table in result.tables().items():
        if is_anndata(table):  # an AnnData table: <stem>.h5ad
            path = run_dir / f"{stem}.h5ad"
            write_atomic(path, h5ad_bytes(table))
        else:
            path = run_dir / f"{stem}.csv"
            write_atomic(path, table.to_csv(index=False).encode())
        files.append(path)
    if result.posterior_draws:
        path = run_dir / "posterior.nc"
        write_atomic(path, netcdf_bytes(result.to_inference_data()))
        files.append(path)
    files += write_run_ladder(result, run_dir, write_atomic)  # never fails the run
    report = result.report()
    report["files"] = sorted(str(Path(f).relative_to(run_dir)) for f in files)
    text = json.dumps(finite_or_none(report), indent=2, default=_json_default, allow_nan=False)
    write_atomic(run_dir / REPORT, (text + "\n").encode())
    return run_dir


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# -- interrupts ---------------------------------------------------------------------------------
class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run. ``run_dir`` holds its last checkpoint (None: nothing was kept,
    or the run had finished), ``step`` that checkpoint's step; the message says how to go on."""

    def __init__(self, message: str, run_dir: Path | None = None, step: int | None = None):
        super().__init__(message)
        self.run_dir = run_dir
        self.step = step


class InterruptLatch:
    """Defers Ctrl-C (SIGINT) while armed: the first one only sets :attr:`pending` (the code
    that armed the latch stops at a safe point), a second one interrupts at once.

    Arms only in the main thread and only over Python's default handler (a host that handles
    SIGINT itself keeps its handler). Also a context manager that raises the deferred
    :class:`KeyboardInterrupt` on leaving.
    """

    def __init__(self) -> None:
        self.pending = False
        self._previous: Any = None

    def arm(self) -> InterruptLatch:
        if (
            self._previous is None
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def disarm(self, *, raise_pending: bool = False) -> None:
        """Restore the previous handler; with ``raise_pending``, raise a deferred Ctrl-C."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if raise_pending and self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __enter__(self) -> InterruptLatch:
        return self.arm()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.disarm(raise_pending=exc_type is None)


# -- the run directory --------------------------------------------------------------------------
def _entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} - {LOCK}


def _lock(directory: Path) -> int | None:
    """An exclusive lock on ``directory/.lock``, held until the returned descriptor is closed;
    a :class:`ZooError` when another run holds it."""
    if fcntl is None:  # pragma: no cover
        return None
    path = directory / LOCK
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _write_error("lock", directory, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ZooError(f"{directory} is in use by another run") from None
        except OSError as exc:  # a file system without locks: go on unlocked
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise _write_error("lock", directory, exc) from None
        try:  # the lock file we hold must still be the one in the directory
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise ZooError(f"{directory} is in use by another run")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


class RunDirectory:
    """The directory one run writes, held for that run's lifetime.

    - :meth:`lock` checks the directory and takes its lock: a new directory is created; an
      existing one must be empty or hold a run (a ``config.json``); a finished run (one with a
      ``report.json``) is refused unless ``overwrite``; a directory another run holds is
      refused. With ``resume`` the directory must hold a run.
    - :meth:`prepare` picks where to write (:attr:`path`): the directory itself when it is
      new or empty, or when an unfinished run is resumed there; else a fresh sibling
      ``<dir>.tmp-<pid>``, so the run already there stays intact until :meth:`commit`.
    - :meth:`commit` (after the report is written) swaps the sibling into place: one atomic
      ``renameat2(RENAME_EXCHANGE)`` where the system has it, else two renames.
    - :meth:`discard` (after a failure) removes what this run wrote and nothing that was
      there before; :meth:`release` drops the locks.
    """

    def __init__(self, target: str | Path, *, overwrite: bool = False, resume: bool = False):
        self.target = Path(target)
        self.path = self.target
        self.overwrite = overwrite
        self.resume = resume
        self.staged = False
        self.created = False
        self.committed = False
        self._was_empty = False
        self._fds: list[int] = []

    def lock(self) -> None:
        target = self.target
        if self.resume:
            if not (target / CONFIG).is_file():
                raise ZooError(f"{target} is not a run directory (no {CONFIG})")
            self._hold(_lock(target))
            return
        if target.exists() and not target.is_dir():
            raise ZooError(f"{target} exists and is not a directory")
        try:
            target.mkdir(parents=True)
            self.created = True
        except FileExistsError:
            if not target.is_dir():
                raise ZooError(f"{target} exists and is not a directory") from None
        except OSError as exc:
            raise _write_error("create", target, exc) from None
        if not self.created:
            entries = _entries(target)
            if entries and CONFIG not in entries:
                raise ZooError(
                    f"{target} is not empty and holds no run (no {CONFIG}); "
                    "choose another --run-dir"
                )
        self._hold(_lock(target))
        entries = _entries(target)  # again, under the lock
        self._was_empty = not entries
        if REPORT in entries and not self.overwrite:
            self.release()
            raise ZooError(
                f"{target} holds a finished run ({REPORT}); pass --overwrite "
                "(overwrite=True) to replace it once the new run has succeeded"
            )

    def _hold(self, fd: int | None) -> None:
        if fd is not None:
            self._fds.append(fd)

    def prepare(self) -> None:
        if self.resume:
            stage = (self.target / REPORT).exists()
        else:
            stage = not (self.created or self._was_empty)
        if not stage:
            return
        k = 0
        while True:
            suffix = f".tmp-{os.getpid()}" + (f"-{k}" if k else "")
            path = self.target.with_name(self.target.name + suffix)
            try:
                path.mkdir()
                break
            except FileExistsError:
                k += 1
            except OSError as exc:
                raise _write_error("create", path, exc) from None
        self.path, self.staged = path, True
        self._hold(_lock(path))

    def commit(self) -> None:
        if not self.staged or self.committed:
            return
        with InterruptLatch():  # the swap is not to be cut in half
            try:
                old = self._swap()
            except OSError as exc:
                raise _write_error("replace", self.target, exc) from None
            self.committed = True
            self.path = self.target
        shutil.rmtree(old, ignore_errors=True)

    def _swap(self) -> Path:
        if _exchange(self.path, self.target):
            return self.path  # the old run is now where the new one was written
        k, old = 0, self.target.with_name(f"{self.target.name}.old-{os.getpid()}")
        while old.exists():
            k += 1
            old = self.target.with_name(f"{self.target.name}.old-{os.getpid()}-{k}")
        os.rename(self.target, old)
        try:
            os.rename(self.path, self.target)
        except OSError:
            os.rename(old, self.target)
            raise
        return old

    def discard(self) -> None:
        """Remove what this run wrote (never what was there before), and release."""
        try:
            if self.staged and not self.committed:
                shutil.rmtree(self.path, ignore_errors=True)
            elif self.created:
                shutil.rmtree(self.target, ignore_errors=True)
            elif self._was_empty and not self.resume:
                for entry in self.target.iterdir():
                    if entry.name == LOCK:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            entry.unlink()
        except OSError:
            pass
        finally:
            self.release()

    def release(self) -> None:
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop())
