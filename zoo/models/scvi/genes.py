"""Gene selection for ``scvi``: the highly variable genes of scanpy's ``flavor="seurat"``.

Satija, Farrell, Gennert, Schier & Regev (2015), "Spatial reconstruction of single-cell gene
expression data", Nature Biotechnology 33, 495-502 (Seurat's ``FindVariableGenes``), as
scanpy's ``pp.highly_variable_genes(flavor="seurat", n_top_genes=N)`` computes it on data
made by ``pp.normalize_total(target_sum=1e4)`` and ``pp.log1p`` (Wolf, Angerer & Theis 2018,
"SCANPY: large-scale single-cell gene expression data analysis", Genome Biology 19, 15), and
as scvi-tools' tutorials select genes before training:

1. each cell's counts are scaled to a total of 10^4: ``y_ng = 1e4 x_ng / sum_g x_ng``;
2. per gene, the mean m_g and the unbiased variance v_g of y_ng over the cells (scanpy undoes
   its ``log1p`` before this step, so the moments are those of y itself);
3. the dispersion d_g = log(v_g / m_g) (a gene with no variance has none) and the log mean
   log(1 + m_g);
4. the log means are cut into 20 bins of equal width (``pandas.cut``), and each dispersion is
   z-scored within its bin (mean and standard deviation of the bin's dispersions; a bin with
   a single gene gives it the normalised dispersion 1);
5. the N genes of highest normalised dispersion are kept (every gene tied with the N-th too).

The moments are sums over cells, accumulated a block of rows at a time: a backed file is never
read whole, and an in-memory sparse matrix is never densified.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from zoo.errors import DataError
from zoo.models.scvi.counts import BLOCK_VALUES, CountSource, InMemoryCounts

#: every cell's counts are scaled to this total before the gene moments (scanpy's target_sum)
TARGET_SUM = 1e4
#: bins of the log mean within which dispersions are z-scored (scanpy's n_bins)
NUM_BINS = 20


@dataclass(frozen=True)
class GeneSelection:
    """The highly variable genes of a count matrix, with scanpy's per-gene columns (one entry
    per gene of the matrix): ``means`` (log(1 + m_g)), ``dispersions`` (log(v_g / m_g)),
    ``dispersions_norm`` and the boolean ``highly_variable``."""

    n_top_genes: int
    num_cells: int
    means: np.ndarray
    dispersions: np.ndarray
    dispersions_norm: np.ndarray
    highly_variable: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Indices of the kept genes, in the matrix's order."""
        return np.flatnonzero(self.highly_variable)

    def record(self, num_genes: int) -> dict[str, object]:
        """What a run's summary says of the selection."""
        return {
            "method": "highly variable genes, scanpy flavor='seurat' (normalised to 1e4 per "
            "cell, dispersion z-scored in 20 bins of log mean)",
            "n_top_genes": self.n_top_genes,
            "num_genes_input": num_genes,
            "num_genes_kept": int(self.highly_variable.sum()),
            "computed_on": f"{self.num_cells} training cells (raw counts)",
        }


def _csr_blocks(source: CountSource) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    """(row indices, their counts as CSR) of every cell, a block of rows at a time."""
    step = max(1, BLOCK_VALUES // max(source.num_genes, 1))
    matrix = source.matrix if isinstance(source, InMemoryCounts) else None
    for start in range(0, source.num_cells, step):
        idx = np.arange(start, min(start + step, source.num_cells))
        block = matrix[start : idx[-1] + 1] if matrix is not None else source.rows(idx)
        yield idx, sp.csr_matrix(block, dtype=np.float64)


def normalised_moments(source: CountSource, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene, the mean and the unbiased variance over cells of ``1e4 x_ng / totals_n``
    (scanpy's ``_get_mean_var`` on ``normalize_total(target_sum=1e4)``: the variance from the
    sums of y and y^2), accumulated a block of cells at a time."""
    n, g = source.shape
    first = np.zeros(g)
    second = np.zeros(g)
    for idx, block in _csr_blocks(source):
        scaled = sp.diags(TARGET_SUM / totals[idx]) @ block
        first += np.asarray(scaled.sum(axis=0)).reshape(-1)
        second += np.asarray(scaled.multiply(scaled).sum(axis=0)).reshape(-1)
    mean = first / n
    var = (second / n - mean**2) * (n / (n - 1))
    return mean, var


def seurat_dispersions(mean: np.ndarray, var: np.ndarray) -> dict[str, np.ndarray]:
    """Steps 3-4: the log mean, the log dispersion and the dispersion z-scored within its bin
    of log mean, per gene (NaN where a gene has no dispersion)."""
    import pandas as pd

    mean = np.array(mean, dtype=np.float64)
    mean[mean == 0] = 1e-12  # as scanpy: a gene never seen gets a tiny mean
    dispersion = np.asarray(var, dtype=np.float64) / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    log_mean = np.log1p(mean)
    frame = pd.DataFrame({"means": log_mean, "dispersions": dispersion})
    frame["mean_bin"] = pd.cut(frame["means"], bins=NUM_BINS)
    stats = frame.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()  # one gene (with a dispersion) in the bin: it scores 1
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0.0
    per_gene = stats.loc[frame["mean_bin"]]
    norm = (dispersion - per_gene["avg"].to_numpy()) / per_gene["dev"].to_numpy()
    return {"means": log_mean, "dispersions": dispersion, "dispersions_norm": norm}


def top_dispersions(dispersions_norm: np.ndarray, n_top_genes: int) -> np.ndarray:
    """Step 5: the genes whose normalised dispersion is at least the N-th highest (all genes
    with a dispersion where fewer than N have one)."""
    finite = dispersions_norm[~np.isnan(dispersions_norm)]
    if finite.size == 0:
        return np.zeros(len(dispersions_norm), dtype=bool)
    cutoff = np.sort(finite)[::-1][min(n_top_genes, finite.size) - 1]
    return np.nan_to_num(dispersions_norm, nan=-np.inf) >= cutoff


def highly_variable_genes(
    source: CountSource, totals: np.ndarray, n_top_genes: int, where: str = "the counts"
) -> GeneSelection:
    """The ``n_top_genes`` highly variable genes of the cells of ``source`` (raw counts;
    ``totals`` their per-cell totals over every gene), as scanpy's ``flavor="seurat"``.

    ``n_top_genes`` below 1 or above the number of genes is a one-line :class:`DataError`.
    """
    n, g = source.shape
    if n_top_genes < 1:
        raise DataError(f"--n-top-genes {n_top_genes}: keep at least 1 gene")
    if n_top_genes > g:
        raise DataError(f"--n-top-genes {n_top_genes} is more than the {g:,} genes of {where}")
    if n < 2:
        raise DataError(f"{where}: gene selection needs at least 2 training cells, not {n}")
    mean, var = normalised_moments(source, np.asarray(totals, dtype=np.float64))
    columns = seurat_dispersions(mean, var)
    keep = top_dispersions(columns["dispersions_norm"], n_top_genes)
    if not keep.any():
        raise DataError(f"{where}: no gene varies across the training cells; nothing to select")
    return GeneSelection(n_top_genes, n, **columns, highly_variable=keep)
