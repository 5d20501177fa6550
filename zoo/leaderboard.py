"""``python -m zoo.run all``: every model with each of its leaderboard configurations.

Each run is saved like a single run (``runs/<model>/<run-id>/``); the table of all of them,
one row per (model, guide, training), goes to ``runs/leaderboard.csv`` and to stdout.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from zoo.declarations import elbo_for
from zoo.errors import ZooError, first_line
from zoo.outputs import default_run_dir
from zoo.registry import get_model, model_names
from zoo.runner import fit

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

    from zoo.results import FitResult

COLUMNS = [
    "model",
    "guide",
    "training",
    "status",
    "n",
    "elbo",
    "elbo_se",
    "elbo_exact",
    "best_elbo",
    "bound",
    "log_evidence",
    "gap",
    "gap_se",
    "gap_per_point",
    "shortfall",
    "iwae",
    "iwae_se",
    "khat",
    "khat_unreliable",
    "seconds",
    "error",
]


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
    restricts the runs to those names (all registered models by default).
    """
    rows = []
    for name in model_names() if models is None else models:
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


def tightness_ladder(table: pd.DataFrame) -> Figure:
    """How tight each guide family's bound is, model by model: the gap log p(x) - ELBO per
    data point on a log axis, ±2 standard errors, the families of a model from the loosest to
    the tightest. Where the model's evidence is not known exactly the bar is IWAE - ELBO per
    point (hatched): a lower bound on the gap, which the IWAE's K particles tighten. Gaps
    below 1e-9 nats per point (an exact guide, up to rounding) are drawn at 1e-9; a run with
    neither figure says why instead of a bar."""
    import matplotlib.pyplot as plt

    floor = 1e-9
    rows = []
    for model, group in table.groupby("model", sort=False):
        entries = []
        for row in group.itertuples(index=False):
            gap, se, kind, why = math.nan, math.nan, "gap", ""
            if row.status != "ok":
                why = "run failed"
            elif not bool(row.bound):
                why = "not a bound (point mass)"
            elif pd.notna(row.gap):
                gap, se = row.gap / row.n, _or_zero(row.gap_se) / row.n
            elif pd.notna(row.iwae):
                gap = (row.iwae - row.elbo) / row.n
                se = math.hypot(_or_zero(row.elbo_se), _or_zero(row.iwae_se)) / row.n
                kind = "iwae"
            else:
                why = "no exact log p(x), no IWAE"
            entries.append((f"{model} / {row.guide} / {row.training}", gap, se, kind, why))
        entries.sort(key=lambda e: -e[1] if e[1] == e[1] else math.inf)
        rows.extend(entries)
    fig, ax = plt.subplots(figsize=(8.4, 0.42 * len(rows) + 1.4), constrained_layout=True)
    finite = [g for _, g, _, _, _ in rows if g == g]
    top = max(1.0, 3 * max(finite)) if finite else 1.0
    for i, (_, gap, se, kind, why) in enumerate(rows):
        if gap != gap:
            ax.text(floor, i, f"  {why}", va="center", fontsize=8, color="0.35")
            continue
        hatch = "//" if kind == "iwae" else None
        color = "C1" if kind == "iwae" else "C0"
        ax.barh(i, max(gap, floor), color=color, hatch=hatch, alpha=0.85)
        if se > 0:
            low = max(gap - 2 * se, floor)
            ax.plot([low, max(gap + 2 * se, floor)], [i, i], color="k", lw=1.0)
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, top)
    ax.invert_yaxis()
    ax.set_xlabel("nats per data point (log scale; ±2 SE)")
    ax.set_title("Tightness ladder: how far each bound is below log p(x)")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color="C0"),
        plt.Rectangle((0, 0), 1, 1, color="C1", hatch="//"),
    ]
    ax.legend(
        handles,
        ["gap to the exact log evidence", "IWAE − ELBO (below the gap)"],
        loc="lower right",
        fontsize=8,
    )
    return fig


def _or_zero(value: Any) -> float:
    return float(value) if pd.notna(value) else 0.0


def _failed_row(name: str, overrides: Mapping[str, Any], exc: Exception) -> dict[str, Any]:
    """The leaderboard row of a run that raised: its settings, status and the reason."""
    cls = get_model(name)
    guide = overrides.get("guide") or cls.default_guide
    method = overrides.get("method", "svi")
    training = method if method != "svi" else f"svi/{overrides.get('elbo') or elbo_for(cls, guide)}"
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
