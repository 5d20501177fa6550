"""ArviZ data of a fitted guide, for the models whose latent is a parameter vector.

ArviZ keeps the output of a Bayesian fit as named groups of labelled arrays, InferenceData
(R. Kumar, C. Carroll, A. Hartikainen & O. Martin, "ArviZ a unified library for exploratory
analysis of Bayesian models in Python", JOSS 4(33), 1143, 2019). For a model that sets
an ``arviz`` declaration (:class:`zoo.declarations.ArviZ`) the runner draws S = :data:`NUM_DRAWS`
independent samples z_s ~ q(z) from the fitted guide and :func:`posterior_draws` scores them
under the model, all generically with Pyro's own machinery: the guide runs under a
``pyro.plate`` of draws and the model is replayed on its samples
(:func:`pyro.infer.importance.vectorized_importance_weights`). :func:`to_inference_data` turns
the result into these groups, each variable named by its Pyro site:

``posterior``
    the model's latent sites at the draws, one chain: ``(chain, draw, *dims)``. Only the
    model's own latents: never a guide's auxiliary latent (a site marked ``is_auxiliary``, or
    named ``_...`` or ``..._unconstrained``, as joint autoguides and ``AutoNormal`` sample).
``sample_stats``
    ``lp`` = log p(x, z_s) and ``log_weight`` = log p(x, z_s) - log q(z_s), the importance
    weight of each draw (the ELBO is its mean, the IWAE bound its log-mean-exp); the group's
    attribute ``khat`` is the PSIS tail index of these weights (:func:`zoo.psis.pareto_khat`;
    ``-inf``: all weights equal, an exact guide). ``log_weight`` and ``khat`` are left out where
    the ratios are no importance weights (a point-mass guide, a Rao-Blackwellised model).
``log_likelihood``
    log p(x_i | z_s) per draw and per observation i of each observed site: the plates around the
    observed site give the observation dims, so for one data plate the shape is
    ``(chain, draw, observation)``, what PSIS-LOO needs (A. Vehtari, A. Gelman & J. Gabry,
    "Practical Bayesian model evaluation using leave-one-out cross-validation and WAIC",
    Statistics and Computing 27, 1413-1432, 2017): ``arviz.loo(data)`` runs on it.
``observed_data``
    the observed values.

A model names the dims of its sites and gives coordinate values (school names, feature names)
with its ``dims`` and ``coords`` (:class:`zoo.declarations.ArviZ`); a dim it does not name
takes its plate's name, an event dim ArviZ's default (``<site>_dim_<k>``).

``arviz.loo`` treats the draws as draws from the posterior. They are exactly that for an exact
guide; for any other guide they are draws from q, and how far q is from the posterior shows in
the spread of ``log_weight`` and in ``khat`` (Yao, Vehtari, Simpson & Gelman 2018).

Both ArviZ lines are supported, detected by feature (as in :mod:`zoo.outputs` and
:mod:`zoo.psis`): ArviZ 0.x's ``from_dict`` takes the groups as keyword arguments and returns
an ``InferenceData``; ArviZ 1.x's takes one mapping of groups and returns an
``xarray.DataTree``. :func:`load` reads a finished run's ``posterior.nc`` back as the same
type and its ``report.json`` beside it.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.util import site_is_subsample

from zoo.errors import ZooError, first_line
from zoo.psis import MIN_DRAWS, pareto_khat
from zoo.run_files import CONFIG, REPORT

if TYPE_CHECKING:  # pragma: no cover
    from zoo.model import ZooModel

__all__ = [
    "NUM_DRAWS",
    "POSTERIOR_FILE",
    "PosteriorDraws",
    "SavedRun",
    "is_internal",
    "load",
    "posterior_draws",
    "to_inference_data",
]

#: draws from the fitted guide that a run saves
NUM_DRAWS = 1000
#: the file a run directory keeps them in (netCDF-4, written by :mod:`zoo.outputs`)
POSTERIOR_FILE = "posterior.nc"
#: the plate :func:`~pyro.infer.importance.vectorized_importance_weights` draws under
_DRAWS_PLATE = "num_particles_vectorized"


def is_internal(name: str, site: Mapping[str, Any] | None = None) -> bool:
    """True for a site that is no latent of the model: a guide's auxiliary latent (marked
    ``is_auxiliary``) or a name that Pyro's autoguides use for theirs (``_...``,
    ``..._unconstrained``)."""
    if name.startswith("_") or name.endswith("_unconstrained"):
        return True
    return bool(site is not None and (site.get("infer") or {}).get("is_auxiliary"))


@dataclass(frozen=True, eq=False)
class PosteriorDraws(Mapping[str, torch.Tensor]):
    """S draws z_s ~ q(z) from a fitted guide and what the model says of them.

    A mapping from each latent site to its draws, shape ``(S, *site dims)``, so
    ``draws["w"]`` is the ``(S, D)`` tensor of the weights; beside it, per draw, the log
    joint, the log importance weight and each observed site's pointwise log-likelihood.
    :func:`to_inference_data` makes ArviZ data of it.
    """

    #: latent site -> (S, *dims): the model's latents at the guide's draws
    draws: dict[str, torch.Tensor]
    #: log p(x, z_s), shape (S,)
    log_joint: torch.Tensor
    #: log p(x, z_s) - log q(z_s), shape (S,); None where the ratios are no importance weights
    log_weight: torch.Tensor | None
    #: observed site -> (S, *observation dims): log p(x_i | z_s) per observation
    log_likelihood: dict[str, torch.Tensor]
    #: observed site -> its values, shape (*observation dims, *event shape)
    observed: dict[str, torch.Tensor]
    #: site -> names of its dims after the draw dim (a prefix where event dims go unnamed)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: dim -> coordinate values (school names, feature names)
    coords: dict[str, list[Any]] = field(default_factory=dict)
    #: PSIS tail index of ``log_weight`` (nan where not computed)
    khat: float = math.nan

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.draws[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.draws)

    def __len__(self) -> int:
        return len(self.draws)

    @property
    def num_draws(self) -> int:
        return int(self.log_joint.shape[0])


# -- scoring draws -------------------------------------------------------------------------------
def _plate_frames(site: Mapping[str, Any]) -> list[Any]:
    """The vectorized plates around a site, leftmost first, the plate of draws left out."""
    frames = [
        f
        for f in site["cond_indep_stack"]
        if f.vectorized and f.dim is not None and f.name != _DRAWS_PLATE
    ]
    return sorted(frames, key=lambda f: f.dim)


def _fold(
    tensor: torch.Tensor,
    event_dim: int,
    frames: list[Any],
    draws_dim: int,
    num: int,
    *,
    reduce: bool,
) -> torch.Tensor:
    """A site's tensor as ``(num, *plate sizes, *event shape)``: the draw dim first, then its
    plates' dims in order (a broadcast dim of size 1 expanded to its size). A batch dim outside
    every plate is summed where ``reduce`` (a log-probability) and otherwise dropped where it
    is a broadcast dim of size 1 (kept, after the plate dims, where it is not)."""
    t = torch.as_tensor(tensor)
    batch = t.dim() - event_dim
    if batch < -draws_dim:  # a tensor that never broadcast over the draws
        t = t.reshape((1,) * (-draws_dim - batch) + tuple(t.shape))
        batch = -draws_dim
    draw_axis = batch + draws_dim
    plate_axes = [batch + f.dim for f in frames]
    rest = [i for i in range(batch) if i != draw_axis and i not in plate_axes]
    keep: list[int] = []
    if reduce and rest:
        t = t.sum(rest, keepdim=True)
    elif not reduce:
        keep = [i for i in rest if t.shape[i] > 1]
    drop = [i for i in rest if i not in keep]
    t = t.permute(draw_axis, *plate_axes, *keep, *drop, *range(batch, t.dim()))
    head = tuple(t.shape[: 1 + len(plate_axes) + len(keep)])
    t = t.reshape(head + tuple(t.shape[batch:]))  # the dropped dims all have size 1
    sizes = [f.size for f in frames]
    return t.expand(num, *sizes, *t.shape[1 + len(sizes) :])


def _site_dims(zoo_model: ZooModel, name: str, frames: list[Any]) -> tuple[str, ...]:
    named = zoo_model.arviz.dims if zoo_model.arviz is not None else {}
    return tuple(named.get(name, tuple(f.name for f in frames)))


def _is_bound(guide_trace: Any) -> bool:
    from zoo.diagnostics import _is_bound as guide_is_bound  # one rule with the diagnostics

    latents = {
        name: site
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }
    return guide_is_bound(latents)


@torch.no_grad()
def posterior_draws(
    zoo_model: ZooModel,
    guide: Callable[..., Any],
    num_draws: int = NUM_DRAWS,
    **kwargs: Any,
) -> PosteriorDraws:
    """Draw ``num_draws`` samples from ``guide`` and score them under ``zoo_model``.

    The guide runs under a plate of draws at dim ``-(max_plate_nesting + 1)`` and the model is
    replayed on its samples (:func:`pyro.infer.importance.vectorized_importance_weights`); each
    site's log-probability then has the draws at that dim and its plates to the right of it.
    ``kwargs`` go to the model and the guide (``subsample_size=None`` for all the data).
    """
    if num_draws < 2:
        raise ValueError("posterior draws need at least 2 draws")
    mpn = zoo_model.max_plate_nesting
    draws_dim = -(mpn + 1)
    log_weight, model_trace, guide_trace = vectorized_importance_weights(
        zoo_model.model, guide, num_samples=num_draws, max_plate_nesting=mpn, **kwargs
    )
    draws: dict[str, torch.Tensor] = {}
    log_lik: dict[str, torch.Tensor] = {}
    observed: dict[str, torch.Tensor] = {}
    dims: dict[str, tuple[str, ...]] = {}
    log_joint = torch.zeros(num_draws, dtype=torch.float64, device=log_weight.device)
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        frames = _plate_frames(site)
        event_dim = site["fn"].event_dim
        log_prob = _fold(site["log_prob"], 0, frames, draws_dim, num_draws, reduce=True)
        log_joint = log_joint + log_prob.reshape(num_draws, -1).sum(-1)
        if site["is_observed"]:
            log_lik[name] = log_prob.cpu()
            shape = site["fn"].batch_shape + site["fn"].event_shape
            value = torch.as_tensor(site["value"]).expand(shape)
            value = _fold(value, event_dim, frames, draws_dim, num_draws, reduce=False)
            observed[name] = value[0].cpu()
        elif not is_internal(name, site):
            value = site["value"]
            draws[name] = _fold(value, event_dim, frames, draws_dim, num_draws, reduce=False).cpu()
        else:
            continue
        dims[name] = _site_dims(zoo_model, name, frames)
    from zoo.diagnostics import draws_random_term

    weights = _is_bound(guide_trace) and not (
        draws_random_term(model_trace) or draws_random_term(guide_trace)
    )
    khat = math.nan
    if weights and num_draws >= MIN_DRAWS and bool(torch.isfinite(log_weight).all()):
        khat = pareto_khat(log_weight)
    return PosteriorDraws(
        draws=draws,
        log_joint=log_joint.cpu(),
        log_weight=log_weight.detach().cpu() if weights else None,
        log_likelihood=log_lik,
        observed=observed,
        dims=dims,
        coords=zoo_model.arviz.coordinates(zoo_model) if zoo_model.arviz is not None else {},
        khat=float(khat),
    )


# -- ArviZ data ----------------------------------------------------------------------------------
def _arviz() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz 0.x warns about its refactor on import
        import arviz as az
    return az


def _from_dict(groups: dict[str, dict[str, np.ndarray]], **kwargs: Any) -> Any:
    """``arviz.from_dict`` of either line: ArviZ 0.x takes the groups as keyword arguments
    (and returns InferenceData), ArviZ 1.x one mapping of groups (and returns a DataTree)."""
    az = _arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # more dims named than an array has: ArviZ truncates
        if "posterior" in inspect.signature(az.from_dict).parameters:
            return az.from_dict(**groups, **kwargs)
        return az.from_dict(groups, **kwargs)


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


#: what each variable of ``sample_stats`` is, as its ``long_name`` attribute
_DESCRIPTIONS = {
    "lp": "log p(x, z) of each draw",
    "log_weight": "log p(x, z) - log q(z) of each draw: its log importance weight",
}


def to_inference_data(
    draws: PosteriorDraws | Mapping[str, torch.Tensor | np.ndarray],
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """ArviZ data of ``draws``: InferenceData on ArviZ 0.x, a DataTree on 1.x.

    From :class:`PosteriorDraws`, the groups ``posterior``, ``sample_stats``,
    ``log_likelihood`` and ``observed_data`` (module docstring); from a plain mapping of site
    names to draws (leading dim: the draws), a ``posterior`` group alone. ``attrs`` (the model,
    the guide) go to the ``posterior`` group's attributes.
    """
    if not isinstance(draws, PosteriorDraws):
        posterior = {name: _numpy(value)[None] for name, value in draws.items()}
        data = _from_dict({"posterior": posterior})
        data["posterior"].attrs.update(attrs or {})
        return data
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": {name: _numpy(value)[None] for name, value in draws.draws.items()},
        "sample_stats": {"lp": _numpy(draws.log_joint)[None]},
        "log_likelihood": {name: _numpy(lp)[None] for name, lp in draws.log_likelihood.items()},
        "observed_data": {name: _numpy(value) for name, value in draws.observed.items()},
    }
    if draws.log_weight is not None:
        groups["sample_stats"]["log_weight"] = _numpy(draws.log_weight)[None]
    dims = {name: list(names) for name, names in draws.dims.items() if names}
    coords = {dim: list(values) for dim, values in draws.coords.items()}
    data = _from_dict(groups, dims=dims, coords=coords)
    data["posterior"].attrs.update(
        {"inference_library": "pyro", "draws_from": "the fitted guide q(z)", **(attrs or {})}
    )
    stats = data["sample_stats"]
    stats.attrs["khat"] = draws.khat
    for name, text in _DESCRIPTIONS.items():
        if name in stats:
            stats[name].attrs["long_name"] = text
    return data


# -- reading a saved run back ---------------------------------------------------------------------
class SavedRun(NamedTuple):
    """A finished run read back from its directory by :func:`load`.

    A tuple, so ``idata, report = zoo.load(run_dir)`` works as well as ``zoo.load(run_dir).report``.
    """

    #: the run's ArviZ data from ``posterior.nc`` (InferenceData on ArviZ 0.x, a DataTree on
    #: 1.x); None for a model that saves no posterior draws
    inference_data: Any
    #: the run's ``report.json``: model, config, training, seconds, diagnostics, summary, files
    report: dict[str, Any]


def _read_netcdf(payload: bytes) -> Any:
    """netCDF bytes as the installed ArviZ's own type, loaded whole (no file stays open)."""
    import xarray as xr

    tree = xr.open_datatree(io.BytesIO(payload), engine="h5netcdf").load()
    inference_data = getattr(_arviz(), "InferenceData", xr.DataTree)
    if inference_data is not xr.DataTree and hasattr(inference_data, "from_datatree"):
        return inference_data.from_datatree(tree)  # ArviZ 0.x
    return tree  # ArviZ 1.x: InferenceData is DataTree


def load(run_dir: str | Path) -> SavedRun:
    """The ArviZ data and report of the finished run in ``run_dir``.

    Returns a :class:`SavedRun` ``(inference_data, report)``: the posterior draws, importance
    weights, pointwise log-likelihood and data of ``posterior.nc`` (None where the model saves
    none) and the parsed ``report.json``. A directory without a finished run (no such
    directory, no ``report.json``), or an unreadable file, is a one-line :class:`ZooError`.
    """
    directory = Path(run_dir)
    if not directory.is_dir():
        raise ZooError(f"{run_dir} is not a run directory")
    report_path = directory / REPORT
    try:
        text = report_path.read_bytes()
    except FileNotFoundError:
        what = "an unfinished run" if (directory / CONFIG).is_file() else "no run"
        raise ZooError(f"{run_dir} holds {what} (no {REPORT})") from None
    except OSError as exc:
        raise ZooError(f"cannot read {report_path}: {exc.strerror or exc}") from None
    try:
        report = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ZooError(f"{report_path} is not valid JSON: {first_line(exc)}") from None
    if not isinstance(report, dict):
        raise ZooError(f"{report_path} must hold a JSON object")
    path = directory / POSTERIOR_FILE
    if POSTERIOR_FILE not in report.get("files", []):
        return SavedRun(None, report)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ZooError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = _read_netcdf(payload)
    except Exception as exc:  # h5py and xarray raise anything from OSError to ValueError
        raise ZooError(f"cannot read {path}: {first_line(exc)}") from None
    return SavedRun(data, report)
