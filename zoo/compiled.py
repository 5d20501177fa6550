"""A compiled ELBO for models of fixed structure: trace once, build the loss, compile it.

Each SVI step of Pyro runs the model and the guide as Python: effect handlers, site
dictionaries and distribution objects cost more than the arithmetic on small models (a step of
Bayesian linear regression on 442 points spends over 80% of its time there). Where the
structure is static (the same sites, shapes and operations every step, only new random draws
and new parameter values) the whole step can be recorded once as a graph of tensor operations
and replayed: :class:`CompiledELBO` runs the guide and the replayed model under
:func:`torch.fx.experimental.proxy_tensor.make_fx`, which records the forward pass, the loss
built from the two traces and its backward pass (:func:`torch.autograd.grad`) as one
:class:`torch.fx.GraphModule`, then compiles it with :func:`torch.compile` (TorchInductor's
fused C++ kernels on CPU). Random draws stay random: the graph calls torch's generator as the
eager step would, in the same order, so a seeded compiled run draws the very numbers of the
eager one.

The loss is Pyro's, rebuilt from the traces, for reparameterised guides:

- ``trace`` (:class:`~pyro.infer.Trace_ELBO`): log p(x, z) - log q(z) of each particle;
- ``meanfield`` (:class:`~pyro.infer.TraceMeanField_ELBO`): the expected log-likelihood minus
  the KL of each latent site in closed form where torch has it (else its log ratio);

averaged over ``particles`` particles drawn at once (the zoo's vectorized particles). What
changes between steps enters the graph as an input, not a constant: the mini-batch's indices
(answered to the data plate's subsample site) and the KL warm-up weight. Parameters are read in
place, so the optimizer's updates are seen.

The runner uses it (``compile``: on by default where it applies) only after checking it: the
graph's loss and gradient must equal the eager loss and gradient of the same draws, on two
draws, to half the digits of their dtype (fused, reordered sums round differently; other draws
or a missing term change the leading digits). Where a model or
guide does not qualify (a guide site that is not reparameterised, enumeration, a model that
changes with the step, sites that change between traces), or the compiler is missing, the run
says why and trains eagerly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.enum import get_importance_trace
from pyro.poutine.util import site_is_subsample

from zoo.annealing import LatentScale
from zoo.subsample import BatchShard, sample_without_replacement

#: the estimators whose loss this module rebuilds
COMPILED_ESTIMATORS = ("trace", "meanfield")


class NotCompilable(Exception):
    """Why a model and guide train eagerly: one line, for the run's report."""


@dataclass
class Batch:
    """A data plate subsampled to ``size`` of ``num_data`` points each step (None: all)."""

    plate: str
    num_data: int
    size: int
    device: torch.device

    def draw(self) -> torch.Tensor:
        return sample_without_replacement(self.num_data, self.size, self.device)


def _vectorized(fn: Callable[..., Any], particles: int, dim: int) -> Callable[..., Any]:
    """``fn`` under the particle plate, as Pyro's ELBO vectorizes it (none for one particle)."""
    if particles == 1:
        return fn
    return pyro.plate("num_particles_vectorized", particles, dim=dim)(fn)


@contextlib.contextmanager
def _no_validation() -> Iterator[None]:
    """Pyro's and torch's argument checks off: they read tensor values, which a graph cannot."""
    before = torch.distributions.Distribution._validate_args
    try:
        with pyro.validation_enabled(False):
            torch.distributions.Distribution.set_default_validate_args(False)
            yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(before)


def _elbo_from_traces(estimator: str, model_trace: Any, guide_trace: Any) -> torch.Tensor:
    """The ELBO summed over the particles, as ``Trace_ELBO`` or ``TraceMeanField_ELBO``
    computes it from the same traces (reparameterised guides)."""
    if estimator == "trace":
        return model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    elbo = torch.zeros(())
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            elbo = elbo + site["log_prob_sum"]
            continue
        q = guide_trace.nodes[name]
        try:
            kl = torch.distributions.kl_divergence(q["fn"], site["fn"])
        except NotImplementedError:
            elbo = elbo + site["log_prob_sum"] - q["score_parts"].entropy_term.sum()
            continue
        kl = scale_and_mask(kl, scale=q["scale"], mask=q["mask"])
        if torch.is_tensor(kl):
            elbo = elbo - kl.sum()
        else:
            elbo = elbo - kl * torch.Size(q["fn"].batch_shape).numel()
    for name, q in guide_trace.nodes.items():  # auxiliary latents of the guide
        if q["type"] == "sample" and name not in model_trace.nodes:
            elbo = elbo - q["score_parts"].entropy_term.sum()
    return elbo


def _structure(trace: Any) -> list[tuple[Any, ...]]:
    """What must not change between steps: each site's name, kind and shape."""
    out = []
    for name, site in trace.nodes.items():
        if site["type"] in ("sample", "param"):
            value = site["value"]
            shape = tuple(value.shape) if torch.is_tensor(value) else None
            out.append((name, site["type"], site.get("is_observed"), shape))
    return out


def _check_reparameterised(guide_trace: Any) -> None:
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        if site["infer"].get("enumerate"):
            raise NotCompilable(f"guide site {name!r} is enumerated")
        if not getattr(site["fn"], "has_rsample", False):
            raise NotCompilable(f"guide site {name!r} is not reparameterised")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to half the digits of their dtype (sqrt(eps) relative to the largest entry): a
    compiler that fuses and reorders sums over many terms, some of which cancel, loses digits
    to rounding; a graph with other draws, a missing term or a stale parameter differs in the
    leading ones."""
    scale = max(float(a.detach().abs().max()), torch.finfo(a.dtype).tiny)
    tol = math.sqrt(torch.finfo(a.dtype).eps) * scale
    return a.shape == b.shape and bool(((a - b).abs() <= tol).all())


class CompiledELBO:
    """The loss and gradient of one SVI step of ``model``/``guide`` as a compiled graph.

    :param estimator: ``trace`` or ``meanfield``.
    :param particles: vectorized particles per step.
    :param max_plate_nesting: the model's (the particle plate goes one dim further left).
    :param batch: the data plate's mini-batch, or None where every step sees all the data.
    :param latent_scale: the KL warm-up's weight of the latent sites, or None.
    :param kwargs: the model's and guide's keyword arguments (``subsample_size``).

    Build with :meth:`build` after the parameters exist (after a first eager trace); it raises
    :class:`NotCompilable` where the model does not qualify. Then :meth:`step` gives the loss
    and sets the parameters' ``.grad``, as ``loss_and_grads`` of a Pyro ELBO does.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        *,
        estimator: str,
        particles: int,
        max_plate_nesting: int,
        batch: Batch | None = None,
        latent_scale: LatentScale | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        if estimator not in COMPILED_ESTIMATORS:
            raise NotCompilable(f"the {estimator!r} estimator is not compiled")
        self.estimator = estimator
        self.particles = particles
        self.latent_scale = latent_scale
        self.batch = batch
        self.kwargs = dict(kwargs or {})
        self.shard = BatchShard(batch.plate) if batch is not None else None
        dim = -(max_plate_nesting + 1)
        wrapped_model, wrapped_guide = model, guide
        if self.shard is not None:
            wrapped_model, wrapped_guide = self.shard(wrapped_model), self.shard(wrapped_guide)
        if latent_scale is not None:
            wrapped_model = latent_scale(wrapped_model)
            wrapped_guide = latent_scale(wrapped_guide)
        self.model = _vectorized(wrapped_model, particles, dim)
        self.guide = _vectorized(wrapped_guide, particles, dim)
        self.max_plate_nesting = max_plate_nesting + (particles > 1)
        self.params: list[torch.Tensor] = []
        self.graph: Callable[..., Any] | None = None
        #: seconds spent tracing and compiling (the first call compiles)
        self.build_seconds = math.nan

    # -- the eager loss -------------------------------------------------------------------------
    def _traces(self) -> tuple[Any, Any]:
        return get_importance_trace(
            "flat", self.max_plate_nesting, self.model, self.guide, (), self.kwargs
        )

    def _eager(self, indices: torch.Tensor, weight: torch.Tensor) -> tuple[Any, ...]:
        """The step's loss and gradient, eagerly: what the graph records."""
        saved = self.latent_scale.weight if self.latent_scale is not None else None
        if self.shard is not None:
            self.shard.indices = indices
        if self.latent_scale is not None:
            self.latent_scale.weight = weight
        try:
            model_trace, guide_trace = self._traces()
        finally:
            if self.shard is not None:
                self.shard.indices = None
            if self.latent_scale is not None:
                self.latent_scale.weight = saved
        loss = -_elbo_from_traces(self.estimator, model_trace, guide_trace) / self.particles
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = tuple(
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)
        )
        return (loss.detach(), *grads)

    # -- building -------------------------------------------------------------------------------
    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's mini-batch (empty: all the data) and latent weight (float64: a Python
        float's precision, which Pyro's eager scale has)."""
        indices = self.batch.draw() if self.batch is not None else torch.zeros(0, dtype=torch.long)
        weight = float(self.latent_scale.weight) if self.latent_scale is not None else 1.0
        return indices, torch.tensor(weight, dtype=torch.float64)

    def build(self, compile: bool = True) -> CompiledELBO:
        """Trace the step into a graph, compile it and check it against the eager step."""
        start = time.perf_counter()
        with _no_validation(), torch.random.fork_rng(devices=[]):
            indices, weight = self._inputs()
            if self.shard is not None:
                self.shard.indices = indices
            with poutine.trace(param_only=True) as params:
                first = self._traces()
            if self.shard is not None:
                self.shard.indices = None
            _check_reparameterised(first[1])
            self.params = [site["value"].unconstrained() for site in params.trace.nodes.values()]
            if not self.params:
                raise NotCompilable("the guide and model have no parameters")
            if _structure(self._traces()[0]) != _structure(first[0]):
                raise NotCompilable("the model's sites change between draws")
            from torch.fx.experimental.proxy_tensor import make_fx

            try:
                graph = make_fx(lambda i, w: self._eager(i, w))(indices, weight)
            except Exception as exc:  # data-dependent Python control flow, unsupported ops
                raise NotCompilable(f"the step cannot be traced: {_first(exc)}") from None
            if compile:
                # torch's own random kernels, so a compiled run draws what the eager one does
                graph = torch.compile(graph, dynamic=False, options={"fallback_random": True})
            self.graph = graph
            for seed in (1, 2):
                indices, weight = self._inputs()
                state = torch.get_rng_state()
                torch.manual_seed(seed)
                eager = self._eager(indices, weight)
                torch.manual_seed(seed)
                try:
                    traced = self._replay(indices, weight)
                except Exception as exc:  # no C++ compiler; shapes that follow the data
                    raise NotCompilable(
                        f"the recorded step does not compile or replay: {_first(exc)}"
                    ) from None
                torch.set_rng_state(state)
                if not all(_close(a, b) for a, b in zip(eager, traced, strict=True)):
                    raise NotCompilable("the compiled loss or gradient differs from Pyro's")
        self.build_seconds = time.perf_counter() - start
        return self

    # -- a step ---------------------------------------------------------------------------------
    def _replay(self, indices: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph on this step's inputs. Its backward pass is in it, recorded as operations:
        no autograd around it (which would also ask the compiler for their derivatives)."""
        with torch.no_grad():
            return self.graph(indices, weight)

    def step(self) -> float:
        """One step's loss; the parameters' ``.grad`` hold its gradient."""
        indices, weight = self._inputs()
        loss, *grads = self._replay(indices, weight)
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad if param.grad is None else param.grad + grad
        return float(loss)


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
