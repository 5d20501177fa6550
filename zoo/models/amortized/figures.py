"""Figures every amortized model draws: KL and activity per latent dimension, and the ELBO's
terms over training with the KL weight of the annealing schedule.

Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR, section 5.2
(active units); Bowman et al. (2016), "Generating sentences from a continuous space", CoNLL,
section 3.1 (KL annealing). Both take plain values: a :class:`CollapseReport` and a history
table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from zoo.models.amortized.collapse import CollapseReport


def plot_kl_per_dim(report: CollapseReport, title: str) -> Figure:
    """KL(q(z_d | x) || N(0, 1)) per dimension, and the activity Cov_x E_q[z_d] with the 0.01
    threshold of Burda et al. (2016)."""
    import matplotlib.pyplot as plt

    dims = np.arange(1, report.latent_dim + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), constrained_layout=True)
    colors = ["C0" if a else "0.6" for a in report.active]
    axes[0].bar(dims, report.kl_per_dim, color=colors)
    axes[0].set_title(f"KL per dimension ({report.kl_method}), nats per point")
    axes[1].bar(dims, report.activity, color=colors)
    axes[1].axhline(report.threshold, color="k", ls="--", lw=1, label="0.01 (Burda et al.)")
    axes[1].set_yscale("log")
    positive = [a for a in report.activity if a > 0]
    bottom = min([report.threshold / 10, *(a / 2 for a in positive)])
    axes[1].set_ylim(bottom=bottom)
    axes[1].set_title(f"activity Cov_x E_q[z_d]: {report.active_units} active units")
    axes[1].legend(loc="lower right")
    for ax in axes:
        ax.set_xlabel("latent dimension")
        ax.set_xticks(dims)
    fig.suptitle(title)
    return fig


def plot_training(history: pd.DataFrame, title: str) -> Figure:
    """ELBO terms over training: the ELBO at KL weight 1 with its two halves, and the KL
    weight of the annealing schedule."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.6), constrained_layout=True)
    h = history.iloc[1:] if len(history) > 2 else history
    axes[0].plot(h["step"], h["elbo"], color="C0", label="ELBO (KL weight 1)")
    axes[0].set_title("ELBO")
    axes[1].plot(h["step"], h["expected_log_likelihood"], color="C2")
    axes[1].set_title("reconstruction E_q log p(x | z)")
    axes[2].plot(h["step"], h["kl"], color="C3", label="KL(q || prior)")
    axes[2].set_title("KL(q(z | x) || N(0, I))")
    twin = axes[2].twinx()
    twin.plot(history["step"], history["kl_weight"], color="0.4", ls="--", label="KL weight")
    twin.set_ylim(-0.05, 1.05)
    twin.set_ylabel("KL weight (annealing)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("nats (total over the data)")
    fig.suptitle(title)
    return fig
