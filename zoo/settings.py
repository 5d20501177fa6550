"""A run's settings, declared once.

Each setting of a run (its guide, ``steps``, ``lr``, ``record_every``...) is one
:class:`Setting` in :data:`SETTINGS`: its name, its type, the converter that checks a value of
it, its help and the rule that settles its value. Everything else is generated from this
table:

- :func:`zoo.fit`'s keyword arguments (its signature and the list in its docstring);
- the command line's flags (``--lr-final-factor``), their help and choices for each model;
- :class:`~zoo.results.RunConfig`'s fields and the checks of a stored ``config.json``;
- a ``--config`` file's keys (they are the flags).

:func:`resolve` settles a run's settings in the table's order from the values given: a value
given is converted and checked, one not given takes its default, and a rule may read the
settings before it (the guide decides the estimator's default and the training defaults; the
step count the checkpoint interval). Every refusal is a one-line :class:`~zoo.errors.ZooError`
naming the setting.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.declarations import (
    default_method,
    elbo_for,
    is_in_place_schedule,
    local_step_for,
    local_step_guides,
    training_for,
)
from zoo.errors import ZooError
from zoo.options import (
    MAX_EVAL_PARTICLES,
    at_least,
    boolean,
    eval_particle_count,
    non_negative_int,
    positive_float,
    positive_int,
    seed_value,
)
from zoo.psis import MIN_DRAWS

if TYPE_CHECKING:
    from zoo.declarations import Training
    from zoo.model import ZooModel

#: how a run trains: SVI, or the model's closed-form coordinate ascent (EM, CAVI)
METHODS = ("svi", "closed-form")


# -- converters that only run settings use ------------------------------------------------------
def name_value(value: Any) -> str:
    """A non-empty string (a guide, estimator or method name; its choices depend on the model)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a name")
    return value


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]], what: str) -> Callable[[Any], str]:
    """A converter: one of ``choices`` (a sequence, or a function that gives it when first
    needed); ``what`` names them in the converter's name."""

    def convert(value: Any) -> str:
        allowed = choices() if callable(choices) else choices
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    convert.__name__ = what
    return convert


def decay_fraction(value: Any) -> float:
    """A number in (0, 1]: the final learning rate as a fraction of the first."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number in (0, 1]")
    number = positive_float(value)
    if number > 1:
        raise ValueError(f"{value!r} is not a number in (0, 1]")
    return number


def device_name(value: Any) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is there is checked when a run starts)."""
    if not isinstance(value, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", value):
        raise ValueError(f"{value!r} is not a device; use cpu or cuda")
    return value


def _estimator_names() -> tuple[str, ...]:
    from zoo.estimators import ESTIMATORS  # pyro: imported when an estimator is checked

    return tuple(ESTIMATORS)


# -- the table ----------------------------------------------------------------------------------
@dataclass
class Resolution:
    """What a setting's rule may read: the model, the values given, those settled so far."""

    model: ZooModel
    given: Mapping[str, Any]
    values: dict[str, Any]

    @property
    def training(self) -> Training:
        """The model's training defaults for the guide already settled."""
        return training_for(self.model, self.values["guide"])

    @property
    def svi(self) -> bool:
        return self.values["method"] == "svi"


def _always(cls: type[ZooModel]) -> bool:
    return True


#: a setting that every ``config.json`` must hold
_REQUIRED: Any = object()
#: the estimators whose loss :mod:`zoo.compiled` rebuilds and compiles
COMPILED_ESTIMATORS = ("trace", "meanfield")
#: runs of this many SVI steps or more compile by default: the build (5-30 s on two cores)
#: then costs less than the steps it speeds up (benchmarks/README.md)
COMPILE_MIN_STEPS = 2000


@dataclass(frozen=True)
class Setting:
    """One setting of a run.

    ``kind`` is its type in ``config.json`` (``int`` there must be a JSON integer);
    ``convert`` checks a value given to :func:`zoo.fit`, on the command line (as text), in a
    ``--config`` file or in ``config.json``, and raises :class:`ValueError` with a message that
    reads after the setting's name. ``rule`` settles the value from the converted one (None
    where not given) and what is settled before it; without a rule a setting not given takes
    ``default``. The command line's help adds the default ``shown_default`` gives a model.
    """

    name: str
    kind: type
    convert: Callable[[Any], Any]
    help: str
    default: Any = None
    #: None is a value of the setting (``batch_size``: no mini-batches)
    optional: bool = False
    rule: Callable[[Any, Resolution], Any] | None = None
    #: where the flag is listed in ``--help``: training or diagnostics
    group: str = "training"
    #: a switch: ``--quick`` / ``--no-quick``
    switch: bool = False
    metavar: str | None = None
    #: models whose command line offers the flag
    applies: Callable[[type[ZooModel]], bool] = _always
    #: the value of a ``config.json`` written before the setting existed (absent: none, such a
    #: file is refused as incomplete)
    stored_default: Any = _REQUIRED
    #: the command line's choices for a model class
    choices: Callable[[type[ZooModel]], Sequence[str]] | None = None
    #: the default a model class gives the setting, for ``--help``
    shown_default: Callable[[type[ZooModel]], Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted, or a one-line :class:`ZooError` naming the setting."""
        if value is None and self.optional:
            return None
        try:
            return self.convert(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ZooError(f"{self.name}: {exc}") from None

    def check_stored(self, value: Any) -> Any:
        """A value from ``config.json``: of exactly its JSON type, then converted; raises
        :class:`ValueError` with what is wrong."""
        if value is None and self.optional:
            return None
        kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        fits = (
            isinstance(value, bool)
            if self.kind is bool
            else not isinstance(value, bool)
            and isinstance(value, int | float if self.kind is float else self.kind)
        )
        if not fits:
            raise ValueError(f"must be {kinds[self.kind]}, got {_short(value)}")
        try:
            converted = self.convert(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"is invalid: {exc}") from None
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ValueError(f"must be finite, got {value!r}")
        return converted

    def help_for(self, cls: type[ZooModel]) -> str:
        """The flag's help for ``cls``, with the default it gives the setting."""
        shown = self.shown_default(cls) if self.shown_default is not None else self.default
        return self.help if shown is None or shown is False else f"{self.help} (default {shown})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the rules ----------------------------------------------------------------------------------
def _guide(value: str | None, r: Resolution) -> str:
    m = r.model
    guide = value or m.default_guide
    if guide not in m.guides:
        raise ZooError(
            f"model {m.name!r} has no guide {guide!r}; choose from {', '.join(m.guides)}"
        )
    return guide


def _method(value: str | None, r: Resolution) -> str:
    method = value or default_method(r.model)
    if method == "closed-form" and r.model.closed_form is None:
        raise ZooError(f"model {r.model.name!r} has no closed-form updates; use --method svi")
    return method


def _elbo(value: str | None, r: Resolution) -> str:
    m = r.model
    elbo = value or elbo_for(m, r.values["guide"])
    if elbo not in m.estimators.choices:
        raise ZooError(
            f"estimator {elbo!r} does not apply to model {m.name!r}; "
            f"choose from {', '.join(m.estimators.choices)}"
        )
    return elbo


def _steps(value: int | None, r: Resolution) -> int:
    if value is not None:
        return value
    t = r.training
    if not r.svi:
        return max(10, t.closed_form_steps // 5) if r.values["quick"] else t.closed_form_steps
    return t.quick_steps if r.values["quick"] else t.steps


def _from_training(name: str) -> Callable[[Any, Resolution], Any]:
    def rule(value: Any, r: Resolution) -> Any:
        return getattr(r.training, name) if value is None else value

    return rule


def _particles(value: int | None, r: Resolution) -> int:
    particles = r.training.particles if value is None else value
    if r.values["elbo"] == "iwae" and r.svi and particles < 2:
        raise ZooError("the iwae estimator needs --particles of at least 2")
    return particles


def _batch_size(value: int | None, r: Resolution) -> int | None:
    m = r.model
    if m.data_plate is not None and m.num_data is None:
        raise ZooError("model did not set num_data")
    batch = r.training.batch_size if value is None else value
    if batch is None:
        return None
    if m.data_plate is None:
        raise ZooError(f"model {m.name!r} has no data plate to mini-batch over")
    return None if batch >= m.num_data else batch


def _record_every(value: int | None, r: Resolution) -> int:
    if value is not None:
        return value
    v = r.values
    if not r.svi:
        return 1
    record = max(1, v["steps"] // r.training.records)
    if v["batch_size"] is not None:
        # a record scores trace_particles particles of every point, a step `particles` of one
        # batch: on large data space the records so that they cost at most four times the
        # training steps between them (200,000 points in batches of 1000: a record every 800
        # steps instead of most of the run's time); of the eval_subsample points where a record
        # scores a subsample
        scored = v["eval_subsample"] or r.model.num_data
        work = v["trace_particles"] * scored / (v["particles"] * v["batch_size"])
        record = max(record, math.ceil(work / 4))
    return record


def _eval_subsample(value: int | None, r: Resolution) -> int | None:
    m = r.model
    if value is None:
        return None
    if m.data_plate is None:
        raise ZooError(
            f"eval_subsample: model {m.name!r} has no data plate to subsample (its latents are "
            "global); leave eval_subsample unset to score every point"
        )
    return None if value >= m.num_data else value


def _checkpoint_every(value: int | None, r: Resolution) -> int:
    return max(1, r.values["steps"] // 10) if value is None else value


def _kl_warmup(value: int | None, r: Resolution) -> int:
    if value is None:  # the model's warm-up, a fraction of the SVI steps
        fraction = r.training.kl_warmup_fraction
        return round(fraction * r.values["steps"]) if r.svi else 0
    if value and not r.svi:
        raise ZooError("kl_warmup applies to SVI only")
    return value


def _warmup_shown(cls: type[ZooModel]) -> str | int:
    fraction = cls.training.kl_warmup_fraction
    return f"{fraction:.3g} of the steps" if fraction else 0


def _local_steps(value: bool | None, r: Resolution) -> bool:
    guide = r.values["guide"]
    has_local = r.svi and local_step_for(r.model, guide) is not None
    if value and not has_local:
        where = f"guide {guide!r}" if r.svi else f"method {r.values['method']!r}"
        raise ZooError(f"model {r.model.name!r} has no closed-form local step for {where}")
    return has_local if value is None else bool(value)


def _not_compiled(r: Resolution) -> str | None:
    """Why a run cannot train through the compiled graph (:mod:`zoo.compiled`), or None."""
    from zoo.model import ZooModel  # torch: imported when a run is settled, not for --help

    model = r.model if isinstance(r.model, type) else type(r.model)
    if not r.svi:
        return "closed-form training makes no gradient steps"
    if r.values["elbo"] not in COMPILED_ESTIMATORS:
        return f"the {r.values['elbo']!r} estimator is not compiled (trace and meanfield are)"
    if r.values["local_steps"]:
        return "closed-form local steps change the guide between gradient steps"
    hook = r.model.on_step  # an instance may set its own (diffusion's averaging, its sampler)
    if getattr(hook, "__func__", hook) is not ZooModel.on_step and not is_in_place_schedule(hook):
        return f"model {model.name!r} changes with the step (its own schedule)"
    return None


def _compile(value: bool | None, r: Resolution) -> bool:
    reason = _not_compiled(r)
    if value and reason:
        raise ZooError(f"compile: {reason}")
    if value is None:
        return reason is None and r.values["steps"] >= COMPILE_MIN_STEPS
    return bool(value)


def _default_elbo(cls: type[ZooModel]) -> str:
    return elbo_for(cls, cls.default_guide)


def _closed_form(cls: type[ZooModel]) -> str:
    closed = f"; closed-form = {cls.closed_form.name}" if cls.closed_form is not None else ""
    return f"{default_method(cls)}{closed}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "guide",
        str,
        name_value,
        "the variational family",
        rule=_guide,
        choices=lambda cls: list(cls.guides),
        shown_default=lambda cls: cls.default_guide,
    ),
    Setting(
        "method",
        str,
        one_of(METHODS, "method"),
        "how to train: svi, or the model's closed-form coordinate ascent (EM, CAVI)",
        rule=_method,
        choices=lambda cls: METHODS if cls.closed_form is not None else ("svi",),
        shown_default=_closed_form,
    ),
    Setting(
        "elbo",
        str,
        one_of(_estimator_names, "estimator"),
        "ELBO estimator, of those that apply to the model",
        rule=_elbo,
        choices=lambda cls: list(cls.estimators.choices),
        shown_default=_default_elbo,
    ),
    Setting(
        "quick",
        bool,
        boolean,
        "a short run (smoke tests, CI)",
        default=False,
        group="running",
        switch=True,
    ),
    Setting(
        "steps",
        int,
        positive_int,
        "training steps (SVI steps, or sweeps of the closed-form updates)",
        rule=_steps,
        shown_default=lambda cls: cls.training.steps,
    ),
    Setting(
        "lr",
        float,
        positive_float,
        "learning rate",
        rule=_from_training("lr"),
        shown_default=lambda cls: cls.training.lr,
    ),
    Setting(
        "lr_final_factor",
        float,
        decay_fraction,
        "final lr as a fraction of --lr, in (0, 1]",
        rule=_from_training("lr_final_factor"),
        shown_default=lambda cls: cls.training.lr_final_factor,
    ),
    Setting(
        "particles",
        int,
        positive_int,
        "ELBO particles per step",
        rule=_particles,
        shown_default=lambda cls: cls.training.particles,
    ),
    Setting(
        "batch_size",
        int,
        positive_int,
        "mini-batch size, a subsample of the data plate",
        optional=True,
        rule=_batch_size,
        applies=lambda cls: cls.data_plate is not None,
        shown_default=lambda cls: cls.training.batch_size or "all the data",
    ),
    Setting(
        "seed",
        int,
        seed_value,
        "random seed in [0, 2**32)",
        default=0,
        group="running",
    ),
    Setting("device", str, device_name, "cpu or cuda", "cpu", group="running"),
    Setting(
        "kl_warmup",
        int,
        non_negative_int,
        "ramp the weight of the latent sites from 0 to 1 over STEPS steps (KL warm-up; the "
        "reported ELBO is at weight 1)",
        rule=_kl_warmup,
        metavar="STEPS",
        shown_default=_warmup_shown,
    ),
    Setting(
        "local_steps",
        bool,
        boolean,
        "the closed-form local step around every SVI step",
        optional=True,
        rule=_local_steps,
        switch=True,
        applies=lambda cls: bool(local_step_guides(cls)),
        shown_default=lambda cls: "on for the guides " + ", ".join(local_step_guides(cls)),
    ),
    Setting(
        "compile",
        bool,
        boolean,
        "train through one compiled graph of the step's loss and gradient, checked against "
        "Pyro's (trace and meanfield estimators, reparameterised guides; zoo.compiled)",
        optional=True,
        rule=_compile,
        switch=True,
        shown_default=lambda cls: f"on for runs of {COMPILE_MIN_STEPS:,} steps or more",
        stored_default=False,
    ),
    Setting(
        "eval_particles",
        int,
        eval_particle_count,
        f"particles for the final ELBO, IWAE and k-hat, {MIN_DRAWS} to {MAX_EVAL_PARTICLES:,}",
        default=1000,
        group="diagnostics",
    ),
    Setting(
        "trace_particles",
        int,
        positive_int,
        "particles for each history row's ELBO",
        default=16,
        group="diagnostics",
    ),
    Setting(
        "eval_subsample",
        int,
        at_least(2),
        "data points the final diagnostics, the history rows and the model's own evaluations "
        "score: a uniformly random subset (seeded by --seed), totals N x its mean, standard "
        "errors with the subsampling; the history then has no joint IWAE (default: every point)",
        optional=True,
        rule=_eval_subsample,
        group="diagnostics",
        metavar="N",
        applies=lambda cls: cls.data_plate is not None,
        stored_default=None,
    ),
    Setting(
        "record_every",
        int,
        positive_int,
        "steps between history rows (default: the model's number of records over the run)",
        rule=_record_every,
        group="diagnostics",
    ),
    Setting(
        "checkpoint_every",
        int,
        positive_int,
        "steps between checkpoints (default: a tenth of the run)",
        rule=_checkpoint_every,
        group="diagnostics",
    ),
)

#: the settings by name
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def resolve(model: ZooModel, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of a run of ``model``, settled from ``given`` (name -> value; a name
    absent or None is not given) in :data:`SETTINGS`' order."""
    unknown = set(given) - set(BY_NAME)
    if unknown:
        raise ZooError(f"unknown run setting {sorted(unknown)[0]!r}")
    resolution = Resolution(model, given, {})
    for setting in SETTINGS:
        raw = given.get(setting.name)
        value = setting.default if raw is None else setting.check(raw)
        if setting.rule is not None:
            value = setting.rule(value, resolution)
        resolution.values[setting.name] = value
    return resolution.values


def iter_flags(cls: type[ZooModel], group: str) -> Iterator[Setting]:
    """The settings in ``group`` that the command line offers for ``cls``."""
    return (s for s in SETTINGS if s.group == group and s.applies(cls))


def with_settings(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``func`` (which takes the settings in ``**kwargs``) a signature that names every
    setting as a keyword (None: not given) and a docstring that lists them."""
    signature = inspect.signature(func)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [
        inspect.Parameter(
            s.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=s.default,
            annotation=s.kind.__name__ + (" | None" if s.default is None else ""),
        )
        for s in SETTINGS
    ]
    params.append(inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
    func.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    lines = ["", "    Run settings (:data:`zoo.settings.SETTINGS`):", ""]
    for s in SETTINGS:
        lines.append(f"    - ``{s.name}``: {s.help}.")
    func.__doc__ = (func.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return func
