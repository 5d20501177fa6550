"""One validator for every zoo model: what the contract promises, checked.

:func:`check_model` is what ``tests/test_contract.py`` runs over every registered model and
each of its guides, and what a new model's author runs first (in the manner of the Inference
Gym's shared ``test_util``). Each check raises a one-line :class:`ContractError` naming the
model, the guide and the clause it breaks:

1. the declaration: a kebab-case ``name``, a ``title``, an ``application`` (one of
   :data:`zoo.applications.APPLICATIONS`) and a ``reference``; its ``default_guide`` among
   its ``guides``, each declared with a :class:`~zoo.declarations.Guide` whose estimator is one
   of the model's; its ``estimators`` (an :class:`~zoo.declarations.Estimators`) known, its
   ``closed_form`` declared exactly when it has a ``closed_form_step``, its ``arviz`` an
   :class:`~zoo.declarations.ArviZ` whose coordinates name attributes, its options' defaults
   accepted by their own converters, its ``data_plate`` a :class:`~zoo.data_plate.DataPlate`
   or None;
2. it builds with its :attr:`~zoo.model.ZooModel.smoke_options` and has data (``num_data >= 1``;
   its ``data_plate``, as ``setup`` left it, still a :class:`~zoo.data_plate.DataPlate` or None);
3. model and guide broadcast over a leading particle dimension: vectorized particles score as
   the same particles one at a time (:func:`zoo.particles.check_broadcast`);
4. the ELBO at initialisation is at most the exact log evidence, where the model knows it, up
   to 4 standard errors: whatever the parameters, an ELBO is a lower bound;
5. the summary is JSON: what ``report.json`` will hold.

The figures and tables of a short run are checked by :func:`check_outputs`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pyro
import torch

from guides import VOCABULARY
from zoo.applications import APPLICATIONS
from zoo.data_blocks import on_block
from zoo.data_plate import DataPlate
from zoo.declarations import ArviZ, ClosedForm, Estimators, Guide, Training
from zoo.diagnostics import evaluate, finite_or_none
from zoo.errors import ZooError, first_line
from zoo.estimators import ESTIMATORS, prepare_guide
from zoo.model import ZooModel
from zoo.outputs import is_anndata
from zoo.particles import check_broadcast
from zoo.registry import get_model
from zoo.settings import BY_NAME

#: points scored by the broadcast check (a prefix of the data, where the model has a data plate)
BROADCAST_POINTS = 16
#: particles of the initial-bound check
BOUND_PARTICLES = 200


class ContractError(ZooError):
    """A model that breaks a clause of the contract (:mod:`zoo.model`)."""


def _fail(where: str, clause: str) -> ContractError:
    return ContractError(f"{where}: {clause}")


def check_declaration(cls: type[ZooModel]) -> None:
    """Clause 1: the class attributes every model declares."""
    where = f"model class {cls.__name__}"
    for attr in ("name", "title", "application", "reference"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise _fail(where, f"declares no {attr}")
    if cls.application not in APPLICATIONS:
        raise _fail(where, f"application {cls.application!r} is not one of {APPLICATIONS}")
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", cls.name):
        raise _fail(where, f"name {cls.name!r} is not kebab-case")
    unnamed = [g for g in cls.guides if g not in VOCABULARY]
    if unnamed:
        raise _fail(
            where,
            f"guides {unnamed} are not in the vocabulary (guides.VOCABULARY): name the "
            "family as every model does, or add it there with its definition",
        )
    if cls.default_guide not in cls.guides:
        raise _fail(where, f"default guide {cls.default_guide!r} is not among {list(cls.guides)}")
    _check_declared(where, cls)
    flags = [opt.flag for opt in cls.options]
    if len(set(flags)) != len(flags):
        raise _fail(where, "two options share a flag")
    shadowed = {opt.name for opt in cls.options} & set(BY_NAME)
    if shadowed:
        raise _fail(where, f"options {sorted(shadowed)} are named like run settings")
    for opt in cls.options:
        if opt.default is not None:
            try:
                opt.convert(opt.default)
            except ZooError as exc:
                raise _fail(where, f"the default of {opt.flag} is refused: {exc}") from None
    unknown = set(cls.smoke_options) - {opt.name for opt in cls.options}
    if unknown:
        raise _fail(where, f"smoke_options name no option: {sorted(unknown)}")
    _check_data_plate(where, cls.data_plate)


def _check_declared(where: str, cls: type[ZooModel]) -> None:
    """The declaration values (:mod:`zoo.declarations`) are of their types and agree."""
    for attr, kind in (("estimators", Estimators), ("training", Training)):
        if not isinstance(getattr(cls, attr), kind):
            raise _fail(where, f"{attr} is not a zoo.declarations.{kind.__name__}")
    unknown = set(cls.estimators.choices) - set(ESTIMATORS)
    if unknown:
        raise _fail(where, f"unknown estimators {sorted(unknown)}")
    if cls.estimators.default not in cls.estimators.choices:
        raise _fail(where, f"default estimator {cls.estimators.default!r} is not a choice")
    for name, spec in cls.guides.items():
        if not isinstance(spec, Guide):
            raise _fail(where, f"guide {name!r} is declared with {spec!r}, not a Guide")
        if spec.elbo is not None and spec.elbo not in cls.estimators.choices:
            raise _fail(where, f"guide {name!r}'s estimator {spec.elbo!r} is not a choice")
        if spec.training is not None and not isinstance(spec.training, Training):
            raise _fail(where, f"guide {name!r}'s training is not a Training")
        if spec.local_step is not None and not callable(spec.local_step):
            raise _fail(where, f"guide {name!r}'s local_step is not callable")
    has_step = cls.closed_form_step is not ZooModel.closed_form_step
    if (cls.closed_form is not None) != has_step or not isinstance(
        cls.closed_form, ClosedForm | None
    ):
        raise _fail(
            where,
            "declare closed_form = ClosedForm(name) exactly when closed_form_step is written",
        )
    if cls.arviz is not None and not isinstance(cls.arviz, ArviZ):
        raise _fail(where, "arviz is not a zoo.declarations.ArviZ")


def _check_data_plate(where: str, plate: Any) -> None:
    if plate is None or isinstance(plate, DataPlate):
        return
    hint = f": declare data_plate = DataPlate({plate!r})" if isinstance(plate, str) else ""
    raise _fail(where, f"data_plate is {plate!r}, not a zoo.data_plate.DataPlate or None{hint}")


def build(name: str | type[ZooModel], **options: Any) -> ZooModel:
    """Clause 2: the model built from its smoke options (overridden by ``options``)."""
    cls = get_model(name) if isinstance(name, str) else name
    model = cls(**{**cls.smoke_options, **options})
    if not (isinstance(model.num_data, int) and model.num_data >= 1):
        raise _fail(f"model {cls.name!r}", f"num_data is {model.num_data!r}, not a count >= 1")
    _check_data_plate(f"model {cls.name!r}", model.data_plate)
    if model.arviz is not None:
        missing = [a for a in model.arviz.coords.values() if not hasattr(model, a)]
        if missing:
            raise _fail(f"model {cls.name!r}", f"arviz coords name no attribute: {missing}")
    return model


def initialised_guide(model: ZooModel, guide_name: str, seed: int = 0) -> Any:
    """The guide ``guide_name`` of ``model``, its parameters initialised (a fresh param store)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = prepare_guide(model.estimators.default, model.build_guide(guide_name))
    with torch.no_grad():
        on_block(guide, model, None)()
    return guide


def _prefix(model: ZooModel) -> torch.Tensor | None:
    if model.data_plate is None:
        return None
    return torch.arange(min(BROADCAST_POINTS, model.num_data), device=model.device)


def check_particles(model: ZooModel, guide: Any, guide_name: str) -> None:
    """Clause 3: vectorized particles score as the same particles one at a time."""
    block = _prefix(model)
    with torch.no_grad():
        check_broadcast(
            on_block(model.model, model, block),
            on_block(guide, model, block),
            max_plate_nesting=model.max_plate_nesting,
            name=f"{model.name}/{guide_name}",
        )


def check_initial_bound(model: ZooModel, guide: Any, guide_name: str) -> None:
    """Clause 4: ELBO <= log p(x) + 4 SE at initialisation, where log p(x) is known."""
    if not model.has_exact_evidence():
        return
    d = evaluate(model, guide, num_particles=BOUND_PARTICLES, guide_name=guide_name)
    if d.log_evidence is None or not d.elbo_is_bound:
        return
    slack = 4 * d.elbo_se + 1e-9 * abs(d.log_evidence)
    if not d.elbo <= d.log_evidence + slack:
        raise _fail(
            f"{model.name}/{guide_name}",
            f"the ELBO at initialisation, {d.elbo:.8g} +- {d.elbo_se:.2g}, exceeds the exact "
            f"log evidence {d.log_evidence:.8g}: one of them is wrong",
        )


def check_summary(model: ZooModel, guide: Any, guide_name: str) -> dict[str, Any]:
    """Clause 5: the summary is JSON (NaN and infinities as null, as ``report.json``)."""
    summary = model.summary(guide, guide_name)
    if not isinstance(summary, Mapping):
        raise _fail(f"{model.name}/{guide_name}", f"summary is a {type(summary).__name__}")
    try:
        json.dumps(finite_or_none(dict(summary)), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(
            f"{model.name}/{guide_name}", f"summary is not JSON: {first_line(exc)}"
        ) from None
    return dict(summary)


def check_model(name: str | type[ZooModel], guide_name: str | None = None) -> ZooModel:
    """Every clause for one model and guide (its default guide unless named); returns the
    built model with the guide's initial parameters in Pyro's param store."""
    cls = get_model(name) if isinstance(name, str) else name
    check_declaration(cls)
    guide_name = guide_name or cls.default_guide
    model = build(cls)
    guide = initialised_guide(model, guide_name)
    check_particles(model, guide, guide_name)
    check_initial_bound(model, guide, guide_name)
    check_summary(model, guide, guide_name)
    return model


def check_outputs(result: Any) -> dict[str, Any]:
    """A run's figures are matplotlib figures with something drawn, its tables are data frames,
    its report is JSON: what :func:`zoo.outputs.save_run` writes. Returns the figures."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.figure import Figure

    where = f"{result.model.name}/{result.config.guide}"
    figures = result.figures()
    try:
        for stem, fig in figures.items():
            if not isinstance(fig, Figure) or not fig.axes:
                raise _fail(where, f"figure {stem!r} is not a matplotlib figure with axes")
    finally:
        for fig in figures.values():
            plt.close(fig)
    for stem, table in result.tables().items():
        if not isinstance(table, pd.DataFrame) and not is_anndata(table):
            raise _fail(
                where, f"table {stem!r} is a {type(table).__name__}, not a DataFrame or AnnData"
            )
    json.dumps(finite_or_none(result.report()), default=str, allow_nan=False)
    return figures
