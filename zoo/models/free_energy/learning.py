"""``free-energy-learning``: learning the prior by maximising the ELBO (Bogacz §2.4, §3).

Bogacz (2017), J. Math. Psych. 76, §2.4 (eqs. 15-21) and §3 (eq. 35: learning by maximising
F); Friston (2005), Phil. Trans. R. Soc. B 360. N food items with sizes v_i from the world's
prior give lights u_i; theta = (v_p, Sigma_p, Sigma_u) are ``pyro.param`` s learnt together
with a Gaussian recognition density per item (a data plate, mini-batch capable:
``--batch-size 1`` is Bogacz's item-by-item learning). The exact ln p(u | theta) is a sum of N
one-dimensional integrals, done together by the trapezoid rule on one grid
(:func:`~zoo.models.free_energy.maths.grid_log_evidence`, exact to ~1e-12 per item, checked
against adaptive quadrature in the tests). Peers: the maximum-likelihood theta (the exact
marginal likelihood maximised by L-BFGS) and the variational-EM optimum (the closed-form
Gaussian ELBO maximised jointly over theta and every item's (m_i, s_i)). ``point-mass`` learns
theta with Bogacz's F = sum ln p(u_i, phi_i), as the tutorial does. Without the entropy term F
rewards overconfidence: it is unbounded above (Sigma_p -> 0 with every phi_i = v_p), and from
the tutorial's start SVI settles where every phi_i ~ sqrt(u_i) explains its light almost
exactly and Sigma_u collapses (to 0.023 at the defaults, against 0.5 true and 0.84 by ML).
Bogacz (end of §2.4) and Friston (2005) impose a minimum of 1 on the variances, for the
convergence of the prediction-error dynamics; the missing entropy is a second reason such a
floor is needed.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value

from zoo.data import as_float_array, read_numeric_table
from zoo.errors import DataError
from zoo.gaussian import log_normal
from zoo.model import DataPlate, Training, ZooModel
from zoo.models.free_energy import figures
from zoo.models.free_energy.maths import (
    EXERCISE_1,
    NOT_A_BOUND,
    VARIANCE_RANGE,
    gaussian_elbo,
    grid_log_evidence,
    log_joint,
    posterior_curvature,
    require_finite,
    require_positive,
)
from zoo.optimize import maximize
from zoo.options import Option, finite_float, positive_float, positive_int, seed_value
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from zoo.run_view import RunView


def _theta_from_unconstrained(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return p[0], p[1].exp(), p[2].exp()


def max_marginal_likelihood(u: torch.Tensor, start: tuple[float, float, float]) -> dict[str, Any]:
    """The theta = (v_p, Sigma_p, Sigma_u) maximising the exact ln p(u | theta) =
    sum_i ln ∫ p(v) p(u_i | v) dv, by L-BFGS on (v_p, ln Sigma_p, ln Sigma_u), with standard
    errors from the inverse Hessian of -ln p(u | theta) in those coordinates."""

    def neg(t: torch.Tensor) -> torch.Tensor:
        return -grid_log_evidence(u, *_theta_from_unconstrained(t)).sum()

    x0 = np.array([start[0], math.log(start[1]), math.log(start[2])])
    top = maximize(lambda t: -neg(t), [x0], what="the maximum-likelihood theta")
    t = torch.tensor(top.x, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(neg, t).numpy()
    se = np.sqrt(np.diag(np.linalg.inv(hess)))
    v_p, sp, su = (float(x) for x in _theta_from_unconstrained(t))
    return {
        "v_p": v_p,
        "Sigma_p": sp,
        "Sigma_u": su,
        "log_evidence": top.value,
        "se_v_p": float(se[0]),
        "se_log_Sigma_p": float(se[1]),
        "se_log_Sigma_u": float(se[2]),
    }


def best_gaussians(
    u: torch.Tensor, theta: tuple[float, float, float]
) -> tuple[float, torch.Tensor]:
    """Total and per-item best Gaussian ELBO at a fixed theta: every item's (m_i, s_i) maximised
    (the items are independent given theta). Started at the positive and the negative root of
    v^2 = u_i (each with its Laplace sd); the better of the two is kept per item."""
    vp, sp, su = theta
    n = u.shape[0]
    best = torch.full((n,), -math.inf, dtype=torch.float64)
    for sign in (1.0, -1.0):
        m0 = sign * u.clamp(min=1e-2).sqrt()
        curv = posterior_curvature(m0, u, sp, su).clamp(min=1.0 / sp)
        x0 = torch.cat([m0, -0.5 * curv.log()]).numpy()

        def neg(t: torch.Tensor) -> torch.Tensor:
            return -gaussian_elbo(t[:n], t[n:].exp(), u, vp, sp, su).sum()

        top = maximize(lambda t: -neg(t), [x0], what="the best Gaussian ELBO per item")
        t = torch.tensor(top.x, dtype=torch.float64)
        values = gaussian_elbo(t[:n], t[n:].exp(), u, vp, sp, su)
        best = torch.maximum(best, values)
    return float(best.sum()), best


def variational_em(u: torch.Tensor, start: tuple[float, float, float]) -> dict[str, Any]:
    """The optimum of learning with Gaussian recognition densities: the closed-form ELBO
    maximised jointly over theta and every item's (m_i, s_i) (deterministic variational EM).
    Started at the positive roots of v^2 = u_i."""
    n = u.shape[0]
    m0 = u.clamp(min=1e-2).sqrt()
    curv = posterior_curvature(m0, u, start[1], start[2]).clamp(min=1.0 / start[1])
    x0 = np.concatenate(
        [
            [start[0], math.log(start[1]), math.log(start[2])],
            m0.numpy(),
            (-0.5 * curv.log()).numpy(),
        ]
    )

    def neg(t: torch.Tensor) -> torch.Tensor:
        vp, sp, su = _theta_from_unconstrained(t[:3])
        return -gaussian_elbo(t[3 : 3 + n], t[3 + n :].exp(), u, vp, sp, su).sum()

    top = maximize(lambda t: -neg(t), [x0], what="the variational-EM optimum")
    v_p, sp, su = (float(x) for x in _theta_from_unconstrained(torch.tensor(top.x[:3])))
    log_ev = float(grid_log_evidence(u, v_p, sp, su).sum())
    return {
        "v_p": v_p,
        "Sigma_p": sp,
        "Sigma_u": su,
        "elbo": top.value,
        "log_evidence": log_ev,
    }


def simulate_items(
    num: int, v_p: float, sigma_p: float, sigma_u: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sizes v_i ~ N(v_p, Sigma_p) and lights u_i ~ N(v_i^2, Sigma_u), seeded."""
    rng = np.random.default_rng(seed)
    v = v_p + math.sqrt(sigma_p) * rng.standard_normal(num)
    return v, v * v + math.sqrt(sigma_u) * rng.standard_normal(num)


@register
class FreeEnergyLearning(ZooModel):
    name = "free-energy-learning"
    title = "The free-energy brain: learning"
    application = "Free-energy brain (predictive coding)"
    reference = "Bogacz (2017), J. Math. Psych. 76, §2.4 (eqs. 15-21) and §3 (eq. 35)"
    options = (
        Option("num_points", positive_int, 300, "food items observed"),
        Option("data_seed", seed_value, 0, "seed of the simulated items"),
        Option("true_v_p", finite_float, 2.0, "the world's mean size"),
        Option("true_sigma_p", positive_float, 0.5, "the world's size variance"),
        Option("true_sigma_u", positive_float, 0.5, "the world's sensory noise variance"),
        Option(
            "init_v_p", finite_float, EXERCISE_1["v_p"], "the animal's initial v_p (Exercise 1: 3)"
        ),
        Option(
            "init_sigma_p", positive_float, EXERCISE_1["sigma_p"], "initial Sigma_p (Exercise 1: 1)"
        ),
        Option(
            "init_sigma_u", positive_float, EXERCISE_1["sigma_u"], "initial Sigma_u (Exercise 1: 1)"
        ),
    )
    data_help = "CSV file of observed light intensities u (one numeric column, or a column 'u')"
    guides = ("gaussian", "point-mass")
    default_guide = "gaussian"
    # Sigma_u is weakly identified (the ELBO is flat along it): a large step size decayed
    # 100-fold; measured at the defaults: ln p(u | theta) 0.1 nats below its maximum
    training = Training(steps=2000, lr=0.1, lr_final_factor=0.01, quick_steps=400, particles=8)
    data_plate = DataPlate("data")
    leaderboard = ({"guide": "gaussian"}, {"guide": "point-mass"})

    def setup(self, data: Any, **opts: Any) -> None:
        for key in ("true_sigma_p", "true_sigma_u", "init_sigma_p", "init_sigma_u"):
            flag = "--" + key.replace("_", "-")
            if not VARIANCE_RANGE[0] <= require_positive(opts[key], flag) <= VARIANCE_RANGE[1]:
                low, high = VARIANCE_RANGE
                raise DataError(
                    f"{flag} must be between {low:g} and {high:g} (the exact evidence's "
                    f"quadrature grid), got {opts[key]!r}"
                )
        for key in ("true_v_p", "init_v_p"):
            require_finite(opts[key], "--" + key.replace("_", "-"))
        self.true_theta = (opts["true_v_p"], opts["true_sigma_p"], opts["true_sigma_u"])
        self.init_theta = (opts["init_v_p"], opts["init_sigma_p"], opts["init_sigma_u"])
        self.sizes = None
        if data is None:
            if opts["num_points"] < 2:
                raise DataError("--num-points must be at least 2")
            self.sizes, values = simulate_items(
                opts["num_points"], *self.true_theta, opts["data_seed"]
            )
        elif isinstance(data, str | Path):
            table, columns = read_numeric_table(data, allow_constant=True)
            if "u" in columns:
                values = table[:, columns.index("u")]
            elif table.shape[1] == 1:
                values = table[:, 0]
            else:
                raise DataError(
                    f"{str(data)!r} has {table.shape[1]} numeric columns; name the lights 'u'"
                )
        else:
            values = as_float_array(data, "the data")
            if values.ndim != 1 or values.size < 2:
                raise DataError("data must be a finite 1-D array of at least 2 light intensities")
        self.u = self.tensor(values)
        self.num_data = int(values.shape[0])

    # -- the model and its guides ----------------------------------------------------------------
    def parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """theta = (v_p, Sigma_p, Sigma_u), learnt by maximising the ELBO (Bogacz §2.4)."""
        vp, sp, su = self.init_theta
        v_p = pyro.param("v_p", lambda: self.tensor(vp))
        sigma_p = pyro.param("Sigma_p", lambda: self.tensor(sp), constraint=constraints.positive)
        sigma_u = pyro.param("Sigma_u", lambda: self.tensor(su), constraint=constraints.positive)
        return v_p, sigma_p, sigma_u

    def model(self, subsample_size: int | None = None) -> None:
        v_p, sigma_p, sigma_u = self.parameters()
        with self.create_plates(subsample_size) as idx:
            v = pyro.sample("v", dist.Normal(v_p, sigma_p.sqrt()))
            pyro.sample("u", dist.Normal(v * v, sigma_u.sqrt()), obs=self.u[idx])

    def build_guide(self, name: str):
        # every item's recognition density starts at the animal's initial prior
        start = init_to_value(values={"v": self.tensor(np.full(self.num_data, self.init_theta[0]))})
        if name == "gaussian":
            return AutoNormal(
                self.model,
                init_loc_fn=start,
                init_scale=math.sqrt(self.init_theta[1]),
                create_plates=self.create_plates,
            )
        if name == "point-mass":
            return AutoDelta(self.model, init_loc_fn=start, create_plates=self.create_plates)
        return super().build_guide(name)

    # -- what is known exactly -------------------------------------------------------------------
    def theta(self) -> tuple[float, float, float]:
        with torch.no_grad():
            v_p, sigma_p, sigma_u = (p.detach().item() for p in self.parameters())
        return v_p, sigma_p, sigma_u

    def log_evidence(self) -> float:
        with torch.no_grad():
            return float(grid_log_evidence(self.u, *self.theta()).sum())

    def best_elbo(self, guide: str) -> float | None:
        if guide == "gaussian":
            return best_gaussians(self.u, self.theta())[0]
        return None

    def exact_elbo(self, guide: Any, guide_name: str) -> float | None:
        """The Gaussian guides' ELBO in closed form (the point mass has none: not a bound)."""
        return self.fitted_elbo(guide, guide_name) if guide_name == "gaussian" else None

    def max_log_evidence(self) -> float:
        """ln p(u | theta) at the verified maximum-likelihood theta."""
        return float(self.peers["max_likelihood"]["log_evidence"])

    @cached_property
    def peers(self) -> dict[str, dict[str, Any]]:
        """The maximum-likelihood theta and the variational-EM optimum (data only: cached)."""
        return {
            "max_likelihood": max_marginal_likelihood(self.u, self.init_theta),
            "variational_em": variational_em(self.u, self.init_theta),
        }

    # -- reporting -------------------------------------------------------------------------------
    @torch.no_grad()
    def fitted_elbo(self, guide: Any, guide_name: str) -> float:
        """The fitted guide's ELBO in closed form (Gaussian), or F = sum ln p(u_i, phi_i)."""
        theta = self.theta()
        if guide_name == "gaussian":
            locs, scales = guide.locs.v.detach(), guide.scales.v.detach()
            return float(gaussian_elbo(locs, scales, self.u, *theta).sum())
        phi = guide.median()["v"].detach()
        return float(log_joint(phi, self.u, *theta).sum())

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        names = ("v_p", "Sigma_p", "Sigma_u")
        theta = self.theta()
        log_ev = self.log_evidence()
        peers = self.peers
        out: dict[str, Any] = {
            "learned": dict(zip(names, theta, strict=True)),
            "initial": dict(zip(names, self.init_theta, strict=True)),
            "log_evidence_learned": log_ev,
            "max_likelihood": peers["max_likelihood"],
            "variational_em": peers["variational_em"],
            "log_evidence_below_max": peers["max_likelihood"]["log_evidence"] - log_ev,
            "guide": guide_name,
            "elbo_is_a_bound": guide_name != "point-mass",
        }
        if self.sizes is not None:
            out["true"] = dict(zip(names, self.true_theta, strict=True))
            out["log_evidence_true"] = float(grid_log_evidence(self.u, *self.true_theta).sum())
        fitted = self.fitted_elbo(guide, guide_name)
        if guide_name == "gaussian":
            out["fitted_elbo_closed_form"] = fitted
            out["fitted_gap_closed_form"] = log_ev - fitted
            out["elbo_below_variational_em"] = peers["variational_em"]["elbo"] - fitted
        else:
            out["objective"] = NOT_A_BOUND.replace("ln p(u, phi)", "sum_i ln p(u_i, phi_i)")
            out["log_joint_at_phi"] = fitted
        return out

    def plots(self, run: RunView) -> dict[str, Any]:
        kind = run.guide_name
        theta = self.theta()
        mle = self.peers["max_likelihood"]
        lo = min(theta[0] - 4 * math.sqrt(theta[1]), mle["v_p"] - 4 * math.sqrt(mle["Sigma_p"]))
        hi = max(theta[0] + 4 * math.sqrt(theta[1]), mle["v_p"] + 4 * math.sqrt(mle["Sigma_p"]))
        grid = np.linspace(lo, hi, 400)
        priors = {
            "learnt": np.exp(log_normal(grid, *theta[:2])),
            "max_likelihood": np.exp(log_normal(grid, mle["v_p"], mle["Sigma_p"])),
            "initial": np.exp(log_normal(grid, *self.init_theta[:2])),
        }
        if self.sizes is not None:
            priors["true"] = np.exp(log_normal(grid, *self.true_theta[:2]))
        learned_prior = figures.learned_prior_figure(
            kind, run.history, grid, priors, mle["log_evidence"], self.sizes
        )
        free_energy = figures.free_energy_figure(
            run.history,
            "-ln p(u | theta_t)",
            f"{self.title}: free energy over steps ({kind} guide)",
            bound=kind != "point-mass",
        )
        return {"learned_prior": learned_prior, "free_energy": free_energy}
