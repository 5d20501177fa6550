"""``free-energy-perception``: perception as maximising the ELBO (Bogacz §2.1-§2.2, §3).

Bogacz (2017), "A tutorial on the free-energy framework for modelling perception and learning",
J. Math. Psych. 76, 198-211; Friston (2005, 2010). A food item of size v ~ N(v_p, Sigma_p)
reflects light u | v ~ N(g(v), Sigma_u) with g(v) = v^2 (eqs. 1-3; Sigma are variances). The
defaults are Exercise 1 (§2.1): u = 2, v_p = 3, Sigma_p = 1, Sigma_u = 1. Exact (see
:mod:`zoo.models.free_energy.maths`): ln p(u) by adaptive quadrature, the ELBO of a Gaussian
q = N(m, s^2) in closed form, and its maximum over (m, s), the best Gaussian recognition density.

Guides: ``gaussian`` (AutoNormal on the scalar v: the whole Gaussian family); ``point-mass``
(AutoDelta: Bogacz's own phi, found by gradient ascent on F = ln p(u, phi), eqs. 6-9 and
Exercise 2); ``spline-flow`` (a monotonic rational-quadratic spline, Durkan et al. 2019, then an
affine map, pushing N(0, 1) forward: a richer family that can bend to the skewed posterior).

The point mass is not a member of any family the ELBO bounds: its differential entropy is -inf,
and Bogacz's eq. 34 drops it as a constant C_1. What it maximises, ln p(u, phi), is the log joint
at the MAP: it can exceed ln p(u) (by ln p(phi | u), the posterior density at phi), so its
"ELBO" and "gap" are not a bound and not a KL. Every report of it says so.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from torch.distributions import AffineTransform

from zoo.errors import DataError
from zoo.gaussian import LOG_2PI, log_normal
from zoo.model import Training, ZooModel
from zoo.models.free_energy import figures
from zoo.models.free_energy.maths import (
    EXERCISE_1,
    NOT_A_BOUND,
    best_gaussian,
    bogacz_gradient_ascent,
    gaussian_elbo,
    integration_range,
    log_joint,
    perception_log_evidence,
    require_finite,
    require_positive,
    stationary_points,
)
from zoo.models.free_energy.spline import IDENTITY_SLOPE, ScalarSpline
from zoo.options import Option, at_least, finite_float, positive_float
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from zoo.run_view import RunView


@register
class FreeEnergyPerception(ZooModel):
    name = "free-energy-perception"
    title = "The free-energy brain: perception"
    application = "Free-energy brain (predictive coding)"
    reference = "Bogacz (2017), J. Math. Psych. 76, §2.1-§3 (Exercises 1-2); Friston (2005, 2010)"
    options = (
        Option("u", finite_float, EXERCISE_1["u"], "observed light intensity u (Exercise 1: 2)"),
        Option(
            "v_p", finite_float, EXERCISE_1["v_p"], "prior mean v_p of the size (Exercise 1: 3)"
        ),
        Option(
            "sigma_p",
            positive_float,
            EXERCISE_1["sigma_p"],
            "prior variance Sigma_p (Exercise 1: 1)",
        ),
        Option(
            "sigma_u",
            positive_float,
            EXERCISE_1["sigma_u"],
            "sensory noise variance Sigma_u (Exercise 1: 1)",
        ),
        Option("flow_bins", at_least(2), 8, "bins of the spline-flow guide"),
    )
    guides = ("gaussian", "point-mass", "spline-flow")
    default_guide = "gaussian"
    # 1-D latent: 32 vectorized particles cost little and cut the gradient noise; the step size
    # decays 50-fold so the last steps polish (measured: the Gaussian ends ~2e-4 nats below the
    # best Gaussian; the flow closes ~87% of the Gaussian's gap)
    training = Training(steps=1000, lr=0.03, lr_final_factor=0.02, quick_steps=500, particles=32)
    data_plate = None
    leaderboard = ({"guide": "gaussian"}, {"guide": "spline-flow"}, {"guide": "point-mass"})

    def setup(self, data: Any, **opts: Any) -> None:
        if data is not None:
            raise DataError("free-energy-perception takes no data file; set --u instead")
        self.u_value = require_finite(opts["u"], "--u")
        self.v_p_value = require_finite(opts["v_p"], "--v-p")
        self.sigma_p_value = require_positive(opts["sigma_p"], "--sigma-p")
        self.sigma_u_value = require_positive(opts["sigma_u"], "--sigma-u")
        if opts["flow_bins"] < 2:
            raise DataError("--flow-bins must be at least 2")
        self.flow_bins = int(opts["flow_bins"])
        self.u = self.tensor(self.u_value)
        self.v_p = self.tensor(self.v_p_value)
        self.num_data = 1
        self.flow_bound = 5.0  # N(0, 1) puts 6e-7 of its mass outside [-5, 5]

    @property
    def theta(self) -> tuple[float, float, float, float]:
        return self.u_value, self.v_p_value, self.sigma_p_value, self.sigma_u_value

    # -- the model and its guides ----------------------------------------------------------------
    def model(self, subsample_size: int | None = None) -> None:
        v = pyro.sample("v", dist.Normal(self.v_p, math.sqrt(self.sigma_p_value)))
        pyro.sample("u", dist.Normal(v * v, math.sqrt(self.sigma_u_value)), obs=self.u)

    def flow_distribution(self) -> dist.TransformedDistribution:
        """q(v): N(0, 1) through a rational-quadratic spline, then v = loc + scale * (.)."""
        k = self.flow_bins
        zeros = self.tensor(np.zeros(k))
        _, mean, sd = self.best_gaussian()  # the start: the best Gaussian (identity spline)
        loc = pyro.param("flow_loc", lambda: self.tensor(mean))
        scale = pyro.param("flow_scale", lambda: self.tensor(sd), constraint=constraints.positive)
        widths = pyro.param("flow_widths", lambda: zeros.clone())
        heights = pyro.param("flow_heights", lambda: zeros.clone())
        slopes = pyro.param("flow_slopes", lambda: self.tensor(np.full(k - 1, IDENTITY_SLOPE)))
        base = dist.Normal(self.tensor(0.0), self.tensor(1.0))
        spline = ScalarSpline(widths, heights, slopes, self.flow_bound)
        affine = AffineTransform(loc, scale, cache_size=1)  # sampled v maps back without solving
        return dist.TransformedDistribution(base, [spline, affine])

    def flow_guide(self, subsample_size: int | None = None) -> None:
        """The spline flow. An identity spline makes it the Gaussian N(loc, scale^2), so the
        family contains the Gaussian family; it starts at the best Gaussian and climbs."""
        pyro.sample("v", self.flow_distribution())

    def build_guide(self, name: str):
        start = init_to_value(values={"v": self.v_p.clone()})  # Bogacz: phi(0) = v_p
        if name == "gaussian":
            return AutoNormal(
                self.model, init_loc_fn=start, init_scale=math.sqrt(self.sigma_p_value)
            )
        if name == "point-mass":
            return AutoDelta(self.model, init_loc_fn=start)
        if name == "spline-flow":
            return self.flow_guide
        return super().build_guide(name)

    # -- what is known exactly -------------------------------------------------------------------
    @cached_property
    def _exact(self) -> tuple[float, tuple[float, float, float]]:
        # nothing in this model is learnt: compute the exact numbers once
        return perception_log_evidence(*self.theta), best_gaussian(*self.theta)

    def log_evidence(self) -> float:
        return self._exact[0]

    def best_gaussian(self) -> tuple[float, float, float]:
        """(ELBO, mean, sd) of the best Gaussian recognition density."""
        return self._exact[1]

    def best_elbo(self, guide: str) -> float | None:
        if guide == "gaussian":
            return self.best_gaussian()[0]
        return None  # the flow's best is not known in closed form; the point mass has no ELBO

    def posterior_on_grid(self, num: int = 4001) -> tuple[np.ndarray, np.ndarray]:
        """The exact posterior density p(v | u) on a grid spanning its mass."""
        u, v_p, sp, su = self.theta
        modes = stationary_points(u, v_p, sp, su)
        grid = np.linspace(
            min(-0.5, *(modes - 1.5)), max(v_p + 3 * math.sqrt(sp), *(modes + 1.5)), num
        )
        return grid, np.exp(log_joint(grid, u, v_p, sp, su) - self.log_evidence())

    def posterior_moments(self) -> dict[str, float]:
        """Mean, sd and mode of the exact posterior (quadrature on a fine grid)."""
        u, v_p, sp, su = self.theta
        lo, hi = integration_range(u, v_p, sp, su)
        grid = np.linspace(lo, hi, 400_001)
        dens = np.exp(log_joint(grid, u, v_p, sp, su) - self.log_evidence())
        mean = float(np.trapezoid(grid * dens, grid))
        var = float(np.trapezoid((grid - mean) ** 2 * dens, grid))
        modes = stationary_points(u, v_p, sp, su)
        mode = float(modes[np.argmax(log_joint(modes, u, v_p, sp, su))])
        return {"mean": mean, "sd": math.sqrt(var), "mode": mode}

    # -- reading a fitted guide --------------------------------------------------------------------
    @torch.no_grad()
    def recognition_log_density(
        self, guide: Any, guide_name: str, v: np.ndarray
    ) -> np.ndarray | None:
        """ln q(v) of a fitted guide on the points v (None for the point mass)."""
        grid = self.tensor(v)
        if guide_name == "gaussian":
            q = dist.Normal(guide.locs.v.detach(), guide.scales.v.detach())
        elif guide_name == "spline-flow":
            q = self.flow_distribution()
        else:
            return None
        return q.log_prob(grid).cpu().numpy()

    @torch.no_grad()
    def flow_elbo(self, nodes: int = 200_001) -> float:
        """The spline flow's ELBO by quadrature, free of Monte Carlo error: with v = T(e),
        e ~ N(0, 1), ELBO = ∫ N(e) [ln p(u, T(e)) + ln |T'(e)|] de + 1/2 ln(2 pi e), by the
        trapezoid rule on [-10, 10] (the spline is piecewise rational, so the error is O(h^2):
        ~1e-9 at h = 1e-4)."""
        q = self.flow_distribution()
        eps = torch.linspace(-10.0, 10.0, nodes, dtype=torch.float64, device=self.device)
        v, log_det = eps, torch.zeros_like(eps)
        for transform in q.transforms:
            y = transform(v)
            log_det = log_det + transform.log_abs_det_jacobian(v, y)
            v = y
        u, v_p, sp, su = self.theta
        integrand = log_normal(eps, 0.0, 1.0).exp() * (log_joint(v, u, v_p, sp, su) + log_det)
        return float(torch.trapezoid(integrand, eps)) + 0.5 * (LOG_2PI + 1.0)

    def exact_elbo(self, guide: Any, guide_name: str) -> float | None:
        """The Gaussian guide's ELBO in closed form, the spline flow's by quadrature; the
        point mass has none (not a bound)."""
        if guide_name == "gaussian":
            m, s = guide.locs.v.item(), guide.scales.v.item()
            return float(gaussian_elbo(m, s, *self.theta))
        return self.flow_elbo() if guide_name == "spline-flow" else None

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        u, v_p, sp, su = self.theta
        log_ev = self.log_evidence()
        best, best_m, best_s = self.best_gaussian()
        _, phi = bogacz_gradient_ascent(*self.theta)
        out: dict[str, Any] = {
            "values": {"u": u, "v_p": v_p, "Sigma_p": sp, "Sigma_u": su, "g(v)": "v^2"},
            "log_evidence": log_ev,
            "posterior": self.posterior_moments(),
            "best_gaussian": {
                "elbo": best,
                "mean": best_m,
                "sd": best_s,
                "gap": log_ev - best,
            },
            "bogacz_exercise_2": {
                "phi_after_5_time_units": float(phi[-1]),
                "log_joint": float(log_joint(phi[-1], u, v_p, sp, su)),
                "method": "Euler, dt = 0.01, from phi = v_p (Bogacz §2.2, eqs. 8-9)",
            },
            "guide": guide_name,
            "elbo_is_a_bound": guide_name != "point-mass",
        }
        if guide_name == "gaussian":
            m, s = guide.locs.v.item(), guide.scales.v.item()
            elbo = float(gaussian_elbo(m, s, u, v_p, sp, su))
            out["fitted"] = {
                "mean": m,
                "sd": s,
                "elbo_closed_form": elbo,
                "gap_closed_form": log_ev - elbo,
                "below_best_gaussian": best - elbo,
            }
        elif guide_name == "spline-flow":
            elbo = self.flow_elbo()
            out["fitted"] = {
                "elbo_quadrature": elbo,
                "gap_quadrature": log_ev - elbo,
                "above_best_gaussian": elbo - best,
            }
        else:
            phi_fit = float(guide.median()["v"])
            lj = float(log_joint(phi_fit, u, v_p, sp, su))
            out["objective"] = NOT_A_BOUND
            out["fitted"] = {
                "phi": phi_fit,
                "log_joint": lj,
                "log_joint_minus_log_evidence": lj - log_ev,
                "posterior_density_at_phi": math.exp(lj - log_ev),
            }
        return out

    # -- figures -----------------------------------------------------------------------------------
    def density_curves(
        self, runs: dict[str, RunView]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray | float]]:
        """On one grid: the exact posterior, the prior and the best Gaussian densities, and
        each run's ln q by label (a float phi for a point mass)."""
        _, v_p, sp, _ = self.theta
        grid, post = self.posterior_on_grid()
        prior = np.exp(log_normal(grid, v_p, sp))
        _, m, s = self.best_gaussian()
        best = np.exp(log_normal(grid, m, s * s))
        fitted: dict[str, np.ndarray | float] = {}
        for label, run in runs.items():
            with run.active():  # the flow reads its parameters from Pyro's param store
                log_q = self.recognition_log_density(run.guide, run.guide_name, grid)
                fitted[label] = float(run.guide.median()["v"]) if log_q is None else log_q
        return grid, post, prior, best, fitted

    def draw_densities(self, ax: Any, runs: dict[str, RunView]) -> None:
        """Exact posterior, prior, best Gaussian and the fitted guides of the given runs
        (:class:`~zoo.run_view.RunView` by label) on one axis."""
        figures.draw_densities(ax, *self.density_curves(runs))

    def bogacz_dynamics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bogacz's Exercise 2: the times, phi(t) and -F(phi(t)) = -ln p(u, phi(t))."""
        times, phi = bogacz_gradient_ascent(*self.theta)
        return times, phi, -log_joint(phi, *self.theta)

    def draw_bogacz_dynamics(self, ax: Any) -> None:
        """Bogacz's Exercise 2 (his Fig. 2a): phi(t) by Euler steps on F, and -F(phi(t))."""
        mode = self.posterior_moments()["mode"]
        figures.draw_bogacz_dynamics(ax, *self.bogacz_dynamics(), mode, self.log_evidence())

    def plots(self, run: RunView) -> dict[str, Any]:
        kind = run.guide_name
        posterior = figures.perception_posterior_figure(
            kind, *self.density_curves({f"fitted {kind}": run})
        )
        free_energy = figures.perception_free_energy_figure(
            kind,
            run.history,
            *self.bogacz_dynamics(),
            self.posterior_moments()["mode"],
            self.log_evidence(),
        )
        return {"posterior": posterior, "free_energy": free_energy}
