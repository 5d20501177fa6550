"""What a run returns: its configuration, history, diagnostics and fitted parameters.

A :class:`FitResult` carries everything a report needs; printing, saving and plotting read from
it and never re-run anything.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import torch

from zoo.diagnostics import Diagnostics, evaluation_subsample
from zoo.errors import ZooError
from zoo.ladder import leaderboard_row, training_label
from zoo.model import ZooModel
from zoo.run_view import RunView
from zoo.settings import _REQUIRED, BY_NAME, METHODS, SETTINGS  # noqa: F401  (METHODS re-exported)


class _RunConfigMethods:
    """The methods of :class:`RunConfig` (its fields come from :data:`zoo.settings.SETTINGS`)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "config.json") -> RunConfig:
        """Parse and validate a run's ``config.json``: every field present, of its type and in
        its range, and no other. Anything else is a one-line :class:`ZooError` that names
        ``source`` and the field."""
        try:
            values = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ZooError(f"{source} is not valid JSON: {first}") from None
        if not isinstance(values, dict):
            raise ZooError(f"{source} must hold a JSON object, not {_json_kind(values)}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names), key=str)
        if unknown:
            raise ZooError(f"{source}: unknown field {unknown[0]!r}")
        for f in fields(cls):
            stored = BY_NAME[f.name].stored_default if f.name in BY_NAME else _REQUIRED
            if f.name not in values and stored is not _REQUIRED:
                values[f.name] = stored  # a setting added after the file was written
            if f.name not in values:
                hint = " (its data provenance: a run written before it was recorded)"
                raise ZooError(
                    f"{source}: missing field {f.name!r}" + (hint if f.name == "data" else "")
                )
        checked = {}
        for name in names:
            try:
                checked[name] = _FIELD_CHECKS[name](values[name])
            except (_Invalid, ValueError) as exc:
                raise ZooError(f"{source}: field {name!r} {exc}") from None
        return cls(**checked)

    @property
    def training_label(self) -> str:
        """How the run was trained, for tables: ``svi/trace`` or ``closed-form``."""
        return training_label(self.method, self.elbo, self.local_steps)


# -- validation of config.json ------------------------------------------------------------------
class _Invalid(Exception):
    """A field's value is not of its type or not in its range (message: what it must be)."""


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"the number {value!r}"
    return kinds.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    """An integer (not a boolean, not 5.0) in [low, high)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_short(value)}")
        if low is not None and value < low:
            raise _Invalid(f"must be at least {low}, got {value}")
        if high is not None and value >= high:
            raise _Invalid(f"must be below {high}, got {value}")
        return value

    return check


def _name(choices: Callable[[], Any] | None = None) -> Callable[[Any], str]:
    """A non-empty string, one of ``choices()`` where given."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise _Invalid(f"must be a non-empty string, got {_short(value)}")
        allowed = None if choices is None else tuple(choices())
        if allowed is not None and value not in allowed:
            raise _Invalid(f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def _options(value: Any) -> dict[str, Any]:
    """Model options: names to JSON scalars (each model converts and checks its own)."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be an object, got {_json_kind(value)}")
    for key, item in value.items():
        if item is not None and not isinstance(item, str | int | float | bool):
            raise _Invalid(f"must map option names to numbers, strings or null; {key!r} is not")
        if isinstance(item, float) and not math.isfinite(item):
            raise _Invalid(f"must hold finite numbers; {key!r} is {item!r}")
    return dict(value)


_SHA256 = re.compile(r"[0-9a-f]{64}")

#: the keys of each kind of data provenance, with their checks
_PROVENANCE: dict[str, dict[str, Callable[[Any], Any]]] = {
    "default": {},
    "path": {
        "path": _name(),
        "sha256": lambda v: _hex_digest(v),
    },
    "array": {
        "sha256": lambda v: _hex_digest(v),
        "shape": lambda v: _shape(v),
        "dtype": _name(),
    },
    "object": {"type": _name()},
}


def _hex_digest(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise _Invalid(f"needs a sha256 of 64 hex digits, got {_short(value)}")
    return value


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > 64:
        raise _Invalid(f"needs a shape (a list of sizes), got {_short(value)}")
    return [_integer(0)(n) for n in value]


def _provenance(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be an object with a 'source', got {_json_kind(value)}")
    source = value.get("source")
    if not isinstance(source, str) or source not in _PROVENANCE:
        allowed = ", ".join(_PROVENANCE)
        raise _Invalid(f"has source {_short(source)}; expected one of {allowed}")
    keys = _PROVENANCE[source]
    extra = sorted(set(value) - {"source", *keys}, key=str)
    if extra:
        raise _Invalid(f"has an unknown key {extra[0]!r} for source {source!r}")
    checked: dict[str, Any] = {"source": source}
    for key, check in keys.items():
        if key not in value:
            raise _Invalid(f"misses {key!r} for source {source!r}")
        try:
            checked[key] = check(value[key])
        except _Invalid as exc:
            raise _Invalid(f"{key!r} {exc}") from None
    return checked


#: the run's settings (:data:`zoo.settings.SETTINGS`), with what the run was of and on
RunConfig = make_dataclass(
    "RunConfig",
    [
        ("model", str),
        ("options", dict[str, Any]),
        *((s.name, s.kind | None if s.optional else s.kind) for s in SETTINGS),
        ("data", dict[str, Any] | None, field(default=None)),
    ],
    bases=(_RunConfigMethods,),
)
RunConfig.__module__ = __name__
RunConfig.__doc__ = """Everything needed to reproduce (or resume) a run. JSON-serialisable.

``model`` and ``options`` say what was run; one field per run setting
(:data:`zoo.settings.SETTINGS`: ``guide``, ``steps``, ``lr``...) how. ``data`` records where
the run's data came from, so a resume can refuse data that is not the same:
``{"source": "default"}`` (the model's bundled or simulated data, set by its options),
``{"source": "path", "path": ..., "sha256": ...}`` (a file or directory, by absolute path and
content hash), ``{"source": "array", "sha256": ..., "shape": [...], "dtype": ...}`` (an
in-memory array, by content hash) or ``{"source": "object", "type": ...}`` (data whose content
cannot be hashed: such a run cannot be resumed). None only before :func:`zoo.fit` has filled
it in.
"""

_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "model": _name(),
    "options": _options,
    **{s.name: s.check_stored for s in SETTINGS},
    "data": _provenance,
}


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
    #: draws from the fitted guide (a :class:`~zoo.inference_data.PosteriorDraws`: a mapping
    #: of latent sites to draws), where the model's latent is a parameter vector
    posterior_draws: Mapping[str, torch.Tensor] | None = None
    #: where :func:`zoo.fit` or :func:`zoo.resume` wrote this run whole (None: nowhere)
    run_dir: Path | None = None
    #: what became of the ``compile`` setting (:mod:`zoo.compiled`): ``{"compiled": True,
    #: "build_seconds": ...}`` (the build is in ``seconds``) or ``{"compiled": False, "why":
    #: ...}``; None where the run did not ask for it
    compiled: dict[str, Any] | None = None

    def __repr__(self) -> str:
        d = self.diagnostics
        gap = "" if d.gap is None else f", gap={d.gap:.4g}"
        return (
            f"FitResult({self.model.name!r}, guide={self.config.guide!r}, "
            f"{self.method_label}, elbo={d.headline_elbo:.6g}{gap})"
        )

    def _repr_html_(self) -> str:
        """A notebook's view: the report's figures (ELBO, exact evidence, gap...) as a table,
        totals and per data point, with their standard errors and the report's notes."""
        d = self.diagnostics
        n = d.num_data

        def cell(value: float, digits: int = 4) -> str:
            return f"<td style='text-align:right'>{value:.{digits}f}</td>"

        rows = []
        for label, value, se in d.rows():
            err = f"{se:.2g}" if se is not None and math.isfinite(se) and se > 0 else ""
            rows.append(
                f"<tr><td>{html.escape(label)}</td>{cell(value)}"
                f"<td style='text-align:right'>{err}</td>{cell(value / n, 5)}</tr>"
            )
        for label, value, decimals in d.weight_rows():
            rows.append(
                f"<tr><td>{html.escape(label)}</td>{cell(value, decimals)}<td></td><td></td></tr>"
            )
        rows.append(f"<tr><td>seconds</td>{cell(self.seconds, 2)}<td></td><td></td></tr>")
        notes = "".join(f"<p><em>{html.escape(note)}</em></p>" for note in d.notes())
        title = html.escape(
            f"{self.model.title}: {self.config.guide} guide, {self.method_label} "
            f"({n} data points, {self.config.steps} steps, seed {self.config.seed})"
        )
        where = (
            "" if self.run_dir is None else f"<p>outputs in {html.escape(str(self.run_dir))}</p>"
        )
        return (
            f"<div><strong>{title}</strong>{notes}<table>"
            "<thead><tr><th></th><th>nats</th><th>± (MC)</th><th>per point</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{where}</div>"
        )

    def activate(self) -> None:
        """Load this run's fitted parameters into Pyro's (global) param store."""
        params = {k: v.clone().requires_grad_(True) for k, v in self.param_state["params"].items()}
        pyro.get_param_store().set_state({**self.param_state, "params": params})

    @property
    def method_label(self) -> str:
        if self.config.method == "closed-form":
            return self.model.closed_form.name if self.model.closed_form else "closed-form"
        local = ", closed-form local steps" if self.config.local_steps else ""
        compiled = ", compiled" if self.compiled is not None and self.compiled["compiled"] else ""
        return f"SVI ({self.config.elbo}{local}{compiled})"

    def report(self) -> dict[str, Any]:
        """The run's report, as written to ``report.json``."""
        return {
            "model": self.model.describe(),
            "config": asdict(self.config),
            "training": self.method_label,
            "compiled": self.compiled,
            "seconds": self.seconds,
            "diagnostics": self.diagnostics.as_dict(),
            "summary": self.summary,
        }

    def leaderboard_row(self) -> dict[str, Any]:
        """This run's row of the leaderboard (:func:`zoo.ladder.leaderboard_row`)."""
        return leaderboard_row(
            self.model.name,
            self.config.guide,
            self.config.training_label,
            self.diagnostics,
            self.seconds,
        )

    def view(self) -> RunView:
        """This run as the model's figures and tables see it."""
        estimator = self.config.elbo if self.config.method != "closed-form" else self.method_label
        return RunView(
            guide=self.guide,
            guide_name=self.config.guide,
            method=self.method_label,
            elbo_estimator=estimator,
            history=self.history,
            diagnostics=self.diagnostics,
            summary=self.summary,
            param_state=self.param_state,
            record_particles=self.config.trace_particles,
        )

    def figures(self) -> dict[str, Any]:
        """Every figure of this run by file stem: the ELBO trace, its terms, the model's own."""
        from zoo import plots

        title = f"{self.model.title} - {self.config.guide} guide, {self.method_label}"
        figures = {
            "elbo_trace": plots.elbo_trace(
                self.history,
                title,
                self.diagnostics.gap,
                self.diagnostics,
                self.config.trace_particles,
            ),
            "elbo_terms": plots.elbo_terms(self.history, title),
        }
        if "held_out_elbo_per_point" in self.history:
            figures["held_out_trace"] = plots.held_out_trace(
                self.history, self.diagnostics.num_data, title
            )
        view = self.view()
        points = evaluation_subsample(self.config.eval_subsample, self.config.seed)
        with view.active(), points:  # the model's evaluations: eval_subsample
            figures.update(self.model.plots(view))
        return figures

    def tables(self) -> dict[str, pd.DataFrame]:
        """The model's own tables of this run, by file stem."""
        view = self.view()
        with view.active():
            return self.model.tables(view)

    def to_inference_data(self) -> Any:
        """The run's posterior draws as ArviZ data (Kumar et al. 2019, JOSS 4, 1143):
        InferenceData on ArviZ 0.x, a DataTree on 1.x, with the groups ``posterior`` (draws
        from the fitted guide, named dims and coords), ``sample_stats`` (log p(x, z) and the
        log importance weights, their PSIS k-hat as the attribute ``khat``),
        ``log_likelihood`` (pointwise, for ``arviz.loo``: Vehtari, Gelman & Gabry 2017) and
        ``observed_data``. What ``posterior.nc`` holds; see :mod:`zoo.inference_data`.

        A model whose latents are not a parameter vector saves no draws: a :class:`ZooError`.
        """
        if self.posterior_draws is None:
            raise ZooError(
                f"model {self.model.name!r} saves no posterior draws (its latents are not a "
                "parameter vector): no ArviZ data"
            )
        from zoo.inference_data import to_inference_data

        attrs = {"model": self.model.name, "guide": self.config.guide}
        return to_inference_data(self.posterior_draws, {**attrs, "training": self.method_label})

    def save(self, run_dir: str | Path) -> Path:
        """Write history, report, figures and (where it applies) ArviZ data into ``run_dir``."""
        from zoo.outputs import save_run

        return save_run(self, Path(run_dir))
