"""Training steps behind one small interface, and the wrappers that go around them.

A :class:`Stepper` makes one step of training and returns its loss (the negative training
objective; NaN where a step has none). The runner's loop knows only this:

- :class:`SVIStep`: one :meth:`pyro.infer.SVI.step` on a mini-batch (or all the data);
- :class:`ClosedFormStep`: one sweep of the model's coordinate ascent (EM's E and M steps,
  CAVI), :meth:`~zoo.model.ZooModel.closed_form_step`;

and the wrappers compose what some runs add around a step:

- :class:`KLWarmup`: the weight of the latent sites for this step (Bowman et al. 2016);
- :class:`ModelSchedule`: the model's own schedule hook (:meth:`~zoo.model.ZooModel.on_step`);
- :class:`LocalSteps`: the closed-form local step after the step (Hoffman et al. 2013, §3).

:func:`make_stepper` assembles them from a run's config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from pyro.infer import SVI

from zoo.annealing import LatentScale, warmup_weight
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
        return float(self.guard(step, lambda: self.svi.step(**self.kwargs)))


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
    """After the step, the model's closed-form local step for the guide."""

    def __init__(self, inner: Stepper, model: ZooModel, guide: Any, guide_name: str) -> None:
        self.inner, self.model, self.guide, self.guide_name = inner, model, guide, guide_name

    def step(self, step: int) -> float:
        loss = self.inner.step(step)
        local_step(self.model, self.guide, self.guide_name)
        return loss


def local_step(model: ZooModel, guide: Any, guide_name: str) -> None:
    """The model's closed-form local step, outside autograd."""
    with torch.no_grad():
        model.local_step(guide, guide_name)


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
    stepper = ModelSchedule(stepper, model, config.steps)
    if config.kl_warmup:
        stepper = KLWarmup(stepper, scale, config.kl_warmup)
    if config.local_steps:
        stepper = LocalSteps(stepper, model, guide, config.guide)
    return stepper
