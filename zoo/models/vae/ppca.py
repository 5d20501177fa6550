"""Probabilistic PCA in closed form (float64 in, float64 out): the linear VAE's exact evidence,
posterior, maximum-likelihood solution and diagonal-encoder gap, and its decoder as a
distribution.

Tipping & Bishop (1999), "Probabilistic principal component analysis", JRSS B 61, 611-622:
the marginal N(x | mu, W W^T + sigma^2 I) (eq. 3), the posterior (eq. 6) and the maximum
likelihood (eqs. 7-8); Lucas, Tucker, Grosse & Norouzi (2019), "Don't blame the ELBO! A linear
VAE perspective on posterior collapse", NeurIPS (the best diagonal encoder and its gap).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from zoo.gaussian import gaussian_log_density, mean_field_gap


def ppca_covariance(weight: torch.Tensor, noise_var: torch.Tensor | float) -> torch.Tensor:
    """C = W W^T + sigma^2 I, the marginal covariance of x (Tipping & Bishop eq. 3)."""
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return weight @ weight.T + noise_var * eye


def ppca_posterior(
    weight: torch.Tensor, mean: torch.Tensor, noise_var: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact posterior p(z | x) = N(A x + b, Sigma): (A, b, Sigma) with A = M^{-1} W^T,
    b = -A mu, Sigma = sigma^2 M^{-1}, M = W^T W + sigma^2 I (Tipping & Bishop eq. 6)."""
    q = weight.shape[1]
    eye = torch.eye(q, dtype=weight.dtype, device=weight.device)
    m = weight.T @ weight + noise_var * eye
    a = torch.linalg.solve(m, weight.T)
    cov = noise_var * torch.linalg.inv(m)
    return a, -(a @ mean), 0.5 * (cov + cov.T)


def diagonal_gap(weight: torch.Tensor, noise_var: torch.Tensor | float) -> float:
    """log p(x) - best diagonal-Gaussian ELBO, per data point: the mean-field gap
    (:func:`zoo.gaussian.mean_field_gap`) 0.5 (sum log Lambda_ii - log |Lambda|) of the
    posterior precision Lambda = (W^T W + sigma^2 I) / sigma^2 (the same for every x). Zero
    exactly when W^T W is diagonal."""
    q = weight.shape[1]
    eye = torch.eye(q, dtype=weight.dtype, device=weight.device)
    return mean_field_gap((weight.T @ weight + noise_var * eye) / noise_var)


def ppca_ml(x: torch.Tensor, latent_dim: int) -> dict[str, Any]:
    """The maximum-likelihood probabilistic PCA (Tipping & Bishop 1999, eqs. 7-8).

    Returns ``mean`` (the sample mean), ``weight`` W_ML = U_q (Lambda_q - sigma^2 I)^{1/2}
    (the rotation R = I), ``noise_var`` sigma^2_ML (the mean of the D - q smallest eigenvalues
    of the covariance S with divisor N), ``eigenvalues`` of S (descending) and
    ``log_likelihood``, the maximised total log N(x_n | mu, C).
    """
    n, d = x.shape
    if not 1 <= latent_dim < d:
        raise ValueError(f"latent_dim must be in 1..{d - 1}, got {latent_dim}")
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / n
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    noise_var = evals[latent_dim:].mean()
    scales = (evals[:latent_dim] - noise_var).clamp_min(0.0).sqrt()
    weight = evecs[:, :latent_dim] * scales
    loglik = gaussian_log_density(x, mean, ppca_covariance(weight, noise_var)).sum()
    return {
        "mean": mean,
        "weight": weight,
        "noise_var": noise_var,
        "eigenvalues": evals,
        "log_likelihood": float(loglik),
    }


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    """A seeded random rotation (Haar-distributed orthogonal matrix with determinant +1)."""
    rng = np.random.default_rng(seed)
    qmat, rmat = np.linalg.qr(rng.standard_normal((dim, dim)))
    qmat = qmat * np.sign(np.diag(rmat))
    if np.linalg.det(qmat) < 0:
        qmat[:, 0] = -qmat[:, 0]
    return torch.as_tensor(qmat, dtype=torch.float64)


class LinearGaussian(dist.TorchDistribution):
    """N(x | W z + mu, sigma^2 I) as a distribution over x, evaluated in the latent space.

    ``log_prob`` expands ||r - W z||^2 = ||r||^2 - 2 (W^T r) . z + z^T (W^T W) z with
    r = x - mu, so that K particles for N points cost O(K N q) memory instead of O(K N D):
    the same numbers as ``Normal(z @ W.T + mu, sigma).to_event(1)`` (tested), affordable for
    the thousand-particle importance-weighted bound.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        z: torch.Tensor,
        weight: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        validate_args: bool | None = False,
    ) -> None:
        self.z, self.weight, self.loc_offset, self.scale = z, weight, mean, scale
        super().__init__(z.shape[:-1], mean.shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.z @ self.weight.T + self.loc_offset

    @property
    def variance(self) -> torch.Tensor:
        return (self.scale**2).expand(self.batch_shape + self.event_shape)

    def expand(self, batch_shape, _instance=None) -> LinearGaussian:
        batch_shape = torch.Size(batch_shape)
        z = self.z.expand(batch_shape + self.z.shape[-1:])
        return LinearGaussian(z, self.weight, self.loc_offset, self.scale)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.z.dtype, device=self.z.device)
        return self.mean.expand(shape) + self.scale * eps

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r = value - self.loc_offset  # (..., D)
        wr = r @ self.weight  # (..., q)
        gram = self.weight.T @ self.weight
        z = self.z
        sq = r.pow(2).sum(-1) - 2.0 * (wr * z).sum(-1) + ((z @ gram) * z).sum(-1)
        d = value.shape[-1]
        var = self.scale**2
        return -0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)
