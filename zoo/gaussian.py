"""Gaussian formulas, each written once: the log-density (multivariate and elementwise), the KL
divergence between two Gaussians, the entropy, and the gap of the best mean-field Gaussian.

Bishop, *Pattern Recognition and Machine Learning* (2006): the univariate density (eq. 1.46),
the multivariate density (eq. 2.43) and its entropy (exercise 2.15, Appendix B); the best fully
factorised approximation to a Gaussian (§10.1.2). Petersen & Pedersen, *The Matrix Cookbook*
(2012), §8.1: the KL divergence between two multivariate Gaussians.

Densities and divergences are computed through Cholesky factors (a covariance or precision that
is not positive definite raises :class:`torch.linalg.LinAlgError`); everything keeps the dtype
it is given, so float64 inputs give float64 results.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: ln(2 pi)
LOG_2PI = math.log(2 * math.pi)


def _log_det_from_cholesky(chol: torch.Tensor) -> torch.Tensor:
    """ln det A = 2 sum_i ln L_ii for A = L L^T (batched over leading dimensions)."""
    return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def log_normal(x: Any, mean: Any, var: Any) -> Any:
    """ln N(x | mean, var) elementwise, ``var`` a variance (PRML eq. 1.46): floats, numpy
    arrays or tensors, broadcasting."""
    if isinstance(var, torch.Tensor):
        log_var = torch.log(var)
    else:
        log_var = np.log(var) if isinstance(var, np.ndarray) else math.log(var)
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 / var)


def gaussian_log_density(
    x: torch.Tensor, mean: torch.Tensor | float, cov: torch.Tensor
) -> torch.Tensor:
    """ln N(x_n | mean, cov) for every row x_n of ``x`` (PRML eq. 2.43), through the Cholesky
    factor L of ``cov``: -1/2 (D ln 2 pi + ln det cov + ||L^{-1} (x_n - mean)||^2).

    ``x`` has shape (..., D): one point (D,) gives a scalar, rows (N, D) give N values. ``mean``
    broadcasts against ``x`` (0 for a centred Gaussian). ``cov`` is (D, D), or batched
    (..., D, D) broadcasting against the rows."""
    chol = torch.linalg.cholesky(cov)
    diff = x - mean
    d = diff.shape[-1]
    if chol.dim() == 2:  # one covariance: a single triangular solve for every row at once
        alpha = torch.linalg.solve_triangular(chol, diff.reshape(-1, d).T, upper=False)
        maha = alpha.pow(2).sum(0).reshape(diff.shape[:-1])
    else:
        alpha = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False)
        maha = alpha.squeeze(-1).pow(2).sum(-1)
    return -0.5 * (d * LOG_2PI + _log_det_from_cholesky(chol) + maha)


def gaussian_kl(
    loc_q: torch.Tensor,
    cov_q: torch.Tensor,
    loc_p: torch.Tensor,
    cov_p: torch.Tensor | None = None,
    *,
    precision_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(N(loc_q, cov_q) || N(loc_p, cov_p)) (The Matrix Cookbook §8.1):

        1/2 (tr(cov_p^{-1} cov_q) + (loc_p - loc_q)^T cov_p^{-1} (loc_p - loc_q) - D
             + ln det cov_p - ln det cov_q).

    p is given by exactly one of its covariance ``cov_p`` or its precision ``precision_p``
    (= cov_p^{-1}, then used as it is, with no inverse). Locations are rows (..., D) and
    covariances (D, D) or batched (..., D, D); everything broadcasts, one KL per row."""
    if (cov_p is None) == (precision_p is None):
        raise ValueError("give p's covariance (cov_p) or its precision (precision_p), not both")
    d = cov_q.shape[-1]
    diff = loc_p - loc_q
    if precision_p is None:
        chol_p = torch.linalg.cholesky(cov_p)
        trace = torch.cholesky_solve(cov_q, chol_p).diagonal(dim1=-2, dim2=-1).sum(-1)
        maha = (torch.cholesky_solve(diff.unsqueeze(-1), chol_p).squeeze(-1) * diff).sum(-1)
        log_det_p = _log_det_from_cholesky(chol_p)
    else:
        trace = (precision_p * cov_q).sum((-1, -2))  # tr(P S) = sum_ij P_ij S_ij, P symmetric
        maha = ((diff @ precision_p) * diff).sum(-1)
        log_det_p = -_log_det_from_cholesky(torch.linalg.cholesky(precision_p))
    return 0.5 * (trace + maha - d + log_det_p - torch.logdet(cov_q))


def standard_normal_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale^2) || N(0, 1)) elementwise: 1/2 (loc^2 + scale^2 - 1) - ln scale (the
    one-dimensional case of :func:`gaussian_kl`)."""
    return 0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()


def gaussian_entropy(cov: torch.Tensor | np.ndarray) -> torch.Tensor:
    """H[N(m, cov)] = 1/2 ln det(2 pi e cov) = D/2 ln(2 pi e) + 1/2 ln det cov (PRML exercise 2.15),
    batched over leading dimensions. A numpy ``cov`` is read as a tensor of its dtype."""
    cov = torch.as_tensor(cov)
    d = cov.shape[-1]
    return 0.5 * d * (LOG_2PI + 1.0) + 0.5 * torch.logdet(cov)


def mean_field_gap(precision: torch.Tensor) -> float:
    """KL(q* || p) = 1/2 (sum_i ln Lambda_ii - ln det Lambda) for p = N(m, Lambda^{-1}) and its
    best fully factorised Gaussian approximation q*_i = N(m_i, 1 / Lambda_ii) (PRML §10.1.2):
    the least any mean-field ELBO falls short of the log evidence when the exact
    posterior is p. Non-negative (Hadamard's inequality), zero exactly for a diagonal Lambda."""
    log_det = _log_det_from_cholesky(torch.linalg.cholesky(precision))
    return float(0.5 * (precision.diagonal().log().sum() - log_det))
