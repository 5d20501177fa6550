"""scVI's figures, from arrays: the cells' posterior means in 2-D, and synthetic cells
against real ones gene by gene.

Lopez et al. (2018), Nature Methods 15, 1053-1058 (the latent space coloured by cell type, and
the generative model's fit to the counts of every gene); t-SNE of van der Maaten & Hinton
(2008), JMLR 9, 2579-2605.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def embed_2d(means: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """A 2-D projection of the latent means: ``"pca"`` or ``"tsne"`` (scikit-learn)."""
    centred = means - means.mean(0)
    if means.shape[1] <= 2:
        return np.column_stack([centred, np.zeros((len(means), 2 - means.shape[1]))])
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(5.0, (len(means) - 1) / 3.0)))
        tsne = TSNE(2, init="pca", random_state=seed, perplexity=perplexity)
        return tsne.fit_transform(centred)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_latent_embedding(
    means: np.ndarray, labels: np.ndarray | None, title: str, max_tsne: int = 3000
) -> Figure:
    """The cells' posterior means E_q[z | x] in 2-D (PCA, and t-SNE for up to ``max_tsne``
    cells), coloured by cell type."""
    import matplotlib.pyplot as plt

    methods = ["pca"] + (["tsne"] if len(means) <= max_tsne and means.shape[1] > 2 else [])
    fig, axes = plt.subplots(
        1, len(methods), figsize=(5.2 * len(methods) + 2.6, 4.6), constrained_layout=True
    )
    axes = np.atleast_1d(axes)
    if labels is not None:
        names, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    else:
        names, codes = np.array(["cells"]), np.zeros(len(means), dtype=int)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for ax, method in zip(axes, methods, strict=True):
        xy = embed_2d(means, method)
        for k, name in enumerate(names):
            sel = codes == k
            ax.scatter(xy[sel, 0], xy[sel, 1], s=7, alpha=0.8, color=cmap(k % cmap.N), label=name)
        label = "PCA" if method == "pca" else "t-SNE"
        ax.set_title(f"{label} of E_q[z | x] (training cells)")
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is not None:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2)
    fig.suptitle(f"{title}: cell embedding")
    return fig


def plot_generated_vs_real(
    real: dict[str, np.ndarray], generated: dict[str, np.ndarray], title: str, num_cells: int
) -> Figure:
    """Per gene, real against synthetic cells (:func:`gene_statistics` of each): the
    mean-variance relation, the zero fraction against the mean, and the zero fraction of each
    gene, generated against real."""
    import matplotlib.pyplot as plt

    r, g = real, generated
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), constrained_layout=True)
    for stats, name, color in ((r, "real", "C0"), (g, "generated", "C3")):
        axes[0].scatter(stats["mean"], stats["variance"], s=5, alpha=0.6, color=color, label=name)
        axes[1].scatter(
            stats["mean"], stats["zero_fraction"], s=5, alpha=0.6, color=color, label=name
        )
    grid = np.logspace(np.log10(max(r["mean"].min(), 1e-3)), np.log10(r["mean"].max()), 50)
    axes[0].plot(grid, grid, "k--", lw=1, label="Poisson (var = mean)")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("gene mean count")
    axes[0].set_ylabel("gene variance")
    axes[0].set_title("mean-variance per gene")
    axes[1].plot(grid, np.exp(-grid), "k--", lw=1, label="Poisson exp(-mean)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("gene mean count")
    axes[1].set_ylabel("fraction of zero counts")
    axes[1].set_title("zeros per gene")
    axes[2].scatter(r["zero_fraction"], g["zero_fraction"], s=5, alpha=0.6, color="C2")
    axes[2].plot([0, 1], [0, 1], "k--", lw=1)
    axes[2].set_xlabel("zero fraction, real cells")
    axes[2].set_ylabel("zero fraction, generated cells")
    axes[2].set_title("zero fraction per gene")
    for ax in axes[:2]:
        ax.legend(fontsize=8, markerscale=2)
    fig.suptitle(f"{title}: {num_cells} generated cells against as many real ones")
    return fig
