"""The VAEs' figures, from arrays: reconstructions of test images, decoder means at prior
draws, and the latent map of the training points.

Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR, section 5 and appendix A
(the learned manifold and the decoder's samples).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _image_grid(
    ax: Axes, images: np.ndarray, shape: tuple[int, int], ncols: int, vmax: float | None = None
) -> None:
    h, w = shape
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    canvas = np.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1), np.nan)
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i].reshape(
            h, w
        )
    lo = np.nanmin(canvas)
    ax.imshow(canvas, cmap="gray_r", vmin=min(lo, 0.0), vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstructions(
    original: np.ndarray,
    recon: np.ndarray,
    image_shape: tuple[int, int],
    title: str,
    count: int = 12,
) -> Figure:
    """Test images (top) and the decoder's mean at their posterior mean (bottom), ``count``
    columns."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(1.0 * count, 2.6), constrained_layout=True)
    vmax = max(original.max(), recon.max())
    _image_grid(axes[0], original, image_shape, count, vmax)
    _image_grid(axes[1], recon, image_shape, count, vmax)
    axes[0].set_title("test images")
    axes[1].set_title("reconstructions E[x | z = E_q z]")
    fig.suptitle(title)
    return fig


def plot_prior_samples(images: np.ndarray, image_shape: tuple[int, int], title: str) -> Figure:
    """Decoder means E[x | z] at draws z ~ N(0, I) from the prior, in a square grid."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 5.2), constrained_layout=True)
    _image_grid(ax, images, image_shape, int(math.sqrt(len(images))))
    ax.set_title(f"{title}: E[x | z], z ~ N(0, I)")
    return fig


def plot_latent_map(means: np.ndarray, labels: np.ndarray | None, title: str) -> Figure:
    """Posterior means E_q[z | x] of the training points, coloured by label; for q > 2 on the
    first two principal axes of the means."""
    import matplotlib.pyplot as plt

    if means.shape[1] > 2:
        centred = means - means.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        axis_labels = ("principal axis 1 of E_q[z]", "principal axis 2 of E_q[z]")
    elif means.shape[1] == 2:
        xy, axis_labels = means, ("E_q[z_1]", "E_q[z_2]")
    else:
        xy = np.stack([means[:, 0], np.zeros(len(means))], 1)
        axis_labels = ("E_q[z_1]", "")
    fig, ax = plt.subplots(figsize=(6.0, 5.0), constrained_layout=True)
    if labels is not None:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6, alpha=0.7)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(f"{title}: latent map (training points)")
    return fig
