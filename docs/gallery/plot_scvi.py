"""
scVI: a ZINB variational autoencoder for single-cell counts
===========================================================

scVI on real UMI counts: scanpy's bundled ``pbmc68k_reduced`` (700 blood cells × 765 genes,
10 cell types; the integer counts recovered from its log-normalised matrix), 630 cells for
training and 70 held out. Each cell gets a 10-dimensional embedding z with prior N(0, I); a
decoder maps z to the normalised expression (a softmax over genes) and to zero-inflation
logits, the observed library size scales the mean, and the counts are zero-inflated negative
binomial with one inverse dispersion per gene. The encoder reads log(1 + counts). The page
reports the held-out ELBO and the importance-sampled marginal log-likelihood (the scVI
paper's metric, K samples from the encoder per cell), shows the embedding coloured by cell
type and compares synthetic cells with real ones gene by gene. Follows Lopez, Regier, Cole,
Jordan & Yosef (2018), "Deep generative modeling for single-cell transcriptomics", Nature
Methods 15, 1053–1058, and Burda, Grosse & Salakhutdinov (2016).
"""

# sphinx_gallery_thumbnail_number = 3
# sphinx_gallery_multi_image = "single"

# %%
# The model
# ---------
# Cell n has UMI counts :math:`x_{ng}` of G genes and the observed library size
# :math:`l_n = \sum_g x_{ng}`; its embedding :math:`z_n \in \mathbb{R}^{10}` is the latent
# variable. A decoder network f gives the normalised expression
# :math:`\rho_n = \operatorname{softmax}(f_\rho(z_n))` and the zero-inflation logits
# :math:`f_\pi(z_n)`, and each gene has an inverse dispersion :math:`\theta_g`; the decoder's
# weights and the :math:`\theta_g` are the parameters (Lopez et al. 2018, Methods):
#
# .. math::
#
#    z_n \sim \mathcal{N}(0, I), \qquad
#    x_{ng} \mid z_n, l_n \sim \operatorname{ZINB}(\mu_{ng}, \theta_g, \pi_{ng}), \qquad
#    \mu_{ng} = l_n \rho_{ng}, \quad \pi_{ng} = \operatorname{sigmoid}(f_\pi(z_n)_g),
#
# where the zero-inflated negative binomial puts an extra mass :math:`\pi` at zero on a
# negative binomial of mean μ and inverse dispersion θ:
#
# .. math::
#
#    \operatorname{ZINB}(x \mid \mu, \theta, \pi) = \pi\, \mathbf{1}\{x = 0\} + (1 - \pi)\,
#    \frac{\Gamma(x + \theta)}{\Gamma(\theta)\, x!}
#    \Bigl(\frac{\theta}{\theta + \mu}\Bigr)^{\theta} \Bigl(\frac{\mu}{\theta + \mu}\Bigr)^{x}.
#
# The ``nb`` likelihood sets π = 0, and ``poisson`` is its limit θ → ∞,
# :math:`\operatorname{Poisson}(x \mid \mu)`. The guide is an MLP encoder of
# :math:`y_n = \log(1 + x_n)`, and the ELBO per cell is a reconstruction term minus the KL to
# the prior, short of the log-likelihood by the KL to the posterior:
#
# .. math::
#
#    q(z_n \mid x_n) = \mathcal{N}\bigl(z_n \mid m(y_n), \operatorname{diag} v(y_n)\bigr),
#
# .. math::
#
#    \mathrm{ELBO}_n &= \mathbb{E}_q[\log p(x_n \mid z_n, l_n)]
#    - \mathrm{KL}(q(z_n \mid x_n) \,\|\, \mathcal{N}(0, I)) \\
#    &= \log p(x_n \mid l_n) - \mathrm{KL}(q(z_n \mid x_n) \,\|\, p(z_n \mid x_n, l_n)).
#
# The log-likelihood has no closed form. It is estimated by importance sampling with the
# encoder as the proposal, the importance-weighted bound of Burda et al. (2016): in
# expectation it lies between the ELBO and :math:`\log p(x_n \mid l_n)`, and it tends to the
# log-likelihood as K grows:
#
# .. math::
#
#    \log p(x_n \mid l_n) \approx \log \frac{1}{K} \sum_{k=1}^{K}
#    \frac{p(x_n \mid z_k, l_n)\, \mathcal{N}(z_k \mid 0, I)}{q(z_k \mid x_n)}, \qquad
#    z_k \sim q(z \mid x_n).

# %%
# Fit
# ---
# Mini-batches of 128 cells through the model's ``cells`` plate (five steps make an epoch),
# one reparameterised particle per step, the analytic KL, and a short KL warm-up: the weight of
# the KL term ramps from 0 to 1 over the first tenth of the steps (``kl_warmup``, the model's
# default); the reported ELBO is always the one at weight 1. 200 epochs by default: on 630
# cells the decoder starts to overfit after that, and the held-out likelihood falls.
import os
import tempfile
from pathlib import Path

import zoo
from zoo.models.scvi import SingleCellVI
from zoo.run import format_result

QUICK = os.environ.get("ZOO_DOCS_QUICK") == "1"  # set by `make -C docs html-quick`
K = 200 if QUICK else 1000
STEPS = SingleCellVI.training.quick_steps if QUICK else SingleCellVI.training.steps

model = SingleCellVI(test_particles=K)
result = zoo.fit(
    model,
    record_every=STEPS // 20,
    eval_particles=K,
    seed=0,
    quick=QUICK,
    progress=False,
)
print(format_result(result))

# %%
# These are totals over the 630 training cells, in nats. The log evidence of scVI is not known
# in closed form, so the report puts the ELBO next to the importance-weighted bound IWAE_K,
# computed per cell, which is tighter and tends to log p(x | l) as K grows.
#
# Held-out cells
# --------------
# The same encoder and decoder score the 70 held-out cells: the ELBO, the marginal
# log-likelihood log p(x_n | l_n) estimated by importance sampling with the encoder as the
# proposal, and the reconstruction error −E_q log p(x_n | z_n, l_n), in nats per cell (standard
# errors from the Monte Carlo draws).
test = result.summary["test"]["per_cell"]
print(f"held-out ELBO                    {test['elbo']:9.2f} ± {test['elbo_se']:.2f}")
print(
    f"held-out log p(x | l), K = {K:<5} {test['marginal_log_likelihood']:9.2f} "
    f"± {test['marginal_log_likelihood_se']:.2f}"
)
print(f"held-out reconstruction error    {test['reconstruction_error']:9.2f}")
print(f"training reconstruction error    {result.summary['reconstruction_error_per_cell']:9.2f}")

# %%
# The cell embedding
# ------------------
# The posterior mean E_q[z | x] of every cell, saved as CSV (one row per cell: its barcode,
# split, cell type and z1 … z10), ready for clustering or a UMAP elsewhere:
table = model.latent_means_table(result.guide)
path = model.save_latent_means(result.guide, Path(tempfile.mkdtemp()) / "latent_means.csv")
table.head()

# %%
# AnnData in and out
# ------------------
# With the anndata package installed (``pip install anndata==0.11.4``), ``zoo.fit("scvi",
# data=adata)`` reads an ``AnnData`` as scvi-tools users hold their cells: the ``counts`` layer
# (else ``X``), kept sparse, the cell types from ``obs``; a scipy sparse matrix works too.
# ``n_top_genes=2000`` (``--n-top-genes``) first keeps the highly variable genes of the
# training cells, as scanpy's ``highly_variable_genes(flavor="seurat")`` selects them. A run
# then saves ``latent.h5ad`` beside ``latent_means.csv``: the cells in the data's order with
# the embedding in ``obsm["X_scvi"]`` (scvi-tools' key), the split and cell types in ``obs``
# and the fitted inverse dispersion of each gene in ``var``, ready for
# ``adata.obsm["X_scvi"] = latent.obsm["X_scvi"]`` and scanpy's neighbours and UMAP.
from zoo.models.scvi import anndata_available  # noqa: E402

if anndata_available():
    latent = model.latent_adata(result.guide)
    print(latent)

# %%
# Figures
# -------
# The ELBO during training and its two halves; the embedding on its first two principal axes
# and by t-SNE, coloured by the ``bulk_labels`` cell types (monocytes, B cells, NK cells and the
# T-cell subsets separate without ever seeing the labels); synthetic cells generated from the
# prior (z ~ N(0, I), the library sizes of real cells) against real ones, gene by gene: the
# mean–variance relation far above the Poisson line (over-dispersion) and the fraction of
# zeros; the KL and the activity of each latent dimension; and the KL weight of the warm-up.
figures = result.figures()
gen = result.summary["generated_vs_real"]
print(
    f"zero fraction: real {gen['zero_fraction_real']:.3f}, generated "
    f"{gen['zero_fraction_generated']:.3f}; correlation over genes of the zero fraction "
    f"{gen['corr_zero_fraction']:.3f}, of log mean {gen['corr_log_mean']:.3f}"
)

# %%
# Three likelihoods
# -----------------
# The same networks with a negative binomial (no zero inflation) and a Poisson likelihood (no
# over-dispersion either, except what the latent z itself spreads), trained the same way and
# scored on the same held-out cells. The Poisson model comes last; the zero inflation of ZINB
# makes little difference against NB on these UMI counts, a few nats per cell either way (in
# the full run NB is ahead by about 3), as later work on droplet data found (Svensson 2020,
# "Droplet scRNA-seq is not zero-inflated", Nature Biotechnology).
import pandas as pd  # noqa: E402

rows = []
for likelihood in ("zinb", "nb", "poisson"):
    if likelihood == "zinb":
        other = result
    else:
        other = zoo.fit(
            SingleCellVI(likelihood=likelihood, test_particles=K),
            record_every=STEPS,
            eval_particles=K,
            seed=0,
            quick=QUICK,
            progress=False,
        )
    t = other.summary["test"]["per_cell"]
    rows.append(
        {
            "likelihood": likelihood,
            "held-out ELBO / cell": round(t["elbo"], 2),
            f"held-out log p(x | l) / cell (K={K})": round(t["marginal_log_likelihood"], 2),
            "± se": round(t["marginal_log_likelihood_se"], 2),
            "reconstruction error / cell": round(t["reconstruction_error"], 2),
        }
    )
pd.DataFrame(rows)
