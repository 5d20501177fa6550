"""Writing a run to disk: ``runs/<model>/<run-id>/``.

``history.csv`` (step, ELBO, its two halves, exact log evidence, gap, seconds), the PNG figures,
ArviZ posterior draws where the latent is a parameter vector (``posterior.nc``), and last of all
``report.json``. The report is written atomically after everything else, so a directory
without one is an unfinished (or resumable) run, never a valid-looking partial result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np

from zoo.diagnostics import finite_or_none

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.results import FitResult

REPORT = "report.json"


def default_run_dir(model: str, seed: int, root: str | Path = "runs") -> Path:
    """``runs/<model>/<timestamp>-seed<seed>``, made unique if that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / model / f"{stamp}-seed{seed}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def to_inference_data(draws: dict[str, torch.Tensor | np.ndarray]) -> Any:
    """Posterior draws (one chain) as ArviZ data, on ArviZ 0.x and 1.x alike."""
    import arviz as az

    posterior = {name: np.asarray(value)[None] for name, value in draws.items()}
    try:  # ArviZ 0.x: groups as keyword arguments, returns InferenceData
        return az.from_dict(posterior=posterior)
    except TypeError:  # ArviZ 1.x: one mapping of groups, returns a DataTree
        return az.from_dict({"posterior": posterior})


def save_run(result: FitResult, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / REPORT).unlink(missing_ok=True)
    result.history.to_csv(run_dir / "history.csv", index=False)
    files = []
    for stem, fig in result.figures().items():
        path = run_dir / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    for stem, table in result.model.tables(result).items():
        path = run_dir / f"{stem}.csv"
        table.to_csv(path, index=False)
        files.append(path)
    if result.posterior_draws:
        draws = {k: v.numpy() for k, v in result.posterior_draws.items()}
        path = run_dir / "posterior.nc"
        to_inference_data(draws).to_netcdf(str(path))
        files.append(path)
    report = result.report()
    report["files"] = sorted(str(Path(f).relative_to(run_dir)) for f in files)
    tmp = run_dir / (REPORT + ".tmp")
    text = json.dumps(finite_or_none(report), indent=2, default=_json_default, allow_nan=False)
    tmp.write_text(text + "\n")
    tmp.replace(run_dir / REPORT)
    return run_dir


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
