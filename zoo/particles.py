"""Vectorized particles: the check that a model broadcasts over them.

The diagnostics and the estimators draw S particles at once (Pyro's ``vectorize_particles``):
every latent gains a leading particle dimension at ``-(max_plate_nesting + 1)``, and a model must
carry it through (index from the right, ``(w * X).sum(-1)`` rather than ``X @ w``). A model that
does not either fails with a shape error deep inside Pyro or, worse, mixes particles silently.
:func:`check_broadcast` tells the two apart from a correct model by scoring the same particles
twice, vectorized and one at a time; :func:`vectorized_or_named` turns the first kind of failure
into a one-line :class:`ParticleBroadcastError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.util import site_is_subsample

from zoo.errors import ZooError, first_line

_HINT = "index from the right and write (w * X).sum(-1), not X @ w"


class ParticleBroadcastError(ZooError):
    """A model (or guide) that does not broadcast over a leading particle dimension."""


def _log_weight(trace_model: Any, trace_guide: Any) -> torch.Tensor:
    return trace_model.log_prob_sum() - trace_guide.log_prob_sum()


def sequential_log_weight(model: Callable[[], Any], guide: Callable[[], Any]) -> torch.Tensor:
    """log p(x, z) - log q(z) for one particle z ~ q, scored without vectorization."""
    guide_trace = poutine.trace(guide).get_trace()
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace()
    return _log_weight(model_trace, guide_trace)


def vectorized_or_named(
    model: Callable[[], Any], guide: Callable[[], Any], num: int, max_plate_nesting: int, name: str
) -> tuple[torch.Tensor, Any, Any]:
    """:func:`pyro.infer.importance.vectorized_importance_weights`, with a failure that a single
    particle does not share named as the model's failure to broadcast over particles."""
    try:
        return vectorized_importance_weights(
            model, guide, num_samples=num, max_plate_nesting=max_plate_nesting
        )
    except (RuntimeError, ValueError, IndexError) as exc:
        try:
            sequential_log_weight(model, guide)
        except Exception:  # it fails either way: not a broadcasting problem
            raise exc from None
        raise ParticleBroadcastError(
            f"model {name!r} does not broadcast over a leading particle dimension "
            f"({first_line(exc, 160)}); {_HINT}"
        ) from None


def _particle(value: torch.Tensor, k: int, site: dict[str, Any], mpn: int) -> torch.Tensor:
    """Particle ``k`` of a vectorized site's value (the particle dim is -(mpn + 1) of its
    batch shape; a site broadcast over particles has size 1 there, or no such dim)."""
    axis = value.dim() - site["fn"].event_dim - (mpn + 1)
    if axis < 0 or value.shape[axis] == 1:
        return value.squeeze(axis) if axis >= 0 else value
    return value.select(axis, k)


def check_broadcast(
    model: Callable[[], Any],
    guide: Callable[[], Any],
    *,
    max_plate_nesting: int,
    name: str,
    num: int = 3,
) -> torch.Tensor:
    """Score ``num`` vectorized particles, then each of them again on its own (the guide's
    draws replayed one particle at a time); the log weights must agree to the rounding of the
    model's dtype. Returns the vectorized log weights; a :class:`ParticleBroadcastError` names
    the model where they disagree or where only the vectorized pass fails."""
    log_w, _, guide_trace = vectorized_or_named(model, guide, num, max_plate_nesting, name)
    if log_w.shape != (num,):
        raise ParticleBroadcastError(
            f"model {name!r}: {num} vectorized particles gave log weights of shape "
            f"{tuple(log_w.shape)}, not ({num},); {_HINT}"
        )
    tol = 1e-9 if log_w.dtype == torch.float64 else 1e-4
    for k in range(num):
        values = {
            site_name: _particle(site["value"], k, site, max_plate_nesting)
            for site_name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
        }
        one_guide = poutine.trace(poutine.condition(guide, data=values)).get_trace()
        for site_name in values:  # drawn by the guide, not observed: what replay expects
            one_guide.nodes[site_name]["is_observed"] = False
        one_model = poutine.trace(poutine.replay(model, trace=one_guide)).get_trace()
        single = float(_log_weight(one_model, one_guide))
        vectorized = float(log_w[k])
        if not abs(single - vectorized) <= tol * (1.0 + abs(single)):
            raise ParticleBroadcastError(
                f"model {name!r} mixes particles: particle {k} scores {vectorized:.10g} among "
                f"{num} vectorized particles but {single:.10g} on its own; {_HINT}"
            )
    return log_w
