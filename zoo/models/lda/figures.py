"""Figures of the LDA model, from arrays and plain values.

The true and fitted topics drawn as images of the bars corpus (Griffiths & Steyvers 2004,
PNAS 101, Fig. 1) or as a topic x word heat map, and the ELBO against the exact log evidence,
over the run and per document. :meth:`LatentDirichletAllocation.plots
<zoo.models.lda.model.LatentDirichletAllocation.plots>` gathers the arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from zoo.plots import zoom_y

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: the most words a heat map labels
MAX_LABELLED_WORDS = 40


def topics_figure(
    fitted: np.ndarray,
    true: np.ndarray | None = None,
    *,
    order: np.ndarray | None = None,
    grid: int | None = None,
    vocabulary: Sequence[str] = (),
    title: str = "",
) -> Figure:
    """The fitted topics (K x V), under the true ones where given.

    ``order[j]`` is the fitted topic paired with true topic j (fitted topics are drawn in that
    order, any left over after them); ``grid`` draws each topic as a grid x grid image (its
    words are the pixels, row by row), otherwise the topics are one heat map over the words.
    """
    import matplotlib.pyplot as plt

    k = len(fitted)
    if order is not None:
        rest = [i for i in range(k) if i not in set(order.tolist())]
        fitted = fitted[np.concatenate([order, np.array(rest, dtype=np.int64)])]
    rows = [("fitted", fitted)] if true is None else [("true", true), ("fitted", fitted)]
    vmax = max(float(r.max()) for _, r in rows)
    if grid is None:
        fig, axes = plt.subplots(
            len(rows), 1, figsize=(7.0, 1.2 + 0.35 * k * len(rows)), constrained_layout=True
        )
        axes = np.atleast_1d(axes)
        for ax, (label, topics) in zip(axes, rows, strict=True):
            image = ax.imshow(topics, aspect="auto", cmap="Greys", vmin=0, vmax=vmax)
            ax.set_ylabel(f"{label} topic")
            ax.set_yticks(range(len(topics)), [str(i + 1) for i in range(len(topics))])
            if 0 < len(vocabulary) <= MAX_LABELLED_WORDS:
                ax.set_xticks(range(len(vocabulary)), list(vocabulary), rotation=90)
            else:
                ax.set_xlabel("word")
        fig.colorbar(image, ax=list(axes), label="beta")
    else:
        cols = max(len(r) for _, r in rows)
        fig, axes = plt.subplots(
            len(rows),
            cols,
            figsize=(1.1 * cols + 0.6, 1.25 * len(rows) + 0.7),
            constrained_layout=True,
            squeeze=False,
        )
        for (label, topics), line in zip(rows, axes, strict=True):
            for i, ax in enumerate(line):
                ax.set_xticks([])
                ax.set_yticks([])
                if i >= len(topics):
                    ax.set_axis_off()
                    continue
                ax.imshow(topics[i].reshape(grid, grid), cmap="Greys", vmin=0, vmax=vmax)
                if i == 0:
                    ax.set_ylabel(label)
    fig.suptitle(title, fontsize="medium")
    return fig


def gaps_figure(
    steps: np.ndarray,
    elbo: np.ndarray,
    log_evidence: np.ndarray,
    document_log_evidence: np.ndarray,
    document_elbo: np.ndarray,
    lengths: np.ndarray,
    *,
    closed_form_elbo: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """Left: the ELBO and the exact log evidence log p(w | alpha, beta) at each recorded step
    (the closed-form ELBO where given, else the Monte Carlo one); right: each document's gap
    log p(w_d) - ELBO_d against its log evidence (coloured by its length where lengths
    differ)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0), constrained_layout=True)
    if closed_form_elbo is not None:
        left.plot(steps[1:], closed_form_elbo[1:], color="C0", label="ELBO (closed form)")
    else:
        left.plot(steps, elbo, color="C0", label="ELBO (Monte Carlo)")
    left.plot(steps, log_evidence, "--", color="k", label="exact log p(w | alpha, beta)")
    shown = closed_form_elbo if closed_form_elbo is not None else elbo
    zoom_y(
        left,
        np.asarray(log_evidence, dtype=float)[len(steps) // 5 :],
        np.asarray(shown, dtype=float)[max(1, len(steps) // 5) :],
    )
    left.set_xlabel("step")
    left.set_ylabel("nats (total over the documents)")
    left.legend(loc="best", fontsize=8)
    left.set_title("over the run", fontsize="medium")
    gaps = document_log_evidence - document_elbo
    if np.ptp(lengths) > 0:
        points = right.scatter(document_log_evidence, gaps, c=lengths, s=14, cmap="viridis")
        fig.colorbar(points, ax=right, label="tokens")
    else:
        right.scatter(document_log_evidence, gaps, s=14, color="C0")
    right.axhline(0.0, color="0.6", lw=0.8)
    right.set_xlabel("log p(w_d | alpha, beta)")
    right.set_ylabel("gap log p(w_d) - ELBO_d (nats)")
    right.set_title(
        f"per document: mean gap {gaps.mean():.3g}, max {gaps.max():.3g} nats", fontsize="medium"
    )
    fig.suptitle(title, fontsize="medium")
    return fig
