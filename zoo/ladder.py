"""The tightness ladder: how far each guide family's bound is below log p(x), per data point.

The gap log p(x) - ELBO is KL(q || p(z | x)) >= 0 (Blei, Kucukelbir & McAuliffe 2017,
"Variational inference: a review for statisticians", JASA 112, §2.2). Where log p(x) is not
known exactly, the importance-weighted bound of K particles lies between the ELBO and log p(x)
(Burda, Grosse & Salakhutdinov 2016, Theorem 1), so IWAE - ELBO is a lower bound on the gap.
The ladder draws either, per data point, on a log axis with ±2 standard errors, each model's
guide families from the loosest bound to the tightest.

- :func:`tightness_ladder`: the zoo's ladder, from the leaderboard's table
  (``python -m zoo.run all`` writes it as ``runs/tightness_ladder.png``);
- :func:`model_table`: the same table for one model, read from the runs already made under a
  runs root (``runs/<model>/<run-id>/``), with no training; :func:`model_ladder` draws it;
- :func:`write_run_ladder`: every finished run's own ``tightness_ladder.png``, the run and its
  comparable siblings, the run highlighted (called by :func:`zoo.outputs.save_run`);
- :func:`ladder_panels`: one panel per model (small multiples), for the leaderboard page.

Which runs are compared
-----------------------
A run is finished when its directory holds ``report.json`` (written last and atomically by
:func:`zoo.outputs.save_run`). Every other directory is skipped: an unfinished or failed run, a
run written beside the one it replaces (``<dir>.tmp-<pid>``, ``<dir>.old-<pid>``) and a report
that does not read back. Runs are compared only where they agree on everything that decides
what is measured: the model's options, the data (its provenance: the model's own data, or a
file's or an in-memory array's sha256, not the file's path), the seed, ``quick`` and the
evaluation (``eval_particles``, ``eval_subsample``). The training may differ (the guide, the
estimator, the steps and learning rate). The reference is the newest run (the one whose report
was written last, or the run being written); of the runs that agree with it, the latest of each
(guide, training) is kept. Data that cannot be hashed (a model object built in Python) compares
with no other run.
"""

from __future__ import annotations

import io
import json
import math
import re
import textwrap
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from zoo.diagnostics import Diagnostics
from zoo.errors import first_line
from zoo.run_files import REPORT

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from zoo.results import FitResult

#: the leaderboard's columns: one row per (model, guide, training)
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
#: the figure every finished run writes into its directory
LADDER_FILE = "tightness_ladder.png"
#: gaps below this many nats per point (an exact guide, up to rounding) are drawn at it
FLOOR = 1e-9
#: the run settings that decide what a run measures, besides the model's options and data
COMPARED_SETTINGS = ("seed", "quick", "eval_particles", "eval_subsample")
#: a directory written beside a run it replaces (:class:`zoo.outputs.RunDirectory`)
_STAGED = re.compile(r"\.(tmp|old)-\d+(-\d+)?$")


# -- a run's row ---------------------------------------------------------------------------------
def training_label(method: str, elbo: str, local_steps: bool | None) -> str:
    """How a run was trained, for tables: ``svi/<estimator>`` (``+local`` with closed-form
    local steps) or the closed-form method."""
    if method != "svi":
        return method
    return f"svi/{elbo}" + ("+local" if local_steps else "")


def leaderboard_row(
    model: str, guide: str, training: str, diagnostics: Diagnostics, seconds: float
) -> dict[str, Any]:
    """A finished run's row of the leaderboard (every column but ``status`` and ``error``)."""
    d = diagnostics
    return {
        "model": model,
        "guide": guide,
        "training": training,
        "n": d.num_data,
        "elbo": d.elbo,
        "elbo_se": d.elbo_se,
        "elbo_exact": d.exact_elbo,
        "best_elbo": d.best_elbo,
        "log_evidence": d.log_evidence,
        "bound": d.elbo_is_bound,
        "gap": d.gap,
        "gap_se": d.gap_se,
        "gap_per_point": None if d.gap is None else d.gap / d.num_data,
        "shortfall": d.shortfall,
        "iwae": d.iwae,
        "iwae_se": d.iwae_se,
        "khat": d.khat,
        "khat_unreliable": d.khat_unreliable,
        "seconds": seconds,
    }


def stored_diagnostics(stored: Mapping[str, Any]) -> Diagnostics:
    """The ``diagnostics`` of a ``report.json`` as :class:`~zoo.diagnostics.Diagnostics` again.

    JSON has no NaN or infinity: the report writes None for NaN (and for any other non-finite
    value of an optional figure) and ``"-inf"`` for minus infinity; they read back as such.
    A field missing or of the wrong type raises (TypeError, ValueError)."""
    values: dict[str, Any] = {}
    for f in fields(Diagnostics):
        if f.name not in stored:
            continue  # a field added after the report was written: its default
        value = stored[f.name]
        if f.type in ("float", "float | None"):
            value = _stored_float(value, optional=f.type != "float")
        values[f.name] = value
    return Diagnostics(**values)


def _stored_float(value: Any, *, optional: bool) -> float | None:
    if value is None:
        return None if optional else math.nan
    if value == "-inf":
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


# -- runs read back ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredRun:
    """A finished run read back from its directory: its settings and its leaderboard row."""

    path: Path
    #: the run's settings, as ``report.json`` holds them (:class:`~zoo.results.RunConfig`)
    config: dict[str, Any]
    row: dict[str, Any]
    #: when its report was written (the file's modification time, in nanoseconds)
    written: int
    #: what it is compared by (:func:`comparison_key`)
    key: str | None

    @property
    def family(self) -> tuple[str, str]:
        """(guide, training): the ladder has one bar for each."""
        return self.row["guide"], self.row["training"]


def read_run(run_dir: str | Path) -> StoredRun | None:
    """The finished run in ``run_dir``; None where there is none (no ``report.json``: an
    unfinished or failed run) or its report does not read back."""
    path = Path(run_dir)
    try:
        written = (path / REPORT).stat().st_mtime_ns
        report = json.loads((path / REPORT).read_bytes())
        config = report["config"]
        names = [config[k] for k in ("model", "guide", "method", "elbo")]
        if not all(isinstance(name, str) for name in names):
            return None
        label = training_label(config["method"], config["elbo"], config.get("local_steps"))
        diagnostics = stored_diagnostics(report["diagnostics"])
        seconds = _stored_float(report["seconds"], optional=False)
        row = leaderboard_row(config["model"], config["guide"], label, diagnostics, seconds)
        key = comparison_key(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    return StoredRun(path, config, row, written, key)


def stored_runs(
    directory: str | Path, model: str | None = None, *, skip: Iterable[str] = ()
) -> list[StoredRun]:
    """The finished runs directly under ``directory`` (of ``model`` where given), oldest report
    first; directories named in ``skip``, staged ones and those without a readable report are
    left out."""
    skipped = set(skip)
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError:
        return []
    runs = []
    for entry in entries:
        if entry.name in skipped or _STAGED.search(entry.name) or not entry.is_dir():
            continue
        run = read_run(entry)
        if run is not None and (model is None or run.config["model"] == model):
            runs.append(run)
    runs.sort(key=lambda run: (run.written, run.path.name))
    return runs


def comparison_key(config: Mapping[str, Any]) -> str | None:
    """What decides what a run measures, as text: two runs are compared where their keys are
    equal. The model's options (a data file's path aside), the data's provenance (its sha256,
    not its path) and :data:`COMPARED_SETTINGS`; None for data that cannot be hashed.
    Raises (TypeError, KeyError...) on settings that are not a run's."""
    data = dict(config.get("data") or {})
    if data.get("source") in (None, "object"):
        return None
    data.pop("path", None)
    options = {k: v for k, v in dict(config["options"]).items() if k != "data"}
    settings = {name: config.get(name) for name in COMPARED_SETTINGS}
    key = {"model": config.get("model"), "options": options, "data": data, **settings}
    return json.dumps(key, sort_keys=True, default=str)


def _comparable(
    reference: Mapping[str, Any], runs: Sequence[StoredRun], taken: Iterable[tuple[str, str]] = ()
) -> tuple[list[StoredRun], int]:
    """Of ``runs`` (oldest first), the latest of each (guide, training) not ``taken`` among those
    comparable with the settings ``reference``; and how many runs were left out as not
    comparable."""
    key = comparison_key(reference)
    latest: dict[tuple[str, str], StoredRun] = {}
    left_out = 0
    for run in runs:
        if key is None or run.key != key:
            left_out += 1
        elif run.family not in taken:
            latest[run.family] = run
    return sorted(latest.values(), key=lambda run: (run.written, run.path.name)), left_out


def _table(rows: Sequence[Mapping[str, Any]], **attrs: Any) -> pd.DataFrame:
    table = pd.DataFrame([{**row, "status": "ok", "error": None} for row in rows], columns=COLUMNS)
    table.attrs.update(attrs)
    return table


def model_table(root: str | Path, model: str) -> pd.DataFrame:
    """``model``'s ladder table, read from the runs already made under ``root``
    (``root/<model>/<run-id>/``): the leaderboard's columns, one row for the latest run of
    each (guide, training) among the finished runs comparable with the newest (see the
    module's notes). No training.

    ``table.attrs`` says what was compared: ``compared`` (a sentence), ``short`` (a few
    words), ``runs`` (the run directories of the rows) and ``left_out`` (the finished runs
    with other settings). A model with no finished run gives an empty table."""
    runs = stored_runs(Path(root) / model, model)
    if not runs:
        return _table([], model=model, compared="no finished run", short="", runs=[], left_out=0)
    newest = runs[-1]
    kept, left_out = _comparable(newest.config, runs[:-1], taken={newest.family})
    kept.append(newest)
    short, compared = describe_comparison(newest.config, newest.path.name, len(kept), left_out)
    return _table(
        [run.row for run in kept],
        model=model,
        compared=compared,
        short=short,
        runs=[str(run.path) for run in kept],
        left_out=left_out,
    )


def model_tables(root: str | Path, models: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
    """:func:`model_table` of each model (every directory under ``root`` by default) that has a
    finished run, by model name."""
    if models is None:
        try:
            models = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        except OSError:
            models = []
    tables = {name: model_table(root, name) for name in models}
    return {name: table for name, table in tables.items() if len(table)}


def run_table(result: FitResult, run_dir: str | Path) -> pd.DataFrame:
    """The ladder table of the run ``result`` being written into ``run_dir``: its own row
    first, then the latest comparable finished run of each other (guide, training) beside it
    (in ``run_dir``'s parent). A run written beside the run it replaces
    (``<dir>.tmp-<pid>``) does not count the run it replaces. ``attrs["highlight"]`` is the
    run's (guide, training)."""
    run_dir = Path(run_dir)
    own = result.leaderboard_row()
    config = asdict(result.config)
    name = _STAGED.sub("", run_dir.name)  # the directory the run will have
    siblings = stored_runs(run_dir.parent, config["model"], skip={run_dir.name, name})
    family = (own["guide"], own["training"])
    kept, left_out = _comparable(config, siblings, taken={family})
    short, compared = describe_comparison(config, name, 1 + len(kept), left_out)
    return _table(
        [own, *(run.row for run in kept)],
        model=config["model"],
        compared=compared,
        short=short,
        runs=[str(run_dir.with_name(name)), *(str(run.path) for run in kept)],
        left_out=left_out,
        highlight=family,
    )


def describe_comparison(
    config: Mapping[str, Any], reference: str, runs: int, left_out: int
) -> tuple[str, str]:
    """What a ladder compares, from its reference run's settings: a few words for a panel, and
    a sentence for a model's figure."""
    data = config.get("data") or {}
    source = data.get("source")
    if source == "path":
        what = f"data {Path(str(data.get('path'))).name} (sha256 {str(data.get('sha256'))[:10]})"
    elif source == "array":
        shape = "x".join(map(str, data.get("shape") or [])) or "scalar"
        what = f"a {shape} array (sha256 {str(data.get('sha256'))[:10]})"
    elif source == "object":
        what = f"a {data.get('type', 'Python object')} (compared with no other run)"
    else:
        what = "the model's own data"
    length = "--quick" if config.get("quick") else "full length"
    evaluation = f"{config.get('eval_particles')} evaluation particles"
    if config.get("eval_subsample") is not None:
        evaluation += f" on {config['eval_subsample']} points"
    counted = f"{runs} run{'' if runs == 1 else 's'}"
    short = f"{counted}, seed {config.get('seed')}, {length}"
    sentence = (
        f"{counted} with the options, data and settings of {reference}: seed "
        f"{config.get('seed')}, {length}, {what}, {evaluation}"
    )
    if left_out:
        sentence += f"; {left_out} run{'' if left_out == 1 else 's'} with other settings left out"
    return short, sentence


def write_run_ladder(
    result: FitResult, run_dir: str | Path, write: Callable[[Path, bytes], None]
) -> list[Path]:
    """Draw the ladder of the run ``result`` (:func:`run_table`) into
    ``run_dir/tightness_ladder.png`` with ``write`` (:func:`zoo.outputs.write_atomic`).

    Returns the path written, or nothing where the figure could not be drawn or written: that
    is a one-line warning, never the run's failure."""
    path = Path(run_dir) / LADDER_FILE
    try:
        import matplotlib.pyplot as plt

        figure = model_ladder(run_table(result, run_dir))
        try:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110)
        finally:
            plt.close(figure)
        write(path, buffer.getvalue())
    except Exception as exc:  # the run's outputs stand without it
        reason = first_line(exc, 160)
        if reason != type(exc).__name__:
            reason = f"{type(exc).__name__}: {reason}"
        warnings.warn(f"no {LADDER_FILE} in {run_dir}: {reason}", RuntimeWarning, stacklevel=2)
        return []
    return [path]


# -- drawing -------------------------------------------------------------------------------------
#: one bar of a ladder: label, gap per point, its standard error, "gap" or "iwae", why there is
#: no bar (else ""), and the row's (guide, training)
_Entry = tuple[str, float, float, str, str, tuple[str, str]]


def _entries(table: pd.DataFrame, label: Callable[[Any], str]) -> list[_Entry]:
    """The bars of one model's rows, from the loosest bound to the tightest."""
    entries = []
    for row in table.itertuples(index=False):
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
        entries.append((label(row), gap, se, kind, why, (row.guide, row.training)))
    entries.sort(key=lambda e: -e[1] if e[1] == e[1] else math.inf)
    return entries


def _or_zero(value: Any) -> float:
    return float(value) if pd.notna(value) else 0.0


def _top(entries: Iterable[_Entry]) -> float:
    finite = [gap for _, gap, *_ in entries if gap == gap]
    return max(1.0, 3 * max(finite)) if finite else 1.0


def _draw(
    ax: Axes,
    entries: Sequence[_Entry],
    top: float,
    *,
    highlight: tuple[str, str] | None = None,
    fontsize: float = 8,
) -> None:
    """One ladder on ``ax``: a bar per entry on a log axis from :data:`FLOOR`, ±2 SE; the
    entry of ``highlight`` outlined and its label in bold."""
    for i, (_, gap, se, kind, why, family) in enumerate(entries):
        mine = highlight is not None and family == highlight
        if gap != gap:
            weight = "bold" if mine else "normal"
            text = f"  {why}"
            ax.text(FLOOR, i, text, va="center", fontsize=fontsize, color="0.35", weight=weight)
            continue
        hatch = "//" if kind == "iwae" else None
        color = "C1" if kind == "iwae" else "C0"
        outline = {"edgecolor": "k", "linewidth": 1.8} if mine else {}
        ax.barh(i, max(gap, FLOOR), color=color, hatch=hatch, alpha=0.85, **outline)
        if se > 0:
            low = max(gap - 2 * se, FLOOR)
            ax.plot([low, max(gap + 2 * se, FLOOR)], [i, i], color="k", lw=1.0)
    labels = [label for label, *_ in entries]
    ax.set_yticks(range(len(entries)), labels, fontsize=fontsize)
    if highlight is not None:
        for tick, entry in zip(ax.get_yticklabels(), entries, strict=True):
            if entry[5] == highlight:
                tick.set_fontweight("bold")
    ax.set_xscale("log")
    ax.set_xlim(FLOOR / 2, top)
    ax.invert_yaxis()
    low, high = ax.get_ylim()  # rows of text only (no bar) at an end stay inside the axes
    if entries and (low < len(entries) - 0.5 or high > -0.5):
        ax.set_ylim(max(low, len(entries) - 0.5), min(high, -0.5))


def _legend_handles() -> tuple[list[Any], list[str]]:
    import matplotlib.pyplot as plt

    handles = [
        plt.Rectangle((0, 0), 1, 1, color="C0"),
        plt.Rectangle((0, 0), 1, 1, color="C1", hatch="//"),
    ]
    return handles, ["gap to the exact log evidence", "IWAE − ELBO (below the gap)"]


def tightness_ladder(table: pd.DataFrame) -> Figure:
    """How tight each guide family's bound is, model by model: the gap log p(x) - ELBO per
    data point on a log axis, ±2 standard errors, the families of a model from the loosest to
    the tightest. Where the model's evidence is not known exactly the bar is IWAE - ELBO per
    point (hatched): a lower bound on the gap, which the IWAE's K particles tighten. Gaps
    below 1e-9 nats per point (an exact guide, up to rounding) are drawn at 1e-9; a run with
    neither figure says why instead of a bar."""
    import matplotlib.pyplot as plt

    rows: list[_Entry] = []
    for model, group in table.groupby("model", sort=False):
        rows.extend(_entries(group, lambda row, m=model: f"{m} / {row.guide} / {row.training}"))
    fig, ax = plt.subplots(figsize=(8.4, 0.42 * len(rows) + 1.4), constrained_layout=True)
    _draw(ax, rows, _top(rows))
    ax.set_xlabel("nats per data point (log scale; ±2 SE)")
    ax.set_title("Tightness ladder: how far each bound is below log p(x)")
    ax.legend(*_legend_handles(), loc="lower right", fontsize=8)
    return fig


def _family_label(row: Any) -> str:
    return f"{row.guide} / {row.training}"


def model_ladder(table: pd.DataFrame) -> Figure:
    """One model's ladder (a :func:`model_table` or :func:`run_table`): its guide families
    from the loosest bound to the tightest, as :func:`tightness_ladder` draws them, titled
    with what was compared; the run of ``table.attrs["highlight"]`` (guide, training), where
    set, outlined and labelled "this run"."""
    import matplotlib.pyplot as plt

    highlight = table.attrs.get("highlight")
    model = table.attrs.get("model") or (table["model"].iloc[0] if len(table) else "")

    def label(row: Any) -> str:
        mine = highlight is not None and (row.guide, row.training) == tuple(highlight)
        return _family_label(row) + (" (this run)" if mine else "")

    entries = _entries(table, label)
    fig, ax = plt.subplots(figsize=(7.6, 0.42 * max(len(entries), 1) + 1.9), layout="constrained")
    if entries:
        _draw(ax, entries, _top(entries), highlight=None if highlight is None else tuple(highlight))
        fig.legend(*_legend_handles(), loc="outside lower center", ncols=2, fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("nats per data point (log scale; ±2 SE)")
    fig.suptitle(f"Tightness ladder of {model}: how far each bound is below log p(x)", size=10)
    compared = table.attrs.get("compared", "")
    ax.set_title(textwrap.fill(compared, 100), fontsize=7, color="0.3", loc="left")
    return fig


def ladder_panels(tables: Mapping[str, pd.DataFrame], columns: int = 3) -> Figure:
    """Small multiples: one ladder panel per model (:func:`model_tables`), on one shared log
    axis so that the panels compare, each titled with its model and what it compares."""
    import matplotlib.pyplot as plt

    items = [(name, _entries(table, _family_label)) for name, table in tables.items()]
    columns = max(1, min(columns, len(items)))
    rows = max(1, math.ceil(len(items) / columns))
    sizes = [
        max([len(entries) for _, entries in items[r * columns : (r + 1) * columns]] or [1])
        for r in range(rows)
    ]
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(max(4.2 * columns, 7.0), sum(0.3 * n + 1.1 for n in sizes) + 0.6),
        gridspec_kw={"height_ratios": [0.3 * n + 1.1 for n in sizes]},
        layout="constrained",
        squeeze=False,
    )
    top = _top(entry for _, entries in items for entry in entries)
    for i, (name, entries) in enumerate(items):
        ax = axes.flat[i]
        _draw(ax, entries, top, fontsize=7)
        ax.set_ylim(sizes[i // columns] - 0.5, -0.5)  # one bar height across a row of panels
        short = tables[name].attrs.get("short", "")
        ax.set_title(f"{name}\n{short}" if short else name, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if i + columns >= len(items):  # the lowest panel of its column
            ax.set_xlabel("nats per data point (log scale; ±2 SE)", fontsize=8)
    for ax in list(axes.flat)[len(items) :]:
        ax.axis("off")
    fig.suptitle("Each model's tightness ladder, from its stored runs", fontsize=11)
    handles, labels = _legend_handles()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    return fig
