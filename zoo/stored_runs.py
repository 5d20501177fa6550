"""What a run directory holds, read back and checked: its config, its checkpoint, its data.

A resume trusts nothing on disk: ``config.json`` is validated field by field
(:meth:`RunConfig.from_json`), ``checkpoint.pt`` is loaded with ``weights_only=True`` and every
entry's type checked, and the run's data must be the data it was fitted on, by path and
sha256 (:func:`data_provenance` records it when the run starts). Every failure is a one-line
:class:`~zoo.errors.ZooError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.errors import ZooError, first_line
from zoo.model import ZooModel
from zoo.results import RunConfig
from zoo.run_files import CHECKPOINT, CONFIG


def read_config(run_dir: str | Path) -> RunConfig:
    """The validated ``config.json`` of ``run_dir``; a one-line :class:`ZooError` if none."""
    path = Path(run_dir) / CONFIG
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ZooError(f"{run_dir} is not a run directory (no {CONFIG})") from None
    except OSError as exc:
        raise ZooError(f"cannot read {path}: {exc.strerror or exc}") from None
    return RunConfig.from_json(text, source=str(path))


#: the entries of a checkpoint
CHECKPOINT_KEYS = ("step", "params", "optim", "rng", "history", "elapsed")


def read_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The checked ``checkpoint.pt`` of ``run_dir``, loaded with ``weights_only=True``.

    Anything but a checkpoint this runner wrote (an empty or truncated file, other bytes, a
    pickle of other objects, missing or mistyped entries) is a one-line :class:`ZooError`.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ZooError(
            f"{run_dir} has no {CHECKPOINT} (stopped before its first checkpoint); start a new run"
        )
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: not ours
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # bad bytes raise anything from EOFError to UnpicklingError
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            reason = "it holds objects other than tensors and numbers (not loaded)"
        else:
            reason = first_line(exc, 120)
        raise ZooError(f"{path} is not a readable checkpoint: {reason}") from None
    return _check_checkpoint(checkpoint, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_checkpoint(checkpoint: Any, path: Path) -> dict[str, Any]:
    """``checkpoint`` if it has every entry of its type; else a one-line :class:`ZooError`."""

    def bad(what: str) -> ZooError:
        return ZooError(f"{path} is not a checkpoint of this runner: {what}")

    if not isinstance(checkpoint, dict):
        raise bad(f"it holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise bad(f"no {missing[0]!r} entry")
    step = checkpoint["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"its step is {step!r}")
    params = checkpoint["params"]
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.is_floating_point()
        for k, v in params.items()
    ):
        raise bad("'params' is not a mapping of names to floating-point tensors")
    optim = checkpoint["optim"]
    if not isinstance(optim, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in optim.items()
    ):
        raise bad("'optim' is not a mapping of parameter names to optimizer states")
    rng = checkpoint["rng"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise bad("'rng' is not a random-number-generator state (a byte tensor)")
    history = checkpoint["history"]
    if not isinstance(history, list) or not all(
        isinstance(row, dict) and all(isinstance(k, str) and _is_number(v) for k, v in row.items())
        for row in history
    ):
        raise bad("'history' is not a list of rows of numbers")
    elapsed = checkpoint["elapsed"]
    if not _is_number(elapsed) or not math.isfinite(elapsed) or elapsed < 0:
        raise bad(f"its elapsed time is {elapsed!r}")
    return checkpoint


def data_provenance(data: Any, zoo_model: ZooModel | None = None) -> dict[str, Any]:
    """Where a run's data comes from, for :attr:`RunConfig.data`.

    ``default`` (the model's bundled or simulated data), a ``path`` (absolute) with the
    sha256 of the file (or of a directory's files), an in-memory ``array`` by the sha256 of
    its dtype, shape and bytes, or an ``object`` that cannot be hashed (a model object built
    in Python, say): such a run cannot be resumed.
    """
    if zoo_model is not None:
        return {"source": "object", "type": f"{type(zoo_model).__name__} model object"}
    if data is None:
        return {"source": "default"}
    if isinstance(data, str | os.PathLike):
        path = Path(data).resolve()
        return {"source": "path", "path": str(path), "sha256": _path_sha256(path)}
    digest = None if _is_annotated_matrix(data) else _array_digest(data)
    if digest is None:
        return {"source": "object", "type": type(data).__name__}
    return {"source": "array", **digest}


def _is_annotated_matrix(data: Any) -> bool:
    """An AnnData (counts with cell and gene annotations): numpy would walk it row by row, and
    its content is more than one array. Its run records it as an object."""
    return type(data).__module__.split(".")[0] == "anndata"


def _path_sha256(path: Path) -> str:
    """The sha256 of a file, or of a directory's files (relative names and contents)."""

    def file_digest(file: Path) -> str:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    try:
        if not path.is_dir():
            return file_digest(path)
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(file_digest(file).encode())
        return digest.hexdigest()
    except OSError as exc:
        raise ZooError(f"cannot read the data at {path}: {exc.strerror or exc}") from None


def _array_digest(data: Any) -> dict[str, Any] | None:
    """sha256, shape and dtype of array-like data (numpy, torch, lists, data frames, scipy
    sparse matrices); None for anything whose content is not plain numbers or strings."""
    try:
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        if hasattr(data, "tocsr") and hasattr(data, "nnz"):  # a scipy sparse matrix
            csr = data.tocsr()
            parts = [np.asarray(csr.data), np.asarray(csr.indices), np.asarray(csr.indptr)]
            shape, dtype = list(csr.shape), f"{csr.dtype.str} sparse"
        else:
            array = np.asarray(data)
            parts, shape, dtype = [array], list(array.shape), array.dtype.str
    except Exception:  # not array-like at all
        return None
    if any(part.dtype.hasobject for part in parts):
        return None
    digest = hashlib.sha256(f"{dtype}|{tuple(shape)}|".encode())
    for part in parts:  # the bytes as they are (a view, not a copy, where contiguous)
        digest.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8))
    return {"sha256": digest.hexdigest(), "shape": [int(n) for n in shape], "dtype": dtype}


def resume_data(run_dir: Path, config: RunConfig, data: Any) -> Any:
    """The data to rebuild the model with, checked against the run's provenance."""
    recorded = config.data or {}
    source = recorded.get("source")
    cannot = f"cannot resume {run_dir}"
    if source == "default":
        if data is not None:
            raise ZooError(f"{cannot}: it was fitted on the model's own data; give no data")
        return None
    if source == "object":
        raise ZooError(
            f"{cannot}: it was fitted on a {recorded['type']} whose data the run does not "
            "record; start a new run"
        )
    if source == "path":
        if data is None:
            path = Path(recorded["path"])
            if not path.exists():
                raise ZooError(
                    f"{cannot}: its data file {path} no longer exists (give the file's new "
                    "location with --data)"
                )
        elif isinstance(data, str | os.PathLike):
            path = Path(data).resolve()
            if not path.exists():
                raise ZooError(f"{cannot}: data file {path} does not exist")
        else:
            raise ZooError(f"{cannot}: it was fitted on the data file {recorded['path']}")
        digest = _path_sha256(path)
        if digest != recorded["sha256"]:
            raise ZooError(
                f"{cannot}: data file {path} is not the run's data (sha256 {digest[:12]}..., "
                f"the run's {recorded['sha256'][:12]}...)"
            )
        config.data = {**recorded, "path": str(path)}
        if "data" in config.options:
            config.options = {**config.options, "data": str(path)}
        return str(path)
    # an in-memory array
    shape = "x".join(map(str, recorded["shape"])) or "scalar"
    if data is None:
        raise ZooError(
            f"{cannot}: it was fitted on in-memory data (a {shape} {recorded['dtype']} "
            "array) that a run directory does not hold; pass the same data: "
            "zoo.resume(DIR, data=...)"
        )
    given = None if isinstance(data, str | os.PathLike) else _array_digest(data)
    if given is None or given["sha256"] != recorded["sha256"]:
        what = "a path" if given is None else f"a {'x'.join(map(str, given['shape']))} array"
        raise ZooError(
            f"{cannot}: the data given ({what}) is not the run's data (a {shape} "
            f"{recorded['dtype']} array, sha256 {recorded['sha256'][:12]}...)"
        )
    return data
