"""``empirical-bayes``: Efron & Morris's baseball averages, a beta-binomial hierarchy.

B. Efron and C. Morris, "Data analysis using Stein's estimator and its generalizations", JASA 70
(1975) 311-319, Table 1: the hits y_i of 18 major-league players in their first n = 45 at-bats
of the 1970 season, and each player's batting average over the rest of that season (the "truth"
to shrink towards). p_i ~ Beta(a, b), y_i | p_i ~ Binomial(45, p_i); the hyperparameters are
stored as the prior mean m = a / (a + b) and the concentration kappa = a + b (the package
docstring says why), and fitted by maximising the ELBO (Neal & Hinton 1998).
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
from zoo.models.empirical_bayes.data import AT_BATS, BASEBALL
from zoo.models.empirical_bayes.maxima import (
    BetaBinomialMax,
    beta_binomial_log_marginal,
    beta_binomial_profile,
    beta_binomial_type2_max,
    concentration_interval,
    logit_normal_best_elbo,
)
from zoo.options import Option, open_fraction, positive_float
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView


def mse(estimate: Any, truth: Any) -> float:
    """Mean squared error of ``estimate`` against ``truth``."""
    diff = np.asarray(estimate, dtype=float) - np.asarray(truth, dtype=float)
    return float(np.mean(diff**2))


@register
class BaseballEmpiricalBayes(EmpiricalBayesBase):
    name = "empirical-bayes"
    title = "Empirical Bayes: Efron & Morris's baseball averages"
    reference = "Efron & Morris (1975), JASA 70, 311-319, Table 1; Neal & Hinton (1998)"
    options = (
        Option("init_mean", open_fraction, 0.5, "initial prior mean a / (a + b)"),
        Option("init_concentration", positive_float, 2.0, "initial prior concentration a + b"),
    )
    data_plate = DataPlate("players")
    latent = "p"
    # one latent per group of a small hierarchy: ArviZ data with the players' names as coords
    arviz = ArviZ(dims={"p": ("player",), "hits": ("player",)}, coords={"player": "groups"})

    def setup(self, data: Any, **opts: Any) -> None:
        if data is not None:
            raise DataError("empirical-bayes uses Efron & Morris's bundled data; it takes no data")
        self.groups = [row[0] for row in BASEBALL]
        self.hits = self.tensor([row[1] for row in BASEBALL])
        self.season = np.array([row[2] for row in BASEBALL])
        self.at_bats = AT_BATS
        self.num_data = len(BASEBALL)
        self.init = {
            "prior_mean": self.tensor(opts["init_mean"]),
            "prior_concentration": self.tensor(opts["init_concentration"]),
        }

    # -- the model ---------------------------------------------------------------------------------
    def hyperparameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) = (m kappa, (1 - m) kappa) from the parameters m and kappa."""
        init = self.init  # pyro.param adopts its initial tensor: hand it copies
        m = pyro.param(
            "prior_mean", lambda: init["prior_mean"].clone(), constraint=constraints.unit_interval
        )
        kappa = pyro.param(
            "prior_concentration",
            lambda: init["prior_concentration"].clone(),
            constraint=constraints.positive,
        )
        return m * kappa, (1 - m) * kappa

    def model(self, subsample_size: int | None = None) -> None:
        a, b = self.hyperparameters()
        with self.create_plates(subsample_size) as idx:
            p = pyro.sample("p", dist.Beta(a, b))
            pyro.sample("hits", dist.Binomial(self.at_bats, p), obs=self.hits[idx])

    def exact_posterior(self, idx: torch.Tensor | None = None) -> dist.TorchDistribution:
        a, b = self.hyperparameters()
        y = self.hits if idx is None else self.hits[idx]
        return dist.Beta(a + y, b + self.at_bats - y)

    def initial_posterior_mean(self) -> torch.Tensor:
        m, kappa = self.init["prior_mean"], self.init["prior_concentration"]
        return (m * kappa + self.hits) / (kappa + self.at_bats)

    # -- exact quantities --------------------------------------------------------------------------
    def _counts(self) -> np.ndarray:
        return self.hits.cpu().numpy()

    def log_evidence(self) -> float:
        a, b = self.hyper_values()
        return beta_binomial_log_marginal(self._counts(), self.at_bats, a, b)

    @cached_property
    def type2_max(self) -> BetaBinomialMax:
        return beta_binomial_type2_max(self._counts(), self.at_bats)

    @cached_property
    def concentration_interval(self) -> tuple[float, float]:
        return concentration_interval(self._counts(), self.at_bats, 0.01)

    def best_elbo(self, guide: str) -> float | None:
        if guide == "mean-field":
            a, b = self.hyper_values()
            return logit_normal_best_elbo(self._counts(), self.at_bats, a, b)
        return self.log_evidence()

    # -- reading the fit ---------------------------------------------------------------------------
    def posterior_means(self, guide: Any, guide_name: str) -> np.ndarray:
        """E_q[p_i]: exact for the Beta guides, Gauss-Hermite (80 points) for the logit-normal
        (``mean-field``)."""
        q = self.guide_factor(guide, guide_name)
        if guide_name != "mean-field":
            return q.mean.cpu().numpy()
        x, w = np.polynomial.hermite_e.hermegauss(80)
        u = q.loc.cpu().numpy()[:, None] + q.scale.cpu().numpy()[:, None] * x
        return (1 / (1 + np.exp(-u))) @ (w / w.sum())

    def shrinkage(self, guide: Any, guide_name: str) -> dict[str, Any]:
        """Raw, empirical-Bayes and season averages per player, and their MSEs against the
        season averages (Efron & Morris's truth)."""
        raw = self._counts() / self.at_bats
        eb = self.posterior_means(guide, guide_name)
        top = self.type2_max
        at_max = (top.a + self._counts()) / (top.concentration + self.at_bats)
        return {
            "player": self.groups,
            "hits": [int(h) for h in self._counts()],
            "raw_average": raw.tolist(),
            "eb_posterior_mean": eb.tolist(),
            "eb_posterior_mean_at_type2_max": at_max.tolist(),
            "season_average": self.season.tolist(),
            "mse_raw": mse(raw, self.season),
            "mse_eb": mse(eb, self.season),
            "mse_eb_at_type2_max": mse(at_max, self.season),
            "mse_grand_mean": mse(np.full_like(raw, raw.mean()), self.season),
        }

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        a, b = self.hyper_values()
        top = self.type2_max
        log_ev = self.log_evidence()
        lo, hi = self.concentration_interval
        return {
            "prior_mean": a / (a + b),
            "prior_concentration": a + b,
            "a": a,
            "b": b,
            # weight of the prior mean in every exact posterior mean: (a + b) / (a + b + n)
            "shrinkage_factor": (a + b) / (a + b + self.at_bats),
            "log_evidence": log_ev,
            "type2_max": {
                "a": top.a,
                "b": top.b,
                "prior_mean": top.mean,
                "prior_concentration": top.concentration,
                "shrinkage_factor": top.concentration / (top.concentration + self.at_bats),
                "log_marginal": top.log_marginal,
                "log_marginal_one_common_p": top.log_marginal_pooled,
                "concentration_within_0.01_nats": [lo, hi],
            },
            "log_marginal_below_max": top.log_marginal - log_ev,
            **self.shrinkage(guide, guide_name),
        }

    def plots(self, run: RunView) -> dict[str, Figure]:
        a, b = self.hyper_values()
        shrinkage = figures.baseball_shrinkage_figure(
            self.shrinkage(run.guide, run.guide_name), self.groups, run.guide_name, run.method, a, b
        )
        top = self.type2_max
        kappas = np.geomspace(10.0, 1e5, 150)
        prof, _ = beta_binomial_profile(self._counts(), self.at_bats, kappas)
        profile = figures.baseball_profile_figure(
            kappas,
            prof - top.log_marginal,
            top.log_marginal_pooled - top.log_marginal,
            top.concentration,
            a + b,
            self.log_evidence() - top.log_marginal,
            self.concentration_interval,
            run.guide_name,
        )
        return {"shrinkage": shrinkage, "profile": profile}
