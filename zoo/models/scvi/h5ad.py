"""``.h5ad`` files (anndata's HDF5 layout) with h5py alone: the reader and a minimal writer.

Virshup et al. (2024), "anndata: access and store annotated data matrices", JOSS: a counts
layer or ``X`` (or ``raw/X``), dense or CSR/CSC, with the modern (``encoding-type``) and the
legacy (``h5sparse_format``, compound ``obs``) layouts; cell-type labels from an ``obs``
column. Backed reading is :mod:`~zoo.models.scvi.hdf5`. Where the anndata package is installed,
an in-memory read goes through it first (:mod:`~zoo.models.scvi.anndata_io`, with the same
checks); this reader is the fallback and the diagnosis of a file anndata cannot read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from zoo.data import READ_ERRORS, check_dtype
from zoo.errors import DataError, first_line
from zoo.models.scvi.counts import (
    LABEL_KEYS,
    CountData,
    CountSource,
    InMemoryCounts,
    as_strings,
    check_counts,
    check_shape,
    finish_count_data,
)
from zoo.models.scvi.hdf5 import (
    BackedCSRCounts,
    BackedDenseCounts,
    matrix_encoding,
    matrix_shape,
    read_sparse,
)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def frame_index(f: Any, path: str, where: str = "") -> np.ndarray | None:
    """The index (names) of an anndata dataframe (group layout or legacy compound dataset)."""
    if path not in f:
        return None
    node = f[path]
    what = f"{where} {path} names".strip()
    if hasattr(node, "keys"):
        key = node.attrs.get("_index", "_index")
        key = key.decode() if isinstance(key, bytes) else key
        return as_strings(node[key][...], what) if key in node else None
    names = node.dtype.names or ()
    return as_strings(node["index"], what) if "index" in names else None


def _frame_columns(f: Any, path: str) -> list[str]:
    if path not in f:
        return []
    node = f[path]
    if hasattr(node, "keys"):
        index = node.attrs.get("_index", "_index")
        index = index.decode() if isinstance(index, bytes) else index
        return [k for k in node if k not in (index, "__categories")]
    return [n for n in (node.dtype.names or ()) if n != "index"]


def _frame_column(f: Any, path: str, key: str, where: str = "") -> np.ndarray | None:
    """An obs/var column as strings: categorical (any anndata layout), string or numeric."""
    node = f[path]
    what = f"{where} {path} column {key!r}".strip()
    if hasattr(node, "keys"):
        if key not in node:
            return None
        col = node[key]
        if hasattr(col, "keys"):  # anndata >= 0.8 categorical (or nullable) group
            if "categories" in col and "codes" in col:
                return _decode_categorical(col["codes"][...], col["categories"][...], what)
            if "values" in col:
                return as_strings(col["values"][...], what)
            return None
        if "categories" in col.attrs:  # anndata 0.7: codes + a reference to the categories
            return _decode_categorical(col[...], f[col.attrs["categories"]][...], what)
        return as_strings(col[...], what)
    names = node.dtype.names or ()
    if key not in names:
        return None
    values = node[key]
    categories = f"uns/{key}_categories"
    if categories in f:  # legacy compound layout: codes here, categories in uns
        return _decode_categorical(values, f[categories][...], what)
    return as_strings(values, what)


def _decode_categorical(
    codes: np.ndarray, categories: np.ndarray, where: str = "categories"
) -> np.ndarray:
    cats = as_strings(categories, where)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise DataError(f"{where}: categorical codes must be integers (dtype {codes.dtype})")
    codes = codes.astype(np.int64).reshape(-1)
    out = np.empty(len(codes), dtype=object)
    valid = (codes >= 0) & (codes < len(cats))
    out[valid] = cats[codes[valid]]
    out[~valid] = "nan"
    return out


def labels_from_frame(
    f: Any, path: str, label_key: str | None, where: str
) -> tuple[np.ndarray | None, str | None]:
    """Labels from the obs column ``label_key`` (an error if absent), or the first of
    :data:`LABEL_KEYS` present when ``label_key`` is None."""
    columns = _frame_columns(f, path)
    if label_key is not None:
        if label_key not in columns:
            shown = ", ".join(columns[:12]) or "none"
            raise DataError(f"{where}: obs has no column {label_key!r} (columns: {shown})")
        return _frame_column(f, path, label_key, where), label_key
    for key in LABEL_KEYS:
        if key in columns:
            values = _frame_column(f, path, key, where)
            if values is not None:
                return values, key
    return None, None


def _h5ad_matrix(f: Any, layer: str, where: str) -> tuple[str, str]:
    """(HDF5 path of the matrix, HDF5 path of its var frame) for ``layer``; a DataError
    when the file has no such matrix (an HDF5 file that is not an h5ad has no ``X``)."""
    raw = "raw/X" if "raw/X" in f else "raw.X" if "raw.X" in f else None
    raw_var = "raw/var" if "raw/var" in f else "raw.var"
    layers = list(f["layers"]) if "layers" in f and hasattr(f["layers"], "keys") else []
    if layer == "auto":
        if "counts" in layers:
            return "layers/counts", "var"
        layer = "X"
    if layer == "X":
        if "X" not in f:
            others = [*(["raw"] if raw else []), *layers]
            hint = f" (use --layer with one of: {', '.join(others)})" if others else ""
            raise DataError(f"{where} has no matrix X: not an h5ad file{hint}")
        return "X", "var"
    if layer == "raw":
        if raw is None:
            raise DataError(f"{where} has no raw matrix (raw/X)")
        return raw, raw_var
    if layer in layers:
        return f"layers/{layer}", "var"
    available = [*(["X"] if "X" in f else []), *(["raw"] if raw else []), *layers]
    raise DataError(f"{where} has no layer {layer!r}; available: {', '.join(available) or 'none'}")


def read_h5ad_h5py(
    path: str | Path,
    *,
    layer: str = "auto",
    backed: bool = False,
    label_key: str | None = None,
    allow_non_counts: bool = False,
) -> CountData:
    """An ``.h5ad`` file's counts: ``layer`` ``"auto"`` (``layers/counts`` if present, else
    ``X``), ``"X"``, ``"raw"`` (``raw/X``) or a layer's name. Dense and CSR/CSC matrices, the
    current and the legacy anndata layouts. ``backed=True`` reads rows on demand (CSR or dense
    storage; a CSC matrix is loaded into memory, rows being scattered across it). With h5py
    alone (:func:`zoo.models.scvi.data.read_h5ad` reads a file in memory with the anndata
    package first, where it is installed).

    A sparse matrix's ``indptr`` and ``indices`` are validated before any use (the indices in
    blocks when backed); a file HDF5 cannot read, a missing matrix, names that are not UTF-8
    and values that are not counts are each a one-line :class:`DataError`."""
    import h5py

    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {where} does not exist")
    try:
        f = h5py.File(path, "r")
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as h5ad (HDF5): {first_line(exc)}") from None
    try:
        with f:
            return _read_h5ad_file(f, path, layer, backed, label_key, allow_non_counts)
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as h5ad: {first_line(exc)}") from None


def _read_h5ad_file(
    f: Any,
    path: Path,
    layer: str,
    backed: bool,
    label_key: str | None,
    allow_non_counts: bool,
) -> CountData:
    """:func:`read_h5ad_h5py` on an open file (every check in order, before any data is used)."""
    import h5py

    where = repr(str(path))
    matrix_path, var_path = _h5ad_matrix(f, layer, where)
    where_layer = f"{where} [{matrix_path}]"
    node = f[matrix_path]
    encoding = None if isinstance(node, h5py.Dataset) else matrix_encoding(node)
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise DataError(f"{where_layer} is not a 2-D matrix (shape {node.shape})")
        check_dtype(node.dtype, where_layer)
    elif encoding not in ("csr_matrix", "csc_matrix"):
        raise DataError(f"{where_layer}: unsupported matrix encoding {encoding!r}")
    num_cells, num_genes = matrix_shape(node, where_layer)
    check_shape(num_cells, num_genes, where_layer)
    cells = frame_index(f, "obs", where)
    genes = frame_index(f, var_path, where)
    for names, size, what in ((cells, num_cells, "cell"), (genes, num_genes, "gene")):
        if names is not None and len(names) != size:
            raise DataError(f"{where_layer}: {len(names)} {what} names for {size} {what}s")
    labels, key = labels_from_frame(f, "obs", label_key, where)
    source: CountSource
    if backed and encoding == "csr_matrix":
        source = BackedCSRCounts(path, matrix_path, num_genes, where=where_layer)
        source.check(where_layer, allow_non_counts)
    elif backed and encoding is None:
        source = BackedDenseCounts(path, matrix_path)
        source.check(where_layer, allow_non_counts)
    else:
        matrix = node[...] if encoding is None else read_sparse(node, encoding, where_layer)
        stored = matrix.data if sp.issparse(matrix) else matrix
        check_counts(stored, where_layer, allow_non_counts=allow_non_counts)
        source = InMemoryCounts(matrix)
    return finish_count_data(source, cells, genes, labels, key, f"{path.name} [{matrix_path}]")


def frame_numeric(f: Any, path: str, key: str) -> np.ndarray:
    node = f[path]
    if hasattr(node, "keys"):
        return np.asarray(node[key][...])
    return np.asarray(node[key])


# --------------------------------------------------------------------------------------------
# A minimal h5ad writer (anndata's on-disk specification), for tests, benchmarks and users
# --------------------------------------------------------------------------------------------
def _write_strings(group: Any, name: str, values: Sequence[str]) -> None:
    import h5py

    ds = group.create_dataset(
        name, data=np.array([str(v) for v in values], dtype=object), dtype=h5py.string_dtype()
    )
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"


def _write_frame(f: Any, name: str, index: Sequence[str], columns: dict[str, Sequence]) -> None:
    import h5py

    group = f.create_group(name)
    group.attrs["encoding-type"] = "dataframe"
    group.attrs["encoding-version"] = "0.2.0"
    group.attrs["_index"] = "_index"
    group.attrs["column-order"] = np.array(list(columns), dtype=h5py.string_dtype())
    _write_strings(group, "_index", index)
    for key, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind in "biuf":
            ds = group.create_dataset(key, data=values)
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
            continue
        cats, codes = np.unique(as_strings(values).astype(str), return_inverse=True)
        col = group.create_group(key)
        col.attrs["encoding-type"] = "categorical"
        col.attrs["encoding-version"] = "0.2.0"
        col.attrs["ordered"] = False
        col.create_dataset("codes", data=codes.astype(np.int8 if len(cats) < 128 else np.int32))
        _write_strings(col, "categories", cats.tolist())


def _write_matrix(parent: Any, name: str, matrix: sp.spmatrix | np.ndarray, fmt: str) -> None:
    if fmt == "dense":
        ds = parent.create_dataset(
            name, data=np.asarray(matrix.toarray() if sp.issparse(matrix) else matrix)
        )
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "0.2.0"
        return
    m = sp.csr_matrix(matrix) if fmt == "csr" else sp.csc_matrix(matrix)
    group = parent.create_group(name)
    group.attrs["encoding-type"] = f"{fmt}_matrix"
    group.attrs["encoding-version"] = "0.1.0"
    group.attrs["shape"] = np.array(m.shape, dtype=np.int64)
    group.create_dataset("data", data=m.data)
    group.create_dataset("indices", data=m.indices)
    group.create_dataset("indptr", data=m.indptr)


def write_h5ad(
    path: str | Path,
    matrix: sp.spmatrix | np.ndarray,
    *,
    cell_names: Sequence[str] | None = None,
    gene_names: Sequence[str] | None = None,
    obs: dict[str, Sequence] | None = None,
    layers: dict[str, sp.spmatrix | np.ndarray] | None = None,
    fmt: str = "csr",
) -> Path:
    """Write ``matrix`` as ``X`` (and ``layers``) of an ``.h5ad`` file that anndata reads:
    ``fmt`` ``"csr"``, ``"csc"`` or ``"dense"``; ``obs`` columns (text becomes categorical)."""
    import h5py

    if fmt not in ("csr", "csc", "dense"):
        raise ValueError(f"fmt must be csr, csc or dense, not {fmt!r}")
    n, g = matrix.shape
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        _write_matrix(f, "X", matrix, fmt)
        cells = list(cell_names) if cell_names is not None else [f"cell{i}" for i in range(n)]
        genes = list(gene_names) if gene_names is not None else [f"gene{j}" for j in range(g)]
        _write_frame(f, "obs", cells, dict(obs or {}))
        _write_frame(f, "var", genes, {})
        group = f.create_group("layers")
        group.attrs["encoding-type"] = "dict"
        group.attrs["encoding-version"] = "0.1.0"
        for key, value in (layers or {}).items():
            _write_matrix(group, key, value, fmt)
        for key in ("obsm", "varm", "obsp", "varp", "uns"):
            empty = f.create_group(key)
            empty.attrs["encoding-type"] = "dict"
            empty.attrs["encoding-version"] = "0.1.0"
    return path
