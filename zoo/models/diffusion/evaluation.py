"""The diffusion model's evaluation: the bound term by term, the chain's importance weights, the
probability-flow ODE's exact likelihood, the report that sets them beside E log p_data, and
the arrays of its figures (density contours, denoising paths).

:class:`DiffusionEvaluation` is the base of :class:`~zoo.models.diffusion.model.Diffusion`: the
methods read the model's parameters and data; the maths is :mod:`zoo.models.diffusion.maths`
and :mod:`zoo.models.diffusion.ode` (Ho et al. 2020; Kingma et al. 2021; Song et al. 2021).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch

from zoo.diagnostics import log_mean_exp, mean_with_se
from zoo.model import ZooModel
from zoo.models.diffusion import figures, ode
from zoo.models.diffusion import maths as dm
from zoo.models.diffusion.exact import expected_log_density


class DiffusionEvaluation(ZooModel):
    """What the diffusion model knows about its fit (see the module docstring)."""

    def log_p_data(self, x: torch.Tensor | None = None) -> torch.Tensor | None:
        """log p_data(x) per point under the true data density (None for user data)."""
        if self.density is None:
            return None
        return self.density.log_prob(self.x if x is None else x)

    def expected_log_p_data(self) -> float | None:
        """E_{x ~ p_data} log p_data(x) per point, exactly (Gauss-Hermite over the 8 Gaussians'
        components); None where only a sample mean is available (moons and the swiss roll,
        whose densities are themselves quadratures over many components, and user data)."""
        if self.density is None or self.dataset != "8gaussians":
            return None
        return expected_log_density(self.density)

    def _reconstruction(self, x, eps_fn, g0, draws: int) -> torch.Tensor:
        """E log p(x | z_1), z_1 ~ q(z_1 | x), from ``draws`` draws (with the control variate)."""
        alpha_1, sigma_1 = dm.alpha_sigma(g0)
        eps = torch.randn((draws, *x.shape), dtype=x.dtype)
        z1 = alpha_1 * x + sigma_1 * eps
        lp = dm.decoder(z1, eps_fn(z1, g0.expand(z1.shape[:-1])), g0, **self.kernel).log_prob(x)
        lp = lp + self._recon_weight(g0) * self._cv(x, eps, g0.expand(z1.shape[:-1]))
        return lp.mean(0)

    @torch.no_grad()
    def continuous_terms(
        self, x: torch.Tensor, draws: int | None = None
    ) -> dict[str, torch.Tensor]:
        """VDM's continuous-time bound per point: -L_T - L_0 - L_diffusion, with ``draws``
        stratified times per point for the diffusion term (default: about 200,000 in all, at
        least 16 per point) and as many z_1 for L_0."""
        if draws is None:
            draws = max(16, 200_000 // x.shape[0])
        eps_fn = self.eps_fn()
        g0, g1 = (g.detach() for g in self.endpoints())
        n = x.shape[0]
        offset = torch.rand(n, dtype=x.dtype)
        tau = torch.remainder(offset + torch.arange(draws, dtype=x.dtype).unsqueeze(-1) / draws, 1)
        gamma, dgamma = dm.log_snr(self.schedule, tau, g0, g1)
        alpha, sigma = (s.unsqueeze(-1) for s in dm.alpha_sigma(gamma))
        eps = torch.randn((draws, n, self.dim), dtype=x.dtype)
        eps_hat = eps_fn(alpha * x + sigma * eps, gamma)
        sq = (eps - eps_hat).pow(2).sum(-1) - self._cv(x, eps, gamma)
        diffusion = (0.5 * dgamma * sq).mean(0)
        recon = self._reconstruction(x, eps_fn, g0, draws)
        prior = dm.prior_kl(x, g1)
        return {
            "elbo": recon - prior - diffusion,
            "L_0": -recon,
            "L_T": prior,
            "diffusion": diffusion,
        }

    @torch.no_grad()
    def denoising_gap(self, x: torch.Tensor, draws: int = 16) -> dict[str, Any]:
        """E_data log p_data - E_data ELBO (continuous time) from the denoiser's error against
        the exact one, eps*(z, gamma) = E[eps | z] of the data density: far less noisy than
        the ELBO's own estimate (None for user data).

        With z = alpha x + sigma eps and x ~ p_data, E[eps | z] = eps*(z), so
        E ||eps - eps_hat||^2 = E ||eps - eps*||^2 + E ||eps* - eps_hat||^2 (the cross term has
        zero mean given z), and likewise for the reconstruction term, whose squared error is
        the same with weight w_1 = sigma_1^2 / (2 alpha_1^2 v_1). So the gap of any denoiser is
        the exact denoiser's own gap plus E[w_1 D(z_1) + 1/2 gamma'(tau) D(z_tau)] with
        D = ||eps* - eps_hat||^2, which is zero for a perfect network and is estimated here
        with ``draws`` stratified times (and as many z_1) per point. The exact denoiser's gap
        is what its reverse process still lacks in continuous time (Song, Durkan, Murray &
        Ermon 2021, "Maximum likelihood training of score-based diffusion models", thm. 1):
        KL(q(z_T) || N(0, I)) + E KL(q(x | z_1) || p(x | z_1)), both in closed form but for
        one expectation each, estimated from the same points (about 1e-5 nats at the default
        endpoints). Needs points drawn from p_data: the mean of ``per_point`` + ``exact_gap``
        is then an unbiased estimate of the gap (per point it is no gap of that point).

        Returns ``per_point`` (n,), ``exact_gap`` and ``exact_gap_se``, and ``gap`` and
        ``gap_se`` (their sum, and its standard error), or None without a known density."""
        if self.density is None:
            return None
        star = self.density.eps_star
        eps_fn = self.eps_fn()
        g0, g1 = (g.detach() for g in self.endpoints())
        n = x.shape[0]
        offset = torch.rand(n, dtype=x.dtype)
        tau = torch.remainder(offset + torch.arange(draws, dtype=x.dtype).unsqueeze(-1) / draws, 1)
        gamma, dgamma = dm.log_snr(self.schedule, tau, g0, g1)
        alpha, sigma = (s.unsqueeze(-1) for s in dm.alpha_sigma(gamma))
        z = alpha * x + sigma * torch.randn((draws, n, self.dim), dtype=x.dtype)
        diffusion = 0.5 * dgamma * (star(z, gamma) - eps_fn(z, gamma)).pow(2).sum(-1)
        alpha_1, sigma_1 = dm.alpha_sigma(g0)
        z1 = alpha_1 * x + sigma_1 * torch.randn((draws, n, self.dim), dtype=x.dtype)
        g0s = g0.expand(z1.shape[:-1])
        recon = self._recon_weight(g0) * (star(z1, g0s) - eps_fn(z1, g0s)).pow(2).sum(-1)
        per_point = (diffusion + recon).mean(0)
        # the exact denoiser's gap: the prior's and the decoder's mismatch, per draw
        alpha_T, sigma_T = dm.alpha_sigma(g1)
        z_T = alpha_T * x + sigma_T * torch.randn((draws, n, self.dim), dtype=x.dtype)
        standard = dist.Normal(0.0, 1.0).log_prob(z_T).sum(-1)
        prior = self.density.marginal_log_prob(z_T, g1) - standard
        q1 = dist.Normal(alpha_1 * x, sigma_1).to_event(1)
        log_q_x = q1.log_prob(z1) + self.log_p_data(x) - self.density.marginal_log_prob(z1, g0)
        log_p_x = dm.decoder(z1, star(z1, g0s), g0, **self.kernel).log_prob(x)
        exact_gap, exact_gap_se = mean_with_se((prior + log_q_x - log_p_x).mean(0))
        gap, gap_se = mean_with_se(per_point)
        return {
            "per_point": per_point,
            "exact_gap": exact_gap,
            "exact_gap_se": exact_gap_se,
            "gap": gap + exact_gap,
            "gap_se": math.hypot(gap_se, exact_gap_se),
        }

    @torch.no_grad()
    def discrete_terms(
        self, x: torch.Tensor, num_steps: int | None = None, schedule: str | None = None
    ) -> dict[str, torch.Tensor]:
        """DDPM's bound per point, every step's analytic KL with one z_t ~ q(z_t | x) per step
        and point: ``elbo`` = -L_T - sum_t L_{t-1} - L_0 (per point), ``per_step`` (T - 1, n):
        L_{t-1} for t = 2..T."""
        eps_fn = self.eps_fn()
        gammas = self.gammas(num_steps, schedule).detach()
        g0, g1 = gammas[0], gammas[-1]
        n = x.shape[0]
        block = max(1, 200_000 // n)
        steps = []
        for start in range(1, gammas.shape[0], block):
            stop = min(start + block, gammas.shape[0])
            g_t = gammas[start:stop].unsqueeze(-1).expand(-1, n)
            g_s = gammas[start - 1 : stop - 1].unsqueeze(-1).expand(-1, n)
            alpha, sigma = (s.unsqueeze(-1) for s in dm.alpha_sigma(g_t))
            eps = torch.randn((*g_t.shape, self.dim), dtype=x.dtype)
            eps_hat = eps_fn(alpha * x + sigma * eps, g_t)
            const, weight = dm.step_kl_weights(g_s, g_t, dim=self.dim, **self.kernel)
            sq = (eps - eps_hat).pow(2).sum(-1) - self._cv(x, eps, g_t)
            steps.append(const + weight * sq)
        per_step = torch.cat(steps)
        recon = self._reconstruction(x, eps_fn, g0, 1)
        prior = dm.prior_kl(x, g1)
        diffusion = per_step.sum(0)
        return {
            "elbo": recon - prior - diffusion,
            "L_0": -recon,
            "L_T": prior,
            "diffusion": diffusion,
            "per_step": per_step,
        }

    @torch.no_grad()
    def chain_log_weights(
        self, x: torch.Tensor, particles: int = 1, num_steps: int | None = None
    ) -> torch.Tensor:
        """log p(x, z) - log q(z | x) for whole chains z ~ q(z_{1:T} | x), shape
        (particles, n): the Monte Carlo ELBO's summands (what ``Trace_ELBO`` averages)."""
        eps_fn = self.eps_fn()
        gammas = self.gammas(num_steps).detach()
        out = []
        block = max(1, 200_000 // (gammas.shape[0] * particles))
        for start in range(0, x.shape[0], block):
            xb = x[start : start + block]
            q = dm.ForwardChain(xb, gammas)
            z = q.sample((particles,))
            p = dm.ReverseChain(eps_fn, gammas, xb.shape[:-1], self.dim, **self.kernel)
            z1 = z[..., 0, :]
            eps_1 = eps_fn(z1, gammas[0].expand(z1.shape[:-1]))
            obs = dm.decoder(z1, eps_1, gammas[0], **self.kernel)
            out.append(p.log_prob(z) + obs.log_prob(xb) - q.log_prob(z))
        return torch.cat(out, dim=-1)

    @torch.no_grad()
    def chain_iwae(
        self, x: torch.Tensor, particles: int = 16, num_steps: int | None = None
    ) -> torch.Tensor:
        """The importance-weighted bound (Burda et al. 2016) of the T-step model per point,
        log mean_k w_k over ``particles`` whole chains from q: an estimate of the discrete-time
        (SDE) model's log-likelihood from below, tighter than its ELBO."""
        log_w = self.chain_log_weights(x, particles, num_steps)
        return log_mean_exp(log_w, 0)

    @torch.no_grad()
    def ode_log_likelihood(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """log p(x) per point under the probability-flow ODE (exact divergence, RK4)."""
        g0, g1 = (g.item() for g in self.endpoints())
        steps = steps or self.report_sizes["ode_steps"]
        return ode.ode_log_likelihood(self.eps_fn(), x, g0, g1, steps)

    @torch.no_grad()
    def sample(self, num: int, num_steps: int | None = None) -> torch.Tensor:
        """Draws of x from the reverse chain (ancestral sampling)."""
        gammas = self.gammas(num_steps).detach()
        chain = dm.ancestral_chain(self.eps_fn(), gammas, (num,), self.dim, **self.kernel)
        return chain[-1]

    def _per_point(self, name: str, values: torch.Tensor, ideal: torch.Tensor | None) -> dict:
        mean, se = mean_with_se(values)
        row = {f"{name}": mean, f"{name}_se": se, f"{name}_bits_per_dim": -mean / self._bits}
        if ideal is not None:
            gap, gap_se = mean_with_se(ideal - values)
            row[f"{name}_gap"], row[f"{name}_gap_se"] = gap, gap_se
        return row

    @property
    def _bits(self) -> float:
        return self.dim * math.log(2)

    def report(self) -> dict[str, Any]:
        """Everything worth knowing at the current parameters, in nats per point (and negative
        log-likelihoods in bits per dimension), on the training points and on fresh ones."""
        sizes = self.report_sizes
        exact = self.expected_log_p_data()
        out: dict[str, Any] = {
            "dataset": self.dataset,
            # the ideal: what a perfect model reaches in expectation over fresh data; the
            # sets below give its sample mean (with SE) on their own points
            "expected_log_p_data_exact": exact,
            "density": None if self.density is None else self.density.description,
            "density_exact": None if self.density is None else self.density.exact,
            "objective": self.objective,
            "timesteps": self.num_steps,
            "schedule": self.schedule,
            "gamma_min": self.endpoints()[0].item(),
            "gamma_max": self.endpoints()[1].item(),
            "denoiser": self.denoiser_kind,
            "t_sampler": self.t_sampler,
            "ema": self.ema_decay,
            "iwae_and_khat_valid": self.objective == "mc",
            "units": "nats per point; *_bits_per_dim = -value / (D ln 2)",
        }
        sets = {"train": self.x}
        if self.x_test is not None:
            sets["test"] = self.x_test
        for label, x in sets.items():
            lp = self.log_p_data(x)
            row: dict[str, Any] = {"points": int(x.shape[0])}
            if lp is not None:
                row.update(self._per_point("log_p_data", lp, None))
            cont = self.continuous_terms(x)
            row.update(self._per_point("elbo_continuous", cont["elbo"], lp))
            for term in ("L_0", "L_T", "diffusion"):
                row[f"continuous_{term}"] = cont[term].mean().item()
            if label == "test" and lp is not None:
                # the same gap through the exact denoiser (fresh points only: on the training
                # points the network's error is not independent of the points), from a random
                # stream of its own, so the rest of the report draws what it drew without it
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(2**62, ())))
                    precise = self.denoising_gap(x)
                row["elbo_continuous_gap_denoiser"] = precise["gap"]
                row["elbo_continuous_gap_denoiser_se"] = precise["gap_se"]
            out[label] = row
        # the T-step bound term by term, and the Monte Carlo chain ELBO, on a subset
        x = (self.x_test if self.x_test is not None else self.x)[: sizes["eval_points"]]
        lp = self.log_p_data(x)
        disc = self.discrete_terms(x)
        row = {"points": int(x.shape[0]), "T": self.num_steps}
        row.update(self._per_point("elbo", disc["elbo"], lp))
        row["L_0"] = disc["L_0"].mean().item()
        row["L_T"] = disc["L_T"].mean().item()
        row["diffusion"] = disc["diffusion"].mean().item()
        row["per_step_L"] = disc["per_step"].mean(1).tolist()
        mc = self.chain_log_weights(x)[0]
        row.update(self._per_point("elbo_mc_chain", mc, lp))
        diff, diff_se = mean_with_se(disc["elbo"] - mc)
        row["rb_minus_mc"], row["rb_minus_mc_se"] = diff, diff_se
        row["rb_minus_mc_z"] = diff / diff_se if diff_se > 0 else math.nan
        out["discrete"] = row
        if sizes["ode_points"] > 0:
            x = (self.x_test if self.x_test is not None else self.x)[: sizes["ode_points"]]
            lp = self.log_p_data(x)
            row = {"points": int(x.shape[0]), "rk4_steps": sizes["ode_steps"]}
            row.update(self._per_point("log_lik_ode", self.ode_log_likelihood(x), lp))
            if lp is not None:
                row.update(self._per_point("log_p_data", lp, None))
            out["ode"] = row
        return out

    def density_contours(self, lims: figures.Limits) -> figures.Contours | None:
        """log p_data on a grid over ``lims`` (2-D data), for contours; None for user data."""
        if self.density is None:
            return None
        xs, ys, points = figures.contour_grid(lims)
        logp = self.density.log_prob(torch.tensor(points)).reshape(len(ys), len(xs)).numpy()
        return xs, ys, logp

    @torch.no_grad()  # an evaluation: with --ema, of the averaged weights
    def denoising_paths(
        self, side: int = 15, ode_steps: int = 100
    ) -> tuple[np.ndarray, list[tuple[str, np.ndarray, np.ndarray]]]:
        """A ``side`` x ``side`` grid on [-2.5, 2.5]^2 taken as z_T (zero in any further
        dimensions), run down the reverse chain (seeded) and along the probability-flow ODE
        (RK4, ``ode_steps`` steps, deterministic): the grid and, at a few steps, ``(label,
        chain points, ODE points)`` at the same gamma, the last being x."""
        lin = np.linspace(-2.5, 2.5, side)
        grid = np.stack(np.meshgrid(lin, lin), -1).reshape(-1, 2)
        start = torch.tensor(grid)
        if self.dim != 2:
            start = torch.cat([start, torch.zeros(len(grid), self.dim - 2, dtype=start.dtype)], -1)
        gammas = self.gammas().detach()
        num = gammas.shape[0]
        eps_fn = self.eps_fn()
        generator = torch.Generator().manual_seed(0)
        chain = dm.ancestral_chain(
            eps_fn, gammas, (len(grid),), self.dim, start=start, generator=generator, **self.kernel
        )
        # chain[k] is z_{T-k} for k < T and chain[T] is x; the ODE's states at the same gammas
        picks = sorted({0, num // 2, (3 * num) // 4, (9 * num) // 10, num - 1, num})
        g_lo, g_hi = float(gammas[0]), float(gammas[-1])
        gamma_of = {k: float(gammas[num - 1 - k]) for k in picks if k < num}
        keep = {k: round((g_hi - g) / (g_hi - g_lo) * ode_steps) for k, g in gamma_of.items()}
        x_ode, states = ode.ode_sample(
            eps_fn, start, g_lo, g_hi, ode_steps, keep=set(keep.values())
        )
        columns = []
        for k in picks:
            ode_pts = x_ode if k == num else states[keep[k]]
            label = "x" if k == num else f"z_{num - k}"
            columns.append((label, chain[k].cpu().numpy(), ode_pts.cpu().numpy()))
        return grid, columns
