"""Figures: the ELBO trace against the exact log evidence and its two halves, which every
run gets and which read only a run's history, and drawing helpers models share.

Every function returns a :class:`matplotlib.figure.Figure`; :mod:`zoo.outputs` saves them,
the docs gallery shows them. :mod:`matplotlib.pyplot` is imported when the first figure is
drawn, not with this module; ``from zoo.plots import plt`` gives it, as to the models' figures.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from zoo.diagnostics import Diagnostics


def __getattr__(name: str) -> Any:
    """``plt``: :mod:`matplotlib.pyplot`, imported on first use."""
    if name == "plt":
        import matplotlib.pyplot as plt

        return plt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _finite(series: pd.Series) -> bool:
    return bool(np.isfinite(series.to_numpy(dtype=float)).any())


def elbo_trace(
    history: pd.DataFrame,
    title: str,
    final_gap: float | None = None,
    diagnostics: Diagnostics | None = None,
    trace_particles: int | None = None,
) -> Figure:
    """ELBO per recorded step, with the exact log evidence as a line where it is known.

    The ELBO is drawn over the evidence line, so it stays visible where the two coincide (an
    exact guide). ``final_gap`` (the diagnostics' many-particle gap) goes in the title; without
    it, the last recorded (few-particle) gap does. With the run's ``diagnostics`` the last step
    also shows the final IWAE (±2 SE) and the best ELBO the guide family reaches at the fitted
    parameters, where they exist; a history with an ``iwae`` column (the records' particles,
    ``trace_particles`` of them, weighted jointly) draws it beside the ELBO. Where the evidence
    is known a second panel shows the gap log p(x) - ELBO per record on a log axis (linear
    within the records' Monte Carlo noise).
    """
    import matplotlib.pyplot as plt

    known = "log_evidence" in history and _finite(history["log_evidence"])
    if known:
        fig, (ax, gap_ax) = plt.subplots(
            2,
            1,
            figsize=(6.4, 5.6),
            sharex=True,
            gridspec_kw={"height_ratios": [2.2, 1.0]},
            constrained_layout=True,
        )
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    steps = history["step"].to_numpy(dtype=float)
    if known:
        ax.plot(steps, history["log_evidence"], "--", color="k", lw=1.2, label="exact log evidence")
    ax.plot(steps, history["elbo"], label="ELBO", color="C0", lw=1.6, zorder=3)
    if "iwae" in history and _finite(history["iwae"]):
        k = f"K={trace_particles}, " if trace_particles else ""
        ax.plot(
            steps,
            history["iwae"],
            color="C1",
            lw=1.0,
            alpha=0.8,
            zorder=2,
            label=f"IWAE ({k}all latents jointly)",
        )
    extra = _final_markers(ax, steps[-1], diagnostics) if diagnostics is not None else []
    if known:
        if final_gap is None:
            final_gap = history["gap"].iloc[-1]
        ax.set_title(f"{title}\nfinal gap {final_gap:.4g} nats", fontsize="medium", wrap=True)
        _gap_panel(gap_ax, history)
    else:
        ax.set_title(title, fontsize="medium", wrap=True)
        ax.set_xlabel("step")
    ax.ticklabel_format(axis="y", useOffset=False)
    _zoom_to_tail(ax, history, extra)
    ax.set_ylabel("nats (total over the data)")
    ax.legend(loc="best", fontsize="small")
    return fig


def _final_markers(ax, last_step: float, d: Diagnostics) -> list[float]:
    """The final IWAE (±2 SE) and the family's best ELBO at the last step; their values."""
    values = []
    if d.best_elbo is not None and math.isfinite(d.best_elbo):
        ax.axhline(d.best_elbo, color="C2", ls=":", lw=1.4, label="best ELBO of the family")
        values.append(d.best_elbo)
    if math.isfinite(d.iwae):
        se = d.iwae_se if math.isfinite(d.iwae_se) else 0.0
        ax.errorbar(
            [last_step],
            [d.iwae],
            yerr=[[2 * se], [2 * se]],
            fmt="D",
            color="C1",
            ms=5,
            capsize=3,
            zorder=4,
            label=f"final IWAE ({d.iwae_scope}, ±2 SE)",
        )
        values.append(d.iwae)
    return values


def _gap_panel(ax, history: pd.DataFrame) -> None:
    """log p(x) - ELBO per record. A symmetric-log axis, linear within the records' Monte Carlo
    noise (a record's few particles can put the estimate a little above the evidence), and a
    flat zero where the gap is rounding (an exact guide)."""
    gap = history["gap"].to_numpy(dtype=float)
    evidence = history["log_evidence"].to_numpy(dtype=float)
    ax.plot(history["step"], gap, color="C3", lw=1.2)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("step")
    finite = gap[np.isfinite(gap)]
    scale = max(1.0, float(np.nanmax(np.abs(evidence))))
    if finite.size == 0 or np.abs(finite).max() < 1e-9 * scale:
        ax.set_ylim(-1.0, 1.0)
        ax.set_ylabel("gap (nats)")
        ax.text(0.5, 0.6, "zero to rounding", transform=ax.transAxes, ha="center")
        return
    tail = finite[len(finite) // 2 :]
    noise = float(np.median(np.abs(tail - np.median(tail)))) * 1.4826  # MAD as an SD
    positive = np.abs(finite[finite != 0])
    floor = max(noise, float(np.percentile(positive, 5)) if positive.size else 0.0, 1e-12 * scale)
    ax.set_yscale("symlog", linthresh=floor)
    ax.set_ylabel("gap (nats, log)")


def _zoom_to_tail(ax, history: pd.DataFrame, extra: list[float] | None = None) -> None:
    """Keep the last 80% of the run readable: early ELBOs can be orders of magnitude lower."""
    tail = history.iloc[len(history) // 5 :]
    values = [tail["elbo"].to_numpy(dtype=float), np.asarray(extra or [], dtype=float)]
    if "iwae" in tail:
        values.append(tail["iwae"].to_numpy(dtype=float))
    if "log_evidence" in tail:
        values.append(tail["log_evidence"].to_numpy(dtype=float))
    zoom_y(ax, *values)


def zoom_y(ax, *values: Any, pad: float = 0.1, floor: float = 1e-4) -> None:
    """Set the y-range to the finite ``values`` (arrays), padded by ``pad`` of their range
    and at least ``floor`` of their size (a flat line keeps a visible band)."""
    stacked = np.concatenate([np.asarray(v, dtype=float).ravel() for v in values])
    stacked = stacked[np.isfinite(stacked)]
    if stacked.size:
        lo, hi = stacked.min(), stacked.max()
        margin = pad * (hi - lo) + floor * max(1.0, abs(hi))
        ax.set_ylim(lo - margin, hi + margin)


def elbo_terms(history: pd.DataFrame, title: str) -> Figure:
    """The ELBO split into expected log-likelihood and KL(q || prior)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), constrained_layout=True)
    axes[0].plot(history["step"], history["expected_log_likelihood"], color="C2")
    axes[0].set_title("expected log-likelihood  E_q log p(x | z)")
    axes[1].plot(history["step"], history["kl"], color="C3")
    axes[1].set_title("KL(q(z) || p(z))")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("nats")
    fig.suptitle(title, fontsize="medium", wrap=True)
    return fig


def held_out_trace(history: pd.DataFrame, num_data: int, title: str) -> Figure:
    """The ELBO per data point on the training data and on the held-out data, record by
    record: where the two part, the model has started to fit its training data at the
    expense of new data (over-fitting); the best held-out record is marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    steps = history["step"].to_numpy(dtype=float)
    train = history["elbo"].to_numpy(dtype=float) / num_data
    held = history["held_out_elbo_per_point"].to_numpy(dtype=float)
    ax.plot(steps, train, color="C0", label="training data")
    ax.plot(steps, held, color="C3", label="held-out data")
    if np.isfinite(held).any():
        best = int(np.nanargmax(held))
        ax.plot(
            steps[best],
            held[best],
            "o",
            color="C3",
            mfc="none",
            ms=8,
            label=f"best held-out (step {int(steps[best])})",
        )
    zoom_y(ax, train[len(train) // 5 :], held[len(held) // 5 :])
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO per data point (nats)")
    ax.set_title(f"{title}\ntraining and held-out ELBO", fontsize="medium", wrap=True)
    ax.legend(loc="best", fontsize="small")
    return fig


def ellipse(ax, mean, cov, *, nsig: float = 2.0, **kwargs):
    """Draw the ``nsig``-standard-deviation ellipse of a 2-D Gaussian."""
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(np.asarray(cov))
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    width, height = 2 * nsig * np.sqrt(np.maximum(vals[::-1], 0.0))
    kwargs.setdefault("fill", False)
    patch = Ellipse(tuple(mean), width, height, angle=angle, **kwargs)
    ax.add_patch(patch)
    return patch
