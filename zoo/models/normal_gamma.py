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
q(tau) = Gamma(a_N', b_N') with a_N' = a0 + (N + 1) / 2. Its ELBO (:func:`mean_field_elbo`, in
closed form) stays below log p(x) by KL(q || p(mu, tau | x)) > 0.

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
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from scipy.special import digamma, gammaln

from guides.prior_family import AutoPriorFamily
from zoo.data import as_float_array, read_numeric_table
from zoo.errors import DataError, ZooError
from zoo.model import Option, Training, ZooModel, at_least, finite_float, positive_float, seed_value
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView


@dataclass(frozen=True)
class NormalGammaParams:
    """NormalGamma(mu, lam, a, b): tau ~ Gamma(a, rate b), mu | tau ~ N(mu, 1 / (lam tau)).

    The prior (mu0, lambda0, a0, b0) and the exact posterior (mu_N, lambda_N, a_N, b_N)."""

    mu: float
    lam: float
    a: float
    b: float


@dataclass(frozen=True)
class MeanField:
    """q(mu) q(tau) = N(mu | loc, 1 / precision) Gamma(tau | shape, rate) (PRML 10.26, 10.29)."""

    loc: float
    precision: float
    shape: float
    rate: float


def _as_array(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def exact_posterior(x: Any, prior: NormalGammaParams) -> NormalGammaParams:
    """The Normal-Gamma posterior p(mu, tau | x) (Murphy 2007, eqs. 86-89; PRML eq. 2.154)."""
    x = _as_array(x)
    n, xbar = x.size, float(x.mean())
    lam = prior.lam + n
    scatter = float(((x - xbar) ** 2).sum())
    return NormalGammaParams(
        mu=(prior.lam * prior.mu + n * xbar) / lam,
        lam=lam,
        a=prior.a + n / 2,
        b=prior.b + 0.5 * scatter + prior.lam * n * (xbar - prior.mu) ** 2 / (2 * lam),
    )


def log_evidence(x: Any, prior: NormalGammaParams) -> float:
    """log p(x), the Normal-Gamma marginal likelihood (Murphy 2007, eq. 95):

    p(x) = Gamma(a_N) / Gamma(a0) * b0^a0 / b_N^a_N * (lambda0 / lambda_N)^(1/2) * (2 pi)^(-N/2).
    """
    x = _as_array(x)
    post = exact_posterior(x, prior)
    return float(
        gammaln(post.a)
        - gammaln(prior.a)
        + prior.a * math.log(prior.b)
        - post.a * math.log(post.b)
        + 0.5 * (math.log(prior.lam) - math.log(post.lam))
        - 0.5 * x.size * math.log(2 * math.pi)
    )


def cavi_update(x: Any, prior: NormalGammaParams, q: MeanField) -> MeanField:
    """One round of coordinate ascent, q(mu) then q(tau) (PRML eqs. 10.25-10.30):

    mu_N = (lambda0 mu0 + N xbar) / (lambda0 + N),  lambda_N = (lambda0 + N) E[tau],
    a_N = a0 + (N + 1) / 2,
    b_N = b0 + 1/2 E_mu[sum_n (x_n - mu)^2 + lambda0 (mu - mu0)^2].
    """
    x = _as_array(x)
    n = x.size
    e_tau = q.shape / q.rate
    loc = (prior.lam * prior.mu + x.sum()) / (prior.lam + n)
    precision = (prior.lam + n) * e_tau
    var = 1.0 / precision  # E_mu[(c - mu)^2] = (c - loc)^2 + var
    expected = float(((x - loc) ** 2).sum()) + n * var + prior.lam * ((loc - prior.mu) ** 2 + var)
    return MeanField(
        loc=float(loc),
        precision=float(precision),
        shape=prior.a + (n + 1) / 2,
        rate=prior.b + 0.5 * expected,
    )


def mean_field_elbo(x: Any, prior: NormalGammaParams, q: MeanField) -> float:
    """The ELBO of q(mu) q(tau) = N(loc, 1 / precision) Gamma(shape, rate), in closed form.

    With E[tau] = shape / rate, E[log tau] = digamma(shape) - log(rate) and
    E_mu[(c - mu)^2] = (c - loc)^2 + 1 / precision (PRML §10.1.3, the terms of eq. 10.70 for a
    single Gaussian):

        E log p(x | mu, tau) = N/2 (E log tau - log 2 pi) - E tau / 2 E_mu sum_n (x_n - mu)^2
        E log p(mu | tau)    = 1/2 (log lambda0 + E log tau - log 2 pi)
                               - lambda0 E tau / 2 E_mu (mu - mu0)^2
        E log p(tau)         = a0 log b0 - log Gamma(a0) + (a0 - 1) E log tau - b0 E tau
        H[q(mu)]             = 1/2 (1 + log 2 pi - log precision)
        H[q(tau)]            = shape - log rate + log Gamma(shape) + (1 - shape) digamma(shape).
    """
    x = _as_array(x)
    n = x.size
    e_tau = q.shape / q.rate
    e_log_tau = float(digamma(q.shape)) - math.log(q.rate)
    var = 1.0 / q.precision
    sq_data = float(((x - q.loc) ** 2).sum()) + n * var
    sq_prior = (q.loc - prior.mu) ** 2 + var
    log_2pi = math.log(2 * math.pi)
    ell = 0.5 * n * (e_log_tau - log_2pi) - 0.5 * e_tau * sq_data
    log_p_mu = (
        0.5 * (math.log(prior.lam) + e_log_tau - log_2pi) - 0.5 * prior.lam * e_tau * sq_prior
    )
    log_p_tau = (
        prior.a * math.log(prior.b) - gammaln(prior.a) + (prior.a - 1) * e_log_tau - prior.b * e_tau
    )
    h_mu = 0.5 * (1 + log_2pi - math.log(q.precision))
    h_tau = q.shape - math.log(q.rate) + gammaln(q.shape) + (1 - q.shape) * digamma(q.shape)
    return float(ell + log_p_mu + log_p_tau + h_mu + h_tau)


def cavi_fixed_point(
    x: Any,
    prior: NormalGammaParams,
    start: MeanField | None = None,
    *,
    tol: float = 1e-13,
    max_iter: int = 10_000,
) -> tuple[MeanField, list[float]]:
    """Iterate :func:`cavi_update` until E[tau] stops moving (relative change below ``tol``).

    Starts from q = prior-like factors (q(mu) = N(mu0, 1 / (lambda0 E tau)), q(tau) = Gamma(a0, b0))
    unless told otherwise. Returns the fixed point and the ELBO after every update."""
    q = start or MeanField(prior.mu, prior.lam * prior.a / prior.b, prior.a, prior.b)
    elbos = [mean_field_elbo(x, prior, q)]
    for _ in range(max_iter):
        new = cavi_update(x, prior, q)
        elbos.append(mean_field_elbo(x, prior, new))
        done = abs(new.shape / new.rate - q.shape / q.rate) <= tol * (q.shape / q.rate)
        q = new
        if done:
            return q, elbos
    raise ZooError(f"CAVI did not converge in {max_iter} iterations")


def simulate(num_points: int, seed: int, mean: float, sd: float) -> np.ndarray:
    """``num_points`` draws from N(mean, sd^2), seeded."""
    return np.random.default_rng(seed).normal(mean, sd, size=num_points)


_PRIOR_FAMILY_PARAMS = {"tau": ("concentration", "rate"), "mu": ("loc", "scale")}


@register
class NormalGamma(ZooModel):
    name = "normal-gamma"
    title = "Normal with unknown mean and precision"
    application = "Coordinate-ascent variational inference"
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
    guides = ("mean-field", "full-rank", "exact")
    default_guide = "mean-field"
    default_elbo = "trace"
    # AutoPriorFamily samples Normal and Gamma factors at the model's own sites: analytic KLs
    elbo_for_guide = {"mean-field": "meanfield"}
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
    closed_form_name = "CAVI"
    save_posterior_draws = True
    arviz_dims = {"x": ("observation",)}  # mu and tau are scalars
    # the exact guide has no parameters: one step is all its training
    training_for_guide = {"exact": Training(steps=1, quick_steps=1, particles=1)}
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
    def _store_names(self, guide: Any) -> dict[tuple[str, str], str]:
        if not isinstance(guide, AutoPriorFamily):
            raise ZooError(
                "CAVI updates the mean-field guide q(mu) q(tau); run it with --guide mean-field"
            )
        store = pyro.get_param_store()
        names = {
            (site, p): f"{type(guide).__name__}.factors.{p}.{site}"
            for site, params in _PRIOR_FAMILY_PARAMS.items()
            for p in params
        }
        missing = [n for n in names.values() if n not in store]
        if missing:
            raise ZooError(
                f"the mean-field guide's parameters are not in the param store: {missing}"
            )
        return names

    def _read_store(self, guide: Any) -> MeanField:
        store = pyro.get_param_store()
        names = self._store_names(guide)
        value = {key: float(store[name]) for key, name in names.items()}
        return MeanField(
            loc=value["mu", "loc"],
            precision=value["mu", "scale"] ** -2,
            shape=value["tau", "concentration"],
            rate=value["tau", "rate"],
        )

    def closed_form_step(self, guide: Callable[..., Any], guide_name: str) -> float:
        """One CAVI round (PRML eqs. 10.25-10.30), written into the mean-field guide's params;
        returns the (analytic) mean-field ELBO after it."""
        x = self.x.cpu().numpy()
        new = cavi_update(x, self.prior, self._read_store(guide))
        store, names = pyro.get_param_store(), self._store_names(guide)
        values = {
            ("mu", "loc"): new.loc,
            ("mu", "scale"): new.precision**-0.5,
            ("tau", "concentration"): new.shape,
            ("tau", "rate"): new.rate,
        }
        for key, value in values.items():
            store[names[key]] = self.tensor(value)  # __setitem__ respects the constraint
        return mean_field_elbo(x, self.prior, new)

    # -- reading a fitted guide --------------------------------------------------------------------
    @torch.no_grad()
    def exact_elbo(self, guide: Any, guide_name: str) -> float | None:
        """The mean-field (Normal x Gamma) guide's ELBO in closed form (:func:`mean_field_elbo`),
        the full-rank guide's by quadrature (:meth:`full_rank_elbo`); the exact guide's is
        log p(x)."""
        if self._is_exact(guide):
            return self.log_evidence()
        if isinstance(guide, AutoMultivariateNormal):
            return self.full_rank_elbo(guide)
        mf = self.fitted_mean_field(guide)
        return None if mf is None else mean_field_elbo(self.x.cpu().numpy(), self.prior, mf)

    @torch.no_grad()
    def full_rank_elbo(self, guide: AutoMultivariateNormal, nodes: int = 64) -> float:
        """The full-rank guide's ELBO without Monte Carlo error. q is a Gaussian on
        z = (log tau, mu), so ELBO = E_q[log p(x, mu, tau) + log tau] + H[q] (log tau: the
        Jacobian of tau = exp(z_0)), and E_q is a product Gauss-Hermite rule of ``nodes`` per
        axis in the whitened coordinates (the integrand is smooth: 64 nodes agree with 128 to
        1e-10)."""
        loc, cov = self._full_rank_normal(guide)
        chol = np.linalg.cholesky(cov)
        u, w = np.polynomial.hermite_e.hermegauss(nodes)
        w = w / w.sum()
        grid = np.stack(np.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
        z = loc + grid @ chol.T
        log_tau, mu = z[:, 0], z[:, 1]
        tau = np.exp(log_tau)
        x, p = self.x.cpu().numpy(), self.prior
        n, mean = x.size, float(x.mean())
        scatter = float(((x - mean) ** 2).sum())
        log_joint = (
            p.a * math.log(p.b) - gammaln(p.a) + (p.a - 1) * log_tau - p.b * tau
            + 0.5 * (math.log(p.lam / (2 * math.pi)) + log_tau)
            - 0.5 * p.lam * tau * (mu - p.mu) ** 2
            + 0.5 * n * (log_tau - math.log(2 * math.pi))
            - 0.5 * tau * (scatter + n * (mean - mu) ** 2)
        )  # fmt: skip
        entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * cov))
        return float(np.outer(w, w).ravel() @ (log_joint + log_tau) + entropy)

    def fitted_mean_field(self, guide: Any) -> MeanField | None:
        """q(mu) q(tau) of a mean-field guide, from the guide's own (this run's) parameters."""
        if not isinstance(guide, AutoPriorFamily):
            return None
        f = guide.get_factor_params()
        return MeanField(
            loc=float(f["mu"]["loc"]),
            precision=float(f["mu"]["scale"]) ** -2,
            shape=float(f["tau"]["concentration"]),
            rate=float(f["tau"]["rate"]),
        )

    def _is_exact(self, guide: Any) -> bool:
        return getattr(guide, "__func__", None) is NormalGamma.exact_guide

    @torch.no_grad()
    def _full_rank_normal(self, guide: AutoMultivariateNormal) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the guide's Gaussian on (log tau, mu), in that order."""
        q = guide.get_posterior()
        order = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
        idx = [order.index("tau"), order.index("mu")]
        loc, cov = q.loc.cpu().numpy(), q.covariance_matrix.cpu().numpy()
        return loc[idx], cov[np.ix_(idx, idx)]

    def guide_log_density(self, guide: Any, mu: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """log q(mu, tau) of any of the model's guides on a grid (for the contour figure)."""
        if self._is_exact(guide):
            return normal_gamma_log_density(mu, tau, self.posterior)
        mf = self.fitted_mean_field(guide)
        if mf is not None:
            from scipy.stats import gamma, norm

            return norm.logpdf(mu, mf.loc, mf.precision**-0.5) + gamma.logpdf(
                tau, mf.shape, scale=1.0 / mf.rate
            )
        if isinstance(guide, AutoMultivariateNormal):
            from scipy.stats import multivariate_normal

            loc, cov = self._full_rank_normal(guide)
            z = np.stack([np.log(tau), mu], axis=-1)
            return multivariate_normal(loc, cov).logpdf(z) - np.log(tau)  # Jacobian of log
        raise ZooError(f"cannot read q(mu, tau) from a {type(guide).__name__}")

    def guide_moments(self, guide: Any) -> dict[str, float]:
        """Means and standard deviations of mu and tau under the guide (closed form)."""
        if self._is_exact(guide):
            return normal_gamma_moments(self.posterior)
        mf = self.fitted_mean_field(guide)
        if mf is not None:
            return {
                "mu_mean": mf.loc,
                "mu_sd": mf.precision**-0.5,
                "tau_mean": mf.shape / mf.rate,
                "tau_sd": math.sqrt(mf.shape) / mf.rate,
            }
        if isinstance(guide, AutoMultivariateNormal):
            loc, cov = self._full_rank_normal(guide)  # tau = exp(z0): log-normal moments
            m, s2 = float(loc[0]), float(cov[0, 0])
            return {
                "mu_mean": float(loc[1]),
                "mu_sd": math.sqrt(cov[1, 1]),
                "tau_mean": math.exp(m + s2 / 2),
                "tau_sd": math.sqrt(math.expm1(s2)) * math.exp(m + s2 / 2),
            }
        raise ZooError(f"cannot read q(mu, tau) from a {type(guide).__name__}")

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
            "posterior_fitted": self.guide_moments(guide),
            "cavi_optimum": asdict(self.cavi_optimum),
            "log_evidence": log_ev,
            "best_mean_field_elbo": best_mf,
            # KL(q* || p(mu, tau | x)) of the CAVI fixed point: what factorising costs
            "mean_field_gap_analytic": log_ev - best_mf,
        }
        mf = self.fitted_mean_field(guide)
        if mf is not None:
            elbo = mean_field_elbo(x, self.prior, mf)
            out["fitted_mean_field"] = asdict(mf)
            out["fitted_elbo_analytic"] = elbo  # the fitted q's ELBO, free of Monte Carlo error
            out["fitted_gap_analytic"] = log_ev - elbo
        return out

    # -- figures -----------------------------------------------------------------------------------
    def plots(self, run: RunView) -> dict[str, Figure]:
        """``posterior``: contours of the exact p(mu, tau | x) and the fitted q (PRML Fig. 10.4)."""
        import matplotlib.pyplot as plt
        from scipy.stats import gamma

        post = self.posterior
        tau_lo, tau_hi = gamma.ppf([1e-6, 1 - 1e-6], post.a, scale=1.0 / post.b)
        mu_half = 6.0 / math.sqrt(post.lam * tau_lo)  # wide enough at the smallest tau
        mu = np.linspace(post.mu - mu_half, post.mu + mu_half, 401)
        tau = np.linspace(tau_lo, tau_hi, 401)
        mm, tt = np.meshgrid(mu, tau)
        exact = normal_gamma_log_density(mm, tt, post)
        fitted = self.guide_log_density(run.guide, mm, tt)
        fig, ax = plt.subplots(figsize=(6.0, 5.0), constrained_layout=True)
        # log-density drops of 0.5, 2 and 4.5 below the mode: the 1-, 2- and 3-sigma contours of
        # a Gaussian
        drops = np.array([4.5, 2.0, 0.5])
        style = {"linewidths": 1.5, "linestyles": "solid"}
        ax.contour(mm, tt, exact, levels=exact.max() - drops, colors="C2", **style)
        ax.contour(mm, tt, fitted, levels=fitted.max() - drops, colors="C3", **style)
        # zoom to where either density is above its outermost contour, with a margin
        inside = (exact > exact.max() - 6.0) | (fitted > fitted.max() - 6.0)
        for values, set_lim in ((mm[inside], ax.set_xlim), (tt[inside], ax.set_ylim)):
            lo, hi = values.min(), values.max()
            set_lim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.plot([], [], color="C2", label="exact p(mu, tau | x)")
        ax.plot([], [], color="C3", label=f"fitted q ({run.guide_name}, {run.method})")
        ax.set_xlabel("mu")
        ax.set_ylabel("tau")
        ax.legend(loc="upper right", fontsize=8)
        gap = run.diagnostics.gap
        ax.set_title(
            f"{self.title}, N = {self.num_data}\ngap {gap:.4g} nats (best mean field: "
            f"{self.log_evidence() - self.best_mean_field_elbo():.4g})"
        )
        return {"posterior": fig}


def normal_gamma_log_density(mu: Any, tau: Any, p: NormalGammaParams) -> np.ndarray:
    """log NormalGamma(mu, tau | p) = log Gamma(tau | a, b) + log N(mu | mu_p, 1 / (lam tau))."""
    mu, tau = np.asarray(mu, dtype=np.float64), np.asarray(tau, dtype=np.float64)
    log_gamma = p.a * math.log(p.b) - gammaln(p.a) + (p.a - 1) * np.log(tau) - p.b * tau
    log_normal = (
        0.5 * (np.log(p.lam * tau) - math.log(2 * math.pi)) - 0.5 * p.lam * tau * (mu - p.mu) ** 2
    )
    return log_gamma + log_normal


def normal_gamma_moments(p: NormalGammaParams) -> dict[str, float]:
    """Means and sds of mu and tau under NormalGamma(p): mu is Student-t with 2a degrees of
    freedom, E mu = mu_p, var mu = b / (lam (a - 1)) for a > 1 (Murphy 2007, eq. 99)."""
    mu_var = p.b / (p.lam * (p.a - 1)) if p.a > 1 else math.inf
    return {
        "mu_mean": p.mu,
        "mu_sd": math.sqrt(mu_var),
        "tau_mean": p.a / p.b,
        "tau_sd": math.sqrt(p.a) / p.b,
    }
