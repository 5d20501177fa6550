"""Figures of the empirical-Bayes models, drawn from arrays and plain values.

Shrinkage as Efron & Morris (1975, JASA 70, Table 1 and Figure 1) show it for the baseball
averages, the eight schools' estimates beside their posterior means (Gelman et al., BDA3 §5.5),
and the profile log marginal likelihood over the hyperparameter the data barely determine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


# --------------------------------------------------------------------------------------------
# Efron & Morris's baseball
# --------------------------------------------------------------------------------------------
def baseball_shrinkage_figure(
    table: dict[str, Any],
    players: list[str],
    guide_name: str,
    method: str,
    a: float,
    b: float,
) -> Figure:
    """Every player's raw average, empirical-Bayes posterior mean and season average, joined,
    with their MSEs against the season averages. ``table`` holds the lists ``raw_average``,
    ``eb_posterior_mean``, ``season_average`` and the numbers ``mse_raw``, ``mse_eb`` and
    ``mse_eb_at_type2_max``."""
    from zoo.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 5.4), constrained_layout=True)
    columns = ("raw_average", "eb_posterior_mean", "season_average")
    n = len(players)
    for i in range(n):
        ax.plot([0, 1, 2], [table[c][i] for c in columns], "-", color="0.7", lw=0.8)
    ax.plot(
        [0] * n,
        table["raw_average"],
        "o",
        color="C0",
        label=f"first 45 at-bats: MSE {table['mse_raw']:.5f}",
    )
    ax.plot(
        [1] * n,
        table["eb_posterior_mean"],
        "o",
        color="C3",
        label=f"empirical Bayes ({guide_name}): MSE {table['mse_eb']:.5f}",
    )
    ax.plot([2] * n, table["season_average"], "ks", ms=5, label="rest of season (truth)")
    ax.plot(
        [],
        [],
        " ",
        label=f"EB at the exact type-II max: MSE {table['mse_eb_at_type2_max']:.5f}",
    )
    for i in np.argsort(table["raw_average"])[[0, -1]]:
        ax.annotate(
            players[i],
            (0, table["raw_average"][i]),
            xytext=(-6, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=8,
        )
    ax.set_xticks([0, 1, 2], ["raw y / 45", "EB posterior mean", "season average"])
    ax.set_xlim(-0.6, 2.4)
    ax.set_ylabel("batting average (MSEs against the season average)")
    ax.set_title(f"Shrinkage, Beta({a:.3g}, {b:.3g}) prior by {method}")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def baseball_profile_figure(
    kappas: np.ndarray,
    profile: np.ndarray,
    pooled: float,
    top_concentration: float,
    fitted_concentration: float,
    fitted: float,
    interval: tuple[float, float],
    guide_name: str,
) -> Figure:
    """The profile log marginal likelihood over the concentration a + b, in nats below the
    maximum (``profile``, ``pooled`` for a + b -> infinity, ``fitted`` at the fitted a + b),
    with the type-II maximum and the concentrations within 0.01 nats of it (``interval``)."""
    from zoo.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    ax.semilogx(kappas, profile, "k-", label="profile over a / (a + b)")
    ax.axhline(pooled, color="0.5", ls=":", label="a + b -> infinity (one common p)")
    ax.axvline(
        top_concentration,
        color="k",
        ls="--",
        lw=0.8,
        label=f"type-II max (scipy): a + b = {top_concentration:.0f}",
    )
    ax.plot(
        [fitted_concentration],
        [fitted],
        "C3o",
        label=f"{guide_name}: a + b = {fitted_concentration:.0f}",
    )
    lo, hi = interval
    ax.axvspan(lo, hi, color="0.92", zorder=0, label="within 0.01 nats of the max")
    ax.set_ylim(-1.0, 0.1)
    ax.set_xlabel("prior concentration a + b")
    ax.set_ylabel("log p(y | a, b) - maximum  [nats]")
    ax.set_title("Profile log marginal likelihood: a long flat ridge")
    ax.legend(loc="lower right", fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# The eight schools
# --------------------------------------------------------------------------------------------
def schools_shrinkage_figure(
    schools: list[str],
    y: np.ndarray,
    sigma: np.ndarray,
    means: np.ndarray,
    sds: np.ndarray,
    mu: float,
    tau: float,
    guide_name: str,
    method: str,
) -> Figure:
    """The estimates y_j ± sigma_j beside the posterior means ± sds, and mu."""
    from zoo.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    x = np.arange(len(schools))
    ax.errorbar(
        x - 0.12, y, yerr=sigma, fmt="o", color="C0", capsize=3, label="estimate y_j ± sigma_j"
    )
    ax.errorbar(
        x + 0.12,
        means,
        yerr=sds,
        fmt="s",
        color="C3",
        capsize=3,
        label=f"EB posterior mean ± sd ({guide_name})",
    )
    ax.axhline(mu, color="k", ls="--", lw=0.8, label=f"mu = {mu:.2f}  (tau = {tau:.2g})")
    ax.set_xticks(x, schools)
    ax.set_xlabel("school")
    ax.set_ylabel("coaching effect (SAT points)")
    ax.set_title(f"Eight schools: shrinkage by {method}")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def schools_profile_figure(
    taus: np.ndarray,
    profile: np.ndarray,
    near: np.ndarray,
    near_profile: np.ndarray,
    tau: float,
    at_tau: float,
    top_mu: float,
    tau_within: float,
    guide_name: str,
) -> Figure:
    """The profile max_mu log p(y | mu, tau) in nats below the boundary maximum over ``taus``,
    the fitted tau on it (``at_tau``), and an inset of the neighbourhood of tau = 0
    (``near``, ``near_profile``) where the data cannot tell tau values apart (tau below
    ``tau_within``: within 0.01 nats)."""
    from zoo.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    ax.plot(taus, profile, "k-", label="profile max_mu log p(y | mu, tau)")
    ax.plot([tau], [at_tau], "C3o", label=f"{guide_name}: tau = {tau:.3g}")
    ax.plot(
        [0.0],
        [0.0],
        "k^",
        ms=8,
        clip_on=False,
        label=f"type-II max: tau = 0 (boundary), mu = {top_mu:.2f}",
    )
    ax.set_xlabel("tau")
    ax.set_ylabel("nats below the maximum")
    ax.set_xlim(0.0, taus[-1])
    ax.set_title("Profile log marginal likelihood: the maximum is on the boundary")
    ax.legend(loc="lower left", fontsize=8)
    # the neighbourhood of the boundary, where the data cannot tell tau values apart
    zoom = ax.inset_axes((0.55, 0.52, 0.42, 0.4))
    zoom.plot(near, near_profile, "k-")
    zoom.axhline(-0.01, color="0.5", ls=":", lw=0.8)
    zoom.axvspan(0.0, tau_within, color="0.9", zorder=0)
    zoom.plot([tau], [at_tau], "C3o")
    zoom.plot([0.0], [0.0], "k^", ms=6, clip_on=False)
    zoom.set_xlim(0.0, near[-1])
    zoom.set_title(f"within 0.01 nats: tau < {tau_within:.3f}", fontsize=8)
    zoom.tick_params(labelsize=7)
    return fig
