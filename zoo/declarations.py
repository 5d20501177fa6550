"""What a model declares besides its code: small values, one per concern.

A :class:`~zoo.model.ZooModel` says how it trains, which estimators apply, what is particular
to each of its guides, whether it has closed-form updates and how its posterior draws are named
for ArviZ with one value each, instead of one class attribute per detail:

- :class:`Training`: the default steps, learning rate, particles, records...;
- :class:`Guide`: what one guide changes (its estimator, its training, its closed-form local
  step): ``guides = {"prior-family": Guide(elbo="meanfield", local_step=...), "exact": Guide()}``
  (a tuple of names where no guide needs anything particular);
- :class:`Estimators`: the ``--elbo`` choices and the default;
- :class:`ClosedForm`: the name of the model's coordinate-ascent updates (EM, CAVI) and whether
  they are how it trains by default;
- :class:`ArviZ`: the dims and coordinates of the posterior draws, for a model whose latent is a
  parameter vector (:mod:`zoo.inference_data`).

The functions below settle what a run of a guide uses (:func:`training_for`,
:func:`elbo_for`, :func:`local_step_for`): the settings (:mod:`zoo.settings`), the runner and the
leaderboard read declarations only through them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zoo.model import ZooModel

#: the estimators that suit continuous latents with reparameterised guides
CONTINUOUS_ESTIMATORS = ("trace", "meanfield", "graph", "iwae")


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
    #: is costly (it scores ``trace_particles`` particles of every data point). Records draw
    #: from a random stream of their own, so their number never changes the training; 100
    #: keep their cost under a tenth of the training's on the small models
    records: int = 100
    #: KL warm-up over this fraction of the SVI steps unless a run sets ``kl_warmup`` (the
    #: amortized models' practice: Bowman et al. 2016; Sønderby et al. 2016)
    kl_warmup_fraction: float = 0.0


#: a closed-form local step: sets ``guide``'s local factors to their optimum given the rest
LocalStep = Callable[[Any, Any], None]


@dataclass(frozen=True)
class Guide:
    """What is particular to one guide of a model; every field defaults to the model's.

    ``local_step(model, guide)`` sets the guide's local factors to their closed-form optimum
    given the current parameters: the local step of stochastic variational inference (Hoffman,
    Blei, Wang & Paisley, JMLR 14 (2013) 1303-1347, §3 and Figure 4). In a conditionally
    conjugate model each data point's factor has a closed-form optimum, so the gradient steps
    only have to move what has none (the model's parameters theta); at that optimum the gradient
    of the ELBO in theta is that of log p(x | theta) itself (Neal & Hinton 1998). SVI runs of
    the guide apply it before the first step and after every step unless told not to
    (``--no-local-steps``).
    """

    #: the estimator of this guide unless the run names another (None: the model's default)
    elbo: str | None = None
    #: the training defaults of this guide (None: the model's ``training``)
    training: Training | None = None
    local_step: LocalStep | None = None


@dataclass(frozen=True)
class Estimators:
    """The estimators that apply to a model (names in :data:`zoo.estimators.ESTIMATORS`): the
    command line's ``--elbo`` choices and what :func:`zoo.fit` accepts, and the default.

    The default choices suit continuous latents with reparameterised guides; a model with
    discrete latents drops ``meanfield`` (it needs reparameterised, mean-field guides) and adds
    ``enum`` where its discrete sites can be enumerated. ``iwae`` needs 2 or more particles.
    """

    choices: tuple[str, ...] = CONTINUOUS_ESTIMATORS
    default: str = "trace"


@dataclass(frozen=True)
class ClosedForm:
    """The model's closed-form coordinate-ascent updates
    (:meth:`~zoo.model.ZooModel.closed_form_step`)."""

    #: what a step is called ("EM", "CAVI", "variational EM")
    name: str
    #: True where the closed-form updates are how users of the model expect it to train
    #: (variational EM for LDA): ``method="closed-form"`` is then the default
    default: bool = False


@dataclass(frozen=True)
class ArviZ:
    """Posterior draws for ArviZ (``posterior.nc``, :meth:`FitResult.to_inference_data
    <zoo.results.FitResult.to_inference_data>`), for a model whose latent is a parameter vector
    (not one per data point).

    ``dims``: the dim names of the model's sites (latent and observed) after (chain, draw),
    plate dims first: ``{"theta": ("school",), "y": ("school",)}``. A site left out takes its
    plates' names; unnamed event dims get ArviZ's ``<site>_dim_<k>``. ``coords``: for a dim, the
    model attribute that holds its values (``{"school": "groups"}``); a dim left out is numbered
    0, 1, ...
    """

    dims: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    coords: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def coordinates(self, model: Any) -> dict[str, list[Any]]:
        """The coordinate values of ``model``'s dims, by dim."""
        return {dim: list(getattr(model, attr)) for dim, attr in self.coords.items()}


def as_guides(guides: Mapping[str, Guide] | tuple[str, ...] | list[str]) -> dict[str, Guide]:
    """A model's ``guides`` as a mapping of name to :class:`Guide` (a tuple of names means no
    guide needs anything particular)."""
    if isinstance(guides, Mapping):
        return dict(guides)
    return {name: Guide() for name in guides}


def training_for(model: type[ZooModel] | ZooModel, guide: str) -> Training:
    """The default training settings of ``guide`` (the model's unless the guide has its own)."""
    spec = model.guides.get(guide)
    return spec.training if spec is not None and spec.training is not None else model.training


def elbo_for(model: type[ZooModel] | ZooModel, guide: str) -> str:
    """The default estimator of ``guide`` (the model's unless the guide names another)."""
    spec = model.guides.get(guide)
    return spec.elbo if spec is not None and spec.elbo is not None else model.estimators.default


def local_step_for(model: type[ZooModel] | ZooModel, guide: str) -> LocalStep | None:
    """The closed-form local step of ``guide``, or None where it has none."""
    spec = model.guides.get(guide)
    return None if spec is None else spec.local_step


def local_step_guides(model: type[ZooModel] | ZooModel) -> tuple[str, ...]:
    """The guides of ``model`` that have a closed-form local step."""
    return tuple(name for name, spec in model.guides.items() if spec.local_step is not None)


def default_method(model: type[ZooModel] | ZooModel) -> str:
    """ "closed-form" where the model's closed-form updates are its default, else "svi"."""
    return "closed-form" if model.closed_form is not None and model.closed_form.default else "svi"


#: the mark :func:`in_place_schedule` sets on a step hook
_IN_PLACE = "_zoo_in_place_schedule"


def in_place_schedule(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a model's step hook (its ``on_step``) as changing only tensors that a training
    step reads in place (a weight average, an importance sampler's density, updated with
    in-place operations): a compiled step (:mod:`zoo.compiled`), which reads its tensors in
    place, then computes what the eager step would, and such a run may compile. A hook without
    the mark (one that rebinds a tensor, or changes the model's structure) trains eagerly."""
    setattr(hook, _IN_PLACE, True)
    return hook


def is_in_place_schedule(hook: Callable[..., Any]) -> bool:
    """Whether ``hook`` (a function or a bound method) carries :func:`in_place_schedule`'s mark."""
    return bool(getattr(hook, _IN_PLACE, False))
