"""Figures: the ELBO trace against the exact log evidence and its two halves, which every
run gets and which read only a run's history, and drawing helpers models share.

Every function returns a :class:`matplotlib.figure.Figure`; :mod:`zoo.outputs` saves them,
the docs gallery shows them. :mod:`matplotlib.pyplot` is imported when the first figure is
drawn, not with this module; ``from zoo.plots import plt`` gives it, as to the models' figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure


def __getattr__(name: str) -> Any:
    """``plt``: :mod:`matplotlib.pyplot`, imported on first use."""
    if name == "plt":
        import matplotlib.pyplot as plt

        return plt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _finite(series: pd.Series) -> bool:
    return bool(np.isfinite(series.to_numpy(dtype=float)).any())


def elbo_trace(history: pd.DataFrame, title: str, final_gap: float | None = None) -> Figure:
    """ELBO per recorded step, with the exact log evidence as a line where it is known.

    ``final_gap`` (the diagnostics' many-particle gap) goes in the title; without it, the
    last recorded (few-particle) gap does.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    ax.plot(history["step"], history["elbo"], label="ELBO", color="C0")
    if "log_evidence" in history and _finite(history["log_evidence"]):
        ax.plot(
            history["step"], history["log_evidence"], "--", color="k", label="exact log evidence"
        )
        if final_gap is None:
            final_gap = history["gap"].iloc[-1]
        ax.set_title(f"{title}\nfinal gap {final_gap:.4g} nats", fontsize="medium", wrap=True)
    else:
        ax.set_title(title, fontsize="medium", wrap=True)
    ax.ticklabel_format(axis="y", useOffset=False)
    _zoom_to_tail(ax, history)
    ax.set_xlabel("step")
    ax.set_ylabel("nats (total over the data)")
    ax.legend(loc="lower right")
    return fig


def _zoom_to_tail(ax, history: pd.DataFrame) -> None:
    """Keep the last 80% of the run readable: early ELBOs can be orders of magnitude lower."""
    tail = history.iloc[len(history) // 5 :]
    values = [tail["elbo"].to_numpy(dtype=float)]
    if "log_evidence" in tail:
        values.append(tail["log_evidence"].to_numpy(dtype=float))
    stacked = np.concatenate(values)
    stacked = stacked[np.isfinite(stacked)]
    if stacked.size:
        lo, hi = stacked.min(), stacked.max()
        pad = 0.1 * (hi - lo) + 1e-4 * max(1.0, abs(hi))
        ax.set_ylim(lo - pad, hi + pad)


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
