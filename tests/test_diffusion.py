"""Diffusion models: formulas against brute force, bounds against each other and against the
exact data density, the probability-flow ODE against closed forms, and the zoo contract."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import multivariate_normal

import zoo
from zoo.diagnostics import evaluate
from zoo.errors import DataError, ZooError
from zoo.models.diffusion import Diffusion  # importing it registers the model
from zoo.models.diffusion import exact as densities
from zoo.models.diffusion import maths as dm
from zoo.models.diffusion.ode import ode_log_likelihood

F64 = torch.float64
G_MIN, G_MAX = dm.DDPM_GAMMA_MIN, dm.DDPM_GAMMA_MAX


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.reshape(-1).double()
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


# -- schedules and the forward process -----------------------------------------------------------
@pytest.mark.parametrize("name", dm.SCHEDULES)
def test_schedules_hit_their_endpoints_and_their_derivative_is_right(name):
    tau = torch.linspace(0, 1, 101, dtype=F64, requires_grad=True)
    gamma, dgamma = dm.log_snr(name, tau, -7.0, 6.0)
    (auto,) = torch.autograd.grad(gamma.sum(), tau)
    assert gamma[0].item() == pytest.approx(-7.0, abs=1e-10)
    assert gamma[-1].item() == pytest.approx(6.0, abs=1e-10)
    torch.testing.assert_close(dgamma, auto, rtol=1e-9, atol=1e-9)
    assert (gamma.diff() > 0).all() and (dgamma > 0).all()


def test_linear_schedule_is_ddpm_at_t_1000():
    """DDPM: beta_t = linspace(1e-4, 0.02, 1000). Ours is its continuous-time version sampled at
    T = 1000, so beta_1 is exact and the rest agree to the discretisation of the integral."""
    _, beta = dm.forward_kernels(dm.discrete_gammas("linear", 1000, G_MIN, G_MAX))
    ddpm = np.linspace(1e-4, 0.02, 1000)
    assert beta[0].item() == pytest.approx(1e-4, rel=1e-9)
    np.testing.assert_allclose(beta.numpy(), ddpm, rtol=0, atol=1e-4)
    alpha_bar_T = torch.sigmoid(-torch.tensor(G_MAX, dtype=F64)).item()
    assert alpha_bar_T == pytest.approx(np.prod(1 - ddpm), rel=1e-9)


def test_forward_chain_marginals_and_covariances_match_the_closed_form():
    """z_t | x ~ N(alpha_t x, sigma_t^2), Cov(z_s, z_t) = (alpha_t / alpha_s) sigma_s^2, by
    simulating the whole chain (200,000 chains, T = 12)."""
    torch.manual_seed(0)
    gammas = dm.discrete_gammas("cosine", 12, -6.0, 5.0)
    x = torch.tensor([1.5, -0.5], dtype=F64)
    z = dm.ForwardChain(x, gammas).sample((200_000,))  # (S, T, 2)
    alpha, sigma = dm.alpha_sigma(gammas)
    n = z.shape[0]
    torch.testing.assert_close(z.mean(0), alpha[:, None] * x, atol=5 * 1 / math.sqrt(n), rtol=0)
    var = z.var(0)
    torch.testing.assert_close(var, (sigma**2)[:, None].expand_as(var), atol=0.01, rtol=0.02)
    s, t = 3, 8
    cov = ((z[:, s, 0] - z[:, s, 0].mean()) * (z[:, t, 0] - z[:, t, 0].mean())).mean()
    assert cov.item() == pytest.approx((alpha[t] / alpha[s] * sigma[s] ** 2).item(), abs=0.01)


def test_forward_chain_log_prob_is_the_sum_of_its_kernels():
    gammas = dm.discrete_gammas("linear-logsnr", 6, -5.0, 4.0)
    x = torch.tensor([[0.3, -1.2]], dtype=F64)
    q = dm.ForwardChain(x, gammas)
    z = q.sample((3,))
    root, beta = dm.forward_kernels(gammas)
    want = torch.zeros(3, 1, dtype=F64)
    prev = x.expand(3, 1, 2)
    for t in range(6):
        want += (
            torch.distributions.Normal(root[t] * prev, beta[t].sqrt())
            .log_prob(z[..., t, :])
            .sum(-1)
        )
        prev = z[..., t, :]
    torch.testing.assert_close(q.log_prob(z), want, rtol=1e-12, atol=1e-12)


def test_posterior_matches_brute_force_gaussian_conditioning():
    """q(z_s | z_t, x) from the joint Gaussian of (z_s, z_t) given x, conditioned by hand."""
    g_s, g_t = torch.tensor(-1.3, dtype=F64), torch.tensor(0.4, dtype=F64)
    a, b, v = dm.posterior_coefficients(g_s, g_t)
    (al_s, si_s), (al_t, si_t) = dm.alpha_sigma(g_s), dm.alpha_sigma(g_t)
    cov = torch.tensor(
        [[si_s**2, al_t / al_s * si_s**2], [al_t / al_s * si_s**2, si_t**2]], dtype=F64
    )
    x, z_t = 0.7, -0.2
    mean = torch.tensor([al_s * x, al_t * x], dtype=F64)
    cond_mean = mean[0] + cov[0, 1] / cov[1, 1] * (z_t - mean[1])
    cond_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    assert (a * z_t + b * x).item() == pytest.approx(cond_mean.item(), abs=1e-12)
    assert v.item() == pytest.approx(cond_var.item(), abs=1e-12)


@pytest.mark.parametrize("variance", dm.REVERSE_VARIANCES)
def test_step_kl_is_the_kl_between_the_two_gaussians(variance):
    torch.manual_seed(1)
    g_s, g_t = torch.tensor([-4.0, 0.5], dtype=F64), torch.tensor([-3.5, 1.5], dtype=F64)
    x = torch.randn(2, 2, dtype=F64)
    eps, eps_hat = torch.randn(2, 2, dtype=F64), torch.randn(2, 2, dtype=F64)
    alpha_t, sigma_t = (s.unsqueeze(-1) for s in dm.alpha_sigma(g_t))
    z_t = alpha_t * x + sigma_t * eps
    a, b, v_q = dm.posterior_coefficients(g_s, g_t)
    root, coef, v_p = dm.reverse_kernel(g_s, g_t, variance, data_var=2.5)
    q = torch.distributions.Normal(a[:, None] * z_t + b[:, None] * x, v_q.sqrt()[:, None])
    mean_p = (z_t - coef[:, None] * eps_hat) / root[:, None]
    p = torch.distributions.Normal(mean_p, v_p.sqrt()[:, None])
    want = torch.distributions.kl_divergence(q, p).sum(-1)
    got = dm.step_kl(eps, eps_hat, g_s, g_t, variance, data_var=2.5)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # the reverse mean is q's posterior mean at x_hat (DDPM eq. 11)
    x_hat = dm.denoised(z_t, eps_hat, g_t)
    torch.testing.assert_close(mean_p, a[:, None] * z_t + b[:, None] * x_hat, rtol=1e-9, atol=1e-9)


def test_reverse_chain_log_prob_is_the_sum_of_its_kernels():
    torch.manual_seed(2)
    gammas = dm.discrete_gammas("cosine", 5, -6.0, 6.0)
    density = densities.eight_gaussians()
    z = torch.randn(3, 5, 2, dtype=F64)
    p = dm.ReverseChain(density.eps_star, gammas, (3,), 2, "gaussian", 4.0)
    root, coef, var = dm.reverse_kernel(gammas[:-1], gammas[1:], "gaussian", 4.0)
    want = torch.distributions.Normal(0.0, 1.0).log_prob(z[:, -1]).sum(-1)
    for t in range(1, 5):
        eps_hat = density.eps_star(z[:, t], gammas[t])
        mean = (z[:, t] - coef[t - 1] * eps_hat) / root[t - 1]
        want += torch.distributions.Normal(mean, var[t - 1].sqrt()).log_prob(z[:, t - 1]).sum(-1)
    torch.testing.assert_close(p.log_prob(z), want, rtol=1e-12, atol=1e-12)


def test_prior_term_is_negligible_for_the_default_schedule():
    """L_T = KL(q(z_T | x) || N(0, I)) averaged over the 8-Gaussian data, at DDPM's
    gamma_max (alpha_bar_T = 4e-5): about 2e-4 nats per point; the test asks < 1e-3."""
    model = Diffusion(num_points=2000)
    prior = dm.prior_kl(model.x, model.endpoints()[1])
    assert (prior > 0).all()
    assert prior.mean().item() < 1e-3
    # and it is the KL torch computes
    alpha, sigma = dm.alpha_sigma(model.endpoints()[1])
    q = torch.distributions.Normal(alpha * model.x[:5], sigma)
    want = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(prior[:5], want, rtol=1e-9, atol=1e-12)


def test_gaussian_control_variate_has_zero_mean():
    torch.manual_seed(3)
    x = torch.tensor([2.0, -1.0], dtype=F64)
    gamma = torch.tensor(-0.7, dtype=F64)
    eps = torch.randn(400_000, 2, dtype=F64)
    cv = dm.gaussian_control_variate(x, eps, gamma.expand(eps.shape[:-1]), torch.zeros(2), 4.0)
    mean, se = _mean_se(cv)
    assert abs(mean) < 4 * se


# -- data densities --------------------------------------------------------------------------------
def test_eight_gaussians_density_matches_scipy():
    density = densities.eight_gaussians()
    pts = np.random.default_rng(0).normal(size=(50, 2)) * 2
    want = np.log(
        sum(
            multivariate_normal(mu, density.scale**2 * np.eye(2)).pdf(pts) / 8
            for mu in density.locs.numpy()
        )
    )
    np.testing.assert_allclose(density.log_prob(torch.tensor(pts)).numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("name", ["moons", "swissroll"])
def test_curve_densities_by_quadrature_match_monte_carlo_and_a_finer_rule(name):
    """log p(x) = log E_u N(x | c(u), s^2 I) by Gauss-Legendre, against 5e5 uniform draws of the
    curve parameter (Monte Carlo, 4 s.e.) and against a rule with twice the panels (1e-8)."""
    noise = densities.DEFAULT_NOISE[name]
    make = densities.moons_density if name == "moons" else densities.swiss_roll_density
    density = make(noise)
    finer = make(noise, panels=2 * (16 if name == "moons" else 128))
    pts, _ = densities.make_dataset(name, 20, seed=5)
    x = torch.tensor(pts)
    torch.testing.assert_close(density.log_prob(x), finer.log_prob(x), rtol=0, atol=1e-8)
    rng = np.random.default_rng(0)
    u = rng.uniform(size=500_000)
    if name == "moons":
        arc = rng.integers(0, 2, size=u.size)
        cx = np.where(arc == 0, np.cos(np.pi * u), 1 - np.cos(np.pi * u))
        cy = np.where(arc == 0, np.sin(np.pi * u), 0.5 - np.sin(np.pi * u))
    else:
        t = 1.5 * np.pi * (1 + 2 * u)
        cx, cy = (
            t * np.cos(t) / densities.SWISS_ROLL_SCALE,
            t * np.sin(t) / densities.SWISS_ROLL_SCALE,
        )
    for point, lp in zip(pts[:5], density.log_prob(x[:5]).numpy(), strict=True):
        dens = np.exp(-((point[0] - cx) ** 2 + (point[1] - cy) ** 2) / (2 * noise**2)) / (
            2 * np.pi * noise**2
        )
        mean, se = dens.mean(), dens.std() / math.sqrt(dens.size)
        assert abs(math.exp(lp) - mean) < 4 * se + 1e-12


@pytest.mark.parametrize("name", densities.DATASETS)
def test_densities_integrate_to_one(name):
    _, density = densities.make_dataset(name, 10, seed=0)
    lo, hi = (-4.5, 4.5) if name != "moons" else (-2.0, 3.0)
    grid = np.linspace(lo, hi, 200)
    xy = torch.tensor(np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2))
    mass = density.log_prob(xy).exp().sum().item() * (grid[1] - grid[0]) ** 2
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_eps_star_is_tweedie():
    """E[eps | z] = -sigma grad log q_gamma(z) (Tweedie), by autograd of the noised density."""
    density = densities.moons_density(0.1)
    z = torch.randn(7, 2, dtype=F64, requires_grad=True)
    gamma = torch.tensor(-1.0, dtype=F64)
    (grad,) = torch.autograd.grad(density.marginal_log_prob(z, gamma).sum(), z)
    want = -dm.alpha_sigma(gamma)[1] * grad
    torch.testing.assert_close(density.eps_star(z.detach(), gamma), want, rtol=1e-9, atol=1e-12)


# -- the probability-flow ODE --------------------------------------------------------------------
def test_ode_likelihood_is_exact_for_gaussian_data_with_the_exact_score():
    """Data N(m, v I): with the exact denoiser, the flow carries the exact marginal at gamma_max
    to the data, so the ODE likelihood (exact divergence) is log N(x | m, (v + e^gamma_min) I),
    the data density with the blur of the least noisy latent."""
    m, v = torch.tensor([0.5, -1.0], dtype=F64), 2.0
    data = densities.IsotropicMixture(m[None], torch.zeros(1, dtype=F64), math.sqrt(v), "gaussian")
    x = torch.tensor([[0.0, 0.0], [2.0, 1.0], [-3.0, -1.0]], dtype=F64)
    g0, g1 = -8.0, 8.0
    got = ode_log_likelihood(
        data.eps_star,
        x,
        g0,
        g1,
        steps=100,
        terminal_log_prob=lambda z: data.marginal_log_prob(z, g1),
    )
    blurred = densities.IsotropicMixture(
        m[None], torch.zeros(1, dtype=F64), math.sqrt(v + math.exp(g0)), ""
    )
    torch.testing.assert_close(got, blurred.log_prob(x), rtol=0, atol=1e-6)


def test_ode_likelihood_of_the_mixture_with_its_exact_score():
    """The same for the 8-Gaussian mixture: the exact denoiser E[eps | z] makes the ODE
    likelihood the (blurred) mixture density, to the RK4 error (200 steps: 1e-4 nats)."""
    density = densities.eight_gaussians()
    x = torch.tensor(density.sample(20, np.random.default_rng(1)))
    g0, g1 = -8.0, 8.0
    got = ode_log_likelihood(
        density.eps_star, x, g0, g1, 200, lambda z: density.marginal_log_prob(z, g1)
    )
    blurred = densities.IsotropicMixture(
        density.locs, density.log_weights, math.sqrt(density.scale**2 + math.exp(g0)), ""
    )
    torch.testing.assert_close(got, blurred.log_prob(x), rtol=0, atol=1e-4)


# -- the bounds ------------------------------------------------------------------------------------
def _shared_parameters(denoiser: str, **options):
    """Two models with the same denoiser: the exact one, or one MLP (perturbed at random) whose
    weights both read from the param store."""
    pyro.clear_param_store()
    torch.manual_seed(4)
    common = dict(num_points=200, test_points=10, denoiser=denoiser, **options)
    a = Diffusion(**common, objective="mc")
    b = Diffusion(**common, objective="rb")
    if denoiser == "mlp":
        a.eps_fn()
        with torch.no_grad():
            for p in a._net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        b.eps_fn()  # adopts the store's weights
    return a, b


@pytest.mark.parametrize("denoiser", ["oracle", "mlp"])
def test_rao_blackwellised_bound_equals_the_monte_carlo_elbo_in_expectation(denoiser):
    """The Pyro programs of objective mc (whole chains: Trace_ELBO's summands) and rb (one step
    per point with its analytic KL, plus L_T and L_0) estimate the same ELBO at the same
    parameters: z-tests on the diagnostics' two estimates and on their halves, |z| < 4."""
    a, b = _shared_parameters(denoiser, timesteps=20, schedule="cosine")
    mc = evaluate(a, a.build_guide("forward"), num_particles=400, with_khat=False)
    rb = evaluate(b, b.build_guide("forward"), num_particles=400, with_khat=False)
    z = (mc.elbo - rb.elbo) / math.hypot(mc.elbo_se, rb.elbo_se)
    assert abs(z) < 4, (mc.elbo, mc.elbo_se, rb.elbo, rb.elbo_se)
    # the halves agree too: E log p(x | z_1), and KL(q(z | x) || p(z)) = L_T + sum_t L_{t-1}
    se = math.hypot(mc.expected_log_likelihood_se, rb.expected_log_likelihood_se)
    assert abs(mc.expected_log_likelihood - rb.expected_log_likelihood) < 4 * se
    # and the direct per-point evaluation (every step at once) agrees with both
    direct = b.discrete_terms(b.x)["elbo"]
    direct_se = direct.std().item() * math.sqrt(direct.numel())  # of the total over points
    assert abs(direct.sum().item() - rb.elbo) < 4 * math.hypot(rb.elbo_se, direct_se)


def test_vdm_bound_is_the_limit_of_the_discrete_bounds():
    """With the exact denoiser, the T-step bound rises towards the continuous-time one as T
    grows, with a gap ~ 1/T (q's posterior variance, where the gap is largest), and the
    continuous bound is E log p_data within Monte Carlo error (VDM: tight for the exact score)."""
    torch.manual_seed(5)
    model = Diffusion(denoiser="oracle", num_points=500, reverse_variance="posterior")
    x, lp = model.x, model.log_p_data()
    cont = model.continuous_terms(x, draws=256)["elbo"]
    gaps = {}
    for steps in (10, 100, 1000):
        gaps[steps] = _mean_se(cont - model.discrete_terms(x, steps)["elbo"])
    for steps, (gap, se) in gaps.items():
        assert gap > 4 * se, (steps, gap, se)
    assert gaps[10][0] > gaps[100][0] > gaps[1000][0]
    ratio = gaps[100][0] / gaps[1000][0]
    assert 5 < ratio < 20, gaps  # about 10: the gap is O(1/T)
    gap, se = _mean_se(lp - cont)
    assert abs(gap) < 4 * se + 2e-3, (gap, se)


def test_continuous_bound_does_not_depend_on_the_schedule_shape():
    """VDM: in continuous time only the endpoints matter; the shape changes the variance."""
    torch.manual_seed(6)
    values = {}
    for name in dm.SCHEDULES:
        model = Diffusion(denoiser="oracle", num_points=300, schedule=name)
        values[name] = _mean_se(model.continuous_terms(model.x, draws=256)["elbo"])
    ref = values["linear-logsnr"]
    for mean, se in values.values():
        assert abs(mean - ref[0]) < 4 * math.hypot(se, ref[1]), values


# -- training, and the zoo contract ----------------------------------------------------------------
_SMALL = dict(num_points=400, test_points=400, eval_points=100, ode_points=100, ode_steps=40)


def test_fit_reports_everything_and_the_bounds_are_ordered():
    """A short run (600 steps on 400 points): the ELBO rises well above the Gaussian start, the
    summary has every number, and on the same held-out points, paired, within 4 s.e.:

    - ELBO <= IWAE of whole chains (16 per point: the T-step SDE model's likelihood from below)
      <= E log p_data: both hold in expectation whatever the parameters;
    - ODE likelihood <= E log p_data: the ODE is a normalised flow, so it holds too;
    - ELBO <= ODE likelihood: true of this short-trained model (by ~0.1 nats) but *not*
      guaranteed: the ODE is a different model from the SDE whose bound is trained, and a
      better-trained network can put it below the ELBO (the benchmark's does, by 0.06 nats;
      Lu et al. 2022). The slow test checks only that the two are close there.
    """
    result = zoo.fit("diffusion", steps=600, eval_particles=50, progress=False, **_SMALL)
    s, d, model = result.summary, result.diagnostics, result.model
    assert d.best_elbo is None  # E log p_data is the ideal, not a best ELBO of the family
    exact = s["expected_log_p_data_exact"]
    assert exact == pytest.approx(
        model.log_p_data().mean().item(), abs=4 * s["train"]["log_p_data_se"]
    )
    assert d.log_evidence is None  # the model's own evidence is not known
    history = result.history["elbo"].to_numpy() / d.num_data
    assert history[-1] > history[0] + 0.2
    disc = s["discrete"]
    assert abs(disc["rb_minus_mc_z"]) < 4
    assert len(disc["per_step_L"]) == disc["T"] - 1
    assert disc["L_T"] < 1e-3
    for row, key in ((s["test"], "elbo_continuous"), (s["ode"], "log_lik_ode"), (disc, "elbo")):
        assert row[f"{key}_gap"] > -4 * row[f"{key}_gap_se"], key

    torch.manual_seed(7)
    x = model.x_test[:100]
    ideal = model.log_p_data(x)
    elbo = model.discrete_terms(x)["elbo"]
    iwae = model.chain_iwae(x, particles=16)
    ode = model.ode_log_likelihood(x, steps=40)
    cont = model.continuous_terms(x)["elbo"]
    for low, high in ((elbo, iwae), (iwae, ideal), (ode, ideal), (cont, ode)):
        gap, se = _mean_se(high - low)
        assert gap > -4 * se, (gap, se)
    figures = result.figures()
    assert {"samples", "elbo_by_step", "denoising", "elbo_vs_ideal"} <= set(figures)


def test_the_guide_has_no_parameters_and_runs_are_reproducible():
    first = zoo.fit("diffusion", steps=5, eval_particles=30, progress=False, **_SMALL)
    again = zoo.fit("diffusion", steps=5, eval_particles=30, progress=False, **_SMALL)
    for name, value in first.param_state["params"].items():
        assert name.startswith("denoiser$$$")
        torch.testing.assert_close(value, again.param_state["params"][name], rtol=0, atol=0)
    pyro.clear_param_store()
    model = Diffusion(**_SMALL)
    trace = pyro.poutine.trace(model.build_guide("forward")).get_trace()
    assert not [n for n, s in trace.nodes.items() if s["type"] == "param"]


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    """The network is rebuilt in a new process and takes the checkpoint's weights."""
    from zoo import runner

    settings = dict(steps=20, seed=1, checkpoint_every=10, eval_particles=30, progress=False)
    whole = zoo.fit("diffusion", **settings, **_SMALL)
    save = runner._Trainer._save_checkpoint

    def save_then_die(self, step, optim):
        save(self, step, optim)
        if step == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner._Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        zoo.fit("diffusion", run_dir=tmp_path, **settings, **_SMALL)
    monkeypatch.undo()
    resumed = zoo.resume(tmp_path, progress=False)
    for name, value in whole.param_state["params"].items():
        torch.testing.assert_close(resumed.param_state["params"][name], value, rtol=0, atol=0)


def test_learned_endpoints_and_the_other_objectives_train():
    for objective in ("rb", "mc"):
        result = zoo.fit(
            "diffusion",
            objective=objective,
            timesteps=10 if objective == "mc" else 100,
            learn_schedule=True,
            steps=20,
            eval_particles=30,
            progress=False,
            **_SMALL,
        )
        assert {"gamma_min", "gamma_max"} <= set(result.param_state["params"])
        assert math.isfinite(result.diagnostics.elbo)
        assert result.summary["iwae_and_khat_valid"] == (objective == "mc")
        # rb and vdm mark their random step (RANDOM_TERM): no importance weights, no IWAE
        assert math.isnan(result.diagnostics.iwae) == (objective != "mc")
        assert math.isnan(result.diagnostics.khat) == (objective != "mc")


def test_user_data_has_no_density_and_bad_input_is_refused(tmp_path):
    pts = np.random.default_rng(0).normal(size=(100, 2))
    result = zoo.fit(
        "diffusion",
        pts,
        steps=5,
        eval_particles=30,
        progress=False,
        eval_points=20,
        ode_points=10,
        ode_steps=5,
    )
    assert result.diagnostics.best_elbo is None
    assert "log_p_data" not in result.summary["train"]
    with pytest.raises(DataError, match="oracle"):
        Diffusion(pts, denoiser="oracle")
    with pytest.raises(DataError, match="gamma_min"):
        Diffusion(gamma_min=1.0)


# -- importance-sampled tau, the weight average, the exact-denoiser gap ----------------------------
def test_piecewise_quantile_inverts_the_cdf_and_reweights_to_the_uniform():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15], dtype=F64)
    u = (torch.arange(10_000, dtype=F64) + 0.5) / 10_000
    tau, density = dm.piecewise_quantile(probs, u)
    assert (tau.diff() >= 0).all() and tau.min() >= 0 and tau.max() <= 1
    # the CDF at tau is u, and the density is K probs_k on bin k
    k = (tau * 5).long().clamp(max=4)
    cdf = torch.cumsum(probs, 0)[k] - probs[k] + (tau * 5 - k) * probs[k]
    torch.testing.assert_close(cdf, u, rtol=0, atol=1e-12)
    torch.testing.assert_close(density, 5 * probs[k], rtol=0, atol=0)
    # evenly spread u: int_0^1 f = mean f(tau) / p(tau), to the grid's resolution
    f = torch.cos(3 * tau) + tau**2
    assert (f / density).mean().item() == pytest.approx(math.sin(3) / 3 + 1 / 3, abs=1e-4)


@pytest.mark.parametrize("objective", ["vdm", "rb"])
def test_importance_sampled_tau_and_antithetic_pairs_leave_the_bound_unbiased(objective):
    """The Pyro program with a skewed density of tau (weights 1 / p), with antithetic pairs of
    noises, or both, estimates the same ELBO as the plain one: z-tests on the diagnostics'
    estimates, |z| < 4."""
    common = dict(num_points=200, test_points=10, denoiser="oracle", objective=objective)
    values = {}
    for sampler, pairs in (("stratified", False), ("loss", False), ("loss", True)):
        pyro.clear_param_store()
        torch.manual_seed(9)
        model = Diffusion(**common, t_sampler=sampler, antithetic=pairs)
        if sampler == "loss":
            probs, _ = model.tau_state()
            probs.copy_(torch.linspace(1, 6, probs.shape[0], dtype=F64) ** 2)
            probs.div_(probs.sum())
        values[sampler, pairs] = evaluate(
            model, model.build_guide("forward"), num_particles=400, with_khat=False
        )
    a = values["stratified", False]
    for b in (values["loss", False], values["loss", True]):
        assert abs(a.elbo - b.elbo) < 4 * math.hypot(a.elbo_se, b.elbo_se), (a.elbo, b.elbo)


def test_gradient_norms_are_the_per_point_gradients():
    """The one-pass per-point gradient norms (the gradient sampler's statistic) equal those of
    one backward pass per point, for both parameterisations, with one noise per point or an
    antithetic pair."""
    for parameterization, draws in (("eps", 1), ("edm", 1), ("eps", 2)):
        pyro.clear_param_store()
        torch.manual_seed(3)
        model = Diffusion(num_points=50, test_points=10, parameterization=parameterization)
        net = model.eps_fn()
        x, tau = model.x[:5].unsqueeze(1), torch.rand(5, dtype=F64)
        g0, g1 = model.endpoints()
        gamma, const, weight = model._diffusion_weights(tau, g0, g1)
        eps = torch.randn(5, 1, 2, dtype=F64)
        eps = torch.cat([eps, -eps], 1) if draws == 2 else eps
        gamma = gamma.unsqueeze(-1).expand(eps.shape[:-1])
        alpha, sigma = (s.unsqueeze(-1) for s in dm.alpha_sigma(gamma))
        z = alpha * x + sigma * eps
        cv = model._cv(x, eps, gamma)
        fast = model._gradient_norms(z, gamma, eps, const, weight, cv)
        for i in range(5):
            sq = (eps[i] - net(z[i], gamma[i])).pow(2).sum(-1) - cv[i]
            term = const[i] + weight[i] * sq.mean()
            grads = torch.autograd.grad(term, list(net.parameters()))
            slow = sum(g.double().pow(2).sum() for g in grads)
            assert fast[i].item() == pytest.approx(slow.item(), rel=1e-5)


def test_the_average_and_the_sampler_follow_the_run_and_resume(tmp_path, monkeypatch):
    """With --ema and --t-sampler the param store holds the average and the sampler's density
    (no optimiser moves them; the training step keeps the raw weights, evaluations outside
    autograd read the average), and a resumed run ends where the uninterrupted one does."""
    from zoo import runner

    settings = dict(
        steps=60, seed=2, checkpoint_every=30, record_every=30, eval_particles=30, progress=False
    )
    options = {**_SMALL, "t_sampler": "gradient", "ema": 0.9, "antithetic": True}
    options.update(eval_points=20, ode_points=0)
    whole = zoo.fit("diffusion", **settings, **options)
    params = whole.param_state["params"]
    assert {"tau_proposal", "tau_moments"} <= set(params)
    averaged = {k for k in params if k.startswith("denoiser_ema$$$")}
    assert len(averaged) == len([k for k in params if k.startswith("denoiser$$$")]) > 0
    probs = params["tau_proposal"]
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert probs.min().item() >= 0.1 / probs.numel() - 1e-15  # the uniform share
    assert (probs - 1 / probs.numel()).abs().max().item() > 1e-3  # updated at steps 1 and 51
    test = whole.summary["test"]
    assert test["elbo_continuous_gap_denoiser"] == pytest.approx(
        test["elbo_continuous_gap"], abs=4 * test["elbo_continuous_gap_se"]
    )
    model = whole.model
    name = "net.0.weight"
    assert not torch.equal(params[f"denoiser$$${name}"], params[f"denoiser_ema$$${name}"])
    with torch.no_grad():
        averaged_fn = model.eps_fn()
    z, gamma = torch.zeros(3, 2, dtype=F64), torch.zeros(3, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(averaged_fn(z, gamma), model.eps_fn(averaged=True)(z, gamma))
        assert not torch.equal(averaged_fn(z, gamma), model.eps_fn(averaged=False)(z, gamma))
    assert isinstance(model.eps_fn(), torch.nn.Module)  # under autograd: the raw network

    save = runner._Trainer._save_checkpoint

    def save_then_die(self, step, optim):
        save(self, step, optim)
        if step == 30:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner._Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        zoo.fit("diffusion", run_dir=tmp_path, **settings, **options)
    monkeypatch.undo()
    resumed = zoo.resume(tmp_path, progress=False)
    for name, value in params.items():
        torch.testing.assert_close(resumed.param_state["params"][name], value, rtol=0, atol=0)


def test_the_denoising_gap_is_the_gap_of_the_bound():
    """E log p_data - E ELBO through the exact denoiser agrees with the direct paired estimate
    (|z| < 4): for the exact denoiser with endpoints far from the defaults (where its own gap,
    the prior's and the decoder's mismatch, is 0.1 nats), and for the Gaussian one."""
    torch.manual_seed(11)
    oracle = Diffusion(denoiser="oracle", num_points=3000, gamma_min=-3.0, gamma_max=2.0)
    x = oracle.x
    direct = oracle.log_p_data(x) - oracle.continuous_terms(x, 128)["elbo"]
    got = oracle.denoising_gap(x, 32)
    assert got["exact_gap"] > 0.05
    gap, se = _mean_se(direct)
    assert abs(got["gap"] - gap) < 4 * math.hypot(se, got["gap_se"]), (got["gap"], gap, se)

    # the exact denoiser of Gaussian data (EDM's preconditioning with a zero network): 1.4 nats
    pyro.clear_param_store()
    model = Diffusion(
        num_points=2000,
        test_points=500,
        eval_points=20,
        ode_points=0,
        timesteps=50,
        parameterization="edm",
    )
    model.eps_fn()
    with torch.no_grad():
        model._net.net[-1].weight.zero_()
        model._net.net[-1].bias.zero_()
    x = model.x
    direct = model.log_p_data(x) - model.continuous_terms(x, 128)["elbo"]
    got = model.denoising_gap(x, 16)
    gap, se = _mean_se(direct)
    assert got["gap"] > 1
    assert abs(got["gap"] - gap) < 4 * math.hypot(se, got["gap_se"]), (got["gap"], gap, se)


def test_the_sampler_and_the_average_are_refused_where_they_mean_nothing():
    with pytest.raises(ZooError, match="t-sampler"):
        Diffusion(objective="mc", t_sampler="loss", timesteps=10)
    with pytest.raises(ZooError, match="antithetic"):
        Diffusion(objective="mc", antithetic=True, timesteps=10)
    with pytest.raises(ZooError, match="oracle"):
        Diffusion(denoiser="oracle", ema=0.9)
    with pytest.raises(ZooError, match="ema"):
        Diffusion(ema=1.0)


@pytest.mark.slow
def test_a_compiled_step_reads_the_sampler_in_place():
    """The step recorded and compiled once (zoo.compiled) reads the sampler's density in place,
    as it reads the weights: after the density changes between steps, the graph's loss and
    gradient still equal Pyro's eager ones on the same draws; the runner compiles such runs
    (the step hook is marked as changing tensors in place only)."""
    from zoo.compiled import Batch, CompiledELBO

    result = zoo.fit(
        "diffusion",
        steps=60,
        compile=True,
        t_sampler="gradient",
        antithetic=True,
        ema=0.99,
        progress=False,
        eval_particles=30,
        **{**_SMALL, "eval_points": 20, "ode_points": 0},
    )
    assert result.compiled["compiled"], result.compiled
    model = result.model
    guide = model.build_guide("forward")
    step = CompiledELBO(
        model.model,
        guide,
        estimator="trace",
        particles=1,
        max_plate_nesting=1,
        batch=Batch("data", model.num_data, 128, model.device),
        kwargs={"subsample_size": 128},
    ).build()
    assert len(step.params) == len(list(model._net.parameters()))  # not the average, nor p
    probs, _ = model.tau_state()
    for exponent in (1, 3):
        with torch.no_grad():
            probs.copy_(torch.linspace(1, 4, probs.shape[0], dtype=F64) ** exponent)
            probs.div_(probs.sum())
        indices, weight = step._inputs()
        torch.manual_seed(exponent)
        eager = step._eager(indices, weight)
        torch.manual_seed(exponent)
        graph = step._replay(indices, weight)
        for a, b in zip(eager, graph, strict=True):
            # half the digits of float32, the network's precision (fused sums round apart);
            # a density not read in place changes the loss by percents
            tol = math.sqrt(torch.finfo(torch.float32).eps) * a.abs().max().item()
            torch.testing.assert_close(a, b, rtol=0, atol=tol)


@pytest.mark.slow
def test_a_longer_run_gets_close_to_the_data_density():
    """The CLI's default run (a few minutes): the continuous-time ELBO within 0.15 nats of
    E log p_data on held-out points, ELBO <= chain IWAE <= E log p_data and ODE <= E log p_data
    within 4 s.e., and the ODE likelihood within 0.15 nats of the ELBO (either side)."""
    result = zoo.fit("diffusion", eval_particles=100, progress=False)
    model = result.model
    assert 0 < result.summary["test"]["elbo_continuous_gap"] < 0.15
    torch.manual_seed(8)
    x = model.x_test[:200]
    ideal = model.log_p_data(x)
    elbo = model.discrete_terms(x)["elbo"]
    iwae = model.chain_iwae(x, particles=16)
    ode = model.ode_log_likelihood(x)
    for low, high in ((elbo, iwae), (iwae, ideal), (ode, ideal)):
        gap, se = _mean_se(high - low)
        assert gap > -4 * se, (gap, se)
    gap, se = _mean_se(ode - model.continuous_terms(x)["elbo"])
    assert abs(gap) < 0.15 + 4 * se


def test_expected_log_density_of_the_eight_gaussians():
    """E log p_data by Gauss-Hermite: converged in the nodes, and within 4 SE of the sample mean
    of 200,000 draws; a wider circle changes the density, not the entropy's local part."""
    density = densities.eight_gaussians()
    exact = densities.expected_log_density(density, 40)
    assert exact == pytest.approx(densities.expected_log_density(density, 80), abs=1e-8)
    x = torch.as_tensor(density.sample(200_000, np.random.default_rng(0)))
    lp = density.log_prob(x)
    assert exact == pytest.approx(lp.mean().item(), abs=4 * lp.std().item() / 200_000**0.5)
    # far-apart components: -H = -log 8 - log(2 pi e s^2), the entropy of 8 disjoint Gaussians
    wide = densities.eight_gaussians(radius=100.0)
    s2 = wide.scale**2
    assert densities.expected_log_density(wide) == pytest.approx(
        -math.log(8) - math.log(2 * math.pi * math.e * s2), abs=1e-9
    )
