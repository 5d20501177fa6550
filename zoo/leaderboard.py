"""``python -m zoo.run all``: every model with each of its leaderboard configurations.

Each run is saved like a single run (``runs/<model>/<run-id>/``, with its own model's
tightness ladder: :mod:`zoo.ladder`); the table of all of them, one row per (model, guide,
training), goes to ``runs/leaderboard.csv`` and to stdout, and the zoo's tightness ladder
(:func:`tightness_ladder`, from :mod:`zoo.ladder`) to ``runs/tightness_ladder.png``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from zoo.declarations import default_method, elbo_for, local_step_for
from zoo.errors import ZooError, first_line
from zoo.ladder import COLUMNS, tightness_ladder, training_label
from zoo.outputs import default_run_dir
from zoo.registry import get_model, model_names
from zoo.runner import fit

if TYPE_CHECKING:  # pragma: no cover
    from pandas.io.formats.style import Styler

    from zoo.results import FitResult


def run_all(
    *,
    quick: bool = False,
    seed: int = 0,
    root: str | Path = "runs",
    device: str = "cpu",
    progress: bool | None = False,
    echo: bool = True,
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Run every registered model's leaderboard configurations; save and return the table.

    One failing run never stops the others: it gets a row with ``status`` "failed" and the
    one-line reason in ``error`` (its unfinished run directory is removed), and the rest go
    on. ``progress=None`` shows progress bars only when stderr is a terminal. ``models``
    restricts the runs to those names (all registered models by default); an unknown name is
    a :class:`ZooError` before any run.
    """
    names = model_names() if models is None else _known(models)
    rows = []
    for name in names:
        cls = get_model(name)
        for overrides in cls.leaderboard:
            overrides = dict(overrides)
            options = overrides.pop("options", {})
            run_dir = default_run_dir(name, seed, root)
            try:
                result = fit(
                    name,
                    quick=quick,
                    seed=seed,
                    device=device,
                    run_dir=run_dir,
                    progress=progress,
                    **overrides,
                    **options,
                )
                result.save(run_dir)
            except Exception as exc:  # one model's failure is that model's row, not the job's
                shutil.rmtree(run_dir, ignore_errors=True)
                rows.append(_failed_row(name, overrides, exc))
                if echo:
                    print(
                        f"FAILED {name} / {overrides.get('guide', cls.default_guide)}: "
                        f"{rows[-1]['error']}"
                    )
                continue
            rows.append({**result.leaderboard_row(), "status": "ok", "error": None})
            if echo:
                print(f"done {name} / {result.config.guide} / {result.config.training_label}")
    table = pd.DataFrame(rows, columns=COLUMNS)
    Path(root).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(root) / "leaderboard.csv", index=False)
    if (table["status"] == "ok").any():
        import matplotlib.pyplot as plt

        figure = tightness_ladder(table)
        figure.savefig(Path(root) / "tightness_ladder.png", dpi=110)
        plt.close(figure)
    if echo:
        print(format_table(table.drop(columns="error")))
        for row in table[table["status"] != "ok"].itertuples():
            print(f"failed: {row.model} / {row.guide}: {row.error}")
        print(f"leaderboard written to {Path(root) / 'leaderboard.csv'}")
    return table


def _known(models: Sequence[str]) -> list[str]:
    """``models`` without repeats, each a registered model; else a one-line ZooError."""
    known = model_names()
    unknown = [name for name in models if name not in known]
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise ZooError(f"unknown model {names}; choose from {', '.join(known)}")
    return list(dict.fromkeys(models))


def _failed_row(name: str, overrides: Mapping[str, Any], exc: Exception) -> dict[str, Any]:
    """The leaderboard row of a run that raised: its settings, status and the reason."""
    cls = get_model(name)
    guide = overrides.get("guide") or cls.default_guide
    method = overrides.get("method") or default_method(cls)
    local = overrides.get("local_steps")
    if local is None:  # the setting's default: on where the guide has a closed-form local step
        local = local_step_for(cls, guide) is not None
    training = training_label(method, overrides.get("elbo") or elbo_for(cls, guide), local)
    return {
        "model": name,
        "guide": guide,
        "training": training,
        "status": "failed",
        "error": one_line(exc),
    }


def one_line(exc: BaseException) -> str:
    """An exception as one line: a ZooError's message, else its type and first line."""
    line = first_line(exc)
    if isinstance(exc, ZooError) or line == type(exc).__name__:
        return line
    return f"{type(exc).__name__}: {line}"


def format_table(table: pd.DataFrame) -> str:
    def fmt(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}"
        return str(value)

    return table.to_string(index=False, formatters={c: fmt for c in table.columns})


#: the diagnostics every comparison shows, and how they are formatted
_COMPARE_COLUMNS = {
    "ELBO": ("elbo", "{:.4f}"),
    "± (MC)": ("elbo_se", "{:.1g}"),
    "log p(x)": ("log_evidence", "{:.4f}"),
    "gap (nats)": ("gap", "{:.4f}"),
    "best ELBO of the family": ("best_elbo", "{:.4f}"),
    "shortfall from the maximum": ("shortfall", "{:.4f}"),
    "k-hat": ("khat", "{:.2f}"),
}


def compare(
    results: Mapping[str, FitResult],
    extra: Mapping[str, tuple[Callable[[FitResult], float], str]] | None = None,
) -> Styler:
    """Runs side by side (guides, training methods): ELBO, exact log evidence, gap, best ELBO
    of the family and k-hat, plus ``extra`` columns ``{name: (value_of_result, format)}``
    placed first. Returns a formatted table (the docs gallery renders it as HTML)."""
    extra = dict(extra or {})
    rows = []
    for label, result in results.items():
        d = result.diagnostics
        row: dict[str, Any] = {"run": label}
        row.update({name: get(result) for name, (get, _) in extra.items()})
        row.update({name: getattr(d, attr) for name, (attr, _) in _COMPARE_COLUMNS.items()})
        rows.append(row)
    table = pd.DataFrame(rows).astype({name: float for name in _COMPARE_COLUMNS})
    formats = {name: fmt for name, (_, fmt) in {**extra, **_COMPARE_COLUMNS}.items()}
    return table.style.hide(axis="index").format(formats, na_rep="–")
