"""Backed reading of HDF5 count matrices, and the HDF5 matrix nodes of an ``.h5ad`` file.

With ``backed=True`` an ``.h5ad`` file is not loaded: :class:`BackedCSRCounts` reads the CSR
row pointer (N + 1 integers) once and, for each mini-batch, only the ``data`` and ``indices``
slices of the requested rows (adjacent slices merged into one read), so the whole matrix is
never densified or held in memory; :class:`BackedDenseCounts` reads the requested rows of a
dense ``X``. Count validation and the per-cell totals stream over the file in blocks. The
layout is anndata's (Virshup et al. 2024, "anndata: access and store annotated data
matrices", JOSS), read with h5py alone; every sparse matrix's structure is validated before
any of it is used (:func:`zoo.data.validate_csr`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from zoo.data import check_dtype, validate_csr
from zoo.errors import DataError
from zoo.models.scvi.counts import BLOCK_VALUES, CountCheck, CountSource

#: bytes of decompressed HDF5 chunks a backed source keeps in memory
_CHUNK_CACHE = 32 << 20
#: two row slices of a backed CSR matrix closer than this many values are read in one go
_MERGE_GAP = 1 << 14


# --------------------------------------------------------------------------------------------
# HDF5 matrix nodes
# --------------------------------------------------------------------------------------------
def matrix_encoding(node: Any) -> str | None:
    value = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format"))
    if value is None:
        return None
    value = value.decode() if isinstance(value, bytes) else str(value)
    return {"csr": "csr_matrix", "csc": "csc_matrix"}.get(value, value)


def matrix_shape(node: Any, where: str | None = None) -> tuple[int, int]:
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


def read_sparse(node: Any, encoding: str, where: str | None = None) -> sp.csr_matrix:
    """A CSR or CSC group read into memory as CSR, its structure validated first."""
    where = where or repr(node.name)
    data, indices, indptr = _sparse_parts(node, where)
    shape = matrix_shape(node, where)
    layout = "csr" if encoding == "csr_matrix" else "csc"
    indices = indices[:]
    pointer = validate_csr(indptr[:], indices, shape, where, data_size=data.shape[0], layout=layout)
    cls = sp.csr_matrix if layout == "csr" else sp.csc_matrix
    return sp.csr_matrix(cls((data[:], indices, pointer), shape=shape))


# --------------------------------------------------------------------------------------------
# Backed count sources
# --------------------------------------------------------------------------------------------
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
            shape = (matrix_shape(group, where)[0], num_genes)
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
        step = max(1, BLOCK_VALUES // max(self.num_genes, 1))
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
        check = CountCheck()
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
        step = max(1, BLOCK_VALUES // max(self.num_genes, 1))
        for start in range(0, self.num_cells, step):
            yield self.rows(np.arange(start, min(start + step, self.num_cells)))

    def totals(self) -> np.ndarray:
        return np.concatenate([b.sum(1, dtype=np.float64) for b in self._blocks()] or [[]])

    def check(self, where: str, allow_non_counts: bool) -> None:
        check = CountCheck()
        for block in self._blocks():
            check.update(block)
        check.finish(where, allow_non_counts)

    def subset(self, idx: np.ndarray) -> BackedDenseCounts:
        return BackedDenseCounts(self.path, self.node, row_map=self._file_rows(idx))
