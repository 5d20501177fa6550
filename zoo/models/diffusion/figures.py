"""Figures of the diffusion model, from arrays and plain values.

Samples against the data (Ho, Jain & Abbeel 2020, DDPM, NeurIPS, §4), the bound split across
the steps t (DDPM's eq. 5: L_T, L_{t-1}, L_0), a grid of points denoised by the reverse chain
and by the probability-flow ODE (Song et al. 2021, ICLR, §4.3), and the ELBO during training
against E log p_data. :meth:`Diffusion.plots <zoo.models.diffusion.model.Diffusion.plots>`
gathers the arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: (x_min, x_max, y_min, y_max) of a panel
Limits = tuple[float, float, float, float]
#: contours of a log-density on a grid: (xs, ys, log p of shape (len(ys), len(xs)))
Contours = tuple[np.ndarray, np.ndarray, np.ndarray]


def limits(x: np.ndarray, pad: float = 0.15) -> Limits:
    """The box around the first two coordinates of points ``x``, widened by ``pad`` of its span."""
    lo, hi = x.min(0), x.max(0)
    span = hi - lo
    return (
        lo[0] - pad * span[0],
        hi[0] + pad * span[0],
        lo[1] - pad * span[1],
        hi[1] + pad * span[1],
    )


def contour_grid(lims: Limits, num: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, points): a ``num`` x ``num`` grid over ``lims``, points of shape (num^2, 2)."""
    xs = np.linspace(lims[0], lims[1], num)
    ys = np.linspace(lims[2], lims[3], num)
    return xs, ys, np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


def _density_contours(ax, contours: Contours) -> None:
    xs, ys, logp = contours
    top = logp.max()
    ax.contour(
        xs,
        ys,
        logp,
        levels=top - np.array([6.0, 4.0, 2.0, 0.5]),
        colors="k",
        linewidths=0.6,
        alpha=0.5,
    )


def samples_figure(
    data: np.ndarray,
    draws: np.ndarray,
    title: str,
    *,
    lims: Limits,
    contours: Contours | None = None,
) -> Figure:
    """Data against draws from the reverse chain (2-D points), with contours of the exact data
    density where given."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 2, figsize=(9.6, 4.6), constrained_layout=True, sharex=True, sharey=True
    )
    for ax, pts, label in ((axes[0], data, "data"), (axes[1], draws, "samples (reverse chain)")):
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, color="C0" if label == "data" else "C1")
        if contours is not None:
            _density_contours(ax, contours)
        ax.set_xlim(lims[0], lims[1])
        ax.set_ylim(lims[2], lims[3])
        ax.set_aspect("equal")
        ax.set_title(f"{label}, {len(pts)} points")
    fig.suptitle(f"Samples against data: {title}", fontsize="medium")
    return fig


def elbo_split_figure(summary: dict[str, Any], title: str) -> Figure:
    """The T-step ELBO across t (each step's KL L_{t-1}, per point, and their running sum), and
    each bound's gap to E log p_data with its standard error, from the model's summary (its
    ``discrete`` entry, the ``test`` or ``train`` one and ``ode`` where present)."""
    import matplotlib.pyplot as plt

    disc = summary["discrete"]
    per_step = np.asarray(disc["per_step_L"])
    t = np.arange(2, len(per_step) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2), constrained_layout=True)
    ax = axes[0]
    ax.plot(t, per_step, color="C0", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step t (the KL of z_{t-1} given z_t)")
    ax.set_ylabel("L_{t-1}, nats per point", color="C0")
    twin = ax.twinx()
    twin.plot(t, np.cumsum(per_step), color="C3", lw=1.5)
    twin.set_ylabel("running sum over steps, nats per point", color="C3")
    ax.set_title(
        f"T = {disc['T']}: L_0 = {disc['L_0']:.3f}, sum L_(t-1) = {disc['diffusion']:.3f}, "
        f"L_T = {disc['L_T']:.1e}",
        fontsize="medium",
    )
    ax = axes[1]
    rows = [
        (f"ELBO, T = {disc['T']}\n(analytic KLs)", disc, "elbo", "C0"),
        (f"ELBO, T = {disc['T']}\n(Monte Carlo chain)", disc, "elbo_mc_chain", "C9"),
    ]
    split = "test" if "test" in summary else "train"
    rows.append(("ELBO, T = inf\n(VDM)", summary[split], "elbo_continuous", "C1"))
    if "ode" in summary:
        rows.append(("ODE\nlog-likelihood", summary["ode"], "log_lik_ode", "C5"))
    if f"{rows[0][2]}_gap" in disc:
        labels = [r[0] for r in rows]
        gaps = [r[1][f"{r[2]}_gap"] for r in rows]
        errs = [2 * r[1][f"{r[2]}_gap_se"] for r in rows]
        ax.bar(range(len(rows)), gaps, yerr=errs, color=[r[3] for r in rows], capsize=4)
        ax.set_xticks(range(len(rows)), labels, fontsize="small")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("E log p_data - value, nats per point")
        ax.set_title("gap to the exact E log p_data (held-out, ±2 s.e.)", fontsize="medium")
    else:
        ax.text(0.5, 0.5, "no known data density", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.suptitle(f"The ELBO split across t: {title}", fontsize="medium")
    return fig


def denoising_figure(
    grid: np.ndarray,
    columns: list[tuple[str, np.ndarray, np.ndarray]],
    data: np.ndarray,
    title: str,
) -> Figure:
    """A grid of 2-D points taken as z_T (``grid``), run down the reverse chain (top) and along
    the probability-flow ODE (bottom): one column per snapshot ``(label, chain points, ODE
    points)``, coloured by where each point started; the last column is x, drawn over ``data``."""
    import matplotlib.pyplot as plt

    colour = np.arctan2(grid[:, 1], grid[:, 0])
    size = 4 + 4 * np.hypot(grid[:, 0], grid[:, 1])
    fig, axes = plt.subplots(
        2,
        len(columns),
        figsize=(2.4 * len(columns), 5.2),
        constrained_layout=True,
        sharex=True,
        sharey=True,
    )
    lims = limits(np.concatenate([data[:, :2], grid]), pad=0.05)
    for col, (label, chain_pts, ode_pts) in enumerate(columns):
        last = col == len(columns) - 1
        for row, pts in enumerate((chain_pts, ode_pts)):
            ax = axes[row, col]
            if last:
                ax.scatter(data[:, 0], data[:, 1], s=1, color="0.8")
            ax.scatter(pts[:, 0], pts[:, 1], c=colour, s=size, cmap="hsv", alpha=0.8)
            ax.set_xlim(lims[0], lims[1])
            ax.set_ylim(lims[2], lims[3])
            ax.set_aspect("equal")
        axes[0, col].set_title(label, fontsize="medium")
    axes[0, 0].set_ylabel("reverse chain")
    axes[1, 0].set_ylabel("probability-flow ODE")
    fig.suptitle(f"Denoising a grid taken as z_T: {title}", fontsize="medium")
    return fig


def elbo_vs_ideal_figure(
    steps: np.ndarray, elbo_per_point: np.ndarray, ideal: float | None, title: str
) -> Figure:
    """The training trace of the ELBO per point against E log p_data (the ideal, where known)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    ax.plot(steps, elbo_per_point, color="C0", label="ELBO (trace particles)")
    if ideal is not None:
        ax.axhline(ideal, color="k", ls="--", label=f"E log p_data = {ideal:.3f}")
        tail = np.asarray(elbo_per_point)[len(elbo_per_point) // 5 :]
        tail = tail[np.isfinite(tail)]
        if tail.size:
            ax.set_ylim(min(tail.min(), ideal) - 0.2, max(tail.max(), ideal) + 0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("nats per point")
    ax.legend(loc="lower right")
    ax.set_title(f"ELBO against the ideal: {title}", fontsize="medium")
    return fig
