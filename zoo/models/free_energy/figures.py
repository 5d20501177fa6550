"""Figures of the free-energy models, drawn from arrays and plain values.

The models gather what is drawn (densities on a grid, Bogacz's phi(t), the fitted correlations)
and call these functions; the history is the run's table of SVI records (columns ``step``,
``elbo``, ``train_elbo``, ``log_evidence``). Bogacz (2017), J. Math. Psych. 76: Exercise 1
(§2.1), Exercise 2 and Fig. 2a (§2.2), learning (§2.4); Rao & Ballard (1999) for the hierarchy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from zoo.plots import zoom_y

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def free_energy_axes(ax: Any, history: Any, floor_label: str, *, bound: bool = True) -> None:
    """The free energy -ELBO over SVI steps, with -ln p (the floor a true ELBO cannot cross)."""
    steps = history["step"].to_numpy()
    elbo = history["elbo"].to_numpy(dtype=float)
    label = "free energy  -ELBO" if bound else "-ln p(u, phi)  (no entropy: not a bound)"
    train = history["train_elbo"].to_numpy(dtype=float) if "train_elbo" in history else None
    if train is not None and np.isfinite(train).any():
        ax.plot(steps, -train, color="C0", alpha=0.25, lw=0.6, label="training estimate")
    ax.plot(steps, -elbo, color="C0", alpha=0.5, lw=0.8)
    window = max(1, len(elbo) // 20)  # a running mean over ~5% of the run tames the MC noise
    smooth = pd.Series(-elbo).rolling(window, min_periods=1, center=True).mean().to_numpy()
    ax.plot(steps, smooth, color="C0", lw=2, label=label + f" (running mean of {window})")
    log_ev = history["log_evidence"].to_numpy(dtype=float)
    if np.isfinite(log_ev).any():
        ax.plot(steps, -log_ev, "--", color="k", label=floor_label)
    zoom_y(ax, -elbo[len(elbo) // 10 :], -log_ev, pad=0.15, floor=1e-3)
    ax.set_xlabel("step (SVI 'time')")
    ax.set_ylabel("nats")
    ax.legend(loc="upper right", fontsize=8)


def free_energy_figure(history: Any, floor_label: str, title: str, *, bound: bool = True) -> Figure:
    """One panel: :func:`free_energy_axes` with a title."""
    from zoo.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    free_energy_axes(ax, history, floor_label, bound=bound)
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# free-energy-perception
# --------------------------------------------------------------------------------------------
def draw_densities(
    ax: Any,
    grid: np.ndarray,
    posterior: np.ndarray,
    prior: np.ndarray,
    best_gaussian: np.ndarray,
    fitted: dict[str, np.ndarray | float],
) -> None:
    """Exact posterior, prior and best Gaussian densities on ``grid``, and the fitted
    recognition densities by label: an array is ln q on the grid, a float is a point mass phi."""
    ax.fill_between(grid, posterior, color="0.85", label="exact posterior p(v | u)")
    ax.plot(grid, prior, ":", color="0.4", label="prior p(v)")
    ax.plot(grid, best_gaussian, "--", color="C1", label="best Gaussian")
    for k, (label, value) in enumerate(fitted.items()):
        color = f"C{[0, 2, 3][k % 3]}"
        if isinstance(value, np.ndarray):
            ax.plot(grid, np.exp(value), color=color, lw=1.8, label=label)
        else:
            ax.axvline(value, color=color, lw=2, label=f"{label}: phi = {value:.3f}")
    ax.set_xlabel("food size v")
    ax.set_ylabel("density")
    ax.set_xlim(grid[0], grid[-1])
    ax.legend(loc="upper left", fontsize=8)


def draw_bogacz_dynamics(
    ax: Any,
    times: np.ndarray,
    phi: np.ndarray,
    neg_f: np.ndarray,
    mode: float,
    log_evidence: float,
) -> None:
    """Bogacz's Exercise 2 (his Fig. 2a): phi(t) by Euler steps on F, and -F(phi(t)), with the
    posterior mode and -ln p(u)."""
    ax.plot(times, phi, color="C2", label="phi(t)")
    ax.axhline(mode, color="C2", ls=":", label="posterior mode")
    ax.set_xlabel("time (Bogacz's Exercise 2: Euler steps, dt = 0.01)")
    ax.set_ylabel("phi")
    twin = ax.twinx()
    twin.plot(times, neg_f, color="C3", label="-F = -ln p(u, phi)")
    twin.axhline(-log_evidence, ls="--", color="k", label="-ln p(u)")
    twin.set_ylim(neg_f.min() - 0.5, neg_f.min() + 4.0)
    twin.set_ylabel("nats")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(0.0, times[-1])
    ax.set_title(f"gradient ascent on F: phi(5) = {phi[-1]:.4f}")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)


def perception_posterior_figure(
    kind: str,
    grid: np.ndarray,
    posterior: np.ndarray,
    prior: np.ndarray,
    best_gaussian: np.ndarray,
    fitted: dict[str, np.ndarray | float],
) -> Figure:
    """The exact posterior against the fitted recognition density (:func:`draw_densities`)."""
    from zoo.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    draw_densities(ax, grid, posterior, prior, best_gaussian, fitted)
    ax.set_title(f"exact posterior vs the {kind} recognition density")
    return fig


def perception_free_energy_figure(
    kind: str,
    history: Any,
    times: np.ndarray,
    phi: np.ndarray,
    neg_f: np.ndarray,
    mode: float,
    log_evidence: float,
) -> Figure:
    """Left: the guide's free energy over SVI steps; right: Bogacz's Exercise 2."""
    from zoo.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.0), constrained_layout=True)
    free_energy_axes(axes[0], history, "-ln p(u)", bound=kind != "point-mass")
    axes[0].set_title(f"{kind} guide: free energy over SVI steps")
    draw_bogacz_dynamics(axes[1], times, phi, neg_f, mode, log_evidence)
    return fig


# --------------------------------------------------------------------------------------------
# free-energy-learning
# --------------------------------------------------------------------------------------------
def learned_prior_figure(
    kind: str,
    history: Any,
    grid: np.ndarray,
    priors: dict[str, np.ndarray],
    max_likelihood_log_evidence: float,
    sizes: np.ndarray | None = None,
) -> Figure:
    """Left: the learnt prior density against the maximum-likelihood one, the initial one and
    (for simulated items) the true one over a histogram of the true sizes; right: the free
    energy over steps with -ln p(u | theta_ML). ``priors`` holds densities on ``grid`` under
    the keys ``learnt``, ``max_likelihood``, ``initial`` and, where known, ``true``."""
    from zoo.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.0), constrained_layout=True)
    if sizes is not None:
        axes[0].hist(sizes, bins=30, density=True, color="0.85", label="true sizes v_i")
    if "true" in priors:
        axes[0].plot(grid, priors["true"], "k:", label="true prior")
    axes[0].plot(grid, priors["max_likelihood"], "--", color="C1", label="max-likelihood prior")
    axes[0].plot(grid, priors["learnt"], color="C0", label=f"learnt ({kind})")
    axes[0].plot(grid, priors["initial"], color="0.6", lw=0.8, label="initial prior (Exercise 1)")
    axes[0].set_xlabel("food size v")
    axes[0].set_ylabel("density")
    axes[0].set_title("the learnt prior p(v) against the truth")
    axes[0].legend(fontsize=8)
    free_energy_axes(axes[1], history, "-ln p(u | theta_t)", bound=kind != "point-mass")
    axes[1].axhline(-max_likelihood_log_evidence, color="C1", ls=":", label="-ln p(u | theta_ML)")
    axes[1].legend(loc="upper right", fontsize=8)
    axes[1].set_title(f"learning: free energy over steps ({kind} guide)")
    return fig


# --------------------------------------------------------------------------------------------
# predictive-coding
# --------------------------------------------------------------------------------------------
def posterior_covariance_figure(
    kind: str,
    labels: list[str],
    exact_corr: np.ndarray,
    fitted_corr: np.ndarray,
    gaps: np.ndarray,
    best_mean_field_gap: float,
) -> Figure:
    """The exact posterior correlations of the latents, the fitted guide's (mean over points),
    and every point's gap KL(q_n || p(z | x_n)) against the best mean field's."""
    from zoo.plots import plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), constrained_layout=True)
    for ax, corr, title in (
        (axes[0], exact_corr, "exact posterior correlation"),
        (axes[1], fitted_corr, f"fitted {kind}: correlation (mean over points)"),
    ):
        image = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(title)
    fig.colorbar(image, ax=axes[:2], shrink=0.8)
    axes[2].bar(np.arange(len(gaps)), gaps, color="C0", width=1.0)
    axes[2].axhline(best_mean_field_gap, color="C1", ls="--", label="best mean field")
    axes[2].set_xlabel("data point")
    axes[2].set_ylabel("KL(q_n || p(z | x_n))  [nats]")
    axes[2].set_title(f"per-point gap, total {gaps.sum():.3g} nats")
    axes[2].legend(fontsize=8)
    return fig
