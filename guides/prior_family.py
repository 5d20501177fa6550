"""Mean-field guide whose factor for each latent site is in the family of that site's prior.

This is the classical conjugate-exponential mean-field family: the variational posterior factorises
over sample sites, ``q(z) = prod_i q_i(z_i)``, and each factor ``q_i`` is a free member of the
*same* family as the prior of ``z_i`` (a Normal prior gets a Normal factor, a Gamma prior a Gamma
factor, a Beta prior a Beta factor, ...). In a conjugate-exponential model the optimal mean-field
factors are exactly of this form, so the family contains the coordinate-ascent (CAVI) fixed point
and stochastic optimisation of the ELBO over it reaches the same answer as CAVI.

References
----------
- C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, §10.1–10.2
  (factorised approximations; the univariate Gaussian with unknown mean and precision, §10.1.3).
- D. M. Blei, A. Kucukelbir and J. D. McAuliffe, "Variational inference: a review for
  statisticians", *Journal of the American Statistical Association* 112 (2017) 859–877
  (mean-field family, CAVI, conditionally conjugate models, §2.3–§4).
- M. Figurnov, S. Mohamed and A. Mnih, "Implicit reparameterization gradients", NeurIPS 2018
  (the reparameterised Gamma / Beta / Dirichlet samplers that torch implements).

Family mapping (prior -> factor)
--------------------------------
==========================  =========================  ==========================================
prior                       factor                     factor's free parameters
==========================  =========================  ==========================================
Normal                      Normal                     ``loc``, ``scale``
LogNormal                   LogNormal                  ``loc``, ``scale``
MultivariateNormal          MultivariateNormal         ``loc``, ``scale_tril``
Gamma (also Chi2)           Gamma                      ``concentration``, ``rate``
Exponential                 Gamma                      ``concentration``, ``rate``
HalfNormal                  Gamma                      ``concentration``, ``rate``
InverseGamma                InverseGamma               ``concentration``, ``rate``
Beta                        Beta                       ``concentration1``, ``concentration0``
Dirichlet                   Dirichlet                  ``concentration``
==========================  =========================  ==========================================

*Exponential -> Gamma*: ``Exponential(rate) = Gamma(1, rate)``, so the smallest reparameterisable
family containing the prior is the Gamma family; it is also the conjugate family (a Poisson or
exponential likelihood on an Exponential-prior rate gives a Gamma posterior). The factor starts
exactly at the prior.

*HalfNormal -> Gamma*: the half-normal is not itself in a standard two-parameter family, so a
family has to be chosen. Gamma rather than LogNormal because a Gamma factor can keep a finite,
positive density at zero (shape <= 1), as the half-normal prior has, whereas a LogNormal density
always vanishes at zero and so cannot represent posterior mass piled up near zero, which is the
typical case of a half-normal prior on a hierarchical scale. The Gamma family also contains the
Exponential, keeping one positive family for both priors. The factor starts at the Gamma closest
to the prior in ``KL(prior || factor)`` (matching ``E[x]`` and ``E[log x]``):
shape ``k* = 1.36395...`` solving ``digamma(k) - log(k) = -(euler_gamma + log(4 / pi)) / 2``
and rate ``k* / (scale * sqrt(2 / pi))``.

Every factor is reparameterised (``has_rsample``): Normal, LogNormal and MultivariateNormal by
location-scale, Gamma, InverseGamma, Beta and Dirichlet by torch's implicit reparameterisation.

Not supported (a clear error naming the site): discrete sites (enumerate them out, or give them
another guide, e.g. :class:`~pyro.infer.autoguide.AutoDiscreteParallel` in an
:class:`~pyro.infer.autoguide.AutoGuideList`) and continuous priors outside the table (Cauchy,
HalfCauchy, StudentT, Uniform, Laplace, ...: use :class:`~pyro.infer.autoguide.AutoNormal`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger, init_to_mean
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam
from pyro.ops.tensor_utils import periodic_repeat
from torch import Tensor
from torch.distributions import Distribution, Independent, transform_to

__all__ = ["HALF_NORMAL_GAMMA_SHAPE", "SUPPORTED_PRIORS", "AutoPriorFamily"]

Params = dict[str, Tensor]

#: Shape of the Gamma closest to a HalfNormal in KL(HalfNormal || Gamma): the root of
#: ``digamma(k) - log(k) = -(euler_gamma + log(4 / pi)) / 2`` (checked in the tests).
HALF_NORMAL_GAMMA_SHAPE = 1.363952374040109


# ---------------------------------------------------------------------------------------------
# Per-family rules: how to read the prior's parameters, how to narrow a factor, its median.
# ---------------------------------------------------------------------------------------------


def _narrow_scale(params: Params, spread: float) -> Params:
    out = dict(params)
    out["scale"] = params["scale"] * spread
    return out


def _narrow_scale_tril(params: Params, spread: float) -> Params:
    out = dict(params)
    out["scale_tril"] = params["scale_tril"] * spread
    return out


def _narrow_gamma(params: Params, spread: float) -> Params:
    # Keep the mean k / r, multiply the standard deviation sqrt(k) / r by ``spread``.
    s2 = spread**2
    return {"concentration": params["concentration"] / s2, "rate": params["rate"] / s2}


def _narrow_beta(params: Params, spread: float) -> Params:
    # Keep the mean a / (a + b); var = m (1 - m) / (c + 1) with c = a + b, so the standard
    # deviation is multiplied by ``spread`` when c + 1 is divided by spread**2.
    a, b = params["concentration1"], params["concentration0"]
    c = a + b
    c_new = (c + 1.0) / spread**2 - 1.0
    return {"concentration1": a / c * c_new, "concentration0": b / c * c_new}


def _narrow_dirichlet(params: Params, spread: float) -> Params:
    alpha = params["concentration"]
    c = alpha.sum(-1, keepdim=True)
    c_new = (c + 1.0) / spread**2 - 1.0
    return {"concentration": alpha / c * c_new}


def _gamma_median(params: Params) -> Tensor:
    from scipy.special import gammaincinv  # lazy: only median() needs scipy

    k = params["concentration"]
    m = torch.as_tensor(gammaincinv(k.cpu().numpy(), 0.5), dtype=k.dtype, device=k.device)
    return m / params["rate"]


def _inverse_gamma_median(params: Params) -> Tensor:
    # 1 / X ~ Gamma(k, rate) and x -> 1 / x is decreasing.
    return 1.0 / _gamma_median(params)


def _beta_median(params: Params) -> Tensor:
    from scipy.special import betaincinv

    a, b = params["concentration1"], params["concentration0"]
    m = betaincinv(a.cpu().numpy(), b.cpu().numpy(), 0.5)
    return torch.as_tensor(m, dtype=a.dtype, device=a.device)


@dataclass(frozen=True)
class _FamilyRule:
    """How one prior class maps to a factor family."""

    factor: type[dist.TorchDistribution]
    from_prior: Callable[[Any], Params]
    narrow: Callable[[Params, float], Params]
    median: Callable[[Params], Tensor]

    @property
    def param_names(self) -> tuple[str, ...]:
        return _PARAM_NAMES[self.factor]


# Free parameters of each factor family: a subset of ``factor.arg_constraints`` (the
# MultivariateNormal is parameterised by its Cholesky factor only).
_PARAM_NAMES: dict[type, tuple[str, ...]] = {
    dist.Normal: ("loc", "scale"),
    dist.LogNormal: ("loc", "scale"),
    dist.MultivariateNormal: ("loc", "scale_tril"),
    dist.Gamma: ("concentration", "rate"),
    dist.InverseGamma: ("concentration", "rate"),
    dist.Beta: ("concentration1", "concentration0"),
    dist.Dirichlet: ("concentration",),
}


def _half_normal_to_gamma(d: Any) -> Params:
    k = torch.full_like(d.scale, HALF_NORMAL_GAMMA_SHAPE)
    return {"concentration": k, "rate": k / (d.scale * math.sqrt(2.0 / math.pi))}


_RULES: dict[type, _FamilyRule] = {
    torch.distributions.Normal: _FamilyRule(
        dist.Normal,
        lambda d: {"loc": d.loc, "scale": d.scale},
        _narrow_scale,
        lambda p: p["loc"],
    ),
    torch.distributions.LogNormal: _FamilyRule(
        dist.LogNormal,
        lambda d: {"loc": d.loc, "scale": d.scale},
        _narrow_scale,
        lambda p: p["loc"].exp(),
    ),
    torch.distributions.MultivariateNormal: _FamilyRule(
        dist.MultivariateNormal,
        lambda d: {"loc": d.loc, "scale_tril": d.scale_tril},
        _narrow_scale_tril,
        lambda p: p["loc"],  # the median of every one-dimensional marginal
    ),
    torch.distributions.Gamma: _FamilyRule(
        dist.Gamma,
        lambda d: {"concentration": d.concentration, "rate": d.rate},
        _narrow_gamma,
        _gamma_median,
    ),
    torch.distributions.Exponential: _FamilyRule(
        dist.Gamma,
        lambda d: {"concentration": torch.ones_like(d.rate), "rate": d.rate},
        _narrow_gamma,
        _gamma_median,
    ),
    torch.distributions.HalfNormal: _FamilyRule(
        dist.Gamma, _half_normal_to_gamma, _narrow_gamma, _gamma_median
    ),
    torch.distributions.InverseGamma: _FamilyRule(
        dist.InverseGamma,
        lambda d: {"concentration": d.concentration, "rate": d.rate},
        _narrow_gamma,  # narrows the Gamma of 1 / x, keeping E[1 / x]
        _inverse_gamma_median,
    ),
    torch.distributions.Beta: _FamilyRule(
        dist.Beta,
        lambda d: {"concentration1": d.concentration1, "concentration0": d.concentration0},
        _narrow_beta,
        _beta_median,
    ),
    torch.distributions.Dirichlet: _FamilyRule(
        dist.Dirichlet,
        lambda d: {"concentration": d.concentration},
        _narrow_dirichlet,
        lambda p: p["concentration"] / p["concentration"].sum(-1, keepdim=True),  # the mean
    ),
}

#: Names of the supported prior classes and the factor family each maps to.
SUPPORTED_PRIORS: dict[str, str] = {
    prior.__name__: rule.factor.__name__ for prior, rule in _RULES.items()
}


def _unwrap(fn: Distribution) -> tuple[Distribution, int]:
    """Strip ``Independent`` / expanded / masked wrappers; return the base and the number of
    batch dimensions the wrappers reinterpreted as event dimensions."""
    reinterpreted = 0
    while True:
        if isinstance(fn, Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif isinstance(fn, ExpandedDistribution | MaskedDistribution):
            fn = fn.base_dist
        else:
            return fn, reinterpreted


def _find_rule(name: str, prior: Distribution, base: Distribution) -> type:
    """The key in ``_RULES`` of the site's prior class (its nearest supported ancestor)."""
    if base.support.is_discrete or getattr(base, "has_enumerate_support", False):
        raise ValueError(
            f"AutoPriorFamily: sample site {name!r} is discrete "
            f"({type(base).__name__}, from {type(prior).__name__}); this guide only has "
            "continuous factors. Enumerate the site out (infer={'enumerate': 'parallel'} with "
            "TraceEnum_ELBO) and hide it from this guide with poutine.block, or give it another "
            "guide (e.g. AutoDiscreteParallel in an AutoGuideList)."
        )
    for cls in type(base).__mro__:
        if cls in _RULES:
            return cls
    supported = ", ".join(SUPPORTED_PRIORS)
    raise NotImplementedError(
        f"AutoPriorFamily: sample site {name!r} has prior {type(base).__name__} "
        f"(from {type(prior).__name__}), which has no prior-family factor; supported priors: "
        f"{supported}. Use AutoNormal for this site (e.g. in an AutoGuideList)."
    )


@dataclass
class _SiteInfo:
    prior_class: type  # key of the site's rule in _RULES (kept instead of the rule: picklable)
    reinterpreted: int  # event dims added by to_event()/Independent on top of the family's own
    param_event_dims: dict[str, int]  # PyroParam event_dim of each parameter

    @property
    def rule(self) -> _FamilyRule:
        return _RULES[self.prior_class]


class AutoPriorFamily(AutoGuide):
    """Mean-field guide with one factor per latent site, in the family of that site's prior.

    Each latent sample site ``z_i`` with prior ``p_i`` gets an independent factor
    ``q_i = Family_i(theta_i)`` of the same family as ``p_i`` (see the module docstring for the
    mapping), with free, constrained parameters ``theta_i`` stored as
    :class:`~pyro.nn.module.PyroParam` (constraints from ``Family_i.arg_constraints``) under the
    Pyro parameter names ``AutoPriorFamily.factors.<param>.<site>``, e.g.
    ``AutoPriorFamily.factors.concentration1.p``. This is the conjugate-exponential mean-field
    family of Bishop (PRML 2006, §10.1–10.2) and Blei, Kucukelbir & McAuliffe (JASA 2017).

    The structure follows :class:`~pyro.infer.autoguide.AutoNormal`: parameters have the full
    (not subsampled) size along every plate, and inside a subsampled plate they are indexed by
    the plate's subsample indices (through the ``event_dim`` of the parameters), so a step of
    SVI only touches the factors of the subsampled elements. The guide broadcasts over a
    particle plate, so it works with ``Trace_ELBO(num_particles=S, vectorize_particles=True)``
    and :func:`~pyro.infer.importance.vectorized_importance_weights`. Event dimensions of the
    prior (``.to_event(n)`` / ``Independent``) are kept; ``expand`` and ``mask`` wrappers are
    looked through to find the family.

    Usage::

        guide = AutoPriorFamily(model)
        svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
        ...
        guide.get_factors()["p"]  # a fitted Beta(...)

    :param model: A Pyro model.
    :param init_params: Optional explicit initial values of some factors' parameters, keyed by
        site name then by the factor family's parameter name, e.g.
        ``{"p": {"concentration1": torch.tensor(2.0)}, "mu": {"loc": 0.0, "scale": 0.1}}``.
        Values are constrained (natural) parameters; each must broadcast to the parameter's full
        shape (the site's batch shape with every plate at its *full* size, then the family's own
        parameter shape). Parameters not given keep their default initialisation. A site or
        parameter name that does not exist, or a value outside the constraint, is a
        :class:`ValueError`.
    :param init_spread: Default initialisation is each factor equal to the site's prior (the
        prior is in the factor's family; for a HalfNormal, the closest Gamma); with
        ``init_spread < 1`` the factor keeps the prior's location (mean or median) and its
        spread (standard deviation, or the scale in log space for a LogNormal) is multiplied by
        ``init_spread``. Must be in ``(0, 1]``.
    :param init_loc_fn: Where to put upstream latent values when the model is first run to read
        the priors (a prior may depend on other latents, e.g. ``mu ~ N(0, 1 / tau)``); see
        :ref:`autoguide-initialization`. Defaults to the prior mean, so the initial factors are
        deterministic.
    :param create_plates: As in :class:`~pyro.infer.autoguide.AutoNormal`: a function of the
        model's arguments returning a :class:`pyro.plate` or plates to use for subsampling.
    :raises ValueError: (when the guide first runs) for a discrete latent site.
    :raises NotImplementedError: (when the guide first runs) for a continuous latent site whose
        prior family is not in the table.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        init_params: Mapping[str, Mapping[str, Tensor | float]] | None = None,
        init_spread: float = 1.0,
        init_loc_fn: Callable[[Any], Tensor] = init_to_mean,
        create_plates: Callable[..., Any] | None = None,
    ) -> None:
        if not (isinstance(init_spread, int | float) and 0.0 < init_spread <= 1.0):
            raise ValueError(f"init_spread must be in (0, 1], got {init_spread!r}")
        self._init_params: dict[str, dict[str, Tensor | float]] = {
            site: dict(values) for site, values in (init_params or {}).items()
        }
        self._init_spread = float(init_spread)
        self.init_loc_fn = init_loc_fn
        self._sites: dict[str, _SiteInfo] = {}
        model = InitMessenger(init_loc_fn)(model)
        super().__init__(model, create_plates=create_plates)

    # -- setup -----------------------------------------------------------------------------

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)

        unknown = set(self._init_params) - {
            name for name, _ in self.prototype_trace.iter_stochastic_nodes()
        }
        if unknown:
            raise ValueError(
                f"init_params names sites that are not latent sites of the model: {sorted(unknown)}"
            )

        self._sites = {}
        self.factors = PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            prior: Distribution = site["fn"]
            base, reinterpreted = _unwrap(prior)
            prior_class = _find_rule(name, prior, base)
            rule = _RULES[prior_class]

            # Full shape of the family's batch: the site's batch shape (plates included, at
            # their subsampled size) followed by the event dims that to_event() reinterpreted.
            site_batch = tuple(prior.batch_shape)
            base_event_dim = len(base.event_shape)
            site_event = tuple(prior.event_shape)
            family_batch = site_batch + site_event[: len(site_event) - base_event_dim]

            with torch.no_grad():
                params = {k: v.detach() for k, v in rule.from_prior(base).items()}
                if self._init_spread != 1.0:
                    params = rule.narrow(params, self._init_spread)

            overrides = self._init_params.get(name, {})
            bad = set(overrides) - set(rule.param_names)
            if bad:
                raise ValueError(
                    f"init_params[{name!r}] has unknown parameter(s) {sorted(bad)}; the factor of "
                    f"site {name!r} is {rule.factor.__name__} with parameters "
                    f"{list(rule.param_names)}"
                )

            param_event_dims: dict[str, int] = {}
            for pname in rule.param_names:
                value = params[pname]
                own_shape = tuple(value.shape[len(base.batch_shape) :])
                value = value.expand(family_batch + own_shape)
                event_dim = value.dim() - len(site_batch)
                param_event_dims[pname] = event_dim
                # If subsampling, repeat the initial value to the plate's full size.
                for frame in site["cond_indep_stack"]:
                    full_size = frame.full_size or frame.size
                    if full_size != frame.size:
                        value = periodic_repeat(value, full_size, frame.dim - event_dim)
                value = value.clone().contiguous()
                if pname in overrides:
                    given = torch.as_tensor(
                        overrides[pname], dtype=value.dtype, device=value.device
                    )
                    try:
                        value = given.expand(value.shape).clone().contiguous()
                    except RuntimeError:
                        raise ValueError(
                            f"init_params[{name!r}][{pname!r}] has shape {tuple(given.shape)}, "
                            f"which does not broadcast to the parameter's shape "
                            f"{tuple(value.shape)}"
                        ) from None
                constraint = rule.factor.arg_constraints[pname]
                if not bool(constraint.check(value).all()):
                    source = "init_params" if pname in overrides else "the prior"
                    raise ValueError(
                        f"initial {pname!r} of site {name!r} (from {source}) is outside its "
                        f"constraint {constraint}"
                    )
                deep_setattr(
                    self.factors, f"{pname}.{name}", PyroParam(value, constraint, event_dim)
                )

            self._sites[name] = _SiteInfo(prior_class, reinterpreted, param_event_dims)

    # -- the guide -------------------------------------------------------------------------

    def _get_params(self, name: str) -> Params:
        rule = self._sites[name].rule
        return {p: attrgetter(f"{p}.{name}")(self.factors) for p in rule.param_names}

    def _factor(self, name: str, params: Params) -> Distribution:
        info = self._sites[name]
        factor = info.rule.factor(**params)
        return factor.to_event(info.reinterpreted) if info.reinterpreted else factor

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """An automatic guide with the same ``*args, **kwargs`` as the model.

        :return: A dict mapping each latent site name to its sampled value.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)

        plates = self._create_plates(*args, **kwargs)
        result: dict[str, Tensor] = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                # Inside a subsampled plate the parameters come out indexed by the subsample.
                result[name] = pyro.sample(name, self._factor(name, self._get_params(name)))
        return result

    # -- reading the fit -------------------------------------------------------------------

    def _require_setup(self) -> None:
        if self.prototype_trace is None:
            raise RuntimeError(
                "AutoPriorFamily has not been run yet: call the guide (or one SVI step) first"
            )

    @torch.no_grad()
    def get_factor_params(self) -> dict[str, Params]:
        """The fitted (constrained) parameters of every factor, at the plates' full sizes.

        :return: ``{site: {param: tensor}}``, detached; the same layout as ``init_params``.
        """
        self._require_setup()
        return {
            name: {k: v.detach().clone() for k, v in self._get_params(name).items()}
            for name in self._sites
        }

    @torch.no_grad()
    def set_factor(self, name: str, factor: Distribution) -> None:
        """Put the factor of site ``name`` at ``factor``, in place.

        ``factor`` must be of the site's factor family, with the plates at their full sizes
        (the layout of :meth:`get_factors`). This is how a closed-form coordinate-ascent (CAVI)
        update enters the guide: in a conditionally conjugate model the optimal factor of a
        local site given everything else is a member of the prior's family (Bishop, PRML
        §10.1.1). The parameter tensors are written in place, so an optimizer's state for them
        stays attached.
        """
        self._require_setup()
        if name not in self._sites:
            raise KeyError(f"AutoPriorFamily has no site {name!r}; sites: {sorted(self._sites)}")
        rule = self._sites[name].rule
        base, _ = _unwrap(factor)
        if not isinstance(base, rule.factor):
            raise TypeError(
                f"the factor of site {name!r} is a {rule.factor.__name__}, "
                f"not a {type(base).__name__}"
            )
        for pname, current in self._get_params(name).items():
            target = getattr(base, pname).to(current)
            if target.shape != current.shape:
                raise ValueError(
                    f"{pname!r} of site {name!r} has shape {tuple(current.shape)}; "
                    f"got {tuple(target.shape)}"
                )
            constraint = rule.factor.arg_constraints[pname]
            current.unconstrained().copy_(transform_to(constraint).inv(target))

    @torch.no_grad()
    def get_factors(self) -> dict[str, Distribution]:
        """The fitted factor of every latent site, as a distribution.

        Each factor has the site's full batch shape (every plate at its full size, no particle
        dimension) and the site's event shape.
        """
        return {
            name: self._factor(name, params) for name, params in self.get_factor_params().items()
        }

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The median of each site's fitted factor (elementwise, at the plates' full sizes).

        Exact for the univariate families (Gamma, InverseGamma and Beta medians use
        ``scipy.special``); for a MultivariateNormal the mean (which is the median of every
        marginal) and for a Dirichlet the mean (a point on the simplex).
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {
            name: self._sites[name].rule.median(params)
            for name, params in self.get_factor_params().items()
        }
