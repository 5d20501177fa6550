"""The ELBO estimators a run can use, by name.

``trace`` (:class:`pyro.infer.Trace_ELBO`) is the default. A model may name a better one for
some guide (``meanfield`` for analytic KL terms, ``enum`` to sum out discrete latents exactly),
and the user may pick any of those the model declares in ``ZooModel.estimators`` (``enum``
only where there are discrete latents to sum out). ``iwae`` is the importance-weighted bound of
Burda et al. (2016), :class:`pyro.infer.RenyiELBO` with ``alpha=0``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.infer
from pyro.infer import config_enumerate

from zoo.errors import ZooError

ESTIMATORS: dict[str, Callable[..., pyro.infer.ELBO]] = {
    "trace": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
    "enum": pyro.infer.TraceEnum_ELBO,
    "graph": pyro.infer.TraceGraph_ELBO,
    "iwae": lambda **kw: pyro.infer.RenyiELBO(alpha=0.0, **kw),
}


def make_estimator(name: str, *, particles: int, max_plate_nesting: int) -> pyro.infer.ELBO:
    """An ELBO estimator with ``particles`` vectorized particles."""
    if name not in ESTIMATORS:
        raise ZooError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    if name == "iwae" and particles < 2:
        raise ZooError("the iwae estimator needs --particles of at least 2")
    return ESTIMATORS[name](
        num_particles=particles,
        vectorize_particles=True,
        max_plate_nesting=max_plate_nesting,
    )


def prepare_guide(name: str, guide: Callable) -> Callable:
    """Mark the guide's discrete sites for parallel enumeration when the estimator sums them."""
    return config_enumerate(guide, default="parallel") if name == "enum" else guide
