"""Reading the user's own data files, with one-line errors for anything unusable.

Bundled data sets (scikit-learn's iris, diabetes, digits...) and seeded simulators live with
the model that uses them; this module only turns a path into a clean numeric array, and holds
the checks every reader shares:

- :func:`read_numeric_table`: a CSV file's numeric columns (no missing values, no text mixed
  into a numeric column, no true/false or complex columns, no constant column unless allowed,
  no value large enough to overflow the model's arithmetic);
- :func:`read_npy` and :func:`read_npz_member`: NumPy files whose header is checked against
  the bytes that follow it before anything is allocated (a truncated or corrupt file is an
  error, not a crash), refusing object, structured, text and complex arrays;
- :func:`check_dtype`, :func:`check_magnitude`, :func:`as_float_array`: the dtype and
  magnitude checks on their own;
- :func:`validate_csr`: the structure of a compressed sparse matrix (row pointer and column
  indices, or the CSC transpose), checked before any use and read in blocks, so that a file
  whose indices point outside the matrix is refused instead of being written out of bounds.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo.errors import DataError, first_line

#: largest magnitude a float64 model accepts by default: products of a few powers of the data
#: stay finite and the models' fits converge (measured: the mixture, diffusion and linear-VAE
#: fits break down between 1e40 and 1e100)
FLOAT64_LIMIT = 1e20
#: largest magnitude a float32 model accepts: squares summed over 1e8 values stay finite
FLOAT32_LIMIT = 1e15
#: stored indices checked per block when validating a sparse matrix held on disk
INDEX_BLOCK = 1 << 22
#: errors a damaged file raises while being parsed or decompressed
READ_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    EOFError,
    OverflowError,
    UnicodeError,
    zlib.error,
    zipfile.BadZipFile,
    struct.error,
    NotImplementedError,
    RuntimeError,
    KeyError,
    IndexError,
    TypeError,
)


# --------------------------------------------------------------------------------------------
# dtypes and magnitudes
# --------------------------------------------------------------------------------------------
def check_dtype(dtype: np.dtype, where: str, *, allow_bool: bool = False) -> None:
    """Refuse a dtype that is not real numbers: objects, text, structured records, dates,
    complex numbers, and booleans unless ``allow_bool``."""
    dtype = np.dtype(dtype)
    kind = dtype.kind
    if kind in "iuf" or (kind == "b" and allow_bool):
        return
    if kind == "c":
        raise DataError(f"{where} is complex-valued (dtype {dtype}); the model needs real numbers")
    if kind == "b":
        raise DataError(f"{where} holds booleans (dtype bool); the model needs numbers")
    if kind == "O":
        raise DataError(f"{where} is not numeric: it holds Python objects (dtype object)")
    if kind == "V":
        raise DataError(f"{where} is not numeric: it is a structured array (dtype {dtype})")
    if kind in "SUa":
        raise DataError(f"{where} is not numeric: it holds text (dtype {dtype})")
    raise DataError(f"{where} is not numeric (dtype {dtype})")


def check_magnitude(
    values: np.ndarray,
    where: str,
    *,
    max_abs: float = FLOAT64_LIMIT,
    columns: Sequence[str] | None = None,
) -> None:
    """Refuse values whose magnitude exceeds ``max_abs``, beyond which the model's arithmetic
    overflows or its fit breaks down; the message names the value and where it is (data row,
    1-based, and the column when ``columns`` names them)."""
    values = np.asarray(values)
    if values.size == 0 or values.dtype.kind not in "iuf":
        return
    with np.errstate(invalid="ignore", over="ignore"):
        peak = np.abs(values.astype(np.float64, copy=False))
    worst = int(np.nanargmax(peak)) if not np.isnan(peak).all() else 0
    if not peak.reshape(-1)[worst] > max_abs:
        return
    position = np.unravel_index(worst, values.shape)
    value = float(values.reshape(-1)[worst])
    place = f"data row {position[0] + 1}"
    if values.ndim == 2:
        column = columns[position[1]] if columns is not None else str(position[1] + 1)
        place += f", column {column!r}" if columns is not None else f", column {column}"
    raise DataError(
        f"{where} has a value of {value:.3g} ({place}); beyond {max_abs:.0e} in magnitude the "
        "model's arithmetic overflows or its fit breaks down: rescale the data"
    )


def as_float_array(
    data: Any, where: str, *, allow_bool: bool = False, max_abs: float = FLOAT64_LIMIT
) -> np.ndarray:
    """``data`` as a finite float64 array (a writable copy), refusing what is not real
    numbers (see :func:`check_dtype`), NaN or infinite values and magnitudes above
    ``max_abs``."""
    array = np.asarray(data)
    check_dtype(array.dtype, where, allow_bool=allow_bool)
    values = np.array(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{where} has {int((~np.isfinite(values)).sum())} NaN or infinite values")
    check_magnitude(values, where, max_abs=max_abs)
    return values


# --------------------------------------------------------------------------------------------
# CSV tables
# --------------------------------------------------------------------------------------------
def _complex_text(column: pd.Series) -> bool:
    """Whether every entry of a text column reads as a complex number with an imaginary part."""
    texts = [str(v).strip().replace(" ", "") for v in column]
    if not texts or not any("j" in t.lower() for t in texts):
        return False
    try:
        [complex(t) for t in texts]
    except ValueError:
        return False
    return True


def check_header(frame: pd.DataFrame, where: str) -> None:
    """Refuse a CSV whose data rows have more fields than its header names (pandas would
    silently take the first field as the row labels)."""
    if not isinstance(frame.index, pd.RangeIndex):
        raise DataError(
            f"{where}: data rows have more fields than the header's {frame.shape[1]} names; "
            "name every column in the first line"
        )


def read_numeric_table(
    path: str | Path,
    *,
    min_rows: int = 2,
    allow_constant: bool = False,
    max_abs: float = FLOAT64_LIMIT,
) -> tuple[np.ndarray, list[str]]:
    """A CSV file's numeric columns as a float64 array (rows = data points), and their names.

    Columns with no number at all (labels, ids) are dropped; a column mixing numbers with other
    text, true/false or complex-number columns, a file with no numeric column, fewer than
    ``min_rows`` rows, missing/non-finite values, a constant column (unless ``allow_constant``:
    it has no spread to model and makes a covariance singular) or a value above ``max_abs`` in
    magnitude (it would overflow the model's float64 arithmetic) is refused with a
    :class:`DataError`. The array is a writable copy.
    """
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {where} does not exist")
    try:
        frame = pd.read_csv(path)
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as CSV: {first_line(exc)}") from None
    check_header(frame, where)
    for name in frame.columns:
        if pd.api.types.is_bool_dtype(frame[name]):
            raise DataError(
                f"{where}: column {str(name)!r} holds true/false values, not numbers "
                "(write them as 1 and 0)"
            )
    for name in frame.columns.difference(frame.select_dtypes(include="number").columns):
        column = frame[name].dropna()
        parsed = pd.to_numeric(column, errors="coerce")
        if parsed.notna().any():  # mostly numbers: a typo, not a label column
            bad = parsed.index[parsed.isna()]
            row = bad[0] if len(bad) else column.index[0]
            raise DataError(
                f"{where}: column {str(name)!r} has a non-numeric value "
                f"{frame.at[row, name]!r} in data row {row + 1}"
            )
        if _complex_text(column):
            raise DataError(
                f"{where}: column {str(name)!r} holds complex numbers (e.g. {column.iloc[0]!r}); "
                "the model needs real numbers"
            )
    numeric = frame.select_dtypes(include="number")
    if numeric.shape[1] == 0:
        raise DataError(f"{where} has no numeric column")
    if len(numeric) < min_rows:
        raise DataError(f"{where} has {len(numeric)} rows; at least {min_rows} are needed")
    names = [str(c) for c in numeric.columns]
    values = numeric.to_numpy(dtype=np.float64, copy=True)
    if not np.isfinite(values).all():
        bad_rows = int((~np.isfinite(values)).any(axis=1).sum())
        raise DataError(f"{where} has {bad_rows} row(s) with missing or non-finite values")
    check_magnitude(values, where, max_abs=max_abs, columns=names)
    if not allow_constant and len(values) > 1:
        constant = np.flatnonzero((values == values[0]).all(axis=0))
        if constant.size:
            j = int(constant[0])
            raise DataError(
                f"{where}: column {names[j]!r} is constant (every row is {values[0, j]:g}); "
                "it has no spread for the model to fit: drop it"
            )
    return values, names


# --------------------------------------------------------------------------------------------
# NumPy files
# --------------------------------------------------------------------------------------------
def _npy_header(handle: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from the header of a ``.npy`` stream."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(handle)
    except Exception as exc:  # numpy parses the header text with tokenize and ast: any error
        raise DataError(f"cannot read {where} as a NumPy array: {first_line(exc)}") from None
    raise DataError(f"cannot read {where}: unsupported .npy format version {version}")


def _read_npy_stream(
    handle: Any, size: int, where: str, *, allow_bool: bool, allow_text: bool = False
) -> tuple[np.ndarray, np.dtype]:
    """The array of a ``.npy`` stream of ``size`` bytes, its header checked first: a dtype of
    real numbers (or text, if ``allow_text``), and as many bytes after the header as its
    shape needs."""
    shape, fortran, dtype = _npy_header(handle, where)
    if dtype.hasobject:
        raise DataError(
            f"cannot read {where}: it holds Python objects (dtype {dtype}), which are not "
            "loaded (pickles can run code)"
        )
    if not (allow_text and dtype.kind in "SU"):
        check_dtype(dtype, where, allow_bool=allow_bool)
    if any(int(s) < 0 for s in shape):
        raise DataError(f"cannot read {where}: its header declares shape {shape}")
    count = math.prod(shape)
    needed = count * dtype.itemsize
    available = size - handle.tell()
    if needed > available:
        raise DataError(
            f"{where} is truncated: its header declares shape {shape} of {dtype} "
            f"({needed} bytes) but {max(available, 0)} bytes follow"
        )
    try:
        raw = handle.read(needed)
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where}: {first_line(exc)}") from None
    if len(raw) != needed:
        raise DataError(f"{where} is truncated: {len(raw)} of {needed} data bytes")
    array = np.frombuffer(raw, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C").copy(), dtype


def read_npy(path: str | Path, *, allow_bool: bool = True) -> np.ndarray:
    """The array in a ``.npy`` file, refusing a truncated or malformed file and arrays that are
    not real numbers (objects, text, records, complex; booleans unless ``allow_bool``)."""
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {where} does not exist")
    with open(path, "rb") as handle:
        array, _ = _read_npy_stream(handle, path.stat().st_size, where, allow_bool=allow_bool)
    return array


def npz_keys(path: str | Path) -> list[str]:
    """The names of the arrays in a ``.npz`` file (its members ``<name>.npy``)."""
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {where} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as .npz (zip): {first_line(exc)}") from None
    return [n[: -len(".npy")] for n in names if n.endswith(".npy")]


def read_npz_member(
    path: str | Path, key: str, *, allow_bool: bool = True, allow_text: bool = False
) -> np.ndarray:
    """The array ``key`` of a ``.npz`` file, with the checks of :func:`read_npy` (a member
    whose data are corrupt or truncated inside the archive is a :class:`DataError` too); text
    arrays are accepted with ``allow_text`` (labels)."""
    path = Path(path)
    where = f"{str(path)!r} [{key}]"
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{key}.npy")
            with archive.open(info) as handle:
                array, _ = _read_npy_stream(
                    handle, info.file_size, where, allow_bool=allow_bool, allow_text=allow_text
                )
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where}: {first_line(exc)}") from None
    return array


# --------------------------------------------------------------------------------------------
# compressed sparse matrices
# --------------------------------------------------------------------------------------------
def validate_csr(
    indptr: Any,
    indices: Any,
    shape: tuple[int, int],
    where: str,
    *,
    data_size: int | None = None,
    layout: str = "csr",
    block: int = INDEX_BLOCK,
) -> np.ndarray:
    """Check a compressed sparse matrix's structure before any use; return ``indptr`` as int64.

    ``layout`` ``"csr"`` (``indptr`` runs over rows, ``indices`` are columns) or ``"csc"`` (the
    transpose). ``indptr`` must be integers, ``n_major + 1`` long, start at 0, never decrease
    and end at the number of stored values (``len(indices)``, equal to ``data_size`` when
    given); ``indices`` integers in ``0 .. n_minor - 1``. ``indices`` may be an array or an
    HDF5 dataset: it is read ``block`` values at a time, never whole.
    """
    if layout not in ("csr", "csc"):
        raise ValueError(f"layout must be csr or csc, not {layout!r}")
    if len(shape) != 2 or any(int(s) < 0 for s in shape):
        raise DataError(f"{where}: the matrix shape {tuple(shape)} is not two non-negative sizes")
    major, minor = ("row", "column") if layout == "csr" else ("column", "row")
    n_major, n_minor = (int(shape[0]), int(shape[1]))
    if layout == "csc":
        n_major, n_minor = n_minor, n_major
    pointer = np.asarray(indptr)
    if pointer.ndim != 1 or pointer.dtype.kind not in "iu":
        raise DataError(
            f"{where}: indptr must be a 1-D integer array (it has shape {pointer.shape}, "
            f"dtype {pointer.dtype})"
        )
    if len(pointer) != n_major + 1:
        raise DataError(
            f"{where}: indptr has {len(pointer)} entries for {n_major} {major}s "
            f"(expected {n_major + 1})"
        )
    if pointer.dtype.kind == "u" and pointer.size and int(pointer.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{where}: indptr holds values beyond the int64 range")
    pointer = pointer.astype(np.int64)
    if pointer[0] != 0:
        raise DataError(f"{where}: indptr starts at {int(pointer[0])}, not 0")
    steps = np.diff(pointer)
    if steps.size and steps.min() < 0:
        i = int(np.flatnonzero(steps < 0)[0])
        raise DataError(
            f"{where}: indptr decreases at {major} {i} ({int(pointer[i])} then "
            f"{int(pointer[i + 1])}); it must be non-decreasing"
        )
    dtype = getattr(indices, "dtype", None)
    if dtype is None or np.dtype(dtype).kind not in "iu" or len(getattr(indices, "shape", ())) != 1:
        raise DataError(
            f"{where}: indices must be a 1-D integer array (dtype {dtype}, shape "
            f"{getattr(indices, 'shape', None)})"
        )
    nnz = int(indices.shape[0])
    if int(pointer[-1]) != nnz:
        raise DataError(
            f"{where}: indptr ends at {int(pointer[-1])} but there are {nnz} stored indices"
        )
    if data_size is not None and int(data_size) != nnz:
        raise DataError(f"{where}: {int(data_size)} stored values but {nnz} indices")
    for start in range(0, nnz, max(1, block)):
        chunk = np.asarray(indices[start : start + block])
        bad = (chunk < 0) | (chunk >= n_minor)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            owner = int(np.searchsorted(pointer, start + k, side="right")) - 1
            raise DataError(
                f"{where}: {minor} index {int(chunk[k])} (stored value {start + k}, {major} "
                f"{owner}) is outside 0..{n_minor - 1}; the sparse matrix is corrupt"
            )
    return pointer
