"""The VAEs' data: scikit-learn's digits, the user's array files, and the data value a VAE
reads.

Digits: scikit-learn's bundled copy of the UCI optical digits (Alpaydin & Kaynak 1998; 1,797
8x8 images, intensities 0-16). The user's ``.npy``/``.npz``/``.csv`` arrays (rows are data
points; an (N, H, W) array is flattened) are validated before any use: each fault is one
:class:`~zoo.errors.DataError` line. :class:`Points` is what a VAE is bound to
(:meth:`zoo.models.amortized.AmortizedModel.with_data`): the rows and their labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data import (
    FLOAT64_LIMIT,
    check_dtype,
    check_magnitude,
    npz_keys,
    read_npy,
    read_npz_member,
    read_numeric_table,
)
from zoo.errors import DataError

_LABEL_COLUMNS = ("label", "labels", "y", "target", "digit")
_ARRAY_KEYS = ("x", "X", "images", "data")


@dataclass(frozen=True, eq=False)
class Points:
    """Data points a VAE reads: one row of ``x`` per point, and their labels (or None)."""

    x: torch.Tensor
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: intensities 0-16, shape (1797, 64), and the labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def check_array(
    values: np.ndarray, source: str, max_abs: float = FLOAT64_LIMIT
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A numeric, finite (N, D) float64 array (an (N, H, W) one flattened) and its image shape.

    Booleans are accepted (binary images); complex, object, text and structured arrays are
    not, nor NaN or infinite values, nor magnitudes above ``max_abs`` (the model's arithmetic
    would overflow)."""
    values = np.asarray(values)
    check_dtype(values.dtype, source, allow_bool=True)
    if values.ndim not in (2, 3):
        raise DataError(
            f"{source} has shape {values.shape}; expected (N, D) data points or (N, H, W) images"
        )
    image_shape = tuple(values.shape[1:]) if values.ndim == 3 else None
    flat = values.reshape(values.shape[0], math.prod(values.shape[1:])).astype(np.float64)
    if flat.shape[0] < 4 or flat.shape[1] < 1:
        raise DataError(
            f"{source} has shape {values.shape}; at least 4 rows and 1 column are needed"
        )
    bad = int((~np.isfinite(flat)).any(axis=1).sum())
    if bad:
        raise DataError(f"{source} has {bad} row(s) with NaN or infinite values")
    check_magnitude(flat, source, max_abs=max_abs)
    return flat, image_shape  # type: ignore[return-value]


def _usable_labels(labels: np.ndarray) -> np.ndarray | None:
    """Labels as int64 for colouring, or None when they are not finite whole numbers (text,
    fractions, NaN, complex): the data are kept, the colouring dropped."""
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind != "f":
        return None
    finite = np.isfinite(labels).all() and np.abs(labels).max(initial=0.0) < 2.0**53
    if not finite or (labels != np.round(labels)).any():
        return None
    return labels.astype(np.int64)


def read_array_file(
    path: str | Path, max_abs: float = FLOAT64_LIMIT
) -> tuple[np.ndarray, np.ndarray | None, tuple | None]:
    """The user's data: (values (N, D) float64, labels or None, image shape or None).

    ``.npy``: one (N, D) or (N, H, W) array. ``.npz``: the array named x, X, images or data
    (or the only array), with labels from y, labels or target if present. ``.csv``: the
    numeric columns, a column named label/labels/y/target/digit taken as labels. A truncated
    or corrupt file, an array that is not real numbers (complex, object, text), too few rows
    or values above ``max_abs`` in magnitude: each is a one-line :class:`DataError`.
    """
    path = Path(path)
    source = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {source} does not exist")
    suffix = path.suffix.lower()
    labels = None
    if suffix == ".csv":
        values, names = read_numeric_table(path, min_rows=4, allow_constant=True, max_abs=max_abs)
        lower = [n.strip().lower() for n in names]
        label_cols = [i for i, n in enumerate(lower) if n in _LABEL_COLUMNS]
        if label_cols:
            labels = _usable_labels(values[:, label_cols[0]])
            values = np.delete(values, label_cols[0], axis=1)
            if values.shape[1] == 0:
                raise DataError(f"{source} has no numeric column besides the labels")
        values, shape = check_array(values, source, max_abs)
        return values, labels, shape
    if suffix not in (".npy", ".npz"):
        raise DataError(f"cannot read {source}: unsupported file type; use .npy, .npz or .csv")
    if suffix == ".npz":
        keys = npz_keys(path)
        chosen = next((k for k in _ARRAY_KEYS if k in keys), None)
        if chosen is None and len(keys) == 1:
            chosen = keys[0]
        if chosen is None:
            raise DataError(f"{source} holds arrays {keys}; name the data x (and the labels y)")
        array = read_npz_member(path, chosen)
        source = f"{source} [{chosen}]"
        label_key = next((k for k in ("y", "labels", "target") if k in keys), None)
        if label_key is not None:
            labels = read_npz_member(path, label_key, allow_text=True).reshape(-1)
    else:
        array = read_npy(path)
    values, shape = check_array(array, source, max_abs)
    if labels is not None:
        if labels.shape[0] != values.shape[0]:
            raise DataError(f"{source}: {labels.shape[0]} labels for {values.shape[0]} data points")
        labels = _usable_labels(labels)
    return values, labels, shape


def strict_fraction(value: Any) -> float:
    """An option type: a number strictly between 0 and 1 (the held-out fraction)."""
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{value!r} is not strictly between 0 and 1")
    return value
