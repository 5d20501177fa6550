"""The shared figures say what their labels say: the ELBO trace carries the final IWAE and the
family's best ELBO where they exist, and a gap panel where the evidence is known."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from zoo import plots
from zoo.diagnostics import Diagnostics

matplotlib.use("Agg")


def _history(gaps, evidence=-100.0):
    steps = np.arange(len(gaps))
    elbo = evidence - np.asarray(gaps, dtype=float)
    return pd.DataFrame(
        {"step": steps, "elbo": elbo, "log_evidence": evidence, "gap": np.asarray(gaps)}
    )


def _diagnostics(**kw):
    base = dict(
        num_data=10,
        num_particles=100,
        elbo=-100.5,
        elbo_se=0.01,
        expected_log_likelihood=-90.0,
        expected_log_likelihood_se=0.01,
        kl=10.5,
        kl_method="analytic",
        kl_by_site={},
        iwae=-100.1,
        iwae_se=0.02,
        iwae_scope="joint",
        khat=0.3,
        khat_scope="joint",
        log_evidence=-100.0,
        best_elbo=-100.2,
    )
    return Diagnostics(**{**base, **kw})


def _labels(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_the_trace_shows_the_final_iwae_the_best_elbo_and_a_gap_panel():
    fig = plots.elbo_trace(_history([5.0, 1.0, 0.5, 0.52, 0.49]), "t", 0.5, _diagnostics())
    top, gap = fig.axes
    labels = _labels(top)
    assert "best ELBO of the family" in labels
    assert any(label.startswith("final IWAE (joint") for label in labels)
    assert gap.get_yscale() == "symlog"
    assert np.allclose(gap.lines[0].get_ydata(), [5.0, 1.0, 0.5, 0.52, 0.49])
    # the ELBO is drawn above the evidence line
    elbo_line = next(line for line in top.lines if line.get_label() == "ELBO")
    evidence = next(line for line in top.lines if line.get_label() == "exact log evidence")
    assert elbo_line.get_zorder() > evidence.get_zorder()


def test_without_evidence_there_is_no_gap_panel_and_no_missing_markers():
    history = _history([1.0, 0.5]).assign(log_evidence=math.nan, gap=math.nan)
    d = _diagnostics(log_evidence=None, best_elbo=None, iwae=math.nan, iwae_se=math.nan)
    fig = plots.elbo_trace(history, "t", None, d)
    assert len(fig.axes) == 1
    assert _labels(fig.axes[0]) == ["ELBO"]


def test_a_gap_that_is_rounding_is_drawn_as_zero():
    fig = plots.elbo_trace(_history([1e-13, -2e-13]), "t", 0.0, _diagnostics())
    gap = fig.axes[1]
    assert gap.get_yscale() == "linear" and gap.get_ylim() == pytest.approx((-1.0, 1.0))
    assert any("zero to rounding" in t.get_text() for t in gap.texts)
