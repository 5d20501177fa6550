"""The univariate Gaussian with unknown mean and precision: CAVI against SVI and the exact answer.

Follows Bishop, PRML §10.1.3 (the factorised approximation q(mu) q(tau) and its coordinate-ascent
updates, eqs. 10.25-10.30; PRML Fig. 10.4) and Murphy (2007), "Conjugate Bayesian analysis of
the Gaussian distribution" (the Normal-Gamma posterior and marginal likelihood, §5-6); Blei,
Kucukelbir & McAuliffe (2017), JASA 112 (CAVI).

    tau ~ Gamma(a0, b0)  (rate b0),    mu | tau ~ N(mu0, 1 / (lambda0 tau)),
    x_n | mu, tau ~ N(mu, 1 / tau),    n = 1..N.

The prior is conjugate, so everything about the exact posterior is known:

- p(mu, tau | x) = NormalGamma(mu_N, lambda_N, a_N, b_N) with lambda_N = lambda0 + N,
  mu_N = (lambda0 mu0 + N xbar) / lambda_N, a_N = a0 + N / 2 and
  b_N = b0 + S / 2 + lambda0 N (xbar - mu0)^2 / (2 lambda_N), S = sum_n (x_n - xbar)^2
  (Murphy 2007, eqs. 86-89);
- p(x) = Gamma(a_N) / Gamma(a0) * b0^a0 / b_N^a_N * (lambda0 / lambda_N)^(1/2) * (2 pi)^(-N/2)
  (Murphy 2007, eq. 95).

The mean-field family q(mu) q(tau) cannot represent the posterior's dependence of mu's spread on
tau; its best member is the CAVI fixed point, q(mu) = N(mu_N, 1 / lambda_N') and
q(tau) = Gamma(a_N', b_N') with a_N' = a0 + (N + 1) / 2. Its ELBO
(:func:`~zoo.models.normal_gamma.conjugate.mean_field_elbo`, in closed form) stays below log p(x)
by KL(q || p(mu, tau | x)) > 0.

Guides: ``mean-field`` is :class:`guides.prior_family.AutoPriorFamily` (a Normal factor for
mu, a Gamma factor for tau: the family of the CAVI updates), trained by SVI or by CAVI
(``method="closed-form"``); ``full-rank`` is a correlated Gaussian on (log tau, mu); ``exact``
samples the Normal-Gamma posterior (tau, then mu given tau), so its ELBO is log p(x) exactly.

Data: N points simulated from N(true_mean, true_sd^2) with a fixed seed, or one numeric column
of a CSV file (``--column`` picks one when the file has several).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from zoo.data import as_float_array, read_numeric_table
from zoo.errors import DataError, ZooError
from zoo.model import (
    ArviZ,
    ClosedForm,
    Guide,
    Option,
    Training,
    ZooModel,
    at_least,
    finite_float,
    positive_float,
    seed_value,
)
from zoo.models.normal_gamma.conjugate import (
    MeanField,
    NormalGammaParams,
    cavi_fixed_point,
    cavi_update,
    exact_posterior,
    log_evidence,
    log_tau_gaussian_elbo,
    log_tau_gaussian_log_density,
    log_tau_gaussian_moments,
    mean_field_elbo,
    mean_field_log_density,
    mean_field_moments,
    normal_gamma_log_density,
    normal_gamma_moments,
)
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from pyro.infer.autoguide import AutoMultivariateNormal

    from guides.prior_family import AutoPriorFamily
    from zoo.run_view import RunView


def simulate(num_points: int, seed: int, mean: float, sd: float) -> np.ndarray:
    """``num_points`` draws from N(mean, sd^2), seeded."""
    return np.random.default_rng(seed).normal(mean, sd, size=num_points)


#: where the mean-field guide keeps its factors' parameters in Pyro's param store, by (site,
#: parameter): :class:`~guides.prior_family.AutoPriorFamily` names them
#: ``AutoPriorFamily.factors.<param>.<site>``
MEAN_FIELD_PARAMS = {
    (site, p): f"AutoPriorFamily.factors.{p}.{site}"
    for site, params in (("tau", ("concentration", "rate")), ("mu", ("loc", "scale")))
    for p in params
}


@register
class NormalGamma(ZooModel):
    name = "normal-gamma"
    title = "Normal with unknown mean and precision"
    application = "Mean-field variational Bayes"
    reference = "Bishop, PRML §10.1.3; Murphy (2007) §5-6; Blei, Kucukelbir & McAuliffe (2017)"
    options = (
        Option("mu0", finite_float, 0.0, "prior mean of mu"),
        Option("lambda0", positive_float, 1.0, "prior precision of mu, in units of tau"),
        Option("a0", positive_float, 1.0, "prior shape of tau"),
        Option("b0", positive_float, 1.0, "prior rate of tau"),
        Option("num_points", at_least(2), 50, "points in the simulated data set"),
        Option("data_seed", seed_value, 0, "seed of the simulated data set"),
        Option("true_mean", finite_float, 1.0, "mean of the simulated data"),
        Option("true_sd", positive_float, 2.0, "standard deviation of the simulated data"),
        Option("column", str, None, "with --data: the column to use (needed if several)"),
    )
    data_help = "CSV file with one numeric column (or name one with --column)"
    guides = {
        # AutoPriorFamily samples Normal and Gamma factors at the model's own sites: analytic KLs
        "mean-field": Guide(elbo="meanfield"),
        "full-rank": Guide(),
        # the exact guide has no parameters: one step is all its training
        "exact": Guide(training=Training(steps=1, quick_steps=1, particles=1)),
    }
    default_guide = "mean-field"
    # 1000 steps from a large lr decayed 300-fold, 128 vectorized particles: the SVI optimum is
    # within ~1e-4 nats of the CAVI fixed point (measured over seeds), ~3 s on one thread
    training = Training(
        steps=1000,
        lr=0.3,
        quick_steps=300,
        lr_final_factor=0.003,
        particles=128,
        closed_form_steps=30,
    )
    data_plate = None  # (mu, tau) are global
    closed_form = ClosedForm("CAVI")
    arviz = ArviZ(dims={"x": ("observation",)})  # mu and tau are scalars
    leaderboard = ({"method": "closed-form"}, {"guide": "mean-field"}, {"guide": "exact"})

    # -- data --------------------------------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        self.prior = NormalGammaParams(opts["mu0"], opts["lambda0"], opts["a0"], opts["b0"])
        if data is None:
            if opts["column"] is not None:
                raise DataError("--column names a column of --data; there is no data file")
            if opts["num_points"] < 1:
                raise DataError("--num-points must be at least 1")
            values = simulate(
                opts["num_points"], opts["data_seed"], opts["true_mean"], opts["true_sd"]
            )
            self.data_name = "x"
        elif isinstance(data, str | Path):
            # equal values are fine: the prior keeps the posterior proper; beyond 1e8 the
            # fitted guide cannot reach the data from the prior's scale (measured: 1e12 breaks)
            table, columns = read_numeric_table(data, min_rows=1, allow_constant=True, max_abs=1e8)
            values = self._pick_column(table, columns, opts["column"], repr(str(data)))
        else:
            values = as_float_array(data, "the data", max_abs=1e8)
            if values.ndim != 1 or values.size < 1:
                raise DataError("data must be a finite 1-D array of at least one number")
            self.data_name = "x"
        self.x = self.tensor(values)
        self.num_data = int(values.size)
        self.posterior = exact_posterior(values, self.prior)

    def _pick_column(
        self, table: np.ndarray, columns: list[str], column: str | None, source: str
    ) -> np.ndarray:
        if column is None:
            if table.shape[1] > 1:
                raise DataError(
                    f"{source} has {table.shape[1]} numeric columns ({', '.join(columns)}); "
                    "name the one to use with --column"
                )
            j = 0
        elif column in columns:
            j = columns.index(column)
        else:
            raise DataError(
                f"--column {column!r} is not a numeric column of {source}; its numeric columns "
                f"are {', '.join(columns)}"
            )
        self.data_name = columns[j]
        return np.array(table[:, j])  # a writable copy for torch

    # -- the model and its guides ------------------------------------------------------------------
    def model(self, subsample_size: int | None = None) -> None:
        p = self.prior
        tau = pyro.sample("tau", dist.Gamma(self.tensor(p.a), self.tensor(p.b)))
        mu = pyro.sample("mu", dist.Normal(self.tensor(p.mu), (p.lam * tau).rsqrt()))
        with pyro.plate("data", self.num_data):
            pyro.sample("x", dist.Normal(mu, tau.rsqrt()), obs=self.x)

    def exact_guide(self, subsample_size: int | None = None) -> None:
        """q = p(mu, tau | x): tau ~ Gamma(a_N, b_N), mu | tau ~ N(mu_N, 1 / (lambda_N tau))."""
        post = self.posterior
        tau = pyro.sample("tau", dist.Gamma(self.tensor(post.a), self.tensor(post.b)))
        pyro.sample("mu", dist.Normal(self.tensor(post.mu), (post.lam * tau).rsqrt()))

    def build_guide(self, name: str) -> Callable[..., Any]:
        if name == "exact":
            return self.exact_guide
        if name == "mean-field":
            from guides import make_guide

            return make_guide("prior-family", self.model)
        return super().build_guide(name)

    # -- what is known exactly ---------------------------------------------------------------------
    def log_evidence(self) -> float:
        return log_evidence(self.x.cpu().numpy(), self.prior)

    @cached_property
    def cavi_optimum(self) -> MeanField:
        """The best mean-field q: CAVI run to convergence in float64 (cached)."""
        return cavi_fixed_point(self.x.cpu().numpy(), self.prior)[0]

    def best_mean_field_elbo(self) -> float:
        return mean_field_elbo(self.x.cpu().numpy(), self.prior, self.cavi_optimum)

    def best_elbo(self, guide: str) -> float | None:
        if guide == "mean-field":
            return self.best_mean_field_elbo()
        if guide == "exact":
            return self.log_evidence()
        return None  # full-rank Gaussian on (log tau, mu): its optimum is not known exactly

    # -- CAVI on the mean-field guide's parameters ----------------------------------------------
    def _mean_field_store(self, guide_name: str) -> dict[tuple[str, str], str]:
        """The param-store names of the mean-field guide's factors (refusing other guides)."""
        if guide_name != "mean-field":
            raise ZooError(
                "CAVI updates the mean-field guide q(mu) q(tau); run it with --guide mean-field"
            )
        store = pyro.get_param_store()
        missing = [n for n in MEAN_FIELD_PARAMS.values() if n not in store]
        if missing:
            raise ZooError(
                f"the mean-field guide's parameters are not in the param store: {missing}"
            )
        return MEAN_FIELD_PARAMS

    def closed_form_step(self, guide: Callable[..., Any], guide_name: str) -> float:
        """One CAVI round (PRML eqs. 10.25-10.30), written into the mean-field guide's params;
        returns the (analytic) mean-field ELBO after it."""
        x = self.x.cpu().numpy()
        store, names = pyro.get_param_store(), self._mean_field_store(guide_name)
        value = {key: float(store[name]) for key, name in names.items()}
        current = MeanField(
            loc=value["mu", "loc"],
            precision=value["mu", "scale"] ** -2,
            shape=value["tau", "concentration"],
            rate=value["tau", "rate"],
        )
        new = cavi_update(x, self.prior, current)
        values = {
            ("mu", "loc"): new.loc,
            ("mu", "scale"): new.precision**-0.5,
            ("tau", "concentration"): new.shape,
            ("tau", "rate"): new.rate,
        }
        for key, number in values.items():
            store[names[key]] = self.tensor(number)  # __setitem__ respects the constraint
        return mean_field_elbo(x, self.prior, new)

    # -- reading a fitted guide --------------------------------------------------------------------
    @torch.no_grad()
    def exact_elbo(self, guide: Any, guide_name: str) -> float | None:
        """The mean-field (Normal x Gamma) guide's ELBO in closed form
        (:func:`~zoo.models.normal_gamma.conjugate.mean_field_elbo`), the full-rank guide's by
        quadrature (:func:`~zoo.models.normal_gamma.conjugate.log_tau_gaussian_elbo`); the
        exact guide's is log p(x)."""
        if guide_name == "exact":
            return self.log_evidence()
        if guide_name == "full-rank":
            loc, cov = self.full_rank_normal(guide)
            return log_tau_gaussian_elbo(self.x.cpu().numpy(), self.prior, loc, cov)
        if guide_name == "mean-field":
            mf = self.fitted_mean_field(guide)
            return mean_field_elbo(self.x.cpu().numpy(), self.prior, mf)
        return None

    def fitted_mean_field(self, guide: AutoPriorFamily) -> MeanField:
        """q(mu) q(tau) of the mean-field guide, from the guide's own (this run's) parameters."""
        f = guide.get_factor_params()
        return MeanField(
            loc=float(f["mu"]["loc"]),
            precision=float(f["mu"]["scale"]) ** -2,
            shape=float(f["tau"]["concentration"]),
            rate=float(f["tau"]["rate"]),
        )

    @torch.no_grad()
    def full_rank_normal(self, guide: AutoMultivariateNormal) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the full-rank guide's Gaussian on (log tau, mu), in that
        order."""
        q = guide.get_posterior()
        order = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
        idx = [order.index("tau"), order.index("mu")]
        loc, cov = q.loc.cpu().numpy(), q.covariance_matrix.cpu().numpy()
        return loc[idx], cov[np.ix_(idx, idx)]

    def guide_log_density(
        self, guide: Any, guide_name: str, mu: np.ndarray, tau: np.ndarray
    ) -> np.ndarray:
        """log q(mu, tau) of the guide called ``guide_name`` on a grid (the contour figure)."""
        if guide_name == "exact":
            return normal_gamma_log_density(mu, tau, self.posterior)
        if guide_name == "mean-field":
            return mean_field_log_density(mu, tau, self.fitted_mean_field(guide))
        if guide_name == "full-rank":
            return log_tau_gaussian_log_density(mu, tau, *self.full_rank_normal(guide))
        raise ZooError(f"cannot read q(mu, tau) from the {guide_name!r} guide")

    def guide_moments(self, guide: Any, guide_name: str) -> dict[str, float]:
        """Means and standard deviations of mu and tau under the guide called ``guide_name``
        (closed form)."""
        if guide_name == "exact":
            return normal_gamma_moments(self.posterior)
        if guide_name == "mean-field":
            return mean_field_moments(self.fitted_mean_field(guide))
        if guide_name == "full-rank":
            return log_tau_gaussian_moments(*self.full_rank_normal(guide))
        raise ZooError(f"cannot read q(mu, tau) from the {guide_name!r} guide")

    def summary(self, guide: Callable[..., Any], guide_name: str) -> dict[str, Any]:
        x = self.x.cpu().numpy()
        log_ev = self.log_evidence()
        best_mf = self.best_mean_field_elbo()
        out: dict[str, Any] = {
            "data": {
                "column": self.data_name,
                "n": self.num_data,
                "mean": float(x.mean()),
                "sd": float(x.std()),
            },
            "exact_posterior": asdict(self.posterior),
            "posterior_exact": normal_gamma_moments(self.posterior),
            "posterior_fitted": self.guide_moments(guide, guide_name),
            "cavi_optimum": asdict(self.cavi_optimum),
            "log_evidence": log_ev,
            "best_mean_field_elbo": best_mf,
            # KL(q* || p(mu, tau | x)) of the CAVI fixed point: what factorising costs
            "mean_field_gap_analytic": log_ev - best_mf,
        }
        if guide_name == "mean-field":
            mf = self.fitted_mean_field(guide)
            elbo = mean_field_elbo(x, self.prior, mf)
            out["fitted_mean_field"] = asdict(mf)
            out["fitted_elbo_analytic"] = elbo  # the fitted q's ELBO, free of Monte Carlo error
            out["fitted_gap_analytic"] = log_ev - elbo
        return out

    # -- figures -----------------------------------------------------------------------------------
    def plots(self, run: RunView) -> dict[str, Figure]:
        """``posterior``: contours of the exact p(mu, tau | x) and the fitted q (PRML Fig. 10.4)."""
        from scipy.stats import gamma

        from zoo.models.normal_gamma.figures import posterior_contours

        post = self.posterior
        tau_lo, tau_hi = gamma.ppf([1e-6, 1 - 1e-6], post.a, scale=1.0 / post.b)
        mu_half = 6.0 / math.sqrt(post.lam * tau_lo)  # wide enough at the smallest tau
        mu = np.linspace(post.mu - mu_half, post.mu + mu_half, 401)
        tau = np.linspace(tau_lo, tau_hi, 401)
        mm, tt = np.meshgrid(mu, tau)
        fig = posterior_contours(
            mm,
            tt,
            exact=normal_gamma_log_density(mm, tt, post),
            fitted=self.guide_log_density(run.guide, run.guide_name, mm, tt),
            fitted_label=f"fitted q ({run.guide_name}, {run.method})",
            title=(
                f"{self.title}, N = {self.num_data}\ngap {run.diagnostics.gap:.4g} nats (best "
                f"mean field: {self.log_evidence() - self.best_mean_field_elbo():.4g})"
            ),
        )
        return {"posterior": fig}
