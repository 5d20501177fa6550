"""Training steps behind one small interface, and the wrappers that go around them.

A :class:`Stepper` makes one step of training and returns its loss (the negative training
objective; NaN where a step has none). The runner's loop knows only this:

- :class:`SVIStep`: one :meth:`pyro.infer.SVI.step` on a mini-batch (or all the data);
- :class:`CompiledSVIStep`: the same step through one compiled graph of the loss and its
  gradient (:mod:`zoo.compiled`), where the run asks for it and the model qualifies;
- :class:`ClosedFormStep`: one sweep of the model's coordinate ascent (EM's E and M steps,
  CAVI), :meth:`~zoo.model.ZooModel.closed_form_step`;

and the wrappers compose what some runs add around a step:

- :class:`KLWarmup`: the weight of the latent sites for this step (Bowman et al. 2016);
- :class:`ModelSchedule`: the model's own schedule hook (:meth:`~zoo.model.ZooModel.on_step`);
- :class:`LocalSteps`: the closed-form local step after the step (Hoffman et al. 2013, §3).

:func:`make_stepper` assembles them from a run's config.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from pyro.infer import SVI
from pyro.infer.util import zero_grads

from zoo.annealing import LatentScale, warmup_weight
from zoo.declarations import local_step_for
from zoo.errors import ZooError
from zoo.model import ZooModel


class Stepper(Protocol):
    def step(self, step: int) -> float:
        """Make training step ``step`` (1-based); return its loss."""


class SVIStep:
    """One SVI step; ``guard`` runs it and turns a failure into a one-line error."""

    def __init__(
        self,
        svi: SVI,
        kwargs: dict[str, Any],
        guard: Callable[[int, Callable[[], Any]], Any],
    ) -> None:
        self.svi, self.kwargs, self.guard = svi, kwargs, guard

    def step(self, step: int) -> float:
        begin = getattr(self.svi, "begin_step", None)  # data-parallel: the step's shard and noise
        if begin is not None:  # (zoo.distributed.DataParallelSVI)
            begin(step)
        return float(self.guard(step, lambda: self.svi.step(**self.kwargs)))


class CompiledSVIStep:
    """SVI steps through one compiled graph of the loss and its gradient (:mod:`zoo.compiled`),
    built at the first step (after a resumed run's parameters are loaded); the eager step where
    the model does not qualify. :attr:`status` says which, and why."""

    def __init__(
        self,
        eager: SVIStep,
        build: Callable[[], Any],
        optim: Any,
        guard: Callable[[int, Callable[[], Any]], Any],
    ) -> None:
        self.eager, self.build, self.optim, self.guard = eager, build, optim, guard
        self.compiled: Any = None
        #: ``{"compiled": True, "build_seconds": ...}`` or ``{"compiled": False, "why": ...}``;
        #: None before the first step
        self.status: dict[str, Any] | None = None

    def step(self, step: int) -> float:
        if self.status is None:
            self._build()
        if self.compiled is None:
            return self.eager.step(step)
        return float(self.guard(step, self._step))

    def _build(self) -> None:
        from zoo.compiled import NotCompilable

        if getattr(self.eager.svi, "begin_step", None) is not None:
            self.status = {"compiled": False, "why": "data-parallel steps are not compiled"}
            return
        try:
            self.compiled = self.build().build()
        except NotCompilable as exc:
            self.status = {"compiled": False, "why": str(exc)}
            return
        self.status = {"compiled": True, "build_seconds": self.compiled.build_seconds}

    def _step(self) -> float:
        loss = self.compiled.step()
        self.optim(self.compiled.params)  # what pyro.infer.SVI.step does after its backward
        zero_grads(self.compiled.params)
        return loss


class ClosedFormStep:
    """One sweep of the model's closed-form updates; its loss is minus the ELBO after it,
    where the model knows it in closed form."""

    def __init__(self, model: ZooModel, guide: Callable[..., Any], guide_name: str) -> None:
        self.model, self.guide, self.guide_name = model, guide, guide_name

    def step(self, step: int) -> float:
        with torch.no_grad():
            value = self.model.closed_form_step(self.guide, self.guide_name)
        return math.nan if value is None else -float(value)


class KLWarmup:
    """Set the latent sites' weight for the step: linear from 0 to 1 over ``steps`` steps."""

    def __init__(self, inner: Stepper, scale: LatentScale, steps: int) -> None:
        self.inner, self.scale, self.steps = inner, scale, steps

    def step(self, step: int) -> float:
        self.scale.weight = warmup_weight(step, self.steps)
        return self.inner.step(step)


class ModelSchedule:
    """Tell the model which step of ``total`` is about to run (its own schedules)."""

    def __init__(self, inner: Stepper, model: ZooModel, total: int) -> None:
        self.inner, self.model, self.total = inner, model, total

    def step(self, step: int) -> float:
        self.model.on_step(step, self.total)
        return self.inner.step(step)


class LocalSteps:
    """After the step, the guide's closed-form local step (:class:`~zoo.declarations.Guide`)."""

    def __init__(self, inner: Stepper, model: ZooModel, guide: Any, guide_name: str) -> None:
        self.inner, self.model, self.guide, self.guide_name = inner, model, guide, guide_name

    def step(self, step: int) -> float:
        loss = self.inner.step(step)
        local_step(self.model, self.guide, self.guide_name)
        return loss


def local_step(model: ZooModel, guide: Any, guide_name: str) -> None:
    """The closed-form local step of the guide ``guide_name`` (its declaration's), outside
    autograd."""
    update = local_step_for(model, guide_name)
    if update is None:
        raise ZooError(f"model {model.name!r} has no closed-form local step for {guide_name!r}")
    with torch.no_grad():
        update(model, guide)


def make_stepper(
    config: Any,
    model: ZooModel,
    guide: Any,
    svi: SVI | None,
    scale: LatentScale,
    kwargs: dict[str, Any],
    guard: Callable[[int, Callable[[], Any]], Any],
) -> Stepper:
    """The stepper of a run: closed-form sweeps, or SVI with the wrappers its config asks for."""
    if svi is None:
        return ClosedFormStep(model, guide, config.guide)
    stepper: Stepper = SVIStep(svi, kwargs, guard)
    if config.compile:
        build = functools.partial(compiled_elbo, config, model, guide, scale, kwargs)
        stepper = CompiledSVIStep(stepper, build, svi.optim, guard)
    stepper = ModelSchedule(stepper, model, config.steps)
    if config.kl_warmup:
        stepper = KLWarmup(stepper, scale, config.kl_warmup)
    if config.local_steps:
        stepper = LocalSteps(stepper, model, guide, config.guide)
    return stepper


def compiled_elbo(
    config: Any, model: ZooModel, guide: Any, scale: LatentScale, kwargs: dict[str, Any]
) -> Any:
    """The :class:`~zoo.compiled.CompiledELBO` of a run's SVI step (not yet built)."""
    from zoo.compiled import Batch, CompiledELBO

    batch = None
    size = config.batch_size
    if size is not None and model.data_plate is not None and size < model.num_data:
        batch = Batch(model.data_plate.name, model.num_data, size, model.device)
    return CompiledELBO(
        model.model,
        guide,
        estimator=config.elbo,
        particles=config.particles,
        max_plate_nesting=model.max_plate_nesting,
        batch=batch,
        latent_scale=scale if config.kl_warmup else None,
        kwargs=kwargs,
    )


def compile_status(stepper: Any) -> dict[str, Any] | None:
    """What became of a run's ``compile`` setting (:attr:`CompiledSVIStep.status`): None
    where the run did not ask for it."""
    while stepper is not None:
        if isinstance(stepper, CompiledSVIStep):
            return stepper.status
        stepper = getattr(stepper, "inner", None)
    return None
