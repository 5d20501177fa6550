"""``eight-schools``: the SAT coaching experiments, a normal-normal hierarchy.

D. B. Rubin, "Estimation in parallel randomized experiments", J. Educational Statistics 6
(1981) 377-401; Gelman et al., *Bayesian Data Analysis*, 3rd ed. (BDA3), §5.5 and Table 5.2:
estimated coaching effects y_j with standard errors sigma_j in eight schools,
theta_j ~ N(mu, tau^2), y_j | theta_j ~ N(theta_j, sigma_j^2). The type-II maximum of these data
is on the boundary tau = 0 (the package docstring says what SVI does there).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from zoo.errors import DataError
from zoo.model import ArviZ, DataPlate
from zoo.models.empirical_bayes import figures
from zoo.models.empirical_bayes.base import EmpiricalBayesBase
from zoo.models.empirical_bayes.data import EIGHT_SCHOOLS
from zoo.models.empirical_bayes.maxima import (
    NormalMax,
    normal_log_marginal,
    normal_profile,
    normal_type2_max,
    tau_within,
)
from zoo.options import Option, finite_float, positive_float
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView


@register
class EightSchools(EmpiricalBayesBase):
    name = "eight-schools"
    title = "Empirical Bayes: the eight schools"
    reference = "Rubin (1981), J. Educ. Stat. 6, 377-401; Gelman et al., BDA3 §5.5, Table 5.2"
    options = (
        Option("init_mu", finite_float, 0.0, "initial prior mean mu"),
        Option(
            "init_tau", positive_float, 10.0, "initial prior sd tau (10: about the sd of the y_j)"
        ),
    )
    data_plate = DataPlate("schools")
    latent = "theta"
    # one latent per group of a small hierarchy: ArviZ data with the schools' names as coords
    arviz = ArviZ(dims={"theta": ("school",), "y": ("school",)}, coords={"school": "groups"})

    def setup(self, data: Any, **opts: Any) -> None:
        if data is not None:
            raise DataError("eight-schools uses the bundled BDA3 Table 5.2 data; it takes no data")
        self.groups = [row[0] for row in EIGHT_SCHOOLS]
        self.y = self.tensor([row[1] for row in EIGHT_SCHOOLS])
        self.sigma = self.tensor([row[2] for row in EIGHT_SCHOOLS])
        self.num_data = len(EIGHT_SCHOOLS)
        self.init = {"mu": self.tensor(opts["init_mu"]), "tau": self.tensor(opts["init_tau"])}

    # -- the model ---------------------------------------------------------------------------------
    def hyperparameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        init = self.init
        mu = pyro.param("mu", lambda: init["mu"].clone())
        tau = pyro.param("tau", lambda: init["tau"].clone(), constraint=constraints.positive)
        return mu, tau

    def model(self, subsample_size: int | None = None) -> None:
        mu, tau = self.hyperparameters()
        with self.create_plates(subsample_size) as idx:
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, self.sigma[idx]), obs=self.y[idx])

    def exact_posterior(self, idx: torch.Tensor | None = None) -> dist.TorchDistribution:
        mu, tau = self.hyperparameters()
        y, sigma = (self.y, self.sigma) if idx is None else (self.y[idx], self.sigma[idx])
        # written without dividing by tau: well defined however small tau gets
        shrink = tau**2 / (tau**2 + sigma**2)
        return dist.Normal(mu + shrink * (y - mu), tau * sigma / (tau**2 + sigma**2).sqrt())

    def initial_posterior_mean(self) -> torch.Tensor:
        mu, tau = self.init["mu"], self.init["tau"]
        return mu + tau**2 / (tau**2 + self.sigma**2) * (self.y - mu)

    # -- exact quantities --------------------------------------------------------------------------
    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.y.cpu().numpy(), self.sigma.cpu().numpy()

    def log_evidence(self) -> float:
        mu, tau = self.hyper_values()
        return normal_log_marginal(*self._data(), mu, tau)

    @cached_property
    def type2_max(self) -> NormalMax:
        return normal_type2_max(*self._data())

    @cached_property
    def tau_within_001(self) -> float:
        return tau_within(*self._data(), 0.01)

    def profile_at(self, tau: float) -> float:
        """max_mu log p(y | mu, tau)."""
        return float(normal_profile(*self._data(), [tau])[0][0])

    # -- reading the fit ---------------------------------------------------------------------------
    def posterior_moments(self, guide: Any, guide_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd of q(theta_j) (every guide of this model is a Normal per school)."""
        q = self.guide_factor(guide, guide_name)
        return q.mean.cpu().numpy(), q.stddev.cpu().numpy()

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        mu, tau = self.hyper_values()
        top = self.type2_max
        y, sigma = self._data()
        log_ev = self.log_evidence()
        means, sds = self.posterior_moments(guide, guide_name)
        grid = np.array([0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0])
        return {
            "mu": mu,
            "tau": tau,
            "log_evidence": log_ev,
            "type2_max": {
                "mu": top.mu,
                "tau": top.tau,
                "on_boundary": top.on_boundary,
                "log_marginal": top.log_marginal,
                "dlogp_dtau_at_zero": 0.0,  # log p depends on tau through tau^2 only
                "dlogp_dtau2_at_zero": top.dlogp_dtau2_at_zero,
                "tau_within_0.01_nats": self.tau_within_001,
            },
            "log_marginal_below_max": top.log_marginal - log_ev,
            # the profile max_mu log p(y | mu, tau) at the fitted tau, below the boundary max
            "profile_below_max_at_tau": top.log_marginal - self.profile_at(tau),
            "profile": {
                "tau": grid.tolist(),
                "log_marginal": normal_profile(y, sigma, grid)[0].tolist(),
            },
            "school": self.groups,
            "y": y.tolist(),
            "sigma": sigma.tolist(),
            "eb_posterior_mean": means.tolist(),
            "eb_posterior_sd": sds.tolist(),
        }

    def plots(self, run: RunView) -> dict[str, Figure]:
        y, sigma = self._data()
        means, sds = self.posterior_moments(run.guide, run.guide_name)
        mu, tau = self.hyper_values()
        top = self.type2_max
        shrinkage = figures.schools_shrinkage_figure(
            self.groups, y, sigma, means, sds, mu, tau, run.guide_name, run.method
        )
        taus = np.linspace(0.0, 25.0, 251)
        t01 = self.tau_within_001
        near = np.linspace(0.0, max(1.5 * t01, 1.2 * tau), 200)
        profile = figures.schools_profile_figure(
            taus,
            normal_profile(y, sigma, taus)[0] - top.log_marginal,
            near,
            normal_profile(y, sigma, near)[0] - top.log_marginal,
            tau,
            self.profile_at(tau) - top.log_marginal,
            top.mu,
            t01,
            run.guide_name,
        )
        return {"shrinkage": shrinkage, "profile": profile}
