"""The contract every zoo model fulfils, in three tiers.

A zoo model is a Pyro model together with the guides it supports, its data, and whatever is
known exactly about it. The runner (:mod:`zoo.runner`), the diagnostics
(:mod:`zoo.diagnostics`) and the command line (:mod:`zoo.run`) only ever talk to a model
through this class, and never branch on its name. A new application of the ELBO is one module
(or package) under ``zoo/models/`` with a :func:`~zoo.registry.register`-ed subclass: the
registry finds it there, :mod:`zoo.contract` checks it (``tests/test_contract.py`` runs every
model and guide through it), and the docs list it from the registry.

Mandatory: without these nothing runs
-------------------------------------
- ``name`` (kebab-case, the registry key and the command), ``title``, ``application`` (one of
  :data:`zoo.applications.APPLICATIONS`: where the docs place it) and ``reference`` (the paper
  or chapter the model follows: the reader's way to check it);
- :meth:`setup` ``(data, **options)``: load or simulate the data, set ``num_data``;
- :meth:`model` ``(subsample_size=None)``: the Pyro model. It must broadcast over a leading
  particle dimension, because the estimators and the diagnostics draw particles vectorized:
  write ``(w * X).sum(-1)``, not ``X @ w``. The contract checks it by scoring the same
  particles vectorized and one at a time (:mod:`zoo.particles`), and names the model if not;
- ``guides`` and ``default_guide``: the guides it accepts, named from
  :data:`guides.VOCABULARY` (one name, one family, in every model): a tuple of names, or a
  mapping of name to :class:`~zoo.declarations.Guide` where a guide has its own estimator,
  training or closed-form local step. Names in :data:`guides.FAMILIES` are built generically;
  a model adds its own (``exact``) by overriding :meth:`build_guide`. Every hook that concerns
  a guide receives its name with it.

Recommended: what makes the zoo's reports worth reading
-------------------------------------------------------
- :meth:`log_evidence`: the exact log evidence at the current parameters (closed form,
  quadrature, transfer matrix), never an estimate: it is what the ELBO is measured against;
- :meth:`exact_elbo`, :meth:`best_elbo` and :meth:`max_log_evidence` (with its
  ``maximum_label``): the fitted guide's ELBO free of Monte Carlo error, the best its family
  can reach, the maximum over theta; each report puts the shortfall from them beside the gap;
- :meth:`summary`, :meth:`plots` and :meth:`tables`: the fitted quantities, the model's own
  figures and tables (the latter two read a :class:`~zoo.run_view.RunView`);
- ``options`` (:class:`~zoo.options.Option`: the command-line flags), ``smoke_options`` (the
  smallest run that exercises everything: the contract and command-line smoke tests use it)
  and ``training`` (:class:`~zoo.declarations.Training` defaults: steps, learning rate).

Optional: where the model has the maths or the data for it
----------------------------------------------------------
Each concern is one declared value (:mod:`zoo.declarations`) or one hook:

- ``estimators``: the ``--elbo`` choices and the default (:class:`~zoo.declarations.Estimators`);
- ``closed_form`` (:class:`~zoo.declarations.ClosedForm`: its name, whether it is the default)
  with :meth:`closed_form_step` (one EM or CAVI sweep);
- ``data_plate``, a :class:`~zoo.data_plate.DataPlate` (the plate of per-point latents: its
  name and dim, the block size and chunk budget of passes over all the data: mini-batches,
  :mod:`zoo.data_blocks`; :meth:`create_plates` builds it for the model and its autoguides);
  ``max_plate_nesting``;
- :meth:`on_step`: the model's own schedule (an annealed temperature) follows the run;
- ``arviz`` (:class:`~zoo.declarations.ArviZ`: dims and coordinates) where the latent is a
  parameter vector: posterior draws for ArviZ (:mod:`zoo.inference_data`);
- ``held_out`` (a split of the data, the same kind of value) with :meth:`on_held_out` (the
  same model, guide and parameters on it): the history then records the held-out ELBO per
  point beside the training one, where over-fitting shows;
- ``data_help`` (what ``--data PATH`` accepts), ``leaderboard`` (the runs of ``zoo.run all``).

Where a model's per-particle log ratios are not importance weights (an objective that scores
one random term of a sum per particle), the site that draws the term is marked, in the model
and the guide, with :data:`zoo.diagnostics.RANDOM_TERM`: the diagnostics then report no IWAE
and no k-hat.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from zoo.data_plate import DataPlate
from zoo.declarations import (
    ArviZ,
    ClosedForm,
    Estimators,
    Guide,
    Training,
    as_guides,
)
from zoo.errors import ZooError, first_line
from zoo.options import (  # noqa: F401  (the option types, importable from here as before)
    SEED_LIMIT,
    Option,
    at_least,
    boolean,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_value,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from zoo.run_view import RunView


class ZooModel:
    """Base class of every zoo model. See the module docstring for the contract."""

    name: ClassVar[str]
    title: ClassVar[str]
    application: ClassVar[str]
    reference: ClassVar[str]

    options: ClassVar[tuple[Option, ...]] = ()
    #: the guides it accepts, by name (:data:`guides.VOCABULARY`), each with what is particular
    #: to it (:class:`~zoo.declarations.Guide`); a tuple of names where nothing is
    guides: ClassVar[Mapping[str, Guide]] = {"mean-field": Guide()}
    default_guide: ClassVar[str] = "mean-field"
    #: the ``--elbo`` choices and the default (:class:`~zoo.declarations.Estimators`)
    estimators: ClassVar[Estimators] = Estimators()
    training: ClassVar[Training] = Training()
    max_plate_nesting: ClassVar[int] = 1
    #: the plate over data points, when each point has latents of its own (local latents): its
    #: name (mini-batches, per-point importance weights in the diagnostics), the data points per
    #: block of a pass over all the data and the (particle, point) pairs per chunk of the
    #: diagnostics (:class:`~zoo.data_plate.DataPlate`); None where every latent is global. A
    #: model that sizes its passes per instance sets ``self.data_plate`` in :meth:`setup`
    #: (:meth:`DataPlate.with_sizes <zoo.data_plate.DataPlate.with_sizes>`)
    data_plate: ClassVar[DataPlate | None] = None
    #: the model's closed-form coordinate ascent (:class:`~zoo.declarations.ClosedForm`), with
    #: :meth:`closed_form_step`; None where it has none
    closed_form: ClassVar[ClosedForm | None] = None
    #: runs shown on the leaderboard of ``python -m zoo.run all``: overrides of the defaults
    leaderboard: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    #: posterior draws for ArviZ (:class:`~zoo.declarations.ArviZ`), where the latent is a
    #: parameter vector (not one per data point); None: none saved
    arviz: ClassVar[ArviZ | None] = None
    #: what ``--data PATH`` accepts, when the model reads the user's own data file
    data_help: ClassVar[str | None] = None
    #: options for the smallest run that still exercises everything (a small lattice, a few
    #: hundred points): the contract test (:mod:`zoo.contract`) and the command-line smoke
    #: test build the model with them
    smoke_options: ClassVar[dict[str, Any]] = {}
    #: data held out of training, of the same kind as the model's data (None: none); the
    #: runner scores it through :meth:`on_held_out` at every history record
    held_out: Any = None

    num_data: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "guides" in cls.__dict__:  # one form for every model: a mapping of name to Guide
            cls.guides = as_guides(cls.__dict__["guides"])

    def __init__(self, data: Any = None, *, device: str = "cpu", **options: Any) -> None:
        self.device = torch.device(device)
        known = {opt.name: opt for opt in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ZooError(f"model {self.name!r} has no option {unknown[0]!r}")
        values = {name: opt.default for name, opt in known.items()}
        values.update({k: known[k].convert(v) for k, v in options.items() if v is not None})
        self.option_values = values
        try:
            self.setup(data, **values)
        except (torch.linalg.LinAlgError, np.linalg.LinAlgError) as exc:
            raise ZooError(
                f"model {self.name!r}: these options or data make a matrix singular in float64 "
                f"({first_line(exc)}); use values nearer 1 or rescale the data"
            ) from None

    def on_held_out(self, guide: Callable[..., Any]) -> tuple[ZooModel, Callable[..., Any]]:
        """The same model and guide, with the same parameters, reading the ``held_out`` data:
        models that hold data out implement it."""
        raise ZooError(f"model {self.name!r} holds no data out")

    # -- to implement -------------------------------------------------------------------------
    def setup(self, data: Any, **options: Any) -> None:
        """Load or simulate the data and set ``num_data``."""
        raise NotImplementedError

    def model(self, subsample_size: int | None = None) -> None:
        """The Pyro model p(x, z) (with parameters theta as ``pyro.param``)."""
        raise NotImplementedError

    # -- guides -------------------------------------------------------------------------------
    def create_plates(self, subsample_size: int | None = None) -> Any:
        """The data plate (:meth:`DataPlate.plate <zoo.data_plate.DataPlate.plate>`), for the
        model and its autoguides; None where the model has no data plate."""
        if self.data_plate is None:
            return None
        return self.data_plate.plate(self.num_data, subsample_size)

    def build_guide(self, name: str) -> Callable[..., Any]:
        """Build the guide called ``name``; families from :mod:`guides` by default."""
        from guides import make_guide

        if name not in self.guides:
            raise ZooError(
                f"model {self.name!r} has no guide {name!r}; choose from {', '.join(self.guides)}"
            )
        plates = self.create_plates if self.data_plate is not None else None
        return make_guide(name, self.model, create_plates=plates)

    # -- what is known exactly ----------------------------------------------------------------
    @classmethod
    def has_exact_evidence(cls) -> bool:
        return cls.log_evidence is not ZooModel.log_evidence

    def log_evidence(self) -> float | None:
        """Exact log p(x) at the current parameters, in nats (total over the data)."""
        return None

    def exact_elbo(self, guide: Callable[..., Any], guide_name: str) -> float | None:
        """The fitted guide's ELBO in closed form or by quadrature (no Monte Carlo error),
        where the model can compute it; the report leads with it and keeps the Monte Carlo
        estimate beside it as a check. None elsewhere."""
        return None

    #: what :meth:`max_log_evidence` is, as the report labels it
    maximum_label: ClassVar[str] = "max over theta of log p(x)"

    def max_log_evidence(self) -> float | None:
        """max over the model's parameters theta of log p(x | theta), where known exactly (a
        closed-form maximum likelihood, a type-II maximum): the report's shortfall is measured
        from it. None where theta is fixed or its maximum unknown."""
        return None

    def best_elbo(self, guide: str) -> float | None:
        """The largest ELBO the guide family can reach at the current parameters, if known."""
        return None

    # -- optional closed-form training ---------------------------------------------------------
    def closed_form_step(self, guide: Callable[..., Any], guide_name: str) -> float | None:
        """One closed-form coordinate-ascent update of the param store (EM, CAVI).

        Returns the ELBO after the update where it is known in closed form (the run's history
        records it as ``train_elbo``, so monotone ascent can be checked exactly), else None.
        """
        raise ZooError(f"model {self.name!r} has no closed-form updates")

    # -- optional schedules -------------------------------------------------------------------
    def on_step(self, step: int, total: int) -> None:
        """Called by the runner before SVI step ``step`` (1-based) of ``total``, and again
        on resume, so a model's own schedules (an annealed temperature) follow the run."""

    # -- reporting ----------------------------------------------------------------------------
    def summary(self, guide: Callable[..., Any], guide_name: str) -> dict[str, Any]:
        """Fitted quantities worth reporting (JSON-serialisable), at the current parameters."""
        return {}

    def tables(self, run: RunView) -> dict[str, pd.DataFrame]:
        """The model's own tables at the current parameters, by file stem; the outputs layer
        saves them as ``<stem>.csv`` (per-point latent means, say)."""
        return {}

    def plots(self, run: RunView) -> dict[str, Figure]:
        """The model's own figures at the current parameters, by file stem (``"components"``).

        The outputs layer saves them as ``<stem>.png``; the docs gallery shows them inline.
        """
        return {}

    # -- helpers for subclasses ----------------------------------------------------------------
    def tensor(self, value: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A tensor on the model's device (float64 unless told otherwise)."""
        return torch.as_tensor(value, dtype=dtype, device=self.device)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "application": self.application,
            "reference": self.reference,
            "num_data": self.num_data,
            "options": {k: _jsonable(v) for k, v in self.option_values.items()},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return value
