"""Variational families, usable with any model that fits them.

Each family is built from a model by name with :func:`make_guide`. Pyro's autoguides are used
where they fit:

================  ==============================================================
``mean-field``    independent Normals in unconstrained space (``AutoNormal``)
``full-rank``     one multivariate Normal (``AutoMultivariateNormal``)
``low-rank``      low-rank plus diagonal covariance (``AutoLowRankMultivariateNormal``)
``iaf``           inverse autoregressive flow, Kingma et al. 2016 (``AutoIAFNormal``)
``prior-family``  mean field in each prior's own family (:class:`AutoPriorFamily`)
``point-mass``    a point mass (``AutoDelta``); its "ELBO" drops the entropy term
================  ==============================================================

Guides that only make sense for one model (the exact posterior of a conjugate model, the
posterior of a mixture's labels given its parameters) live with that model. Whoever builds
them, a guide's name means one family everywhere in the zoo: :data:`VOCABULARY` defines each
name a model may use, and the contract (:mod:`zoo.contract`) refuses any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.infer import autoguide


def _prior_family(model: Callable, **kwargs: Any) -> autoguide.AutoGuide:
    from guides.prior_family import AutoPriorFamily

    return AutoPriorFamily(model, **kwargs)


def _iaf(model: Callable, **kwargs: Any) -> autoguide.AutoGuide:
    kwargs.pop("create_plates", None)
    return autoguide.AutoIAFNormal(model, num_transforms=2, **kwargs)


def _without_plates(cls: type) -> Callable[..., autoguide.AutoGuide]:
    def build(model: Callable, **kwargs: Any) -> autoguide.AutoGuide:
        kwargs.pop("create_plates", None)
        return cls(model, **kwargs)

    return build


FAMILIES: dict[str, Callable[..., autoguide.AutoGuide]] = {
    "mean-field": autoguide.AutoNormal,
    "full-rank": _without_plates(autoguide.AutoMultivariateNormal),
    "low-rank": _without_plates(autoguide.AutoLowRankMultivariateNormal),
    "iaf": _iaf,
    "prior-family": _prior_family,
    "point-mass": autoguide.AutoDelta,
}

#: every guide name a zoo model may offer, and the one family it means in every model
#: (amortized where the model has an encoder: the family of each data point's q)
VOCABULARY: dict[str, str] = {
    "mean-field": "a product of independent factors, one per latent coordinate (Normal for a "
    "continuous latent, or the family conjugate to it: Bernoulli, Categorical, Dirichlet)",
    "full-rank": "one Gaussian with a dense covariance over all the latents (per data point "
    "where amortized)",
    "low-rank": "one Gaussian with a low-rank plus diagonal covariance",
    "gaussian": "a Gaussian over a scalar latent: the whole Gaussian family (mean field and "
    "full rank coincide)",
    "exact": "the exact posterior p(z | x) (given the model's parameters theta, where it has "
    "any): its ELBO is log p(x)",
    "prior-family": "mean field with each factor in its prior's own family "
    "(:class:`~guides.prior_family.AutoPriorFamily`)",
    "point-mass": "a point mass at z*: log p(x, z*) is not a bound (no entropy term)",
    "iaf": "a Gaussian pushed through inverse autoregressive flow layers (Kingma et al. 2016)",
    "spline-flow": "a Normal pushed through a rational-quadratic spline (Durkan et al. 2019)",
    "autoregressive": "an autoregressive network over the latents, p(s_i | s_<i) "
    "(Wu, Wang & Zhang 2019)",
    "forward": "the fixed forward (noising) process of a diffusion model: no parameters",
}


def make_guide(
    name: str, model: Callable, *, create_plates: Callable | None = None, **kwargs: Any
) -> autoguide.AutoGuide:
    """Build the family ``name`` for ``model``.

    ``create_plates`` is passed to families that support subsampled plates (local latents under
    mini-batching); the joint families (full-rank, low-rank, IAF) cannot subsample and ignore it.
    """
    if name not in FAMILIES:
        raise KeyError(f"no guide family {name!r}; families: {', '.join(FAMILIES)}")
    if create_plates is not None:
        kwargs["create_plates"] = create_plates
    return FAMILIES[name](model, **kwargs)
