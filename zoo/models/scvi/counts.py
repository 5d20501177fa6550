"""Count matrices as a model reads them: count validation, count sources (rows of cells read
on demand), what a loader returns, and per-gene statistics.

A count matrix has one row per cell and one column per gene; its entries are UMI counts,
non-negative integers (Lopez et al. 2018, Nature Methods 15, 1053-1058, "Methods": the scVI
likelihood is a distribution over counts). A loader (:mod:`~zoo.models.scvi.data`,
:mod:`~zoo.models.scvi.h5ad`) turns a data source into a :class:`CountData`: a
:class:`CountSource` (what a model reads mini-batches of rows from), the cell and gene names,
and cell-type labels where the file has them. Values that are not counts are a one-line
:class:`~zoo.errors.DataError` (or, when the user allows them, a :class:`NonCountWarning`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from zoo.data import check_dtype
from zoo.errors import DataError

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
BLOCK_VALUES = 1 << 22


class NonCountWarning(UserWarning):
    """The data do not look like counts, and the user asked to proceed anyway."""


# --------------------------------------------------------------------------------------------
# Count validation
# --------------------------------------------------------------------------------------------
@dataclass
class CountCheck:
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
    check = CountCheck()
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
        step = max(1, BLOCK_VALUES // max(self.num_genes, 1))
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


class SelectedGenes(CountSource):
    """Some genes (columns) of another source, read through it: each block of rows is read
    whole and then narrowed, so a backed file is still read a mini-batch at a time."""

    def __init__(self, inner: CountSource, genes: np.ndarray) -> None:
        self.inner = inner
        self.genes = np.asarray(genes, dtype=np.int64)
        self.backed = inner.backed
        self.num_cells = inner.num_cells
        self.num_genes = len(self.genes)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.inner.rows(idx)[:, self.genes]

    def totals(self) -> np.ndarray:
        step = max(1, BLOCK_VALUES // max(self.inner.num_genes, 1))
        sums = [
            self.rows(np.arange(start, min(start + step, self.num_cells))).sum(1, dtype=np.float64)
            for start in range(0, self.num_cells, step)
        ]
        return np.concatenate(sums) if sums else np.zeros(0)

    def subset(self, idx: np.ndarray) -> SelectedGenes:
        return SelectedGenes(self.inner.subset(idx), self.genes)


def select_genes(source: CountSource, genes: np.ndarray) -> CountSource:
    """``source`` restricted to the columns ``genes`` (in that order): a narrower in-memory
    matrix, or a :class:`SelectedGenes` view of a backed one."""
    if isinstance(source, InMemoryCounts):
        return InMemoryCounts(source.matrix[:, np.asarray(genes, dtype=np.int64)])
    return SelectedGenes(source, genes)


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


def check_shape(num_cells: int, num_genes: int, where: str) -> None:
    if num_cells < 2 or num_genes < 1:
        raise DataError(f"{where} has {num_cells} cells and {num_genes} genes; too few to model")


def as_strings(values: Any, where: str = "names") -> np.ndarray:
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


def finish_count_data(
    source: CountSource,
    cell_names: np.ndarray | None,
    gene_names: np.ndarray | None,
    labels: np.ndarray | None,
    label_key: str | None,
    description: str,
) -> CountData:
    n, g = source.shape
    cells = (
        as_strings(cell_names, f"{description}: cell names")
        if cell_names is not None
        else np.array([f"cell{i + 1}" for i in range(n)], dtype=object)
    )
    genes = (
        as_strings(gene_names, f"{description}: gene names")
        if gene_names is not None
        else np.array([f"gene{j + 1}" for j in range(g)], dtype=object)
    )
    if len(cells) != n:
        raise DataError(f"{description}: {len(cells)} cell names for {n} cells")
    if len(genes) != g:
        raise DataError(f"{description}: {len(genes)} gene names for {g} genes")
    if labels is not None:
        labels = as_strings(labels, f"{description}: labels")
        if len(labels) != n:
            raise DataError(f"{description}: {len(labels)} labels for {n} cells")
    return CountData(
        source, cells, genes, labels, label_key if labels is not None else None, description
    )


def gene_statistics(counts: np.ndarray | Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Per gene: mean, variance (divisor N) and fraction of zeros over cells.

    ``counts`` is a cells x genes array, or an iterable of such blocks of cells (accumulated
    block by block: Chan, Golub & LeVeque's pairwise update of the sum of squared deviations).
    """
    blocks = [counts] if isinstance(counts, np.ndarray) else counts
    n, mean, m2, zeros = 0, None, None, None
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        k = block.shape[0]
        if k == 0:
            continue
        b_mean = block.mean(0)
        b_m2 = ((block - b_mean) ** 2).sum(0)
        b_zeros = (block == 0).sum(0)
        if mean is None:
            n, mean, m2, zeros = k, b_mean, b_m2, b_zeros
            continue
        delta = b_mean - mean
        total = n + k
        mean = mean + delta * (k / total)
        m2 = m2 + b_m2 + delta**2 * (n * k / total)
        zeros = zeros + b_zeros
        n = total
    if mean is None:
        raise ValueError("no cells")
    return {"mean": mean, "variance": m2 / n, "zero_fraction": zeros / n}


def compare_gene_statistics(
    real: dict[str, np.ndarray], fake: dict[str, np.ndarray]
) -> dict[str, float]:
    """How two sets of cells (:func:`gene_statistics` of each) match gene by gene: the
    correlations across genes of log mean, log variance and zero fraction, and the zero
    fractions themselves."""

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan

    return {
        "corr_log_mean": corr(np.log1p(real["mean"]), np.log1p(fake["mean"])),
        "corr_log_variance": corr(np.log1p(real["variance"]), np.log1p(fake["variance"])),
        "corr_zero_fraction": corr(real["zero_fraction"], fake["zero_fraction"]),
        "mean_abs_diff_zero_fraction": float(
            np.abs(real["zero_fraction"] - fake["zero_fraction"]).mean()
        ),
        "zero_fraction_real": float(real["zero_fraction"].mean()),
        "zero_fraction_generated": float(fake["zero_fraction"].mean()),
    }
