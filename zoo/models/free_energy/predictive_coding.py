"""``predictive-coding``: a linear-Gaussian hierarchy (Bogacz §4.2; Rao & Ballard 1999).

Bogacz (2017), J. Math. Psych. 76, §4.2 (eqs. 51-56); Rao & Ballard (1999), "Predictive coding
in the visual cortex", Nat. Neurosci. 2, 79-87. Two latent layers per data point,

    z2 ~ N(0, I_k2),    z1 | z2 ~ N(W2 z2, s1^2 I_k1),    x | z1 ~ N(W1 z1, s0^2 I_D),

with fixed seeded weights W1, W2 and simulated x. Exact (:mod:`zoo.models.free_energy.hierarchy`):
the evidence x ~ N(0, W1 W2 W2^T W1^T + s1^2 W1 W1^T + s0^2 I); the posterior of (z1, z2) given
x is Gaussian with one precision Lambda for every point. Guides: ``mean-field`` (AutoNormal per
point; its best ELBO is ln p(x) - N/2 (sum_i ln Lambda_ii - ln |Lambda|)) and ``full-rank``: a
full covariance per point written top-down, q(z2) q(z1 | z2) with q(z1 | z2) linear-Gaussian,
which is every Gaussian on (z1, z2) and so contains the posterior (gap 0).
AutoMultivariateNormal would be one joint Gaussian over all N points' latents: it cannot sit
under a subsampled data plate, and it has O((N k)^2) parameters where the per-point family needs
N k (k + 1) / 2 + N k.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal

from zoo.data import as_float_array, read_numeric_table
from zoo.errors import DataError, ZooError
from zoo.gaussian import gaussian_kl, gaussian_log_density, mean_field_gap
from zoo.model import DataPlate, Guide, Training, ZooModel
from zoo.models.free_energy import figures
from zoo.models.free_energy.hierarchy import (
    hierarchy_covariance,
    hierarchy_posterior_means,
    hierarchy_precision,
)
from zoo.models.free_energy.maths import require_positive
from zoo.options import Option, positive_float, positive_int, seed_value
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from zoo.run_view import RunView


@register
class PredictiveCoding(ZooModel):
    name = "predictive-coding"
    title = "Predictive coding: a linear-Gaussian hierarchy"
    application = "Free-energy brain (predictive coding)"
    reference = "Rao & Ballard (1999), Nat. Neurosci. 2; Bogacz (2017), §4.2 (eqs. 51-56)"
    options = (
        Option("num_points", positive_int, 100, "data points (stimuli) N"),
        Option("obs_dim", positive_int, 8, "dimension D of the sensory input x"),
        Option("layer1", positive_int, 4, "units k1 in the first latent layer z1"),
        Option("layer2", positive_int, 2, "units k2 in the second latent layer z2"),
        Option("noise1", positive_float, 0.5, "sd s1 of z1 around W2 z2"),
        Option("noise0", positive_float, 0.5, "sd s0 of x around W1 z1"),
        Option("weight_seed", seed_value, 0, "seed of the weights W1, W2 (entries N(0, 1))"),
        Option("data_seed", seed_value, 1, "seed of the simulated stimuli"),
    )
    data_help = "CSV file of stimuli x (D = --obs-dim numeric columns, one row per stimulus)"
    guides = {"mean-field": Guide(), "full-rank": Guide(elbo="meanfield")}
    default_guide = "full-rank"
    # the excess over each family's best gap shrinks with the last step size (it is the
    # stationary noise of SGD): a step size decayed 1000-fold; measured at the defaults,
    # ~0.002 nats per point (mean field) and ~0.003 (full rank). The full-rank guide's
    # factors are MultivariateNormals like the priors: TraceMeanField_ELBO uses their KL
    # in closed form (AutoNormal's sites are Deltas behind auxiliary draws: nothing to gain)
    training = Training(steps=1000, lr=0.1, lr_final_factor=0.001, quick_steps=300, particles=8)
    data_plate = DataPlate("data")
    leaderboard = ({"guide": "mean-field"}, {"guide": "full-rank"})

    def setup(self, data: Any, **opts: Any) -> None:
        for key in ("obs_dim", "layer1", "layer2"):
            if opts[key] < 1:
                raise DataError(f"--{key.replace('_', '-')} must be at least 1")
        self.s1 = require_positive(opts["noise1"], "--noise1")
        self.s0 = require_positive(opts["noise0"], "--noise0")
        d, k1, k2 = opts["obs_dim"], opts["layer1"], opts["layer2"]
        rng = np.random.default_rng(opts["weight_seed"])
        self.w1 = self.tensor(rng.standard_normal((d, k1)))
        self.w2 = self.tensor(rng.standard_normal((k1, k2)))
        self.k1, self.k2 = k1, k2
        self.eye1 = torch.eye(k1, dtype=torch.float64, device=self.device)
        self.eye2 = torch.eye(k2, dtype=torch.float64, device=self.device)
        self.zeros2 = self.eye2.new_zeros(k2)
        if data is None:
            if opts["num_points"] < 1:
                raise DataError("--num-points must be at least 1")
            values = self.simulate(opts["num_points"], opts["data_seed"])
        else:
            if isinstance(data, str | Path):
                values, _ = read_numeric_table(data, min_rows=1, allow_constant=True)
            else:
                values = as_float_array(data, "the data")
                if values.ndim == 1:
                    values = values[:, None]
            if values.ndim != 2 or not np.isfinite(values).all():
                raise DataError("data must be a finite 2-D array (stimuli x dimensions)")
            if values.shape[1] != d:
                raise DataError(f"the stimuli have {values.shape[1]} columns; --obs-dim is {d}")
        self.x = self.tensor(values)
        self.num_data = int(values.shape[0])
        # everything exact, computed once: the weights are fixed
        self.covariance = hierarchy_covariance(self.w1, self.w2, self.s1, self.s0)
        self.precision = hierarchy_precision(self.w1, self.w2, self.s1, self.s0)
        self.post_cov = torch.cholesky_inverse(torch.linalg.cholesky(self.precision))
        self.post_means = hierarchy_posterior_means(
            self.x, self.w1, self.w2, self.s0, self.precision
        )
        self.point_log_evidence = gaussian_log_density(self.x, 0.0, self.covariance)

    def simulate(self, num: int, seed: int) -> np.ndarray:
        """Ancestral sampling: z2, then z1 | z2, then x | z1."""
        rng = np.random.default_rng(seed)
        w1, w2 = self.w1.cpu().numpy(), self.w2.cpu().numpy()
        z2 = rng.standard_normal((num, self.k2))
        z1 = z2 @ w2.T + self.s1 * rng.standard_normal((num, self.k1))
        return z1 @ w1.T + self.s0 * rng.standard_normal((num, w1.shape[0]))

    # -- the model and its guides ----------------------------------------------------------------
    def model(self, subsample_size: int | None = None) -> None:
        # the layers' priors are written as MultivariateNormals so that torch has the KL from
        # the full-rank guide's factors to them in closed form (TraceMeanField_ELBO)
        with self.create_plates(subsample_size) as idx:
            z2 = pyro.sample("z2", dist.MultivariateNormal(self.zeros2, scale_tril=self.eye2))
            mean1 = (self.w2 * z2.unsqueeze(-2)).sum(-1)  # W2 z2 per point (and particle)
            z1 = pyro.sample("z1", dist.MultivariateNormal(mean1, scale_tril=self.s1 * self.eye1))
            mean0 = (self.w1 * z1.unsqueeze(-2)).sum(-1)
            pyro.sample("x", dist.Normal(mean0, self.s0).to_event(1), obs=self.x[idx])

    def full_rank_params(self) -> dict[str, torch.Tensor]:
        n, k1, k2 = self.num_data, self.k1, self.k2
        eye1 = torch.eye(k1, dtype=self.x.dtype, device=self.device)
        eye2 = torch.eye(k2, dtype=self.x.dtype, device=self.device)
        lower = constraints.lower_cholesky
        return {
            "loc2": pyro.param("q_loc_z2", lambda: self.x.new_zeros(n, k2)),
            "tril2": pyro.param(
                "q_tril_z2", lambda: 0.1 * eye2.expand(n, k2, k2).clone(), constraint=lower
            ),
            "loc1": pyro.param("q_loc_z1", lambda: self.x.new_zeros(n, k1)),
            "coupling": pyro.param("q_coupling", lambda: self.x.new_zeros(n, k1, k2)),
            "tril1": pyro.param(
                "q_tril_z1", lambda: 0.1 * eye1.expand(n, k1, k1).clone(), constraint=lower
            ),
        }

    def full_rank_guide(self, subsample_size: int | None = None) -> None:
        """A full-covariance Gaussian on (z1, z2) for every point, written top-down:
        q(z2) = N(m2, L2 L2^T), q(z1 | z2) = N(m1 + A (z2 - m2), L1 L1^T). Every Gaussian on
        (z1, z2) factorises so, hence the family contains the exact posterior; its parameters
        are per point and index under a subsampled plate."""
        p = self.full_rank_params()
        with self.create_plates(subsample_size) as idx:
            z2 = pyro.sample(
                "z2", dist.MultivariateNormal(p["loc2"][idx], scale_tril=p["tril2"][idx])
            )
            shift = (p["coupling"][idx] * (z2 - p["loc2"][idx]).unsqueeze(-2)).sum(-1)
            pyro.sample(
                "z1", dist.MultivariateNormal(p["loc1"][idx] + shift, scale_tril=p["tril1"][idx])
            )

    def build_guide(self, name: str):
        if name == "full-rank":
            return self.full_rank_guide
        if name == "mean-field":
            return AutoNormal(self.model, create_plates=self.create_plates)
        return super().build_guide(name)

    # -- what is known exactly -------------------------------------------------------------------
    def log_evidence(self) -> float:
        return float(self.point_log_evidence.sum())

    def best_mean_field_gap(self) -> float:
        """Per point: the least the mean field can fall short of ln p(x_n)."""
        return mean_field_gap(self.precision)

    def best_elbo(self, guide: str) -> float | None:
        if guide == "mean-field":
            return self.log_evidence() - self.num_data * self.best_mean_field_gap()
        if guide == "full-rank":
            return self.log_evidence()
        return None

    @torch.no_grad()
    def guide_gaussians(self, guide: Any, guide_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every point's q as a Gaussian on (z1, z2): means (N, k) and covariances (N, k, k)."""
        if guide_name == "mean-field":
            mean = torch.cat([guide.locs.z1, guide.locs.z2], -1).detach()
            var = torch.cat([guide.scales.z1, guide.scales.z2], -1).detach() ** 2
            return mean, torch.diag_embed(var)
        if guide_name == "full-rank":
            p = {k: v.detach() for k, v in self.full_rank_params().items()}
            s22 = p["tril2"] @ p["tril2"].transpose(-1, -2)
            s12 = p["coupling"] @ s22
            s11 = s12 @ p["coupling"].transpose(-1, -2) + p["tril1"] @ p["tril1"].transpose(-1, -2)
            cov = torch.cat(
                [torch.cat([s11, s12], -1), torch.cat([s12.transpose(-1, -2), s22], -1)], -2
            )
            return torch.cat([p["loc1"], p["loc2"]], -1), cov
        raise ZooError(f"cannot read a Gaussian from the guide {guide_name!r}")

    def exact_elbo(self, guide: Any, guide_name: str) -> float:
        """Both guides are Gaussian: log p(x) minus every point's closed-form KL to its
        posterior."""
        return self.log_evidence() - float(self.point_gaps(guide, guide_name).sum())

    def point_gaps(self, guide: Any, guide_name: str) -> torch.Tensor:
        """KL(q_n || p(z | x_n)) for every point, in closed form: the per-point gap."""
        mean, cov = self.guide_gaussians(guide, guide_name)
        return gaussian_kl(mean, cov, self.post_means, precision_p=self.precision)

    def posterior_correlation(self) -> torch.Tensor:
        """The exact posterior correlation matrix of (z1, z2) (the same for every point)."""
        sd = self.post_cov.diagonal().sqrt()
        return self.post_cov / torch.outer(sd, sd)

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        gaps = self.point_gaps(guide, guide_name)
        log_ev = self.log_evidence()
        mf_gap = self.best_mean_field_gap()
        return {
            "log_evidence": log_ev,
            "log_evidence_per_point": log_ev / self.num_data,
            "best_mean_field_gap_per_point": mf_gap,
            "best_mean_field_elbo": log_ev - self.num_data * mf_gap,
            "fitted_elbo_closed_form": log_ev - float(gaps.sum()),
            "fitted_gap_closed_form": float(gaps.sum()),
            "fitted_gap_per_point_max": float(gaps.max()),
            "posterior_correlation": self.posterior_correlation().tolist(),
        }

    def plots(self, run: RunView) -> dict[str, Any]:
        kind = run.guide_name
        _, cov = self.guide_gaussians(run.guide, kind)
        q_sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
        q_corr = (cov / (q_sd.unsqueeze(-1) * q_sd.unsqueeze(-2))).mean(0)
        labels = [f"z1[{i}]" for i in range(self.k1)] + [f"z2[{j}]" for j in range(self.k2)]
        covariance = figures.posterior_covariance_figure(
            kind,
            labels,
            self.posterior_correlation().cpu().numpy(),
            q_corr.cpu().numpy(),
            self.point_gaps(run.guide, kind).cpu().numpy(),
            self.best_mean_field_gap(),
        )
        free_energy = figures.free_energy_figure(
            run.history, "-ln p(x)", f"{self.title}: free energy over steps ({kind})"
        )
        return {"posterior_covariance": covariance, "free_energy": free_energy}
