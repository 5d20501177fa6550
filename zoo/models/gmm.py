"""EM for Gaussian mixtures as ELBO maximisation.

Follows Dempster, Laird & Rubin (1977) and Neal & Hinton (1998), "A view of the EM algorithm
that justifies incremental, sparse, and other variants"; Bishop, PRML §9.2–9.4.

x_n in R^D are the points, z_n in {1..K} their component labels, theta = (pi, mu, Sigma) the
mixture weights, means and full covariances:

    z_n ~ Categorical(pi),    x_n | z_n = k ~ N(mu_k, Sigma_k).

The guide is the exact posterior of the labels given the current theta,
q(z_n = k) = r_nk proportional to pi_k N(x_n | mu_k, Sigma_k), held fixed (detached) while theta
moves. With that q the ELBO equals log p(x | theta) exactly after every E-step, so

- closed-form coordinate ascent (``method="closed-form"``) is EM: E-step = recompute q,
  M-step = the argmax of E_q log p(x, z | theta), and the ELBO never decreases;
- SVI with ``Trace_ELBO`` samples z from q (an unbiased gradient of the M-step objective), and
  ``TraceEnum_ELBO`` sums over z exactly.

The exact log evidence is the log-sum-exp log-likelihood; scikit-learn's ``GaussianMixture``
started from the same initialisation is the peer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from zoo.data import read_numeric_table
from zoo.errors import DataError
from zoo.model import Option, Training, ZooModel
from zoo.registry import register


def component_log_joint(
    x: torch.Tensor, weights: torch.Tensor, locs: torch.Tensor, scale_trils: torch.Tensor
) -> torch.Tensor:
    """log pi_k + log N(x_n | mu_k, Sigma_k), shape (N, K): the one formula everything uses."""
    comp = dist.MultivariateNormal(locs, scale_tril=scale_trils)
    return weights.log() + comp.log_prob(x.unsqueeze(-2))


def em_update(
    x: torch.Tensor, log_joint: torch.Tensor, reg_covar: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The M-step: weights, means and Cholesky factors maximising E_q log p(x, z | theta)."""
    resp = torch.softmax(log_joint, dim=-1)  # the E-step: q(z_n = k)
    counts = resp.sum(0)
    weights = counts / counts.sum()
    locs = (resp.T @ x) / counts[:, None]
    centred = x.unsqueeze(0) - locs.unsqueeze(1)  # (K, N, D)
    covs = torch.einsum("kn,kni,knj->kij", resp.T, centred, centred) / counts[:, None, None]
    covs = covs + reg_covar * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return weights, locs, torch.linalg.cholesky(covs)


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
    application = "EM algorithm"
    reference = "Dempster, Laird & Rubin (1977); Neal & Hinton (1998); Bishop, PRML §9.2-9.4"
    options = (
        Option("components", int, 3, "number of mixture components K"),
        Option("dataset", str, "synthetic", "bundled data set", choices=("synthetic", "iris")),
        Option("num_points", int, 500, "points in the synthetic data set"),
        Option("data_seed", int, 0, "seed of the synthetic data set"),
        Option("init_seed", int, 0, "seed of the k-means++ initialisation of the means"),
        Option("reg_covar", float, 0.0, "added to each covariance's diagonal in the M-step"),
    )
    data_help = "CSV file of points (numeric columns are the features)"
    guides = ("posterior",)
    default_guide = "posterior"
    default_elbo = "trace"
    training = Training(
        steps=1500, lr=0.05, lr_final_factor=0.05, quick_steps=300, closed_form_steps=200
    )
    data_plate = "data"
    closed_form_name = "EM"
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
        self.init = self._initial_parameters(values, k, opts["init_seed"])

    def _initial_parameters(self, values: np.ndarray, k: int, seed: int) -> dict[str, torch.Tensor]:
        """k-means++ means, the data covariance for every component, equal weights."""
        from sklearn.cluster import kmeans_plusplus

        means, _ = kmeans_plusplus(values, k, random_state=seed)
        cov = np.cov(values, rowvar=False, bias=True).reshape(self.dim, self.dim)
        cov = cov + 1e-6 * np.trace(cov) / self.dim * np.eye(self.dim)
        chol = np.linalg.cholesky(cov)
        return {
            "weights": self.tensor(np.full(k, 1.0 / k)),
            "locs": self.tensor(means),
            "scale_trils": self.tensor(np.broadcast_to(chol, (k, self.dim, self.dim)).copy()),
        }

    # -- the model and its guide ----------------------------------------------------------------
    def parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        init = self.init  # pyro.param adopts its initial tensor: hand it copies
        weights = pyro.param(
            "weights", lambda: init["weights"].clone(), constraint=constraints.simplex
        )
        locs = pyro.param("locs", lambda: init["locs"].clone())
        trils = pyro.param(
            "scale_trils",
            lambda: init["scale_trils"].clone(),
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
        if name == "posterior":
            return self.posterior_guide
        return super().build_guide(name)

    # -- exact quantities and EM ----------------------------------------------------------------
    def log_joint(self) -> torch.Tensor:
        with torch.no_grad():
            return component_log_joint(self.x, *(p.detach() for p in self.parameters()))

    def log_evidence(self) -> float:
        return torch.logsumexp(self.log_joint(), -1).sum().item()

    def best_elbo(self, guide: str) -> float | None:
        # the guide is the exact posterior given theta: its ELBO is the log-likelihood
        return self.log_evidence()

    def closed_form_step(self, guide) -> float:
        """One EM iteration; returns the ELBO after it, which equals log p(x | theta_new)."""
        weights, locs, trils = em_update(self.x, self.log_joint(), self.reg_covar)
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

    def peer_log_likelihood(self) -> float:
        """Mean log-likelihood per point of scikit-learn's EM from the same initialisation."""
        from sklearn.mixture import GaussianMixture as SkGaussianMixture

        init_covs = self.init["scale_trils"] @ self.init["scale_trils"].transpose(-1, -2)
        peer = SkGaussianMixture(
            n_components=self.num_components,
            covariance_type="full",
            reg_covar=self.reg_covar,
            tol=1e-10,
            max_iter=5000,
            weights_init=self.init["weights"].cpu().numpy(),
            means_init=self.init["locs"].cpu().numpy(),
            precisions_init=np.linalg.inv(init_covs.cpu().numpy()),
        )
        x = self.x.cpu().numpy()
        peer.fit(x)
        return float(peer.score(x))

    def summary(self, guide) -> dict[str, Any]:
        fitted = self.fitted()
        loglik = self.log_evidence()
        return {
            "weights": fitted["weights"].tolist(),
            "means": fitted["means"].tolist(),
            "covariances": fitted["covariances"].tolist(),
            "log_likelihood": loglik,
            "log_likelihood_per_point": loglik / self.num_data,
            "peer_sklearn_log_likelihood_per_point": self.peer_log_likelihood(),
        }

    def plots(self, result) -> dict:
        from zoo.plots import mixture_components

        fig = mixture_components(
            self.x.cpu().numpy(),
            torch.softmax(self.log_joint(), -1).cpu().numpy(),
            self.fitted(),
            self.feature_names,
            title=f"{self.title}: {result.method_label}",
        )
        return {"components": fig}
