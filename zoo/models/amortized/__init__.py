"""The scaffolding the amortized models (``vae``, ``linear-vae``, ``scvi``) share.

:mod:`~zoo.models.amortized.model` holds :class:`AmortizedModel` (the data plate, the data as a
value and :meth:`~AmortizedModel.with_data`, the held-out evaluation) and the seeded
train/test split, :mod:`~zoo.models.amortized.collapse` the posterior-collapse diagnostics and
:mod:`~zoo.models.amortized.figures` the figures they all draw. No model is registered here.
"""

from zoo.models.amortized.collapse import (
    ACTIVITY_THRESHOLD,
    CollapseReport,
    active_units,
    activity,
    collapse_report,
    format_collapse,
    report_from_moments,
)
from zoo.models.amortized.figures import plot_kl_per_dim, plot_training
from zoo.models.amortized.model import AmortizedModel, split_indices

__all__ = [
    "ACTIVITY_THRESHOLD",
    "AmortizedModel",
    "CollapseReport",
    "active_units",
    "activity",
    "collapse_report",
    "format_collapse",
    "plot_kl_per_dim",
    "plot_training",
    "report_from_moments",
    "split_indices",
]
