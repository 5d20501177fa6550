"""The Normal-Gamma model's figure, drawn from arrays: contours of the exact posterior
p(mu, tau | x) and of the fitted q on one grid (PRML Fig. 10.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def posterior_contours(
    mu: np.ndarray,
    tau: np.ndarray,
    *,
    exact: np.ndarray,
    fitted: np.ndarray,
    fitted_label: str,
    title: str,
) -> Figure:
    """Contours of two log-densities on the grid ``mu``, ``tau`` (meshgrid arrays of one shape):
    ``exact`` (log p(mu, tau | x)) and ``fitted`` (log q(mu, tau)), each at 0.5, 2 and 4.5
    below its maximum, zoomed to where either is within 6 of its maximum."""
    fig, ax = plt.subplots(figsize=(6.0, 5.0), constrained_layout=True)
    # log-density drops of 0.5, 2 and 4.5 below the mode: the 1-, 2- and 3-sigma contours of
    # a Gaussian
    drops = np.array([4.5, 2.0, 0.5])
    style = {"linewidths": 1.5, "linestyles": "solid"}
    ax.contour(mu, tau, exact, levels=exact.max() - drops, colors="C2", **style)
    ax.contour(mu, tau, fitted, levels=fitted.max() - drops, colors="C3", **style)
    # zoom to where either density is above its outermost contour, with a margin
    inside = (exact > exact.max() - 6.0) | (fitted > fitted.max() - 6.0)
    for values, set_lim in ((mu[inside], ax.set_xlim), (tau[inside], ax.set_ylim)):
        lo, hi = values.min(), values.max()
        set_lim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.plot([], [], color="C2", label="exact p(mu, tau | x)")
    ax.plot([], [], color="C3", label=fitted_label)
    ax.set_xlabel("mu")
    ax.set_ylabel("tau")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    return fig
