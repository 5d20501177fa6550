"""``linear-vae``: probabilistic PCA as a VAE, whose evidence, posterior and ELBO gap are
exact.

Tipping & Bishop (1999), "Probabilistic principal component analysis", JRSS B 61, 611-622,
eqs. 3 and 6-8; Kingma & Welling (2014), ICLR; Lucas, Tucker, Grosse & Norouzi (2019), "Don't
blame the ELBO! A linear VAE perspective on posterior collapse", NeurIPS: the best diagonal
encoder's gap, 0.5 (sum_i log Lambda_ii - log |Lambda|) per point, vanishes only when W^T W is
diagonal, and training the diagonal VAE rotates W back to orthogonal columns. scikit-learn's
``PCA.score`` is the peer: the same model with the N - 1 covariance.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from guides.amortized import AmortizedGuide, LinearGaussianEncoder
from zoo.errors import DataError
from zoo.gaussian import gaussian_kl, gaussian_log_density
from zoo.model import Option, Training, boolean, positive_int, seed_value
from zoo.models.vae.base import ArrayVAE
from zoo.models.vae.data import strict_fraction
from zoo.models.vae.ppca import (
    LinearGaussian,
    diagonal_gap,
    ppca_covariance,
    ppca_ml,
    ppca_posterior,
    random_rotation,
)
from zoo.registry import register


@register
class LinearVAE(ArrayVAE):
    """Probabilistic PCA as a VAE: decoder x = W z + mu + eps, eps ~ N(0, sigma^2 I), and a
    linear Gaussian encoder, ``full-rank`` (a full covariance) or ``mean-field`` (diagonal)
    (Tipping & Bishop 1999, section 3; Lucas et al. 2019). The evidence, the posterior and the
    ELBO gap are in closed form (:mod:`zoo.models.vae.ppca`)."""

    name = "linear-vae"
    title = "Linear VAE (probabilistic PCA)"
    application = "Variational autoencoders"
    smoke_options = {"test_particles": 30}
    reference = "Tipping & Bishop (1999); Kingma & Welling (2014); Lucas et al. (2019)"
    options = (
        Option("latent_dim", positive_int, 8, "size q of the latent z"),
        Option(
            "init",
            str,
            "random",
            "decoder start: random, ml (closed-form maximum likelihood), ml-rotated (W_ML R)",
            choices=("random", "ml", "ml-rotated"),
        ),
        Option("train_decoder", boolean, True, "train W, mu, sigma (false: encoder only)"),
        Option("rotation_seed", seed_value, 0, "seed of the rotation R of --init ml-rotated"),
        Option(
            "test_fraction", strict_fraction, 0.2, "fraction of the data held out as the test set"
        ),
        Option("split_seed", seed_value, 0, "seed of the train/test split"),
        Option("test_particles", positive_int, 1000, "K of the test-set IWAE in the summary"),
    )
    guides = ("full-rank", "mean-field")
    default_guide = "full-rank"
    training = Training(steps=2000, lr=0.1, quick_steps=1000, lr_final_factor=0.001)
    leaderboard = ({"record_every": 20}, {"guide": "mean-field", "record_every": 20})
    dtype = torch.float64

    def setup(self, data: Any, **opts: Any) -> None:
        values, labels = self._load(data, opts)
        if self.source == "digits":
            values = values / 16.0
        train, test, split_labels = self._split(values, labels, opts)
        self._set_data(train, test, split_labels)
        q = opts["latent_dim"]
        if q >= self.data_dim:
            raise DataError(f"--latent-dim {q} must be below the data dimension {self.data_dim}")
        if self.num_data <= self.data_dim:
            raise DataError(
                f"{self.num_data} training points in {self.data_dim} dimensions: probabilistic "
                "PCA needs more points than dimensions"
            )
        self.latent_dim = q
        self.ml = ppca_ml(self.x, q)
        self.init_name = opts["init"]
        self.train_decoder = opts["train_decoder"]
        self.rotation = random_rotation(q, opts["rotation_seed"]).to(self.device)
        self.test_particles = opts["test_particles"]
        self.encoder = None
        self.decoder = None  # the decoder is (W, mu, sigma), not a network
        self._fixed = None if self.train_decoder else self._initial_decoder()

    # -- the decoder's parameters ---------------------------------------------------------------
    def _initial_decoder(self) -> dict[str, torch.Tensor]:
        """Initial (W, mu, sigma); random draws come from torch's RNG (seeded by the runner)."""
        if self.init_name == "random":
            weight = 0.1 * torch.randn(self.data_dim, self.latent_dim, dtype=self.dtype)
            mean = torch.zeros(self.data_dim, dtype=self.dtype)
            scale = torch.ones((), dtype=self.dtype)
            return {
                "W": weight.to(self.device),
                "mu": mean.to(self.device),
                "noise_scale": scale.to(self.device),
            }
        weight = self.ml["weight"]
        if self.init_name == "ml-rotated":
            weight = weight @ self.rotation
        return {
            "W": weight.clone(),
            "mu": self.ml["mean"].clone(),
            "noise_scale": self.ml["noise_var"].sqrt().clone(),
        }

    def decoder_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, mu, sigma): Pyro parameters, or fixed tensors with ``train_decoder=False``."""
        if self._fixed is not None:
            f = self._fixed
            return f["W"], f["mu"], f["noise_scale"]
        init = {}

        def start(name: str) -> torch.Tensor:
            if not init:
                init.update(self._initial_decoder())
            return init[name].clone()

        weight = pyro.param("W", lambda: start("W"))
        mean = pyro.param("mu", lambda: start("mu"))
        scale = pyro.param(
            "noise_scale", lambda: start("noise_scale"), constraint=constraints.positive
        )
        return weight, mean, scale

    def build_networks(self) -> None:
        self.decoder = "linear"

    def prior(self) -> dist.TorchDistribution:
        q = self.latent_dim
        eye = torch.eye(q, dtype=self.dtype, device=self.device)
        zeros = torch.zeros(q, dtype=self.dtype, device=self.device)
        return dist.MultivariateNormal(zeros, scale_tril=eye, validate_args=False)

    def model(self, subsample_size: int | None = None) -> None:
        weight, mean, scale = self.decoder_params()
        with self.plate(subsample_size) as idx:
            z = pyro.sample("z", self.prior())
            x = self.observed(None if subsample_size is None else idx)
            pyro.sample("x", LinearGaussian(z, weight, mean, scale), obs=x)

    def build_guide(self, name: str) -> AmortizedGuide:
        if name not in self.guides:
            return super().build_guide(name)
        covariance = "full" if name == "full-rank" else "diagonal"
        self.encoder = LinearGaussianEncoder(
            self.data_dim, self.latent_dim, covariance, input_shift=self.x.mean(0), dtype=self.dtype
        ).to(self.device)
        return AmortizedGuide(self, self.encoder)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        weight, mean, _ = (p.detach() for p in self.decoder_params())
        return z.to(self.dtype) @ weight.T + mean

    # -- what is exact --------------------------------------------------------------------------
    @torch.no_grad()
    def current(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, mu, sigma^2) at the current parameters."""
        weight, mean, scale = (p.detach() for p in self.decoder_params())
        return weight, mean, scale**2

    @torch.no_grad()
    def point_log_evidence(self) -> torch.Tensor:
        """log p(x_n) of every bound data point (Tipping & Bishop eq. 3)."""
        weight, mean, var = self.current()
        return gaussian_log_density(self.x, mean, ppca_covariance(weight, var))

    def log_evidence(self) -> float:
        return float(self.point_log_evidence().sum())

    def exact_elbo(self, guide: AmortizedGuide, guide_name: str) -> float:
        """log p(x) minus the closed-form KL(q(z | x_n) || p(z | x_n)) of every row."""
        return self.log_evidence() - float(self.analytic_gap(guide).sum())

    def max_log_evidence(self) -> float:
        """The closed-form maximum-likelihood pPCA log-likelihood (Tipping & Bishop 1999)."""
        return float(self.ml["log_likelihood"])

    def best_elbo(self, guide_name: str) -> float | None:
        if guide_name == "full-rank":
            return self.log_evidence()
        if guide_name == "mean-field":
            weight, _, var = self.current()
            return self.log_evidence() - self.num_data * diagonal_gap(weight, var)
        return None

    @torch.no_grad()
    def analytic_gap(self, guide: AmortizedGuide) -> torch.Tensor:
        """KL(q(z | x_n) || p(z | x_n)) for every bound data point, in closed form:
        log p(x_n) - ELBO_n."""
        x = self.x
        weight, mean, var = self.current()
        a, b, cov = ppca_posterior(weight, mean, var)
        encoder = guide.sync()
        loc_q, tril = encoder(x)
        cov_q = tril @ tril.T
        return gaussian_kl(loc_q, cov_q, x @ a.T + b, cov)

    def set_encoder(self, guide: AmortizedGuide, *, best: bool = True) -> None:
        """Write the exact posterior map (full covariance), or the best diagonal Gaussian
        (diagonal: the exact means, variances 1 / Lambda_ii), into the param store."""
        weight, mean, var = self.current()
        a, b, cov = ppca_posterior(weight, mean, var)
        covariance = guide.encoder.covariance
        if covariance == "full":
            tril = torch.linalg.cholesky(cov)
        else:
            precision = torch.linalg.inv(cov)
            tril = torch.diag_embed(precision.diagonal().rsqrt())
        store = pyro.get_param_store()
        values = guide.encoder.raw_values(a, b, tril)
        for key, value in values.items():
            store[f"{guide.module_name}$$${key}"] = value.clone()
        guide.sync()

    @torch.no_grad()
    def pca_score(self) -> float:
        """scikit-learn's ``PCA(q).fit(x).score(x)``: its mean log-likelihood per point."""
        from sklearn.decomposition import PCA

        x = self.x.cpu().numpy()
        return float(PCA(n_components=self.latent_dim, svd_solver="full").fit(x).score(x))

    def summary(self, guide: AmortizedGuide, guide_name: str) -> dict[str, Any]:
        n, d = self.num_data, self.data_dim
        weight, _, var = self.current()
        evidence = self.point_log_evidence()
        gap_train = self.analytic_gap(guide)
        c = n / (n - 1)
        ml = self.ml["log_likelihood"]
        held_out = self.on_test_split()
        test_evidence = held_out.point_log_evidence()
        test_gap = held_out.analytic_gap(guide)
        test = self.test_diagnostics(guide, self.test_particles)
        gram = weight.T @ weight
        off = gram - torch.diag_embed(gram.diagonal())
        return {
            "num_train": n,
            "num_test": held_out.num_data,
            "log_evidence_per_point": float(evidence.mean()),
            "analytic_elbo_per_point": float((evidence - gap_train).mean()),
            "analytic_gap_per_point": float(gap_train.mean()),
            "closed_form_max_log_likelihood_per_point": ml / n,
            "shortfall_from_closed_form_per_point": ml / n - float(evidence.mean()),
            "sklearn_pca_score_per_point": self.pca_score(),
            "sklearn_pca_score_explained": (
                "PCA.score uses the covariance with divisor N-1, exactly N/(N-1) times the ML "
                "covariance, so it is below the closed-form maximum by "
                "(D/2)(log c + 1/c - 1) per point, c = N/(N-1)"
            ),
            "sklearn_expected_difference_per_point": 0.5 * d * (math.log(c) + 1 / c - 1),
            "best_diagonal_gap_per_point": diagonal_gap(weight, var),
            "noise_var": float(var),
            "noise_var_ml": float(self.ml["noise_var"]),
            "w_offdiagonal_gram_norm": float(off.norm() / gram.norm()),
            "test": {
                **test,
                "analytic_elbo_per_point": float((test_evidence - test_gap).mean()),
                "analytic_gap_per_point": float(test_gap.mean()),
            },
            "collapse": self._collapse_summary(guide),
        }
