"""The Gaussian mixture's own figure, drawn from arrays: the points coloured by their most
probable component, with each component's 2-sigma ellipse and weight (PRML Fig. 9.8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from zoo.plots import ellipse

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def mixture_components(
    x: np.ndarray,
    resp: np.ndarray,
    fitted: Mapping[str, np.ndarray],
    feature_names: Sequence[str],
    title: str,
) -> Figure:
    """Points ``x`` (N, D) coloured by their most probable component under ``resp`` (N, K),
    with each component's 2-sigma ellipse and its weight; ``fitted`` holds the ``weights``
    (K,), ``means`` (K, D) and ``covariances`` (K, D, D).

    Data with more than two features are shown on their first two principal axes, and the
    components' covariances are projected onto the same axes.
    """
    mean = x.mean(0)
    if x.shape[1] > 2:
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        proj = vt[:2].T
        labels = ["principal axis 1", "principal axis 2"]
    else:
        proj = np.eye(x.shape[1])[:, :2] if x.shape[1] == 2 else np.eye(1)
        labels = list(feature_names[:2])
    fig, ax = plt.subplots(figsize=(6.0, 5.0), constrained_layout=True)
    if x.shape[1] == 1:
        ax.hist(x[:, 0], bins=40, density=True, color="0.8")
        ax.set_xlabel(feature_names[0])
    else:
        xy = (x - mean) @ proj
        ax.scatter(xy[:, 0], xy[:, 1], c=[f"C{k}" for k in resp.argmax(1)], s=8, alpha=0.6)
        for k, (w, mu, cov) in enumerate(
            zip(fitted["weights"], fitted["means"], fitted["covariances"], strict=True)
        ):
            centre = (mu - mean) @ proj
            ellipse(ax, centre, proj.T @ cov @ proj, color=f"C{k}", lw=2)
            ax.annotate(f"{w:.2f}", centre, ha="center", va="center", weight="bold")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    return fig
