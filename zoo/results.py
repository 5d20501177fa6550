"""What a run returns: its configuration, history, diagnostics and fitted parameters.

A :class:`FitResult` carries everything a report needs; printing, saving and plotting read from
it and never re-run anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import torch

from zoo.diagnostics import Diagnostics
from zoo.model import ZooModel


@dataclass
class RunConfig:
    """Everything needed to reproduce (or resume) a run. JSON-serialisable."""

    model: str
    options: dict[str, Any]
    guide: str
    elbo: str
    method: str
    steps: int
    lr: float
    lr_final_factor: float
    particles: int
    batch_size: int | None
    seed: int
    device: str
    eval_particles: int
    trace_particles: int
    record_every: int
    checkpoint_every: int
    quick: bool = False
    kl_warmup: int = 0
    #: the model's closed-form local step ran around every SVI step
    local_steps: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls(**json.loads(text))

    @property
    def training_label(self) -> str:
        """How the run was trained, for tables: ``svi/trace`` or ``closed-form``."""
        if self.method != "svi":
            return self.method
        return f"svi/{self.elbo}" + ("+local" if self.local_steps else "")


@dataclass
class FitResult:
    """The outcome of :func:`zoo.fit`."""

    config: RunConfig
    model: ZooModel
    guide: Callable[..., Any]
    history: pd.DataFrame
    diagnostics: Diagnostics
    seconds: float
    param_state: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    posterior_draws: dict[str, torch.Tensor] | None = None

    def activate(self) -> None:
        """Load this run's fitted parameters into Pyro's (global) param store."""
        params = {k: v.clone().requires_grad_(True) for k, v in self.param_state["params"].items()}
        pyro.get_param_store().set_state({**self.param_state, "params": params})

    @property
    def method_label(self) -> str:
        if self.config.method == "closed-form":
            return self.model.closed_form_name or "closed-form"
        local = ", closed-form local steps" if self.config.local_steps else ""
        return f"SVI ({self.config.elbo}{local})"

    def report(self) -> dict[str, Any]:
        """The run's report, as written to ``report.json``."""
        return {
            "model": self.model.describe(),
            "config": asdict(self.config),
            "training": self.method_label,
            "seconds": self.seconds,
            "diagnostics": self.diagnostics.as_dict(),
            "summary": self.summary,
        }

    def leaderboard_row(self) -> dict[str, Any]:
        d = self.diagnostics
        return {
            "model": self.model.name,
            "guide": self.config.guide,
            "training": self.config.training_label,
            "n": d.num_data,
            "elbo": d.elbo,
            "elbo_se": d.elbo_se,
            "log_evidence": d.log_evidence,
            "bound": d.elbo_is_bound,
            "gap": d.gap,
            "gap_per_point": None if d.gap is None else d.gap / d.num_data,
            "iwae": d.iwae,
            "khat": d.khat,
            "seconds": self.seconds,
        }

    def figures(self) -> dict[str, Any]:
        """Every figure of this run by file stem: the ELBO trace, its terms, the model's own."""
        from zoo import plots

        title = f"{self.model.title} - {self.config.guide} guide, {self.method_label}"
        figures = {
            "elbo_trace": plots.elbo_trace(self.history, title, self.diagnostics.gap),
            "elbo_terms": plots.elbo_terms(self.history, title),
        }
        self.activate()
        figures.update(self.model.plots(self))
        return figures

    def save(self, run_dir: str | Path) -> Path:
        """Write history, report, figures and (where it applies) ArviZ data into ``run_dir``."""
        from zoo.outputs import save_run

        return save_run(self, Path(run_dir))
