"""Single-cell count matrices: the bundled PBMC data, ``.h5ad``, 10x ``.mtx`` and CSV files.

A count matrix has one row per cell and one column per gene; its entries are UMI counts,
non-negative integers. This module turns a data source into a :class:`CountData`: a
:class:`CountSource` (what a model reads mini-batches of rows from), the cell and gene names,
and cell-type labels where the file has them. Everything a user can get wrong (a missing file,
an unknown layer, values that are not counts, a damaged file) is a one-line
:class:`~zoo.errors.DataError`: every sparse matrix's structure (row pointer, column indices,
or 10x coordinates) is validated before any of it is used (:func:`zoo.data.validate_csr`).

Sources
-------
- :func:`load_pbmc68k_reduced`: scanpy's ``10x_pbmc68k_reduced.h5ad`` (700 cells x 765 genes,
  10 ``bulk_labels`` cell types), which ships inside scanpy's wheel: no download. Its ``raw.X``
  is log-normalised, ``log1p(1e4 * count / n_counts)`` with ``n_counts`` the cell's total over
  *all* genes before the 765 were selected, so the integer counts are recovered exactly as
  ``round(expm1(raw.X) * n_counts / 1e4)`` (every value lies within 0.09 of an integer). The
  file is found with :func:`importlib.util.find_spec`, which does not execute scanpy: installing
  scanpy with ``pip install --no-deps scanpy`` is enough, and only h5py reads the file.
- :func:`read_h5ad`: the anndata on-disk format (Virshup et al. 2024, "anndata: access and
  store annotated data matrices", JOSS), read with h5py alone: a counts layer or ``X`` (or
  ``raw/X``), dense or CSR/CSC, with the modern (``encoding-type``) and the legacy
  (``h5sparse_format``, compound ``obs``) layouts; cell-type labels from an ``obs`` column.
- :func:`read_10x_mtx`: a Cell Ranger matrix directory (Zheng et al. 2017, "Massively parallel
  digital transcriptional profiling of single cells", Nat. Commun.): ``matrix.mtx``
  (genes x cells), ``genes.tsv``/``features.tsv`` and ``barcodes.tsv``, each optionally gzipped.
- :func:`read_count_csv`: one row per cell, one numeric column per gene; a first text column
  is the cell name and a column named like a label (``cell_type``, ``label``...) the labels.

Backed reading
--------------
With ``backed=True`` an ``.h5ad`` file is not loaded: :class:`BackedCSRCounts` reads the CSR
row pointer (N + 1 integers) once and, for each mini-batch, only the ``data`` and ``indices``
slices of the requested rows (adjacent slices merged into one read), so the whole matrix is
never densified or held in memory; :class:`BackedDenseCounts` reads the requested rows of a
dense ``X``. Count validation and the per-cell totals stream over the file in blocks.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from zoo.data import READ_ERRORS, check_dtype, check_header, validate_csr
from zoo.errors import DataError, first_line

PBMC_FILE = "10x_pbmc68k_reduced.h5ad"
#: pip command that makes the bundled data available without scanpy's dependencies
PBMC_INSTALL = "pip install --no-deps scanpy==1.11.5"
#: obs columns tried, in order, as cell-type labels when none is named
LABEL_KEYS = (
    "cell_type",
    "celltype",
    "cell_types",
    "bulk_labels",
    "labels",
    "label",
    "leiden",
    "louvain",
    "cluster",
    "clusters",
)
#: values further than this from an integer are not counts
INTEGER_TOLERANCE = 1e-6
#: the largest count accepted: the model computes in float32, exact for integers up to 2^24
COUNT_LIMIT = float(2**24)
#: stored values read per block when streaming over a backed matrix
_BLOCK_VALUES = 1 << 22
#: bytes of decompressed HDF5 chunks a backed source keeps in memory
_CHUNK_CACHE = 32 << 20
#: two row slices of a backed CSR matrix closer than this many values are read in one go
_MERGE_GAP = 1 << 14


class NonCountWarning(UserWarning):
    """The data do not look like counts, and the user asked to proceed anyway."""


# --------------------------------------------------------------------------------------------
# Count validation
# --------------------------------------------------------------------------------------------
@dataclass
class _CountCheck:
    """Running totals of a validation pass over stored values (block by block)."""

    values: int = 0
    non_finite: int = 0
    negative: int = 0
    non_integer: int = 0
    example: float | None = None
    minimum: float = np.inf
    maximum: float = -np.inf

    def update(self, values: np.ndarray) -> None:
        """Add a block of stored values to the totals."""
        values = np.asarray(values, dtype=np.float64)
        self.values += values.size
        if values.size == 0:
            return
        finite = np.isfinite(values)
        self.non_finite += int((~finite).sum())
        values = values[finite]
        if values.size == 0:
            return
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        self.negative += int((values < 0).sum())
        off = np.abs(values - np.round(values)) > INTEGER_TOLERANCE
        count = int(off.sum())
        if count and self.example is None:
            self.example = float(values[off][0])
        self.non_integer += count

    def finish(self, where: str, allow_non_counts: bool) -> None:
        """Refuse what the totals show not to be counts (or warn, see :func:`check_counts`)."""
        if self.non_finite:
            raise DataError(f"{where} has {self.non_finite} NaN or infinite value(s)")
        if self.negative:
            raise DataError(
                f"{where} does not hold counts: {self.negative} negative value(s) "
                f"(minimum {self.minimum:g}); scaled or centred data cannot be used"
            )
        if self.maximum > COUNT_LIMIT:
            raise DataError(
                f"{where} has a value of {self.maximum:.3g}; the model's float32 arithmetic "
                f"holds counts exactly only up to 2^24 = {COUNT_LIMIT:.0f}"
            )
        if self.non_integer:
            message = (
                f"{where} does not hold counts: {self.non_integer} of {self.values} stored "
                f"values are not integers (e.g. {self.example:g}; log-normalised data?)"
            )
            if not allow_non_counts:
                raise DataError(
                    message + "; give the raw counts (an h5ad counts layer: --layer counts), or "
                    "allow_non_counts=True (--allow-non-counts true) to proceed anyway"
                )
            warnings.warn(
                message + "; proceeding as asked (allow_non_counts): the likelihood is then not "
                "a normalised probability of the data",
                NonCountWarning,
                stacklevel=3,
            )


def check_counts(values: np.ndarray, where: str, *, allow_non_counts: bool = False) -> None:
    """Refuse values that are not counts: a dtype that is not real numbers (complex, boolean,
    text), non-finite or negative values and values above :data:`COUNT_LIMIT` always,
    non-integers unless ``allow_non_counts`` (then a :class:`NonCountWarning`, as scvi-tools
    warns)."""
    check_dtype(np.asarray(values).dtype, where)
    check = _CountCheck()
    check.update(values)
    check.finish(where, allow_non_counts)


# --------------------------------------------------------------------------------------------
# Count sources: what a model reads mini-batches from
# --------------------------------------------------------------------------------------------
class CountSource:
    """Rows (cells) of a count matrix, read on demand.

    ``rows(idx)`` returns the dense float32 rows ``idx`` (in that order), ``totals()`` the
    total count of every cell, ``subset(idx)`` the source restricted to some cells (a split).
    """

    num_cells: int
    num_genes: int
    backed: bool = False

    def rows(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def totals(self) -> np.ndarray:
        raise NotImplementedError

    def subset(self, idx: np.ndarray) -> CountSource:
        raise NotImplementedError

    def to_csr(self) -> sp.csr_matrix:
        """The whole matrix as CSR (float32), read in blocks of rows."""
        blocks = []
        step = max(1, _BLOCK_VALUES // max(self.num_genes, 1))
        for start in range(0, self.num_cells, step):
            idx = np.arange(start, min(start + step, self.num_cells))
            blocks.append(sp.csr_matrix(self.rows(idx)))
        if not blocks:
            return sp.csr_matrix((0, self.num_genes), dtype=np.float32)
        return sp.vstack(blocks, format="csr").astype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.num_cells, self.num_genes


class InMemoryCounts(CountSource):
    """A count matrix held in memory as CSR (float32: exact for counts below 2^24)."""

    def __init__(self, matrix: sp.spmatrix | np.ndarray) -> None:
        csr = sp.csr_matrix(matrix, dtype=np.float32)
        csr.sort_indices()
        self.matrix = csr
        self.num_cells, self.num_genes = csr.shape

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.matrix[np.asarray(idx, dtype=np.int64)].toarray()

    def totals(self) -> np.ndarray:
        return np.asarray(self.matrix.sum(axis=1), dtype=np.float64).reshape(-1)

    def subset(self, idx: np.ndarray) -> InMemoryCounts:
        return InMemoryCounts(self.matrix[np.asarray(idx, dtype=np.int64)])

    def to_csr(self) -> sp.csr_matrix:
        return self.matrix


#: maps (stored values, the file row of each value) to counts (e.g. undoing a normalisation)
ValueTransform = Callable[[np.ndarray, np.ndarray], np.ndarray]


class _H5Backed(CountSource):
    """Shared by the backed sources: an h5py file opened lazily, and a row map for subsets."""

    backed = True

    def __init__(self, path: str | Path, node: str, row_map: np.ndarray | None) -> None:
        self.path = Path(path)
        self.node = node
        self._file: Any = None
        self.row_map = row_map  # local row -> file row (None: identity)

    def _h5(self) -> Any:
        if self._file is None:
            import h5py

            # a chunk cache kept across mini-batches: compressed chunks are decompressed once
            self._file = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE, rdcc_nslots=100_003)
            self._datasets: dict[str, Any] = {}
        return self._file

    def _dataset(self, name: str) -> Any:
        """An HDF5 dataset under this source's node, opened once (its chunk cache lives on)."""
        f = self._h5()
        if name not in self._datasets:
            self._datasets[name] = f[f"{self.node}/{name}" if name else self.node]
        return self._datasets[name]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._datasets = {}

    def _file_rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_cells):
            raise IndexError(f"row index out of range for {self.num_cells} cells")
        return idx if self.row_map is None else self.row_map[idx]


class BackedCSRCounts(_H5Backed):
    """Rows of a CSR matrix stored in an HDF5 group (``data``, ``indices``, ``indptr``), read
    per mini-batch: the row pointer is read once, then only the slices of the requested rows.
    Never holds more than a mini-batch of the matrix in memory.

    Opened without ``indptr``, the group's structure is validated first
    (:func:`zoo.data.validate_csr`, the column indices read in blocks), so no row is ever
    scattered outside the matrix; a subset shares its parent's validated row pointer."""

    def __init__(
        self,
        path: str | Path,
        node: str,
        num_genes: int,
        *,
        row_map: np.ndarray | None = None,
        value_transform: ValueTransform | None = None,
        indptr: np.ndarray | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(path, node, row_map)
        if indptr is None:
            where = where or f"{str(self.path)!r} [{node}]"
            group = self._dataset("")
            data, indices, pointer = _sparse_parts(group, where)
            shape = (_matrix_shape(group, where)[0], num_genes)
            indptr = validate_csr(pointer[:], indices, shape, where, data_size=data.shape[0])
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.num_genes = num_genes
        self.num_cells = len(self.indptr) - 1 if row_map is None else len(row_map)
        self.value_transform = value_transform

    def _read_spans(self, file_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, column indices, file row of each value) for sorted unique ``file_rows``;
        slices closer than ``_MERGE_GAP`` values are fetched with one read."""
        data_ds, indices_ds = self._dataset("data"), self._dataset("indices")
        starts, ends = self.indptr[file_rows], self.indptr[file_rows + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            empty = np.zeros(0, dtype=np.float32)
            return empty, empty.astype(np.int64), empty.astype(np.int64)
        # merge neighbouring slices into one read each
        new_group = np.ones(len(file_rows), dtype=bool)
        new_group[1:] = (starts[1:] - ends[:-1]) > _MERGE_GAP
        group = np.cumsum(new_group) - 1
        first = np.flatnonzero(new_group)
        last = np.append(first[1:], len(file_rows)) - 1
        lows, highs = starts[first], ends[last]
        data = [data_ds[lo:hi] for lo, hi in zip(lows.tolist(), highs.tolist(), strict=True)]
        cols = [indices_ds[lo:hi] for lo, hi in zip(lows.tolist(), highs.tolist(), strict=True)]
        buffer_start = np.concatenate([[0], np.cumsum(highs - lows)[:-1]])
        # position of every wanted value in the concatenated reads
        before = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        shift = starts - lows[group] + buffer_start[group] - before
        where = np.repeat(shift, lengths) + np.arange(total)
        values = np.concatenate(data)[where]
        columns = np.concatenate(cols)[where].astype(np.int64)
        return values, columns, np.repeat(file_rows, lengths)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        file_rows = self._file_rows(idx)
        unique, inverse = np.unique(file_rows, return_inverse=True)
        values, columns, owners = self._read_spans(unique)
        if self.value_transform is not None:
            values = self.value_transform(values, owners)
        out = np.zeros((len(unique), self.num_genes), dtype=np.float32)
        local = np.searchsorted(unique, owners)
        # summed, as scipy sums a repeated (row, column) entry: the in-memory reader's rows
        np.add.at(out, (local, columns), values)
        return out[inverse]

    def _blocks(self) -> Any:
        """(values, file row of each value) of every local row, streamed in blocks."""
        rows = np.arange(self.num_cells) if self.row_map is None else np.sort(self.row_map)
        step = max(1, _BLOCK_VALUES // max(self.num_genes, 1))
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            values, _, owners = self._read_spans(block)
            if self.value_transform is not None:
                values = self.value_transform(values, owners)
            yield block, values, owners

    def totals(self) -> np.ndarray:
        rows = np.arange(self.num_cells) if self.row_map is None else self.row_map
        ordered, sums = [], []
        for block, values, owners in self._blocks():
            ordered.append(block)
            sums.append(
                np.bincount(np.searchsorted(block, owners), weights=values, minlength=len(block))
            )
        if not ordered:
            return np.zeros(0)
        ordered_rows, ordered_sums = np.concatenate(ordered), np.concatenate(sums)
        return ordered_sums[np.searchsorted(ordered_rows, rows)].astype(np.float64)

    def check(self, where: str, allow_non_counts: bool) -> None:
        """Count validation streamed over the stored values."""
        check = _CountCheck()
        for _, values, _ in self._blocks():
            check.update(values)
        check.finish(where, allow_non_counts)

    def subset(self, idx: np.ndarray) -> BackedCSRCounts:
        return BackedCSRCounts(
            self.path,
            self.node,
            self.num_genes,
            row_map=self._file_rows(idx),
            value_transform=self.value_transform,
            indptr=self.indptr,
        )


class BackedDenseCounts(_H5Backed):
    """Rows of a dense 2-D HDF5 dataset, read per mini-batch (sorted, as h5py requires)."""

    def __init__(self, path: str | Path, node: str, *, row_map: np.ndarray | None = None) -> None:
        super().__init__(path, node, row_map)
        shape = self._h5()[node].shape
        self.num_genes = int(shape[1])
        self.num_cells = int(shape[0]) if row_map is None else len(row_map)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        file_rows = self._file_rows(idx)
        unique, inverse = np.unique(file_rows, return_inverse=True)
        data = self._dataset("")[unique] if len(unique) else np.zeros((0, self.num_genes))
        return np.asarray(data, dtype=np.float32)[inverse]

    def _blocks(self) -> Any:
        step = max(1, _BLOCK_VALUES // max(self.num_genes, 1))
        for start in range(0, self.num_cells, step):
            yield self.rows(np.arange(start, min(start + step, self.num_cells)))

    def totals(self) -> np.ndarray:
        return np.concatenate([b.sum(1, dtype=np.float64) for b in self._blocks()] or [[]])

    def check(self, where: str, allow_non_counts: bool) -> None:
        check = _CountCheck()
        for block in self._blocks():
            check.update(block)
        check.finish(where, allow_non_counts)

    def subset(self, idx: np.ndarray) -> BackedDenseCounts:
        return BackedDenseCounts(self.path, self.node, row_map=self._file_rows(idx))


# --------------------------------------------------------------------------------------------
# What a loader returns
# --------------------------------------------------------------------------------------------
@dataclass
class CountData:
    """A count matrix (cells x genes) with its names and optional cell-type labels."""

    source: CountSource
    cell_names: np.ndarray
    gene_names: np.ndarray
    labels: np.ndarray | None
    label_key: str | None
    description: str

    @property
    def num_cells(self) -> int:
        return self.source.num_cells

    @property
    def num_genes(self) -> int:
        return self.source.num_genes


def _check_shape(num_cells: int, num_genes: int, where: str) -> None:
    if num_cells < 2 or num_genes < 1:
        raise DataError(f"{where} has {num_cells} cells and {num_genes} genes; too few to model")


def _strings(values: Any, where: str = "names") -> np.ndarray:
    """Names as a numpy array of Python str (h5py gives bytes for many string layouts); bytes
    that are not UTF-8 text are a :class:`DataError` naming ``where``."""
    arr = np.asarray(values)
    if arr.dtype.kind != "S" and arr.dtype != object:
        return arr.astype(str).astype(object)
    out = []
    for value in arr.reshape(-1).tolist():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{where}: {value[:40]!r} is not UTF-8 text (byte 0x{value[exc.start]:02x}); "
                    "re-save the names as UTF-8"
                ) from None
        out.append(str(value))
    result = np.empty(len(out), dtype=object)
    result[:] = out
    return result


def _finish(
    source: CountSource,
    cell_names: np.ndarray | None,
    gene_names: np.ndarray | None,
    labels: np.ndarray | None,
    label_key: str | None,
    description: str,
) -> CountData:
    n, g = source.shape
    cells = (
        _strings(cell_names, f"{description}: cell names")
        if cell_names is not None
        else np.array([f"cell{i + 1}" for i in range(n)], dtype=object)
    )
    genes = (
        _strings(gene_names, f"{description}: gene names")
        if gene_names is not None
        else np.array([f"gene{j + 1}" for j in range(g)], dtype=object)
    )
    if len(cells) != n:
        raise DataError(f"{description}: {len(cells)} cell names for {n} cells")
    if len(genes) != g:
        raise DataError(f"{description}: {len(genes)} gene names for {g} genes")
    if labels is not None:
        labels = _strings(labels, f"{description}: labels")
        if len(labels) != n:
            raise DataError(f"{description}: {len(labels)} labels for {n} cells")
    return CountData(
        source, cells, genes, labels, label_key if labels is not None else None, description
    )


# --------------------------------------------------------------------------------------------
# h5ad (anndata's HDF5 layout), with h5py alone
# --------------------------------------------------------------------------------------------
def _encoding(node: Any) -> str | None:
    value = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format"))
    if value is None:
        return None
    value = value.decode() if isinstance(value, bytes) else str(value)
    return {"csr": "csr_matrix", "csc": "csc_matrix"}.get(value, value)


def _matrix_shape(node: Any, where: str | None = None) -> tuple[int, int]:
    """(rows, columns) of a dense dataset or of a sparse group's ``shape`` attribute, which
    must be two non-negative integers."""
    where = where or repr(node.name)
    if hasattr(node, "shape") and not hasattr(node, "keys"):
        if len(node.shape) != 2:
            raise DataError(f"{where} is not a 2-D matrix (shape {node.shape})")
        return int(node.shape[0]), int(node.shape[1])
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    if shape is None:
        raise DataError(f"{where}: sparse matrix has no shape attribute")
    shape = np.asarray(shape).reshape(-1)
    if (
        shape.size != 2
        or shape.dtype.kind not in "iuf"
        or not np.all(np.isfinite(shape))
        or np.any(shape < 0)
        or np.any(shape != np.round(shape))
    ):
        raise DataError(f"{where}: the shape attribute {shape.tolist()} is not two sizes")
    return int(shape[0]), int(shape[1])


def _sparse_parts(node: Any, where: str) -> tuple[Any, Any, Any]:
    """The ``data``, ``indices`` and ``indptr`` datasets of a sparse group (not yet read),
    refusing a missing one and values that are not real numbers."""
    missing = [name for name in ("data", "indices", "indptr") if name not in node]
    if missing:
        raise DataError(f"{where}: sparse matrix without {', '.join(missing)}")
    data, indices, indptr = node["data"], node["indices"], node["indptr"]
    if len(data.shape) != 1:
        raise DataError(f"{where}: data must be 1-D (shape {data.shape})")
    check_dtype(data.dtype, f"{where} data")
    return data, indices, indptr


def _read_sparse(node: Any, encoding: str, where: str | None = None) -> sp.csr_matrix:
    """A CSR or CSC group read into memory as CSR, its structure validated first."""
    where = where or repr(node.name)
    data, indices, indptr = _sparse_parts(node, where)
    shape = _matrix_shape(node, where)
    layout = "csr" if encoding == "csr_matrix" else "csc"
    indices = indices[:]
    pointer = validate_csr(indptr[:], indices, shape, where, data_size=data.shape[0], layout=layout)
    cls = sp.csr_matrix if layout == "csr" else sp.csc_matrix
    return sp.csr_matrix(cls((data[:], indices, pointer), shape=shape))


def _frame_index(f: Any, path: str, where: str = "") -> np.ndarray | None:
    """The index (names) of an anndata dataframe (group layout or legacy compound dataset)."""
    if path not in f:
        return None
    node = f[path]
    what = f"{where} {path} names".strip()
    if hasattr(node, "keys"):
        key = node.attrs.get("_index", "_index")
        key = key.decode() if isinstance(key, bytes) else key
        return _strings(node[key][...], what) if key in node else None
    names = node.dtype.names or ()
    return _strings(node["index"], what) if "index" in names else None


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
                return _strings(col["values"][...], what)
            return None
        if "categories" in col.attrs:  # anndata 0.7: codes + a reference to the categories
            return _decode_categorical(col[...], f[col.attrs["categories"]][...], what)
        return _strings(col[...], what)
    names = node.dtype.names or ()
    if key not in names:
        return None
    values = node[key]
    categories = f"uns/{key}_categories"
    if categories in f:  # legacy compound layout: codes here, categories in uns
        return _decode_categorical(values, f[categories][...], what)
    return _strings(values, what)


def _decode_categorical(
    codes: np.ndarray, categories: np.ndarray, where: str = "categories"
) -> np.ndarray:
    cats = _strings(categories, where)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise DataError(f"{where}: categorical codes must be integers (dtype {codes.dtype})")
    codes = codes.astype(np.int64).reshape(-1)
    out = np.empty(len(codes), dtype=object)
    valid = (codes >= 0) & (codes < len(cats))
    out[valid] = cats[codes[valid]]
    out[~valid] = "nan"
    return out


def _labels_from_frame(
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


def read_h5ad(
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
    storage; a CSC matrix is loaded into memory, rows being scattered across it).

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
    """:func:`read_h5ad` on an open file (every check in order, before any data is used)."""
    import h5py

    where = repr(str(path))
    matrix_path, var_path = _h5ad_matrix(f, layer, where)
    where_layer = f"{where} [{matrix_path}]"
    node = f[matrix_path]
    encoding = None if isinstance(node, h5py.Dataset) else _encoding(node)
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise DataError(f"{where_layer} is not a 2-D matrix (shape {node.shape})")
        check_dtype(node.dtype, where_layer)
    elif encoding not in ("csr_matrix", "csc_matrix"):
        raise DataError(f"{where_layer}: unsupported matrix encoding {encoding!r}")
    num_cells, num_genes = _matrix_shape(node, where_layer)
    _check_shape(num_cells, num_genes, where_layer)
    cells = _frame_index(f, "obs", where)
    genes = _frame_index(f, var_path, where)
    for names, size, what in ((cells, num_cells, "cell"), (genes, num_genes, "gene")):
        if names is not None and len(names) != size:
            raise DataError(f"{where_layer}: {len(names)} {what} names for {size} {what}s")
    labels, key = _labels_from_frame(f, "obs", label_key, where)
    source: CountSource
    if backed and encoding == "csr_matrix":
        source = BackedCSRCounts(path, matrix_path, num_genes, where=where_layer)
        source.check(where_layer, allow_non_counts)
    elif backed and encoding is None:
        source = BackedDenseCounts(path, matrix_path)
        source.check(where_layer, allow_non_counts)
    else:
        matrix = node[...] if encoding is None else _read_sparse(node, encoding, where_layer)
        stored = matrix.data if sp.issparse(matrix) else matrix
        check_counts(stored, where_layer, allow_non_counts=allow_non_counts)
        source = InMemoryCounts(matrix)
    return _finish(source, cells, genes, labels, key, f"{path.name} [{matrix_path}]")


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
        cats, codes = np.unique(_strings(values).astype(str), return_inverse=True)
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


# --------------------------------------------------------------------------------------------
# scanpy's bundled PBMC data
# --------------------------------------------------------------------------------------------
def pbmc68k_reduced_path() -> Path:
    """Where scanpy's wheel put ``10x_pbmc68k_reduced.h5ad`` (scanpy is located, not run)."""
    try:
        spec = importlib.util.find_spec("scanpy")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "datasets" / PBMC_FILE
        if candidate.is_file():
            return candidate
    raise DataError(
        f"the bundled PBMC data ({PBMC_FILE}) ships inside scanpy's wheel, which is not "
        f"installed; `{PBMC_INSTALL}` installs the file alone (or pass your own --data)"
    )


def recover_pbmc_counts(
    log_normalised: np.ndarray, total_counts: np.ndarray, *, tolerance: float = 0.25
) -> np.ndarray:
    """Counts from log1p(1e4 * count / total) values: ``round(expm1(v) * total / 1e4)``.

    ``total_counts`` has one entry per value (the value's cell total). A value further than
    ``tolerance`` from an integer before rounding means the data were not made this way.
    """
    raw = np.expm1(np.asarray(log_normalised, dtype=np.float64)) * total_counts / 1e4
    counts = np.round(raw)
    if raw.size and np.abs(raw - counts).max() > tolerance:
        worst = float(np.abs(raw - counts).max())
        raise DataError(
            f"recovered counts are up to {worst:.3f} from an integer: not log1p(1e4 x / n_counts)"
        )
    return counts


def load_pbmc68k_reduced(*, backed: bool = False, path: str | Path | None = None) -> CountData:
    """scanpy's ``pbmc68k_reduced``: 700 cells x 765 genes, UMI counts recovered from its
    log-normalised ``raw.X`` (CSR in the file) and ``obs.n_counts``; labels ``bulk_labels``
    (10 cell types). ``backed=True`` reads rows from the file on demand, recovering each
    mini-batch's counts as it is read."""
    import h5py

    path = Path(path) if path is not None else pbmc68k_reduced_path()
    with h5py.File(path, "r") as f:
        node_path = "raw.X" if "raw.X" in f else "raw/X"
        node = f[node_path]
        num_cells, num_genes = _matrix_shape(node)
        totals = np.asarray(_frame_numeric(f, "obs", "n_counts"), dtype=np.float64)
        cells = _frame_index(f, "obs")
        genes = _frame_index(f, "raw.var" if "raw.var" in f else "raw/var")
        labels, key = _labels_from_frame(f, "obs", "bulk_labels", repr(str(path)))

        def transform(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return recover_pbmc_counts(values, totals[rows]).astype(np.float32)

        source: CountSource
        if backed:
            source = BackedCSRCounts(path, node_path, num_genes, value_transform=transform)
        else:
            csr = _read_sparse(node, "csr_matrix")
            rows = np.repeat(np.arange(num_cells), np.diff(csr.indptr))
            csr.data = transform(csr.data, rows)
            csr.eliminate_zeros()
            source = InMemoryCounts(csr)
    return _finish(source, cells, genes, labels, key, "pbmc68k_reduced (scanpy) raw counts")


def _frame_numeric(f: Any, path: str, key: str) -> np.ndarray:
    node = f[path]
    if hasattr(node, "keys"):
        return np.asarray(node[key][...])
    return np.asarray(node[key])


# --------------------------------------------------------------------------------------------
# 10x matrix directories and CSV files
# --------------------------------------------------------------------------------------------
def _find(directory: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _open_binary(path: Path) -> Any:
    """A file opened for reading bytes, decompressed when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_failure(path: Path, exc: BaseException) -> DataError:
    """A one-line error for a file that could not be read or decompressed."""
    damaged = isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile)
    if path.suffix == ".gz" and damaged:
        return DataError(
            f"cannot read {str(path)!r}: corrupt or truncated gzip file ({first_line(exc)})"
        )
    return DataError(f"cannot read {str(path)!r}: {first_line(exc)}")


def _read_tsv(path: Path) -> list[list[str]]:
    """The tab-separated fields of every non-blank line; text must be UTF-8."""
    rows = []
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{str(path)!r}: line {number} is not UTF-8 text (byte "
                        f"0x{raw[exc.start]:02x} in {raw[:40]!r}); re-save the file as UTF-8"
                    ) from None
                if line.strip():
                    rows.append(line.rstrip("\r\n").split("\t"))
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise _read_failure(path, exc) from None
    return rows


#: Matrix Market fields that can hold counts
_MTX_FIELDS = ("integer", "real", "double")


def _mtx_header(handle: Any, where: str) -> tuple[str, str, list[int]]:
    """(format, field, sizes) from a Matrix Market header: ``coordinate`` sizes are (rows,
    columns, entries), ``array`` sizes (rows, columns)."""
    header = handle.readline()
    tokens = header.decode("ascii", "replace").split()
    if len(tokens) != 5 or tokens[0].lower() != "%%matrixmarket" or tokens[1].lower() != "matrix":
        raise DataError(f"{where} is not a Matrix Market matrix (first line {header[:60]!r})")
    fmt, field, symmetry = (t.lower() for t in tokens[2:])
    if fmt not in ("coordinate", "array"):
        raise DataError(f"{where}: unknown Matrix Market format {fmt!r}")
    if field not in _MTX_FIELDS:
        raise DataError(
            f"{where}: a {field} Matrix Market matrix holds no counts (integer or real needed)"
        )
    if symmetry != "general":
        raise DataError(f"{where}: a {symmetry} Matrix Market matrix is not genes x cells counts")
    line = handle.readline()
    while line and (not line.strip() or line.lstrip().startswith(b"%")):
        line = handle.readline()
    size = line.decode("ascii", "replace").split()
    expected = 3 if fmt == "coordinate" else 2
    if len(size) != expected or not all(t.isdigit() for t in size):
        raise DataError(
            f"{where}: the size line {line[:60]!r} is not {expected} non-negative integers"
        )
    return fmt, field, [int(t) for t in size]


def _mtx_entries(handle: Any, columns: int, count: int, where: str) -> list[np.ndarray]:
    """The ``count`` entries after a Matrix Market header: ``columns`` numbers per line (two
    1-based coordinates as integers, then the value), one array per column."""
    import pandas as pd

    dtypes = {j: np.int64 for j in range(columns - 1)} | {columns - 1: np.float64}
    try:
        frame = pd.read_csv(handle, sep=r"\s+", header=None, comment="%", dtype=dtypes)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame({j: np.zeros(0, dtype=dtypes[j]) for j in range(columns)})
    except (EOFError, zlib.error, OSError):
        raise  # a damaged file, not a malformed entry: the caller names it
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as Matrix Market: {first_line(exc)}") from None
    if frame.shape[1] != columns:
        raise DataError(
            f"{where}: Matrix Market entries have {frame.shape[1]} numbers per line, not {columns}"
        )
    if len(frame) != count:
        raise DataError(f"{where}: the header declares {count} entries but {len(frame)} follow")
    return [frame[j].to_numpy() for j in range(columns)]


def read_mtx_counts(path: Path, num_genes: int, num_cells: int) -> sp.csr_matrix:
    """A Matrix Market file of genes x cells as a cells x genes CSR matrix.

    The header must declare ``num_genes`` rows and ``num_cells`` columns (checked before any
    entry is read); coordinate entries must be 1-based within that shape (checked before the
    matrix is built) and their number must match the header's. Integer or real values,
    ``general`` symmetry, ``coordinate`` or ``array`` layout; optionally gzipped."""
    where = repr(str(path))
    try:
        with _open_binary(path) as handle:
            fmt, _, sizes = _mtx_header(handle, where)
            rows, cols = sizes[0], sizes[1]
            if (rows, cols) != (num_genes, num_cells):
                raise DataError(
                    f"{where} declares {rows} rows x {cols} columns but the directory names "
                    f"{num_genes} genes and {num_cells} barcodes"
                )
            if fmt == "array":
                (values,) = _mtx_entries(handle, 1, rows * cols, where)
                return sp.csr_matrix(values.reshape(cols, rows))
            row, col, values = _mtx_entries(handle, 3, sizes[2], where)
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise _read_failure(path, exc) from None
    for name, index, size in (("row", row, rows), ("column", col, cols)):
        bad = (index < 1) | (index > size)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: entry {k + 1} has {name} {int(index[k])}, outside 1..{size} "
                "(coordinates are 1-based within the declared shape)"
            )
    return sp.csr_matrix(sp.coo_matrix((values, (col - 1, row - 1)), shape=(cols, rows)))


def read_10x_mtx(
    directory: str | Path, *, allow_non_counts: bool = False, gene_symbols: bool = True
) -> CountData:
    """A Cell Ranger matrix directory: ``matrix.mtx`` (genes x cells, Matrix Market),
    ``genes.tsv`` (v2) or ``features.tsv`` (v3; only "Gene Expression" features are kept) and
    ``barcodes.tsv``, each optionally ``.gz``. Gene names are the symbols (second column)
    unless ``gene_symbols=False`` (the IDs). Text must be UTF-8; a corrupt or truncated
    ``.gz``, coordinates outside the declared shape, or a shape that disagrees with the gene
    and barcode lists is a one-line :class:`DataError`."""
    directory = Path(directory)
    where = repr(str(directory))
    if not directory.is_dir():
        raise DataError(f"10x matrix directory {where} does not exist")
    matrix_path = _find(directory, ["matrix.mtx"])
    genes_path = _find(directory, ["features.tsv", "genes.tsv"])
    barcodes_path = _find(directory, ["barcodes.tsv"])
    missing = [
        name
        for name, found in (
            ("matrix.mtx", matrix_path),
            ("genes.tsv or features.tsv", genes_path),
            ("barcodes.tsv", barcodes_path),
        )
        if found is None
    ]
    if missing or matrix_path is None or genes_path is None or barcodes_path is None:
        raise DataError(f"{where} is not a 10x matrix directory: no {', '.join(missing)}")
    genes = _read_tsv(genes_path)
    barcodes = [row[0] for row in _read_tsv(barcodes_path)]
    try:
        with _open_binary(matrix_path) as handle:
            _, _, sizes = _mtx_header(handle, repr(str(matrix_path)))
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise _read_failure(matrix_path, exc) from None
    if len(genes) != sizes[0]:
        raise DataError(
            f"{where}: {len(genes)} genes in {genes_path.name} but {sizes[0]} rows in "
            f"{matrix_path.name}"
        )
    if len(barcodes) != sizes[1]:
        raise DataError(
            f"{where}: {len(barcodes)} barcodes in {barcodes_path.name} but "
            f"{sizes[1]} columns in {matrix_path.name}"
        )
    matrix = read_mtx_counts(matrix_path, len(genes), len(barcodes))  # cells x genes
    keep = np.array([len(row) < 3 or row[2] == "Gene Expression" for row in genes])
    if not keep.all():
        matrix = matrix[:, np.flatnonzero(keep)]
        genes = [row for row, k in zip(genes, keep, strict=True) if k]
    names = [row[1] if gene_symbols and len(row) > 1 else row[0] for row in genes]
    _check_shape(*matrix.shape, where)
    check_counts(matrix.data, where, allow_non_counts=allow_non_counts)
    return _finish(
        InMemoryCounts(matrix),
        np.array(barcodes, dtype=object),
        np.array(names, dtype=object),
        None,
        None,
        f"10x matrix {directory.name}",
    )


def read_count_csv(
    path: str | Path, *, label_key: str | None = None, allow_non_counts: bool = False
) -> CountData:
    """A CSV (or TSV) with one row per cell and one numeric column per gene. A first column of
    text is the cell names; a text column named ``label_key`` (or one of :data:`LABEL_KEYS`)
    holds the labels. Any other text column is an error."""
    import pandas as pd

    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {where} does not exist")
    sep = "\t" if path.name.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")) else ","
    try:
        frame = pd.read_csv(path, sep=sep)
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as CSV: {first_line(exc)}") from None
    check_header(frame, where)
    if frame.shape[1] == 0 or len(frame) == 0:
        raise DataError(f"{where} has no data rows")
    for name in frame.columns:
        if pd.api.types.is_bool_dtype(frame[name]):
            raise DataError(
                f"{where}: column {str(name)!r} holds true/false values, not counts "
                "(write them as 1 and 0)"
            )
    numeric = set(frame.select_dtypes(include="number").columns)
    cells = None
    first = frame.columns[0]
    if label_key is not None:
        is_label = first == label_key
    else:
        is_label = str(first).strip().lower() in LABEL_KEYS
    if first not in numeric and not is_label:
        cells = frame[first].astype(str).to_numpy(dtype=object)
        frame = frame.drop(columns=first)
    labels, key = None, None
    wanted = (
        [label_key]
        if label_key is not None
        else [c for c in frame.columns if str(c).strip().lower() in LABEL_KEYS]
    )
    if label_key is not None and label_key not in frame.columns:
        raise DataError(f"{where} has no column {label_key!r}")
    if wanted:
        key = wanted[0]
        labels = frame[key].astype(str).to_numpy(dtype=object)
        frame = frame.drop(columns=key)
    text = [c for c in frame.columns if c not in numeric]
    if text:
        column = frame[text[0]]
        unparsed = column[pd.to_numeric(column, errors="coerce").isna()]
        bad = unparsed.iloc[0] if len(unparsed) else column.iloc[0]
        raise DataError(
            f"{where}: column {text[0]!r} is not numeric (value {bad!r}); a count CSV has one "
            "row per cell, a first column of cell names and one numeric column per gene"
        )
    if frame.shape[1] == 0:
        raise DataError(f"{where} has no gene (numeric) column")
    values = frame.to_numpy(dtype=np.float64)
    _check_shape(*values.shape, where)
    check_counts(values, where, allow_non_counts=allow_non_counts)
    return _finish(
        InMemoryCounts(values),
        cells,
        np.array(frame.columns, dtype=object),
        labels,
        key,
        f"CSV {path.name}",
    )


def load_counts(
    path: str | Path,
    *,
    layer: str = "auto",
    backed: bool = False,
    label_key: str | None = None,
    allow_non_counts: bool = False,
) -> CountData:
    """The user's counts from ``path``: an ``.h5ad`` file, a 10x matrix directory (or its
    ``matrix.mtx``), or a ``.csv``/``.tsv`` file. ``backed`` applies to h5ad only."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return read_10x_mtx(path, allow_non_counts=allow_non_counts)
    if name.endswith((".mtx", ".mtx.gz")):
        return read_10x_mtx(path.parent, allow_non_counts=allow_non_counts)
    if name.endswith(".h5ad"):
        return read_h5ad(
            path,
            layer=layer,
            backed=backed,
            label_key=label_key,
            allow_non_counts=allow_non_counts,
        )
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        return read_count_csv(path, label_key=label_key, allow_non_counts=allow_non_counts)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    raise DataError(
        f"cannot read {str(path)!r}: use an .h5ad file, a 10x matrix directory or a .csv file"
    )
