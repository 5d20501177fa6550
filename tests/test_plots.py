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


def _row(model, guide, **kw):
    base = dict(
        model=model,
        guide=guide,
        training="svi/trace",
        status="ok",
        n=10,
        elbo=-100.0,
        elbo_se=0.05,
        elbo_exact=None,
        best_elbo=None,
        bound=True,
        log_evidence=None,
        gap=None,
        gap_se=None,
        gap_per_point=None,
        shortfall=None,
        iwae=None,
        iwae_se=None,
        khat=0.3,
        khat_unreliable=False,
        seconds=1.0,
        error=None,
    )
    return {**base, **kw}


def test_the_tightness_ladder_orders_each_models_guides_and_says_what_each_bar_is():
    from zoo.leaderboard import COLUMNS, tightness_ladder

    table = pd.DataFrame(
        [
            _row("a", "exact", log_evidence=-1.0, gap=1e-13, gap_se=0.0),
            _row("a", "mean-field", log_evidence=-1.0, gap=2.0, gap_se=0.1),
            _row("b", "mean-field", iwae=-99.0, iwae_se=0.05),
            _row("c", "point-mass", bound=False),
            _row("c", "gaussian", status="failed"),
        ],
        columns=COLUMNS,
    )
    ax = tightness_ladder(table).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:2] == ["a / mean-field / svi/trace", "a / exact / svi/trace"]
    bars = ax.patches
    widths = [b.get_width() for b in bars]
    assert widths[0] == pytest.approx(0.2) and widths[1] == pytest.approx(1e-9)
    assert widths[2] == pytest.approx(0.1) and bars[2].get_hatch() == "//"  # IWAE - ELBO
    whisker = ax.lines[0].get_xdata()
    assert whisker == pytest.approx([0.2 - 2 * 0.01, 0.2 + 2 * 0.01])
    notes = {t.get_text().strip() for t in ax.texts}
    assert notes == {"not a bound (point mass)", "run failed"}
