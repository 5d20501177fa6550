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
  :data:`guides.VOCABULARY` (one name, one family, in every model). Names in
  :data:`guides.FAMILIES` are built generically; a model adds its own (``exact``) by
  overriding :meth:`build_guide`. Every hook that concerns a guide receives its name with it.

Recommended: what makes the zoo's reports worth reading
-------------------------------------------------------
- :meth:`log_evidence`: the exact log evidence at the current parameters (closed form,
  quadrature, transfer matrix), never an estimate: it is what the ELBO is measured against;
- :meth:`exact_elbo`, :meth:`best_elbo` and :meth:`max_log_evidence`: the fitted guide's ELBO
  free of Monte Carlo error, the best its family can reach, the maximum over theta; each
  report puts the shortfall from them beside the gap;
- :meth:`summary`, :meth:`plots` and :meth:`tables`: the fitted quantities, the model's own
  figures and tables (the latter two read a :class:`~zoo.run_view.RunView`);
- ``options`` (:class:`~zoo.options.Option`: the command-line flags), ``smoke_options`` (the
  smallest run that exercises everything: the contract and command-line smoke tests use it)
  and ``training`` (:class:`Training` defaults: steps, learning rate).

Optional: where the model has the maths or the data for it
----------------------------------------------------------
- closed-form training: :meth:`closed_form_step` (one EM or CAVI sweep), its
  ``closed_form_name``, and ``default_method = "closed-form"`` where users expect it; SVI
  with closed-form local factors: :meth:`local_step` for the guides in
  ``local_step_guides``;
- estimators: ``estimators`` (the ``--elbo`` choices), ``default_elbo`` and
  ``elbo_for_guide``; ``importance_weights = False`` where the per-particle log ratios are not
  importance weights (no IWAE, no k-hat);
- mini-batching: ``data_plate``, a :class:`~zoo.data_plate.DataPlate` (the plate of per-point
  latents: its name, and the block size and chunk budget of passes over all the data a block
  at a time: :mod:`zoo.data_blocks`), :meth:`create_plates` (for autoguides);
  ``max_plate_nesting``;
- schedules: :meth:`on_step` (an annealed temperature follows the run);
- ArviZ: ``save_posterior_draws`` with ``arviz_dims`` and :meth:`arviz_coords`, where the
  latent is a parameter vector (:mod:`zoo.inference_data`);
- held-out data: ``held_out`` (a split of the data, the same kind of value) and
  :meth:`on_held_out` (the same model, guide and parameters on it): the history then records
  the held-out ELBO per point beside the training one, where over-fitting shows;
- ``data_help`` (what ``--data PATH`` accepts), ``leaderboard`` (the runs of
  ``zoo.run all``), ``training_for_guide``, ``maximum_label``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from zoo.data_plate import DataPlate
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


@dataclass(frozen=True)
class Training:
    """Default training settings of a model; every field can be overridden per run."""

    steps: int = 2000
    lr: float = 0.01
    quick_steps: int = 200
    #: learning rate at the last step as a fraction of ``lr`` (exponential decay in between)
    lr_final_factor: float = 1.0
    particles: int = 1
    batch_size: int | None = None
    #: number of closed-form (EM / CAVI) iterations when ``method="closed-form"``
    closed_form_steps: int = 100
    #: history rows per SVI run (one every ``steps // records`` steps); fewer where a record
    #: is costly (it scores ``trace_particles`` particles of every data point)
    records: int = 200
    #: KL warm-up over this fraction of the SVI steps unless a run sets ``kl_warmup`` (the
    #: amortized models' practice: Bowman et al. 2016; Sønderby et al. 2016)
    kl_warmup_fraction: float = 0.0


class ZooModel:
    """Base class of every zoo model. See the module docstring for the contract."""

    name: ClassVar[str]
    title: ClassVar[str]
    application: ClassVar[str]
    reference: ClassVar[str]

    options: ClassVar[tuple[Option, ...]] = ()
    guides: ClassVar[tuple[str, ...]] = ("mean-field",)
    default_guide: ClassVar[str] = "mean-field"
    #: estimator used unless the run names another; see :data:`zoo.estimators.ESTIMATORS`
    default_elbo: ClassVar[str] = "trace"
    #: a better estimator for a particular guide, e.g. ``{"mean-field": "meanfield"}``
    elbo_for_guide: ClassVar[dict[str, str]] = {}
    #: the estimators that apply to this model (names in :data:`zoo.estimators.ESTIMATORS`):
    #: the command line's ``--elbo`` choices and what :func:`zoo.fit` accepts. The default
    #: suits continuous latents with reparameterised guides; a model with discrete latents
    #: drops ``meanfield`` (it needs reparameterised, mean-field guides) and adds ``enum``
    #: where its discrete sites can be enumerated. ``iwae`` needs 2 or more particles.
    estimators: ClassVar[tuple[str, ...]] = ("trace", "meanfield", "graph", "iwae")
    training: ClassVar[Training] = Training()
    #: settings for particular guides, e.g. ``{"exact": Training(steps=200)}``
    training_for_guide: ClassVar[dict[str, Training]] = {}
    max_plate_nesting: ClassVar[int] = 1
    #: the plate over data points, when each point has latents of its own (local latents): its
    #: name (mini-batches, per-point importance weights in the diagnostics), the data points per
    #: block of a pass over all the data and the (particle, point) pairs per chunk of the
    #: diagnostics (:class:`~zoo.data_plate.DataPlate`); None where every latent is global. A
    #: model that sizes its passes per instance sets ``self.data_plate`` in :meth:`setup`
    #: (:meth:`DataPlate.with_sizes <zoo.data_plate.DataPlate.with_sizes>`)
    data_plate: ClassVar[DataPlate | None] = None
    #: False where the per-particle log ratio log p(x, z) - log q(z) is an unbiased estimate of
    #: the ELBO but not an importance weight (a Rao-Blackwellised bound that scores one random
    #: term per particle): the diagnostics then report no IWAE and no k-hat
    importance_weights: ClassVar[bool] = True
    #: guides whose local factors have a closed-form optimum given everything else: SVI runs
    #: with them apply :meth:`local_step` around every gradient step unless told not to
    local_step_guides: ClassVar[tuple[str, ...]] = ()
    #: how a run trains unless told otherwise: "svi", or "closed-form" where the closed-form
    #: updates are what users of the model expect (variational EM for LDA)
    default_method: ClassVar[str] = "svi"
    #: what a closed-form coordinate-ascent step is called for this model ("EM", "CAVI")
    closed_form_name: ClassVar[str | None] = None
    #: runs shown on the leaderboard of ``python -m zoo.run all``: overrides of the defaults
    leaderboard: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    #: latents are a parameter vector (not one per data point): save posterior draws for ArviZ
    #: (``posterior.nc``, :meth:`FitResult.to_inference_data`; see :mod:`zoo.inference_data`)
    save_posterior_draws: ClassVar[bool] = False
    #: ArviZ dim names of the model's sites (latent and observed), the dims after (chain,
    #: draw), plate dims first: ``{"theta": ("school",), "y": ("school",)}``. A site left out
    #: takes its plates' names; unnamed event dims get ArviZ's ``<site>_dim_<k>``
    arviz_dims: ClassVar[dict[str, tuple[str, ...]]] = {}
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
        """The data plate(s), for autoguides of models that mini-batch; None otherwise."""
        return None

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
    def training_settings(cls, guide: str) -> Training:
        """The default training settings of ``guide`` (the model's unless it names others)."""
        return cls.training_for_guide.get(guide, cls.training)

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
    @classmethod
    def has_closed_form(cls) -> bool:
        return cls.closed_form_step is not ZooModel.closed_form_step

    def closed_form_step(self, guide: Callable[..., Any], guide_name: str) -> float | None:
        """One closed-form coordinate-ascent update of the param store (EM, CAVI).

        Returns the ELBO after the update where it is known in closed form (the run's history
        records it as ``train_elbo``, so monotone ascent can be checked exactly), else None.
        """
        raise ZooError(f"model {self.name!r} has no closed-form updates")

    def local_step(self, guide: Callable[..., Any], guide_name: str) -> None:
        """Set the guide's local factors to their optimum given the current parameters.

        The local step of stochastic variational inference (Hoffman, Blei, Wang & Paisley,
        JMLR 14 (2013) 1303-1347, §3 and Figure 4): in a conditionally conjugate model the
        factor of each data point's latent has a closed-form optimum, so the gradient steps
        only have to move what has none (here the model's parameters theta). At that optimum
        the gradient of the ELBO in theta is the gradient of log p(x | theta) itself
        (Neal & Hinton 1998), so theta no longer waits for the guide to follow it. The runner
        calls it before the first SVI step and after every step, for the guides named in
        :attr:`local_step_guides`.
        """
        raise ZooError(f"model {self.name!r} has no closed-form local step")

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

    def arviz_coords(self) -> dict[str, list[Any]]:
        """Coordinate values of the dims named in :attr:`arviz_dims`, by dim (school names,
        feature names); a dim left out is numbered 0, 1, ..."""
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
