"""Posterior-collapse diagnostics for any amortized model: KL per latent dimension and active
units.

A latent dimension d has *collapsed* when the encoder ignores the data there: q(z_d | x) is the
prior N(0, 1) for every x, its KL term is zero and the decoder does not read z_d (Bowman et al.
2016, "Generating sentences from a continuous space"; Lucas, Tucker, Grosse & Norouzi 2019,
"Don't blame the ELBO! A linear VAE perspective on posterior collapse"). Two measurements:

- the KL to the prior per dimension, averaged over the data: for a diagonal Gaussian encoder
  q(z_d | x) = N(m_d, s_d^2) it is analytic, ``0.5 (m_d^2 + s_d^2 - 1) - log s_d``, and these
  terms add up to the whole KL(q(z | x) || N(0, I)). For any other q (a full covariance, a flow)
  it is the KL of the Gaussian with the same mean and variance as the marginal q(z_d | x),
  measured from samples for a flow: a per-dimension summary, not an exact split of the KL;
- the *activity* of each dimension, A_d = Cov_x(E_q[z_d | x]), the variance over the data of
  the posterior mean, and the number of *active units*, those with A_d > 0.01 (Burda, Grosse &
  Salakhutdinov 2016, "Importance weighted autoencoders", ICLR, section 5.2). The variance is
  over the N data points with divisor N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from zoo.gaussian import standard_normal_kl

#: Burda et al. (2016): a unit is active when Cov_x(E_q[z_d | x]) exceeds this
ACTIVITY_THRESHOLD = 0.01


def activity(posterior_means: torch.Tensor) -> torch.Tensor:
    """A_d = Cov_x(E_q[z_d | x]) from the posterior means, shape (N, D) -> (D,) (divisor N)."""
    if posterior_means.dim() != 2 or posterior_means.shape[0] < 2:
        raise ValueError("posterior means must have shape (N >= 2, D)")
    return posterior_means.var(0, unbiased=False)


def active_units(
    posterior_means: torch.Tensor, threshold: float = ACTIVITY_THRESHOLD
) -> tuple[int, torch.Tensor]:
    """The number of dimensions with activity above ``threshold`` (Burda et al. 2016), and the
    activity of every dimension."""
    a = activity(posterior_means)
    return int((a > threshold).sum().item()), a


@dataclass
class CollapseReport:
    """KL per latent dimension and activity per dimension, averaged over N data points."""

    num_data: int
    kl_per_dim: list[float]
    #: "analytic" (diagonal Gaussian: the terms add up to the KL), "marginal" (Gaussian q with a
    #: full covariance: KL of each exact marginal), "moment-matched" (samples of any q)
    kl_method: str
    activity: list[float]
    threshold: float
    active_units: int

    @property
    def latent_dim(self) -> int:
        return len(self.kl_per_dim)

    @property
    def kl_sum(self) -> float:
        return float(sum(self.kl_per_dim))

    @property
    def active(self) -> list[bool]:
        return [a > self.threshold for a in self.activity]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kl_sum"] = self.kl_sum
        out["active"] = self.active
        out["latent_dim"] = self.latent_dim
        return out


def report_from_moments(
    means: torch.Tensor,
    variances: torch.Tensor,
    *,
    kl_method: str,
    threshold: float = ACTIVITY_THRESHOLD,
) -> CollapseReport:
    """A :class:`CollapseReport` from the posterior means and marginal variances, shape (N, D)
    each: per-dimension Gaussian KL averaged over the points, and the activity of the means."""
    means, variances = means.double(), variances.double()
    kl = standard_normal_kl(means, variances.sqrt()).mean(0)
    count, act = active_units(means, threshold)
    return CollapseReport(
        num_data=int(means.shape[0]),
        kl_per_dim=kl.tolist(),
        kl_method=kl_method,
        activity=act.tolist(),
        threshold=threshold,
        active_units=count,
    )


def collapse_report(
    posterior: torch.distributions.Distribution,
    *,
    num_samples: int = 256,
    threshold: float = ACTIVITY_THRESHOLD,
) -> CollapseReport:
    """Collapse diagnostics of an encoder's q(z | x) over a batch of N points.

    ``posterior`` has batch shape (N,) and event shape (D,): the output of an encoder's
    ``distribution(x)``. A diagonal Gaussian (``Normal(...).to_event(1)``) is read analytically,
    a full-covariance Gaussian by its marginals, anything else (a flow) from ``num_samples``
    draws per point (its means and variances, and so the activity, are then Monte Carlo
    estimates).
    """
    with torch.no_grad():
        base = posterior.base_dist if isinstance(posterior, Independent) else None
        if isinstance(base, Normal) and posterior.reinterpreted_batch_ndims == 1:
            loc, scale = torch.broadcast_tensors(base.loc, base.scale)
            return report_from_moments(loc, scale.pow(2), kl_method="analytic", threshold=threshold)
        if isinstance(posterior, MultivariateNormal):
            loc = posterior.loc
            var = posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).expand_as(loc)
            return report_from_moments(loc, var, kl_method="marginal", threshold=threshold)
        z = posterior.sample((num_samples,))
        return report_from_moments(
            z.mean(0), z.var(0, unbiased=True), kl_method="moment-matched", threshold=threshold
        )


def format_collapse(report: CollapseReport, labels: Sequence[str] | None = None) -> str:
    """One line per latent dimension: KL, activity, active or not."""
    labels = labels or [f"z{d + 1}" for d in range(report.latent_dim)]
    lines = [f"{'dim':<6}{'KL (nats)':>12}{'activity':>12}  active"]
    for name, kl, act in zip(labels, report.kl_per_dim, report.activity, strict=True):
        flag = "yes" if act > report.threshold else "no"
        lines.append(f"{name:<6}{kl:>12.4f}{act:>12.4f}  {flag}")
    lines.append(
        f"active units: {report.active_units} of {report.latent_dim} "
        f"(Cov_x E_q[z_d] > {report.threshold:g}); KL per dim [{report.kl_method}]"
    )
    return "\n".join(lines)
