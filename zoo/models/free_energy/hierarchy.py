"""Closed forms of the linear-Gaussian hierarchy of ``predictive-coding``.

Bogacz (2017), J. Math. Psych. 76, §4.2 (eqs. 51-56); Rao & Ballard (1999), Nat. Neurosci. 2,
79-87. Per data point,

    z2 ~ N(0, I_k2),    z1 | z2 ~ N(W2 z2, s1^2 I_k1),    x | z1 ~ N(W1 z1, s0^2 I_D),

so x ~ N(0, W1 W2 W2^T W1^T + s1^2 W1 W1^T + s0^2 I), and the posterior of (z1, z2) given x is
Gaussian with one precision Lambda for every point. Its density, its KL to a Gaussian guide and
the mean field's best gap (Bishop, PRML §10.1.2) are the formulas of :mod:`zoo.gaussian`.
"""

from __future__ import annotations

import torch


def hierarchy_covariance(w1: torch.Tensor, w2: torch.Tensor, s1: float, s0: float) -> torch.Tensor:
    """Cov x = W1 W2 W2^T W1^T + s1^2 W1 W1^T + s0^2 I (z2, then z1 | z2, then x | z1)."""
    a = w1 @ w2
    eye = torch.eye(w1.shape[0], dtype=w1.dtype, device=w1.device)
    return a @ a.T + s1**2 * w1 @ w1.T + s0**2 * eye


def hierarchy_precision(w1: torch.Tensor, w2: torch.Tensor, s1: float, s0: float) -> torch.Tensor:
    """Posterior precision Lambda of (z1, z2) given x: the Hessian of -ln p(x, z1, z2),

    [[I / s1^2 + W1^T W1 / s0^2,  -W2 / s1^2          ],
     [-W2^T / s1^2,                I + W2^T W2 / s1^2 ]]   (the same for every data point)."""
    k1, k2 = w2.shape
    eye1 = torch.eye(k1, dtype=w1.dtype, device=w1.device)
    eye2 = torch.eye(k2, dtype=w1.dtype, device=w1.device)
    top = torch.cat([eye1 / s1**2 + w1.T @ w1 / s0**2, -w2 / s1**2], 1)
    bottom = torch.cat([-w2.T / s1**2, eye2 + w2.T @ w2 / s1**2], 1)
    return torch.cat([top, bottom], 0)


def hierarchy_posterior_means(
    x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, s0: float, precision: torch.Tensor
) -> torch.Tensor:
    """E[(z1, z2) | x_n] = Lambda^{-1} (W1^T x_n / s0^2, 0), one row per point."""
    k2 = w2.shape[1]
    rhs = torch.cat([x @ w1 / s0**2, x.new_zeros(x.shape[0], k2)], 1)
    chol = torch.linalg.cholesky(precision)
    return torch.cholesky_solve(rhs.T, chol).T
