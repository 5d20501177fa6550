"""scVI: a zero-inflated negative binomial VAE for single-cell RNA counts.

Follows Lopez, Regier, Cole, Jordan & Yosef (2018), "Deep generative modeling for single-cell
transcriptomics", Nature Methods 15, 1053-1058 (scVI), and its reference implementation,
scvi-tools (Gayoso et al. 2022, "A Python library for probabilistic analysis of single-cell
omics data", Nature Biotechnology 40, 163-166); the ELBO and the importance-weighted bound of
Kingma & Welling (2014) and Burda, Grosse & Salakhutdinov (2016).

x_n in N^G are the UMI counts of G genes in cell n. The generative process:

- z_n ~ N(0, I_q), a low-dimensional cell state (q = 10 by default);
- the library size l_n: *observed*, log l_n = log sum_g x_ng (scvi-tools' default), or
  *latent*, log l_n ~ N(mu_l, sigma_l^2) with mu_l, sigma_l^2 the mean and variance of the
  log library size over the training cells (the log-normal prior of the paper);
- a decoder network f(z_n) gives the normalised expression rho_n = softmax(f_rho(z_n)) (a point
  of the simplex over genes) and zero-inflation logits f_pi(z_n); the mean is
  mu_ng = l_n rho_ng;
- x_ng ~ ZINB(mean mu_ng, inverse dispersion theta_g, gate sigmoid(f_pi(z_n)_g)), with one
  theta_g per gene. Pyro's ``dist.ZeroInflatedNegativeBinomial(total_count=theta,
  logits=log mu - log theta, gate_logits=pi)`` is this distribution (it matches scvi-tools'
  ``log_zinb_positive``); ``likelihood="nb"`` drops the zero inflation, ``"poisson"`` also the
  over-dispersion (theta -> infinity).

The guide is amortized (:mod:`guides.amortized`): q(z_n | x_n) = N(m(y_n), diag v(y_n)) with
y_n = log(1 + x_n), an MLP encoder, and with a latent library a second encoder
q(log l_n | x_n). Training maximises the ELBO by SVI on mini-batches of cells through the
``cells`` plate, with the analytic Gaussian KL, optionally with KL warm-up (``kl_warmup``; the
reported ELBO is always at weight 1).

Evaluation on held-out cells (a seeded, label-stratified split, ``test_fraction``) with the
trained networks: the ELBO and the importance-sampled marginal log-likelihood
log p(x_n) ~ log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n), z_k ~ q (the encoder as proposal, K
samples per cell, with a delta-method standard error: the metric of the scVI paper, and of
scvi-tools' ``get_marginal_ll``), and the reconstruction error -E_q log p(x_n | z_n, l_n) (as
scvi-tools' ``get_reconstruction_error``), all per cell. With an observed library the
likelihood is conditional on it, log p(x_n | l_n), in both.

The observation distribution :class:`~zoo.models.scvi.likelihood.ScviCounts` evaluates the
ZINB log-probability summed over genes without ever holding K particles x N cells x G genes at
once: the terms that depend on the counts alone, log Gamma(x + theta) - log Gamma(theta) -
log Gamma(x + 1), are computed once per cell (not per particle), and the rest in chunks of
particles. Its numbers are those of Pyro's distribution (tested).

Data (:mod:`~zoo.models.scvi.data`): scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs x 765
genes, 10 cell types; no download), the user's ``.h5ad`` (a counts layer or X; ``backed`` reads
mini-batches from the file), an ``AnnData`` object or a scipy sparse matrix
(:mod:`~zoo.models.scvi.anndata_io`), 10x ``.mtx`` directories or CSV (cells x genes, or genes x
cells with ``genes_in_rows``); or a seeded simulation from this model's own generative process
(:func:`~zoo.models.scvi.simulate.simulate_scvi`).
``n_top_genes`` keeps the highly variable genes of the training cells as scanpy's
``flavor="seurat"`` selects them (:mod:`~zoo.models.scvi.genes`) before training. A run saves
the latent means as ``latent_means.csv`` and, with anndata installed, as ``latent.h5ad``
(``obsm["X_scvi"]``, as scvi-tools). With
``backed`` the matrix is never held in memory whole: training reads each mini-batch's rows, and
every pass over all the cells (the runner's history records and diagnostics, the held-out
evaluation, the report's tables and figures) reads ``data_plate.block_size`` cells at a time
(:mod:`zoo.data_blocks`).

Files: :mod:`~zoo.models.scvi.model` (the registered model ``scvi``),
:mod:`~zoo.models.scvi.likelihood` (the count likelihood), :mod:`~zoo.models.scvi.simulate`
(the simulator and the grid integral), :mod:`~zoo.models.scvi.figures`, and the count data:
:mod:`~zoo.models.scvi.counts` (validation, count sources, per-gene statistics),
:mod:`~zoo.models.scvi.hdf5` (backed reading), :mod:`~zoo.models.scvi.h5ad` (the h5ad reader
and writer), :mod:`~zoo.models.scvi.anndata_io` (AnnData in and out),
:mod:`~zoo.models.scvi.genes` (gene selection) and :mod:`~zoo.models.scvi.data` (the bundled
PBMCs, 10x, CSV, :func:`load_counts`).
The scaffolding shared with the VAEs (the data as a value,
:meth:`~zoo.models.amortized.AmortizedModel.with_data`) is :mod:`zoo.models.amortized`.
"""

from zoo.models.scvi.anndata_io import (
    ANNDATA_INSTALL,
    anndata_available,
    count_data_from_anndata,
    import_anndata,
    latent_anndata,
)
from zoo.models.scvi.counts import (
    COUNT_LIMIT,
    LABEL_KEYS,
    CountData,
    CountSource,
    InMemoryCounts,
    NonCountWarning,
    SelectedGenes,
    check_counts,
    gene_statistics,
    select_genes,
)
from zoo.models.scvi.data import (
    load_counts,
    load_pbmc68k_reduced,
    pbmc68k_reduced_path,
    read_10x_mtx,
    read_count_csv,
    read_h5ad,
    recover_pbmc_counts,
)
from zoo.models.scvi.figures import embed_2d, plot_generated_vs_real, plot_latent_embedding
from zoo.models.scvi.genes import GeneSelection, highly_variable_genes
from zoo.models.scvi.h5ad import read_h5ad_h5py, write_h5ad
from zoo.models.scvi.hdf5 import BackedCSRCounts, BackedDenseCounts
from zoo.models.scvi.likelihood import LIKELIHOODS, ScviCounts
from zoo.models.scvi.model import LIBRARY_MODES, Cells, SingleCellVI
from zoo.models.scvi.simulate import (
    ScviSimulation,
    grid_log_likelihood,
    make_decoder,
    simulate_scvi,
)

__all__ = [
    "ANNDATA_INSTALL",
    "COUNT_LIMIT",
    "LABEL_KEYS",
    "LIBRARY_MODES",
    "LIKELIHOODS",
    "BackedCSRCounts",
    "BackedDenseCounts",
    "Cells",
    "CountData",
    "CountSource",
    "GeneSelection",
    "InMemoryCounts",
    "NonCountWarning",
    "ScviCounts",
    "ScviSimulation",
    "SelectedGenes",
    "SingleCellVI",
    "anndata_available",
    "check_counts",
    "count_data_from_anndata",
    "embed_2d",
    "gene_statistics",
    "grid_log_likelihood",
    "highly_variable_genes",
    "import_anndata",
    "latent_anndata",
    "load_counts",
    "load_pbmc68k_reduced",
    "make_decoder",
    "pbmc68k_reduced_path",
    "plot_generated_vs_real",
    "plot_latent_embedding",
    "read_10x_mtx",
    "read_count_csv",
    "read_h5ad",
    "read_h5ad_h5py",
    "recover_pbmc_counts",
    "select_genes",
    "simulate_scvi",
    "write_h5ad",
]
