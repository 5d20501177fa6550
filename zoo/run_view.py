"""What a model's figures and tables see of a finished run.

A model draws its figures from a :class:`RunView`, a small value holding the fitted guide, its
name, the training history and the diagnostics, rather than from the whole
:class:`~zoo.results.FitResult`; so model code never imports the results layer, and drawing a
figure leaves Pyro's global param store as it found it (:meth:`RunView.active`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyro

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from zoo.diagnostics import Diagnostics


@dataclass(frozen=True)
class RunView:
    """A finished run as a model's :meth:`~zoo.model.ZooModel.plots` and
    :meth:`~zoo.model.ZooModel.tables` see it."""

    guide: Callable[..., Any]
    #: the guide's name, as the run chose it (``"mean-field"``, ``"exact"``)
    guide_name: str
    #: how it was trained, as reports say it: ``"SVI (trace)"``, ``"EM"``
    method: str
    #: the ELBO estimator of an SVI run (``"trace"``), or the closed-form step's name
    elbo_estimator: str
    history: pd.DataFrame
    diagnostics: Diagnostics
    summary: dict[str, Any] = field(default_factory=dict)
    #: the fitted param store (``{"params": ..., "constraints": ...}``)
    param_state: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the particles each history row's ELBO and IWAE came from (``trace_particles``)
    record_particles: int = 16

    @contextmanager
    def active(self) -> Iterator[RunView]:
        """Install this run's fitted parameters in Pyro's param store for the duration of the
        block, and put back what was there before."""
        store = pyro.get_param_store()
        saved = store.get_state()
        saved = {"params": dict(saved["params"]), "constraints": dict(saved["constraints"])}
        params = {k: v.clone().requires_grad_(True) for k, v in self.param_state["params"].items()}
        store.set_state({**self.param_state, "params": params})
        try:
            yield self
        finally:
            store.set_state(saved)
