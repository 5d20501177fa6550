"""The Gaussian mixture as a zoo model: EM as ELBO maximisation.

Follows Dempster, Laird & Rubin (1977) and Neal & Hinton (1998), "A view of the EM algorithm
that justifies incremental, sparse, and other variants"; Bishop, PRML §9.2–9.4.

x_n in R^D are the points, z_n in {1..K} their component labels, theta = (pi, mu, Sigma) the
mixture weights, means and full covariances:

    z_n ~ Categorical(pi),    x_n | z_n = k ~ N(mu_k, Sigma_k).

The guide is the exact posterior of the labels given the current theta,
q(z_n = k) = r_nk proportional to pi_k N(x_n | mu_k, Sigma_k), held fixed (detached) while theta
moves. With that q the ELBO equals log p(x | theta) exactly after every E-step, so

- closed-form coordinate ascent (``method="closed-form"``) is EM (:mod:`zoo.models.gmm.em`):
  E-step = recompute q, M-step = the argmax of E_q log p(x, z | theta), and the ELBO never
  decreases;
- SVI with ``Trace_ELBO`` samples z from q (an unbiased gradient of the M-step objective), and
  ``TraceEnum_ELBO`` sums over z exactly.

The exact log evidence is the log-sum-exp log-likelihood; scikit-learn's ``GaussianMixture``
started from the same initialisation is the peer.

The run starts from the best of ``n_init`` k-means++ starts, each followed by closed-form EM
(:mod:`zoo.models.gmm.restarts`), drawn from ``init_seed``, by default the run's ``seed``: the
same seed gives the same numbers. The summary reports every start's final log-likelihood and
the run's shortfall from the best of them. The run's own EM steps raise a one-line
:class:`~zoo.models.gmm.em.CollapsedComponentError` where a component collapses, and SVI, which
has no M-step to regularise, refuses parameters with a collapsed component before each step
(:meth:`GaussianMixture.on_step`).

Many points
-----------
The labels z_n are the only latents and live in the data plate, so the runner and the
diagnostics pass over the data a block of points at a time (``data_plate.block_size``, smaller
in many dimensions) with particle chunks sized to the D x D factor the model gathers per
(particle, point) pair (``data_plate.chunk_budget``): memory does not grow with the number of
points beyond the data themselves and the (N, K) responsibilities of an EM step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from zoo.data import read_numeric_table
from zoo.errors import DataError
from zoo.model import (
    ClosedForm,
    DataPlate,
    Estimators,
    Option,
    Training,
    ZooModel,
    at_least,
    positive_int,
    seed_value,
)
from zoo.models.gmm.em import (
    SINGULAR_VARIANCE,
    CollapsedComponentError,
    component_log_joint,
    em_update,
    log_likelihood,
    whitened_min_variance,
)
from zoo.models.gmm.restarts import Restarts, run_restarts
from zoo.options import start_count
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

#: bytes one chunk of a pass over the data may take: the model gathers a D x D scale factor
#: and a mean per (particle, point) pair (measured 2.0-2.8 x 8 D^2 bytes a pair for D = 4-20;
#: budgeted as 4 x 8 (D^2 + D + K))
CHUNK_BYTES = 1 << 27
#: particles of a history record (the runner's ``trace_particles``): a record traces a whole
#: block with this many particles at once
RECORD_PARTICLES = 16
#: the most EM starts one run may ask for
MAX_N_INIT = 1000


def non_negative_float(value: Any) -> float:
    """An option type: a finite number >= 0 (``"1e-6"`` and ``0`` pass; nan, inf, -1 do not)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a finite number >= 0")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{value!r} is not a finite number >= 0")
    return number


#: an option type: the number of EM starts, an integer in [1, MAX_N_INIT]
n_init_value = start_count(MAX_N_INIT)


def optional_seed(value: Any) -> int | None:
    """An option type: a seed, an integer in [0, 2**32) (``"7"``, ``7.0``), or None (``"none"``)
    for "not set"."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a seed")
    number = float(value)
    if not (math.isfinite(number) and number == int(number) and 0 <= number < 2**32):
        raise ValueError(f"{value!r} is not a seed (an integer in [0, 2**32), or none)")
    return int(number)


def simulate_mixture(num_points: int, seed: int) -> np.ndarray:
    """A seeded 2-D mixture of three well-separated, correlated Gaussians."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[-3.0, 0.0], [2.0, 2.0], [1.5, -3.0]])
    covs = np.array(
        [[[1.0, 0.6], [0.6, 1.0]], [[0.5, -0.2], [-0.2, 0.8]], [[1.2, 0.0], [0.0, 0.3]]]
    )
    labels = rng.choice(3, size=num_points, p=weights)
    noise = rng.standard_normal((num_points, 2))
    chol = np.linalg.cholesky(covs)
    return means[labels] + np.einsum("nij,nj->ni", chol[labels], noise)


@register
class GaussianMixture(ZooModel):
    name = "gmm"
    title = "EM for Gaussian mixtures"
    application = "EM for Gaussian mixtures"
    reference = (
        "Dempster, Laird & Rubin (1977); Neal & Hinton (1998); Bishop, PRML §9.2-9.4; "
        "Biernacki, Celeux & Govaert (2003)"
    )
    options = (
        Option("components", positive_int, 3, "number of mixture components K"),
        Option("dataset", str, "synthetic", "bundled data set", choices=("synthetic", "iris")),
        Option("num_points", at_least(2), 500, "points in the synthetic data set"),
        Option("data_seed", seed_value, 0, "seed of the synthetic data set"),
        Option(
            "n_init",
            n_init_value,
            10,
            "k-means++ starts, each followed by closed-form EM; the run starts from the best "
            "(1: a single start, no restarts)",
        ),
        Option(
            "init_seed",
            optional_seed,
            None,
            "seed of the k-means++ starts (None: the run's --seed)",
        ),
        Option(
            "reg_covar",
            non_negative_float,
            0.0,
            "a finite number >= 0 added to each covariance's diagonal in EM's M-step (the "
            "restarts and --method closed-form)",
        ),
    )
    data_help = "CSV file of points (numeric columns are the features)"
    guides = ("exact",)
    default_guide = "exact"
    #: discrete labels: ``enum`` sums them out exactly; no ``meanfield`` (not reparameterised)
    estimators = Estimators(("trace", "enum", "graph", "iwae"))
    training = Training(
        steps=1500, lr=0.05, lr_final_factor=0.05, quick_steps=300, closed_form_steps=200
    )
    #: every pass over all the points (records, diagnostics) goes a block at a time (the labels
    #: z_n are the only latents and live in the data plate); fewer points per block in many
    #: dimensions, see :meth:`setup`
    data_plate = DataPlate("data", block_size=8192)
    closed_form = ClosedForm("EM")
    leaderboard = ({"method": "closed-form"}, {"elbo": "trace"}, {"elbo": "enum"})

    # -- data and initial parameters ------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        if opts["components"] < 1:
            raise DataError("--components must be at least 1")
        if data is None:
            if opts["dataset"] == "iris":
                from sklearn.datasets import load_iris

                values, self.feature_names = (
                    load_iris(return_X_y=True)[0],
                    [
                        "sepal length",
                        "sepal width",
                        "petal length",
                        "petal width",
                    ],
                )
            else:
                if opts["num_points"] < 2:
                    raise DataError("--num-points must be at least 2")
                values = simulate_mixture(opts["num_points"], opts["data_seed"])
                self.feature_names = ["x1", "x2"]
        elif isinstance(data, str | Path):
            values, self.feature_names = read_numeric_table(data)
        else:
            values = np.asarray(data, dtype=np.float64)
            if values.ndim != 2 or not np.isfinite(values).all():
                raise DataError("data must be a finite 2-D array (points x features)")
            self.feature_names = [f"x{i + 1}" for i in range(values.shape[1])]
        k = opts["components"]
        if values.shape[0] <= k * values.shape[1]:
            raise DataError(
                f"{values.shape[0]} points are too few for {k} full-covariance components "
                f"in {values.shape[1]} dimensions"
            )
        self.x = self.tensor(values)
        self.num_data, self.dim = values.shape
        self.num_components = k
        self.reg_covar = opts["reg_covar"]
        self.n_init = opts["n_init"]
        self.init_seed = opts["init_seed"]
        cov = np.cov(values, rowvar=False, bias=True).reshape(self.dim, self.dim)
        self.jitter = 1e-6 * np.trace(cov) / self.dim
        self.data_scale_tril = self.tensor(np.linalg.cholesky(cov + self.jitter * np.eye(self.dim)))
        # passes over the data hold a mean and a D x D scale factor per (particle, point) pair:
        # a record's RECORD_PARTICLES particles of one block, or a chunk of the diagnostics'
        # particles, stay within CHUNK_BYTES
        pair_bytes = 4 * 8 * (self.dim * self.dim + self.dim + k)
        block = CHUNK_BYTES // (RECORD_PARTICLES * pair_bytes)
        block_size = int(min(type(self).data_plate.block_size, max(64, block)))
        self.data_plate = type(self).data_plate.with_sizes(
            block_size=block_size,
            chunk_budget=max(2 * block_size, CHUNK_BYTES // pair_bytes),
        )
        self.restarts: Restarts | None = None

    def start_seed(self) -> int:
        """``init_seed``, or else the run's seed: the runner seeds torch with it
        (:func:`pyro.set_rng_seed`) before it creates the parameters."""
        return torch.initial_seed() if self.init_seed is None else self.init_seed

    def run_restarts(self, seed: int) -> Restarts:
        """``n_init`` k-means++ starts drawn from ``seed``, each followed by closed-form EM; the
        best continues to convergence (:func:`~zoo.models.gmm.restarts.run_restarts`)."""
        return run_restarts(
            self.x,
            self.num_components,
            self.n_init,
            seed,
            jitter=self.jitter,
            reg_covar=self.reg_covar,
            data_scale_tril=self.data_scale_tril,
        )

    def initial_parameters(self) -> dict[str, torch.Tensor]:
        """The run's starting theta: the best EM start drawn from :meth:`start_seed` (drawn and
        run once per seed, when the run creates its parameters)."""
        seed = self.start_seed()
        if self.restarts is None or self.restarts.seed != seed:
            self.restarts = self.run_restarts(seed)
        return self.restarts.init

    def restarts_in_use(self) -> Restarts:
        """The starts the current parameters were created from (drawn now if none were)."""
        if self.restarts is None:
            self.initial_parameters()
        assert self.restarts is not None
        return self.restarts

    # -- the model and its guide ----------------------------------------------------------------
    def parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # pyro.param adopts its initial tensor: hand it copies
        init = self.initial_parameters
        weights = pyro.param(
            "weights", lambda: init()["weights"].clone(), constraint=constraints.simplex
        )
        locs = pyro.param("locs", lambda: init()["locs"].clone())
        trils = pyro.param(
            "scale_trils",
            lambda: init()["scale_trils"].clone(),
            constraint=constraints.lower_cholesky,
        )
        return weights, locs, trils

    def model(self, subsample_size: int | None = None) -> None:
        weights, locs, trils = self.parameters()
        with pyro.plate("data", self.num_data, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("x", dist.MultivariateNormal(locs[z], scale_tril=trils[z]), obs=self.x[idx])

    def posterior_guide(self, subsample_size: int | None = None) -> None:
        """q(z_n) = p(z_n | x_n, theta) at the current theta, held fixed (detached)."""
        weights, locs, trils = (p.detach() for p in self.parameters())
        with pyro.plate("data", self.num_data, subsample_size=subsample_size) as idx:
            logits = component_log_joint(self.x[idx], weights, locs, trils)
            pyro.sample("z", dist.Categorical(logits=logits))

    def build_guide(self, name: str):
        if name == "exact":
            return self.posterior_guide
        return super().build_guide(name)

    # -- exact quantities and EM ----------------------------------------------------------------
    def log_joint(self) -> torch.Tensor:
        with torch.no_grad():
            return component_log_joint(self.x, *(p.detach() for p in self.parameters()))

    def log_evidence(self) -> float:
        return log_likelihood(self.log_joint())

    def best_elbo(self, guide: str) -> float | None:
        # the guide is the exact posterior given theta: its ELBO is the log-likelihood
        return self.log_evidence()

    #: what :meth:`max_log_evidence` is: the best local maximum EM found, not a proven global
    #: one (with ``reg_covar`` = 0 the likelihood is unbounded at degenerate components)
    maximum_label = "best EM restart's log p(x)"

    def max_log_evidence(self) -> float | None:
        """The log-likelihood of the best EM restart, continued to convergence."""
        return self.restarts_in_use().best_log_likelihood

    def on_step(self, step: int, total: int) -> None:
        """Before SVI step ``step``: refuse parameters with a collapsed component (one line).

        SVI has no M-step to add ``reg_covar`` to, and nothing stops a component from
        shrinking onto a few points, where the likelihood is unbounded (PRML §9.2.1)."""
        store = pyro.get_param_store()
        if "scale_trils" not in store:
            return
        with torch.no_grad():
            trils = store["scale_trils"].detach()
            if not torch.isfinite(trils).all():
                return  # the runner names non-finite parameters itself
            ratio = whitened_min_variance(trils, self.data_scale_tril)
            weights = store["weights"].detach()
        for k in range(self.num_components):
            if not ratio[k] >= SINGULAR_VARIANCE:
                reason = (
                    f"before SVI step {step}, its variance along one direction is "
                    f"{ratio[k].item():.2g} of the data's (weight {weights[k].item():.3g})"
                )
                raise CollapsedComponentError(
                    k,
                    self.num_components,
                    reason,
                    advice="use fewer --components, or --method closed-form with --reg-covar "
                    "(e.g. 1e-6)",
                )

    def closed_form_step(self, guide, guide_name: str) -> float:
        """One EM iteration; returns the ELBO after it, which equals log p(x | theta_new).

        A component that collapses is a one-line :class:`CollapsedComponentError`."""
        weights, locs, trils = em_update(
            self.x, self.log_joint(), self.reg_covar, self.data_scale_tril
        )
        store = pyro.get_param_store()
        store["weights"], store["locs"], store["scale_trils"] = weights, locs, trils
        return self.log_evidence()

    # -- reporting -------------------------------------------------------------------------------
    def fitted(self) -> dict[str, np.ndarray]:
        weights, locs, trils = (p.detach() for p in self.parameters())
        covs = trils @ trils.transpose(-1, -2)
        return {
            "weights": weights.cpu().numpy(),
            "means": locs.cpu().numpy(),
            "covariances": covs.cpu().numpy(),
        }

    def peer_log_likelihood(self) -> float | None:
        """Mean log-likelihood per point of scikit-learn's EM from the same initialisation
        (the best start); None where scikit-learn's EM collapses a component."""
        from sklearn.mixture import GaussianMixture as SkGaussianMixture

        init = self.restarts_in_use().init
        init_covs = init["scale_trils"] @ init["scale_trils"].transpose(-1, -2)
        peer = SkGaussianMixture(
            n_components=self.num_components,
            covariance_type="full",
            reg_covar=self.reg_covar,
            tol=1e-10,
            max_iter=5000,
            weights_init=init["weights"].cpu().numpy(),
            means_init=init["locs"].cpu().numpy(),
            precisions_init=np.linalg.inv(init_covs.cpu().numpy()),
        )
        x = self.x.cpu().numpy()
        try:
            peer.fit(x)
        except ValueError:  # "ill-defined empirical covariance": a collapsed component
            return None
        return float(peer.score(x))

    def summary(self, guide, guide_name: str) -> dict[str, Any]:
        """The fitted theta and log-likelihood, the peer's, and the restarts: every start's
        final log-likelihood (None where it collapsed; the best one continued to convergence)
        and the run's shortfall from the best, best - log p(x | theta_fit) in nats. The
        shortfall is >= 0 up to rounding for EM with ``reg_covar`` = 0, and 0 once the run
        has had as many EM steps as the best start needed; SVI may end short of it, or above
        it in another basin or on a component shrinking towards a singularity."""
        fitted = self.fitted()
        loglik = self.log_evidence()
        restarts = self.restarts_in_use()
        starts = restarts.starts if restarts.screened else []
        best = restarts.best_log_likelihood
        return {
            "weights": fitted["weights"].tolist(),
            "means": fitted["means"].tolist(),
            "covariances": fitted["covariances"].tolist(),
            "log_likelihood": loglik,
            "log_likelihood_per_point": loglik / self.num_data,
            # N pi_k: the points' worth of responsibility each component holds at the fit
            "component_points": (fitted["weights"] * self.num_data).tolist(),
            "peer_sklearn_log_likelihood_per_point": self.peer_log_likelihood(),
            "restart_seed": restarts.seed,
            "restart_log_likelihoods": [s.log_likelihood for s in starts],
            "restart_iterations": [s.iterations for s in starts],
            "restarts_collapsed": sum(s.error is not None for s in restarts.starts),
            "best_restart": restarts.best,
            "best_restart_log_likelihood": best,
            "best_restart_converged": restarts.starts[restarts.best].converged if starts else None,
            "shortfall_from_best_restart": None if best is None else best - loglik,
        }

    def plots(self, run: RunView) -> dict[str, Figure]:
        """``components``: the points by their most probable component, with each component's
        2-sigma ellipse and weight at the fitted theta."""
        from zoo.models.gmm.figures import mixture_components

        fig = mixture_components(
            self.x.cpu().numpy(),
            torch.softmax(self.log_joint(), -1).cpu().numpy(),
            self.fitted(),
            self.feature_names,
            title=f"{self.title}: {run.method}",
        )
        return {"components": fig}
