"""Mean-field variational Bayes on Bayesian linear regression, against the exact posterior.

Follows Bishop, PRML §3.3 (the Gaussian posterior of the weights), §3.5 (the evidence) and
§10.1 (factorised approximations, and why a mean-field Gaussian is too narrow: PRML Fig. 10.2);
Blei, Kucukelbir & McAuliffe (2017), "Variational inference: a review for statisticians", JASA
112, 859-877.

With a design matrix X (N x D), targets y (N,), a Gaussian prior and known noise,

    w ~ N(0, s^2 I),    y_n | w ~ N(x_n^T w, sigma^2),

everything is Gaussian and known exactly:

- posterior p(w | y) = N(m, Lambda^{-1}) with precision Lambda = I / s^2 + X^T X / sigma^2 and
  mean m = Lambda^{-1} X^T y / sigma^2 (PRML eqs. 3.53-3.54);
- evidence p(y) = N(y | 0, sigma^2 I + s^2 X X^T) (PRML eq. 3.86, written as an N x N Gaussian);
- the best fully factorised Gaussian q(w) = prod_i q_i(w_i) has q_i = N(m_i, 1 / Lambda_ii)
  (PRML eqs. 10.12-10.13: the means are exact, the variances are the inverse diagonal of the
  precision, which is smaller than the marginal variance), so its ELBO is the evidence minus
  KL(q || p(w | y)) = 0.5 (sum_i log Lambda_ii - log |Lambda|) >= 0, zero only when Lambda is
  diagonal (uncorrelated posterior);
- a full-rank Gaussian contains the posterior: its best ELBO is the log evidence.

Data: scikit-learn's bundled diabetes data (442 patients, 10 baseline variables, disease
progression after one year), every feature and the target standardised to z-scores with the
population standard deviation. The standardised target has mean zero, and so has every column,
so the model has no intercept. The default noise sd 0.7 is a round number near the residual sd
of the least-squares fit to the standardised data (0.69, R^2 = 0.52). With ``--data file.csv``
the last numeric column is the target (``--target`` names another) and the same
standardisation applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from zoo.data import as_float_array, read_numeric_table
from zoo.errors import DataError, ZooError
from zoo.gaussian import gaussian_entropy, gaussian_log_density, mean_field_gap
from zoo.model import ArviZ, Guide, Option, Training, ZooModel, positive_float
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView


# --------------------------------------------------------------------------------------------
# The closed forms (each written once; float64 tensors in, float64 out)
# --------------------------------------------------------------------------------------------
def posterior_precision(x: torch.Tensor, prior_scale: float, noise_scale: float) -> torch.Tensor:
    """Lambda = I / s^2 + X^T X / sigma^2, the posterior precision of w (PRML eq. 3.54)."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return eye / prior_scale**2 + x.T @ x / noise_scale**2


def posterior_mean(
    x: torch.Tensor, y: torch.Tensor, prior_scale: float, noise_scale: float
) -> torch.Tensor:
    """m = Lambda^{-1} X^T y / sigma^2, the posterior mean of w (PRML eq. 3.53)."""
    chol = torch.linalg.cholesky(posterior_precision(x, prior_scale, noise_scale))
    rhs = (x.T @ y / noise_scale**2).unsqueeze(-1)
    return torch.cholesky_solve(rhs, chol).squeeze(-1)


def log_evidence_direct(
    x: torch.Tensor, y: torch.Tensor, prior_scale: float, noise_scale: float
) -> float:
    """log N(y | 0, sigma^2 I + s^2 X X^T) through the Cholesky factor of the N x N covariance
    (PRML eq. 3.86 in its marginal-Gaussian form, PRML eq. 2.115). O(N^3): the reference."""
    n = x.shape[0]
    cov = noise_scale**2 * torch.eye(n, dtype=x.dtype, device=x.device) + prior_scale**2 * x @ x.T
    return float(gaussian_log_density(y, 0.0, cov))


def log_evidence(x: torch.Tensor, y: torch.Tensor, prior_scale: float, noise_scale: float) -> float:
    """The same log evidence through D x D quantities only (PRML eq. 3.86).

    By the matrix determinant lemma |sigma^2 I + s^2 X X^T| = sigma^{2N} s^{2D} |Lambda|, and by
    Woodbury y^T (sigma^2 I + s^2 X X^T)^{-1} y = y^T y / sigma^2 - m^T Lambda m, so

        log p(y) = -N/2 log 2 pi - N log sigma - D log s - 1/2 log |Lambda|
                   - 1/2 (y^T y / sigma^2 - m^T Lambda m).
    """
    n, d = x.shape
    chol = torch.linalg.cholesky(posterior_precision(x, prior_scale, noise_scale))
    b = x.T @ y / noise_scale**2  # = Lambda m
    half = torch.linalg.solve_triangular(chol, b.unsqueeze(-1), upper=False).squeeze(-1)
    fit = y @ y / noise_scale**2 - half @ half  # half @ half = m^T Lambda m
    log_det = 2.0 * chol.diagonal().log().sum()
    return float(
        -0.5 * n * math.log(2 * math.pi)
        - n * math.log(noise_scale)
        - d * math.log(prior_scale)
        - 0.5 * log_det
        - 0.5 * fit
    )


def gaussian_elbo(
    x: torch.Tensor,
    y: torch.Tensor,
    prior_scale: float,
    noise_scale: float,
    mean: torch.Tensor,
    cov: torch.Tensor,
) -> float:
    """The ELBO of any Gaussian q(w) = N(mean, cov), in closed form (no sampling):

    E_q log p(y | w) = -N/2 log(2 pi sigma^2) - (|y - X mean|^2 + tr(X^T X cov)) / (2 sigma^2)
    E_q log p(w)     = -D/2 log(2 pi s^2) - (|mean|^2 + tr cov) / (2 s^2)
    H[q]             =  D/2 log(2 pi e) + 1/2 log |cov|.
    """
    n, d = x.shape
    resid = y - x @ mean
    ell = (
        -0.5 * n * math.log(2 * math.pi * noise_scale**2)
        - 0.5 * (resid @ resid + (x.T @ x * cov).sum()) / noise_scale**2
    )
    log_prior = (
        -0.5 * d * math.log(2 * math.pi * prior_scale**2)
        - 0.5 * (mean @ mean + cov.trace()) / prior_scale**2
    )
    entropy = gaussian_entropy(cov)
    return float(ell + log_prior + entropy)


def standardize(values: np.ndarray) -> np.ndarray:
    """Columns as z-scores: minus the mean, over the population (ddof=0) standard deviation."""
    return (values - values.mean(0)) / values.std(0)


def load_diabetes_data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled diabetes data: features (442 x 10), target, feature names."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return data.data, data.target, list(data.feature_names)


@register
class BayesianLinearRegression(ZooModel):
    name = "bayes-linreg"
    title = "Bayesian linear regression"
    application = "Mean-field variational Bayes"
    reference = "Bishop, PRML §3.3, §3.5, §10.1; Blei, Kucukelbir & McAuliffe (2017), JASA 112"
    options = (
        Option("prior_scale", positive_float, 1.0, "prior sd s of every weight: w ~ N(0, s^2 I)"),
        Option(
            "noise_scale",
            positive_float,
            0.7,
            "known noise sd sigma of the standardised target (0.7: near the OLS residual sd)",
        ),
        Option("target", str, None, "with --data: the target column (default: the last one)"),
    )
    data_help = (
        "CSV file: numeric columns are the features, the last one the target (or --target); "
        "all are standardised"
    )
    guides = {
        "mean-field": Guide(),
        "full-rank": Guide(),
        # the exact guide has no parameters: one step is all its training
        "exact": Guide(training=Training(steps=1, quick_steps=1, particles=1)),
    }
    default_guide = "mean-field"
    # No "meanfield" estimator for the mean field: AutoNormal samples an auxiliary site and puts
    # a Delta at "w", so TraceMeanField_ELBO has no analytic KL to use and computes exactly the
    # Trace_ELBO loss (checked: same loss for the same draws).
    # The posterior is ill-conditioned (precision eigenvalues 8.7 to 3631 on the diabetes data):
    # a large lr decayed 1000-fold and 128 vectorized particles bring both Gaussian guides within
    # ~0.003 nats of their family's best in 1200 steps (measured over seeds), ~6 s on one thread.
    training = Training(steps=1200, lr=0.3, quick_steps=300, lr_final_factor=0.001, particles=128)
    data_plate = None  # w is global: no per-point latents, no mini-batching
    arviz = ArviZ(
        dims={"w": ("feature",), "y": ("observation",)}, coords={"feature": "feature_names"}
    )
    leaderboard = ({"guide": "mean-field"}, {"guide": "full-rank"}, {"guide": "exact"})

    # -- data --------------------------------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        self.prior_scale = float(opts["prior_scale"])
        self.noise_scale = float(opts["noise_scale"])
        if data is None:
            if opts["target"] is not None:
                raise DataError("--target names a column of --data; the diabetes data has none")
            features, target, names = load_diabetes_data()
            self.target_name = "disease progression"
        else:
            if isinstance(data, str | Path):
                # constant columns are refused below, naming feature or target
                values, columns = read_numeric_table(data, min_rows=3, allow_constant=True)
                source = repr(str(data))
            else:
                values = as_float_array(data, "the data")
                if values.ndim != 2:
                    raise DataError("data must be a finite 2-D array (rows x columns)")
                columns = [f"x{i + 1}" for i in range(values.shape[1] - 1)] + ["y"]
                source = "the data"
            features, target, names = self._split_target(values, columns, opts["target"], source)
        x, y = standardize(features), standardize(target[:, None])[:, 0]
        self.feature_names = names
        self.x = self.tensor(x)
        self.y = self.tensor(y)
        self.num_data, self.dim = x.shape
        # the exact posterior, computed once
        self.precision = posterior_precision(self.x, self.prior_scale, self.noise_scale)
        self.post_mean = posterior_mean(self.x, self.y, self.prior_scale, self.noise_scale)
        self.post_cov = torch.cholesky_inverse(torch.linalg.cholesky(self.precision))
        self.post_scale_tril = torch.linalg.cholesky(self.post_cov)

    def _split_target(
        self, values: np.ndarray, columns: list[str], target: str | None, source: str
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if values.shape[1] < 2:
            raise DataError(
                f"{source} has {values.shape[1]} numeric column; a regression needs at least one "
                "feature column and a target column"
            )
        if target is None:
            j = values.shape[1] - 1
        elif target in columns:
            j = columns.index(target)
        else:
            raise DataError(
                f"--target {target!r} is not a numeric column of {source}; its numeric columns "
                f"are {', '.join(columns)}"
            )
        features = np.delete(values, j, axis=1)
        names = [c for i, c in enumerate(columns) if i != j]
        if values.shape[0] < 3:
            raise DataError(f"{source} has {values.shape[0]} rows; at least 3 are needed")
        constant = [name for name, sd in zip(names, features.std(0), strict=True) if sd == 0]
        if constant:
            raise DataError(
                f"feature column(s) {', '.join(constant)} of {source} are constant and cannot "
                "be standardised; drop them"
            )
        if values[:, j].std() == 0:
            raise DataError(f"the target column {columns[j]!r} of {source} is constant")
        self.target_name = columns[j]
        return features, values[:, j], names

    # -- the model and its guides ------------------------------------------------------------------
    def model(self, subsample_size: int | None = None) -> None:
        zeros = torch.zeros(self.dim, dtype=self.x.dtype, device=self.device)
        w = pyro.sample("w", dist.Normal(zeros, self.prior_scale).to_event(1))
        mean = (w * self.x).sum(-1)  # w: (..., 1, D) with particles -> mean: (..., N)
        with pyro.plate("data", self.num_data):
            pyro.sample("y", dist.Normal(mean, self.noise_scale), obs=self.y)

    def exact_guide(self, subsample_size: int | None = None) -> None:
        """q(w) = p(w | y) = N(m, Lambda^{-1}): no parameters, ELBO = log p(y) for every draw."""
        pyro.sample("w", dist.MultivariateNormal(self.post_mean, scale_tril=self.post_scale_tril))

    def build_guide(self, name: str) -> Callable[..., Any]:
        if name == "exact":
            return self.exact_guide
        return super().build_guide(name)

    # -- what is known exactly ---------------------------------------------------------------------
    def log_evidence(self) -> float:
        return log_evidence(self.x, self.y, self.prior_scale, self.noise_scale)

    def best_mean_field_elbo(self) -> float:
        return self.log_evidence() - mean_field_gap(self.precision)

    def best_elbo(self, guide: str) -> float | None:
        if guide == "mean-field":
            return self.best_mean_field_elbo()
        if guide in ("full-rank", "exact"):
            return self.log_evidence()
        return None

    def exact_elbo(self, guide: Callable[..., Any], guide_name: str) -> float:
        """Every guide here is Gaussian: its ELBO in closed form (:func:`gaussian_elbo`)."""
        mean, cov = self.guide_gaussian(guide, guide_name)
        return gaussian_elbo(self.x, self.y, self.prior_scale, self.noise_scale, mean, cov)

    # -- reading a fitted guide --------------------------------------------------------------------
    @torch.no_grad()
    def guide_gaussian(self, guide: Any, guide_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of q(w) of the guide called ``guide_name``, read from the guide's
        own parameters: the exact guide's is the posterior, the mean field's
        (:class:`~pyro.infer.autoguide.AutoNormal`) diagonal, the full rank's
        (:class:`~pyro.infer.autoguide.AutoMultivariateNormal`) full.

        Autoguides keep their fitted values as module attributes (they stay this run's values
        when another run's parameters are loaded into Pyro's global param store)."""
        if guide_name == "exact":
            return self.post_mean.clone(), self.post_cov.clone()
        if guide_name == "mean-field":
            loc, scale = guide.locs.w.detach(), guide.scales.w.detach()
            return loc.clone(), torch.diag(scale**2)
        if guide_name == "full-rank":
            q = guide.get_posterior()  # the latent is w itself: its support is unconstrained
            return q.loc.detach().clone(), q.covariance_matrix.detach().clone()
        raise ZooError(f"cannot read a Gaussian q(w) from the {guide_name!r} guide")

    def summary(self, guide: Callable[..., Any], guide_name: str) -> dict[str, Any]:
        mean, cov = self.guide_gaussian(guide, guide_name)
        log_ev = self.log_evidence()
        best_mf = self.best_mean_field_elbo()
        fitted_elbo = gaussian_elbo(self.x, self.y, self.prior_scale, self.noise_scale, mean, cov)
        exact_sd = self.post_cov.diagonal().sqrt()
        return {
            "feature_names": self.feature_names,
            "target": self.target_name,
            "posterior_mean_exact": self.post_mean.tolist(),
            "posterior_sd_exact": exact_sd.tolist(),
            "posterior_sd_best_mean_field": self.precision.diagonal().rsqrt().tolist(),
            "posterior_mean_fitted": mean.tolist(),
            "posterior_sd_fitted": cov.diagonal().sqrt().tolist(),
            "log_evidence": log_ev,
            "best_mean_field_elbo": best_mf,
            # KL(q* || p(w | y)) of the best mean field: what factorising costs, analytically
            "mean_field_gap_analytic": log_ev - best_mf,
            # the fitted guide's ELBO and gap in closed form (free of Monte Carlo error)
            "fitted_elbo_analytic": fitted_elbo,
            "fitted_gap_analytic": log_ev - fitted_elbo,
            "ols_residual_sd": self.ols_residual_sd(),
        }

    def ols_residual_sd(self) -> float:
        """Residual sd of the least-squares fit: the scale the default noise sd is chosen near."""
        coef = torch.linalg.lstsq(self.x, self.y.unsqueeze(-1)).solution.squeeze(-1)
        resid = self.y - self.x @ coef
        return float(resid.pow(2).mean().sqrt())

    # -- figures -----------------------------------------------------------------------------------
    def correlated_pairs(self, count: int = 3) -> list[tuple[int, int]]:
        """The ``count`` pairs of weights most correlated under the exact posterior."""
        sd = self.post_cov.diagonal().sqrt()
        corr = (self.post_cov / torch.outer(sd, sd)).cpu().numpy()
        i, j = np.triu_indices(self.dim, k=1)
        order = np.argsort(-np.abs(corr[i, j]), kind="stable")[:count]
        return [(int(i[k]), int(j[k])) for k in order]

    def plots(self, run: RunView) -> dict[str, Figure]:
        """``posterior_ellipses``: for the most correlated pairs of weights, the exact posterior's
        2-sigma ellipse, the best mean field's (axis-aligned, too narrow: PRML Fig. 10.2) and the
        fitted guide's own."""
        pairs = self.correlated_pairs(min(3, self.dim * (self.dim - 1) // 2))
        if not pairs:
            return {}
        mean, cov = self.guide_gaussian(run.guide, run.guide_name)
        fig = posterior_ellipses(
            pairs,
            self.feature_names,
            exact_mean=self.post_mean.cpu().numpy(),
            exact_cov=self.post_cov.cpu().numpy(),
            best_mean_field_cov=np.diag(1.0 / self.precision.diagonal().cpu().numpy()),
            fitted_mean=mean.cpu().numpy(),
            fitted_cov=cov.cpu().numpy(),
            fitted_label=f"fitted {run.guide_name}",
            title=f"{self.title}: 2-sigma ellipses, {run.guide_name} guide ({run.method})",
        )
        return {"posterior_ellipses": fig}


# --------------------------------------------------------------------------------------------
# The figure (arrays in)
# --------------------------------------------------------------------------------------------
def posterior_ellipses(
    pairs: list[tuple[int, int]],
    feature_names: list[str],
    *,
    exact_mean: np.ndarray,
    exact_cov: np.ndarray,
    best_mean_field_cov: np.ndarray,
    fitted_mean: np.ndarray,
    fitted_cov: np.ndarray,
    fitted_label: str,
    title: str,
) -> Figure:
    """One panel per pair (i, j) of weights: the 2-sigma ellipses of the exact posterior
    N(exact_mean, exact_cov), of the best mean field (the exact means with
    ``best_mean_field_cov``, diagonal) and of the fitted q(w) = N(fitted_mean, fitted_cov),
    each restricted to (w_i, w_j) (PRML Fig. 10.2)."""
    import matplotlib.pyplot as plt

    from zoo.plots import ellipse

    fig, axes = plt.subplots(
        1, len(pairs), figsize=(4.2 * len(pairs), 4.2), constrained_layout=True, squeeze=False
    )
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        idx = [i, j]
        sub = np.ix_(idx, idx)
        rho = exact_cov[i, j] / math.sqrt(exact_cov[i, i] * exact_cov[j, j])
        ellipse(ax, exact_mean[idx], exact_cov[sub], color="k", lw=2, label="exact posterior")
        ellipse(
            ax, fitted_mean[idx], fitted_cov[sub], color="C0", lw=3, alpha=0.6, label=fitted_label
        )
        ellipse(
            ax,
            exact_mean[idx],
            best_mean_field_cov[sub],
            color="C1",
            lw=1.5,
            ls="--",
            label="best mean field",
        )
        ax.plot(*exact_mean[idx], "k+", ms=10)
        ax.plot(*fitted_mean[idx], "C0x", ms=8)
        ax.autoscale_view()
        ax.set_xlabel(f"w[{feature_names[i]}]")
        ax.set_ylabel(f"w[{feature_names[j]}]")
        ax.set_title(f"posterior correlation {rho:+.2f}")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    return fig
