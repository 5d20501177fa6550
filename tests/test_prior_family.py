"""Tests of :class:`guides.prior_family.AutoPriorFamily` against exact answers.

- Beta–Binomial: the exact posterior is in the family, so SVI must recover it and the ELBO must
  reach the exact log evidence (log of the beta-binomial pmf).
- Normal–Gamma with unknown mean and precision (Bishop, PRML §10.1.3): the fitted Normal and
  Gamma factors must match the fixed point of the closed-form CAVI updates (PRML eqs.
  10.25–10.30), iterated to convergence in float64.
- Subsampled plates: one step touches only the subsampled groups' factors, with the right
  ``G / B`` scaling, and shapes are right under vectorized particles.
- Rejections (discrete and unsupported sites), the family table, ``init_params``,
  ``init_spread`` and ``median``.

Tolerances of the SVI tests are set from the optimiser's noise floor: with the decaying Adam
step used here, repeated fits (different seeds) land within a few tenths of a percent of the
exact answer; the tolerances are a few times that spread, and far below what a wrong answer
(wrong family, wrong event dims, wrong subsample scaling) would give.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.importance import vectorized_importance_weights
from scipy.special import betainc, betaln, digamma, gammaln

from guides.prior_family import HALF_NORMAL_GAMMA_SHAPE, SUPPORTED_PRIORS, AutoPriorFamily


@pytest.fixture
def float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def fresh_pyro() -> Iterator[None]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def _fit(
    model,
    guide,
    *args,
    steps: int,
    particles: int,
    lr: float,
    final_lr: float,
    max_plate_nesting: int,
) -> None:
    """Adam (Pyro's ClippedAdam) with a geometric step decay from ``lr`` to ``final_lr``."""
    lrd = (final_lr / lr) ** (1.0 / steps)
    elbo = Trace_ELBO(
        num_particles=particles, vectorize_particles=True, max_plate_nesting=max_plate_nesting
    )
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "lrd": lrd}), elbo)
    for _ in range(steps):
        svi.step(*args)


def _elbo_and_se(model, guide, *args, num_samples: int, max_plate_nesting: int):
    """ELBO estimate and its Monte Carlo standard error, from vectorized particles."""
    log_w, _, _ = vectorized_importance_weights(
        model, guide, *args, num_samples=num_samples, max_plate_nesting=max_plate_nesting
    )
    assert log_w.shape == (num_samples,)
    return log_w.mean().item(), log_w.std().item() / math.sqrt(num_samples)


# --------------------------------------------------------------------------------------------
# Beta–Binomial: the posterior is in the family
# --------------------------------------------------------------------------------------------

A, B, N_TRIALS, Y = 2.0, 3.0, 20.0, 7.0


def beta_binomial_model() -> None:
    p = pyro.sample("p", dist.Beta(torch.tensor(A), torch.tensor(B)))
    pyro.sample("y", dist.Binomial(N_TRIALS, p), obs=torch.tensor(Y))


def test_beta_binomial_recovers_exact_posterior_and_evidence(float64: None) -> None:
    guide = AutoPriorFamily(beta_binomial_model)
    _fit(
        beta_binomial_model,
        guide,
        steps=1000,
        particles=64,
        lr=0.05,
        final_lr=0.003,
        max_plate_nesting=0,
    )

    q = guide.get_factors()["p"]
    assert type(q) is dist.Beta
    exact = dist.Beta(torch.tensor(A + Y), torch.tensor(B + N_TRIALS - Y))
    # Over seeds the fitted concentrations land within ~2% of (9, 16) and KL(q || exact) below
    # 1e-3 nats; 5% and 3e-3 leave margin. The prior Beta(2, 3) is 1.4 nats away.
    torch.testing.assert_close(q.concentration1, exact.concentration1, rtol=0.05, atol=0.0)
    torch.testing.assert_close(q.concentration0, exact.concentration0, rtol=0.05, atol=0.0)
    assert torch.distributions.kl_divergence(q, exact).item() < 3e-3

    log_evidence = (
        gammaln(N_TRIALS + 1)
        - gammaln(Y + 1)
        - gammaln(N_TRIALS - Y + 1)
        + betaln(A + Y, B + N_TRIALS - Y)
        - betaln(A, B)
    )
    elbo, se = _elbo_and_se(beta_binomial_model, guide, num_samples=200_000, max_plate_nesting=0)
    # ELBO = log p(y) - KL(q || posterior): within 0.01 nats of the evidence, and never above it
    # beyond Monte Carlo error.
    assert abs(elbo - log_evidence) < 0.01
    assert elbo <= log_evidence + 3 * se
    # Trace_ELBO with vectorized particles estimates the same number.
    loss = Trace_ELBO(num_particles=50_000, vectorize_particles=True, max_plate_nesting=0).loss(
        beta_binomial_model, guide
    )
    assert abs(-loss - log_evidence) < 0.01


# --------------------------------------------------------------------------------------------
# Normal–Gamma (PRML §10.1.3): the fit must be the CAVI fixed point
# --------------------------------------------------------------------------------------------

MU0, LAMBDA0, A0, B0 = 0.0, 1.0, 2.0, 1.0


def normal_gamma_model(x: torch.Tensor) -> None:
    tau = pyro.sample("tau", dist.Gamma(torch.tensor(A0), torch.tensor(B0)))
    mu = pyro.sample("mu", dist.Normal(torch.tensor(MU0), (LAMBDA0 * tau) ** -0.5))
    with pyro.plate("data", x.shape[-1]):
        pyro.sample("x", dist.Normal(mu, tau**-0.5), obs=x)


def cavi_normal_gamma(x: torch.Tensor) -> tuple[float, float, float, float]:
    """Fixed point of PRML eqs. 10.25–10.30.

    Returns ``(mu_N, lambda_N, a_N, b_N)`` of q(mu) = N(mu_N, 1 / lambda_N), q(tau) = Gam(a_N, b_N).
    """
    x = x.to(torch.float64)
    n = x.numel()
    mu_n = (LAMBDA0 * MU0 + n * x.mean().item()) / (LAMBDA0 + n)  # (10.26), fixed
    a_n = A0 + (n + 1) / 2  # (10.29), fixed
    e_tau = A0 / B0
    b_n = B0
    for _ in range(1000):
        lambda_n = (LAMBDA0 + n) * e_tau  # (10.27)
        # (10.30) with E[(x - mu)^2] = (x - mu_N)^2 + 1 / lambda_N
        new_b = B0 + 0.5 * (
            ((x - mu_n) ** 2).sum().item()
            + n / lambda_n
            + LAMBDA0 * ((mu_n - MU0) ** 2 + 1 / lambda_n)
        )
        if abs(new_b - b_n) < 1e-14 * new_b:
            b_n = new_b
            break
        b_n = new_b
        e_tau = a_n / b_n
    else:  # pragma: no cover
        raise AssertionError("CAVI did not converge")
    lambda_n = (LAMBDA0 + n) * a_n / b_n
    return mu_n, lambda_n, a_n, b_n


def normal_gamma_log_evidence(x: torch.Tensor) -> float:
    """Exact log p(x) of the Normal–Gamma model (conjugate, closed form)."""
    n = x.numel()
    xbar = x.mean().item()
    a_n = A0 + n / 2
    lambda_n = LAMBDA0 + n
    b_n = (
        B0 + 0.5 * ((x - xbar) ** 2).sum().item() + LAMBDA0 * n * (xbar - MU0) ** 2 / (2 * lambda_n)
    )
    return (
        -0.5 * n * math.log(2 * math.pi)
        + 0.5 * math.log(LAMBDA0 / lambda_n)
        + A0 * math.log(B0)
        - a_n * math.log(b_n)
        + gammaln(a_n)
        - gammaln(A0)
    )


def test_normal_gamma_matches_cavi_fixed_point(float64: None) -> None:
    x = 1.0 + 0.5 * torch.randn(20, generator=torch.Generator().manual_seed(0))
    mu_n, lambda_n, a_n, b_n = cavi_normal_gamma(x)
    q_mu_cavi = dist.Normal(torch.tensor(mu_n), torch.tensor(lambda_n**-0.5))
    q_tau_cavi = dist.Gamma(torch.tensor(a_n), torch.tensor(b_n))

    guide = AutoPriorFamily(normal_gamma_model)
    _fit(
        normal_gamma_model,
        guide,
        x,
        steps=1500,
        particles=256,
        lr=0.1,
        final_lr=0.002,
        max_plate_nesting=1,
    )
    factors = guide.get_factors()
    q_mu, q_tau = factors["mu"], factors["tau"]
    assert type(q_mu) is dist.Normal and type(q_tau) is dist.Gamma

    # Tolerances in posterior units. Over seeds the fit lands within 0.05 posterior sd in the
    # mean of mu, within 1% in the sd of mu and in the mean and sd of tau, and within 1e-3
    # nats of each CAVI factor; the bounds below are 2-3x that. (The starting factors, the
    # priors Gamma(2, 1) and N(0, 0.71), are 3.1 and 43 nats from the CAVI factors.)
    sd_mu = q_mu_cavi.scale.item()
    assert abs(q_mu.loc.item() - mu_n) < 0.1 * sd_mu
    torch.testing.assert_close(q_mu.scale, q_mu_cavi.scale, rtol=0.02, atol=0.0)
    torch.testing.assert_close(q_tau.mean, q_tau_cavi.mean, rtol=0.02, atol=0.0)
    torch.testing.assert_close(q_tau.stddev, q_tau_cavi.stddev, rtol=0.03, atol=0.0)
    assert torch.distributions.kl_divergence(q_mu, q_mu_cavi).item() < 3e-3
    assert torch.distributions.kl_divergence(q_tau, q_tau_cavi).item() < 3e-3

    # The ELBO of the fit equals the CAVI optimum's, which is below the exact evidence (the
    # posterior couples mu and tau, the mean field cannot).
    elbo_fit, se_fit = _elbo_and_se(
        normal_gamma_model, guide, x, num_samples=100_000, max_plate_nesting=1
    )
    cavi_guide = AutoPriorFamily(
        normal_gamma_model,
        init_params={
            "mu": {"loc": mu_n, "scale": lambda_n**-0.5},
            "tau": {"concentration": a_n, "rate": b_n},
        },
    )
    elbo_cavi, se_cavi = _elbo_and_se(
        normal_gamma_model, cavi_guide, x, num_samples=100_000, max_plate_nesting=1
    )
    log_evidence = normal_gamma_log_evidence(x)
    assert abs(elbo_fit - elbo_cavi) < 0.01
    assert elbo_cavi < log_evidence
    assert elbo_fit <= log_evidence + 3 * se_fit
    assert se_cavi < 0.01


# --------------------------------------------------------------------------------------------
# Subsampled plates and vectorized particles
# --------------------------------------------------------------------------------------------

G, SUB = 10, 3


def _group_data() -> torch.Tensor:
    return 3.0 + torch.arange(G, dtype=torch.get_default_dtype())


def grouped_model(y: torch.Tensor, idx: torch.Tensor | None = None, record: list | None = None):
    kwargs = {"subsample": idx} if idx is not None else {"subsample_size": SUB}
    with pyro.plate("groups", G, **kwargs) as ind:
        if record is not None:
            record.append(ind.clone())
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        pyro.sample("w", dist.Dirichlet(torch.ones(4)))
        pyro.sample("v", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y[ind])


def _theta_locs(guide: AutoPriorFamily) -> torch.Tensor:
    return guide.get_factor_params()["theta"]["loc"]


def test_subsample_step_touches_only_subsampled_groups_with_right_scale(float64: None) -> None:
    y = _group_data()
    idx = torch.tensor([1, 4, 8])
    guide = AutoPriorFamily(
        grouped_model, create_plates=lambda y, idx: pyro.plate("groups", G, subsample=idx)
    )
    guide(y, idx)
    before = guide.get_factor_params()
    assert before["theta"]["loc"].shape == (G,)
    assert before["w"]["concentration"].shape == (G, 4)

    lr, particles = 0.01, 20_000
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(grouped_model, guide, pyro.optim.SGD({"lr": lr}), elbo)
    svi.step(y, idx)
    after = guide.get_factor_params()

    others = torch.ones(G, dtype=torch.bool)
    others[idx] = False
    for site, params in after.items():
        for name, value in params.items():
            old = before[site][name]
            assert torch.equal(value[others], old[others]), (site, name)
            assert (value[idx] != old[idx]).reshape(len(idx), -1).any(-1).all(), (site, name)

    # At the initial factor N(0, 1) the ELBO gradient in the loc of group g is y_g - 2 m_g = y_g,
    # multiplied by the subsample scale G / B; SGD adds lr times that. Monte Carlo sd of the
    # gradient: (G / B) * 2 / sqrt(particles) ~ 0.05, i.e. 5e-4 after the step; tolerance 3e-3.
    expected = lr * (G / SUB) * y[idx]
    torch.testing.assert_close(after["theta"]["loc"][idx], expected, atol=3e-3, rtol=0.0)


def test_random_subsample_matches_model_indices_and_vectorized_shapes() -> None:
    y = _group_data()
    guide = AutoPriorFamily(grouped_model)
    guide(y)
    before = _theta_locs(guide)

    record: list[torch.Tensor] = []
    elbo = Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(grouped_model, guide, pyro.optim.SGD({"lr": 0.01}), elbo)
    svi.step(y, None, record)
    changed = torch.nonzero(_theta_locs(guide) != before).flatten()
    assert len(changed) == SUB
    # the model ran once, replaying the guide's subsample
    assert len(record) == 1
    assert sorted(changed.tolist()) == sorted(record[0].tolist())

    num = 5
    with pyro.plate("particles", num, dim=-2):
        trace = poutine.trace(guide).get_trace(y)
    trace.compute_log_prob()
    assert trace.nodes["theta"]["value"].shape == (num, SUB)
    assert trace.nodes["w"]["value"].shape == (num, SUB, 4)
    assert trace.nodes["v"]["value"].shape == (num, SUB, 2)
    for site in ("theta", "w", "v"):
        assert trace.nodes[site]["log_prob"].shape == (num, SUB)
    assert trace.nodes["v"]["fn"].event_shape == (2,)
    assert trace.nodes["w"]["fn"].event_shape == (4,)

    log_w, _, _ = vectorized_importance_weights(
        grouped_model, guide, y, num_samples=num, max_plate_nesting=1
    )
    assert log_w.shape == (num,)
    assert torch.isfinite(log_w).all()

    factors = guide.get_factors()
    assert factors["theta"].batch_shape == (G,) and factors["theta"].event_shape == ()
    assert factors["w"].batch_shape == (G,) and factors["w"].event_shape == (4,)
    assert factors["v"].batch_shape == (G,) and factors["v"].event_shape == (2,)


# --------------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------------


def test_rejects_discrete_site_with_clear_message() -> None:
    def model() -> None:
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("z", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match=r"site 'z' is discrete \(Bernoulli.*[Ee]numerate"):
        AutoPriorFamily(model)()

    def enum_model() -> None:
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"site 'k' is discrete \(Categorical"):
        AutoPriorFamily(enum_model)()


def test_rejects_unsupported_continuous_prior() -> None:
    def model() -> None:
        pyro.sample("c", dist.HalfCauchy(1.0).expand([3]).to_event(1))

    with pytest.raises(NotImplementedError, match=r"site 'c' has prior HalfCauchy.*AutoNormal"):
        AutoPriorFamily(model)()


# --------------------------------------------------------------------------------------------
# The family table and initialisation
# --------------------------------------------------------------------------------------------

PRIORS = {
    "Normal": (lambda: dist.Normal(torch.tensor([0.5, -1.0]), 2.0), dist.Normal),
    "LogNormal": (lambda: dist.LogNormal(0.3, torch.tensor([0.5, 1.5])), dist.LogNormal),
    "MultivariateNormal": (
        lambda: dist.MultivariateNormal(
            torch.tensor([1.0, 2.0]), torch.tensor([[2.0, 0.5], [0.5, 1.0]])
        ),
        dist.MultivariateNormal,
    ),
    "Gamma": (lambda: dist.Gamma(torch.tensor([2.0, 0.5]), 3.0), dist.Gamma),
    "Chi2": (lambda: dist.Chi2(torch.tensor([3.0, 5.0])), dist.Gamma),
    "Exponential": (lambda: dist.Exponential(torch.tensor([0.5, 2.0])), dist.Gamma),
    "InverseGamma": (lambda: dist.InverseGamma(torch.tensor([3.0, 4.0]), 2.0), dist.InverseGamma),
    "Beta": (lambda: dist.Beta(torch.tensor([2.0, 0.5]), 3.0), dist.Beta),
    "Dirichlet": (lambda: dist.Dirichlet(torch.tensor([[1.0, 2.0, 3.0]])), dist.Dirichlet),
}


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_factor_is_in_prior_family_starts_at_prior_and_is_reparameterized(name: str) -> None:
    make_prior, family = PRIORS[name]

    def model() -> None:
        prior = make_prior()
        pyro.sample("z", prior.to_event(len(prior.batch_shape)))

    guide = AutoPriorFamily(model)
    trace = poutine.trace(guide).get_trace()
    prior = make_prior().to_event(len(make_prior().batch_shape))
    factor = guide.get_factors()["z"]
    base = factor.base_dist if isinstance(factor, torch.distributions.Independent) else factor
    assert type(base) is family
    assert factor.has_rsample
    assert factor.event_shape == prior.event_shape and factor.batch_shape == ()
    # starts exactly at the prior
    z = prior.sample((50,))
    torch.testing.assert_close(factor.log_prob(z), prior.log_prob(z))
    # gradients reach every parameter through the sample
    # (weighted: the plain sum of a Dirichlet sample is 1 whatever the parameters)
    value = trace.nodes["z"]["value"]
    (value * torch.arange(1.0, 1.0 + value.shape[-1])).sum().backward()
    grads = [p.grad for p in guide.parameters()]
    assert grads and all(
        g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads
    )
    if name != "Chi2":  # Chi2 is found as a subclass of Gamma
        assert SUPPORTED_PRIORS[name] == family.__name__


def test_half_normal_maps_to_closest_gamma(float64: None) -> None:
    k = HALF_NORMAL_GAMMA_SHAPE
    assert abs(digamma(k) - math.log(k) + (0.5772156649015329 + math.log(4 / math.pi)) / 2) < 1e-12
    sigma = torch.tensor([0.5, 2.0])

    def model() -> None:
        pyro.sample("s", dist.HalfNormal(sigma).to_event(1))

    guide = AutoPriorFamily(model)
    guide()
    q = guide.get_factors()["s"].base_dist
    assert type(q) is dist.Gamma
    # KL(prior || Gamma) is minimised by matching E[x] and E[log x].
    torch.testing.assert_close(q.mean, sigma * math.sqrt(2 / math.pi))
    e_log_prior = torch.log(sigma) - (0.5772156649015329 + math.log(2.0)) / 2
    e_log_q = torch.digamma(q.concentration) - torch.log(q.rate)
    torch.testing.assert_close(e_log_q, e_log_prior)


def test_init_params_and_init_spread(float64: None) -> None:
    def model() -> None:
        pyro.sample("m", dist.Normal(1.0, 2.0))
        pyro.sample("t", dist.Gamma(2.0, 1.0))
        pyro.sample("p", dist.Beta(2.0, 3.0))
        pyro.sample("w", dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])))

    guide = AutoPriorFamily(model, init_params={"p": {"concentration1": 5.0}, "m": {"scale": 0.3}})
    guide()
    params = guide.get_factor_params()
    assert params["p"]["concentration1"].item() == pytest.approx(5.0)
    assert params["p"]["concentration0"].item() == pytest.approx(3.0)
    assert params["m"]["loc"].item() == pytest.approx(1.0)
    assert params["m"]["scale"].item() == pytest.approx(0.3)

    pyro.clear_param_store()
    narrow = AutoPriorFamily(model, init_spread=0.1)
    narrow()
    f = narrow.get_factors()
    priors = {
        "m": dist.Normal(1.0, 2.0),
        "t": dist.Gamma(2.0, 1.0),
        "p": dist.Beta(2.0, 3.0),
        "w": dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])),
    }
    for site, prior in priors.items():
        torch.testing.assert_close(f[site].mean, prior.mean)
        torch.testing.assert_close(f[site].stddev, 0.1 * prior.stddev)

    for bad, match in [
        ({"nope": {"loc": 0.0}}, "not latent sites"),
        ({"m": {"rate": 1.0}}, r"unknown parameter.*'loc', 'scale'"),
        ({"t": {"rate": -1.0}}, "outside its constraint"),
        ({"m": {"loc": torch.zeros(3)}}, "does not broadcast"),
    ]:
        pyro.clear_param_store()
        with pytest.raises(ValueError, match=match):
            AutoPriorFamily(model, init_params=bad)()
    with pytest.raises(ValueError, match="init_spread"):
        AutoPriorFamily(model, init_spread=0.0)


def test_median(float64: None) -> None:
    def model() -> None:
        pyro.sample("m", dist.Normal(1.0, 2.0))
        pyro.sample("l", dist.LogNormal(0.5, 1.0))
        pyro.sample("t", dist.Gamma(torch.tensor([0.5, 4.0]), 2.0).to_event(1))
        pyro.sample("i", dist.InverseGamma(3.0, 2.0))
        pyro.sample("p", dist.Beta(2.0, 3.0))

    guide = AutoPriorFamily(model)
    med = guide.median()
    assert med["m"].item() == pytest.approx(1.0)
    assert med["l"].item() == pytest.approx(math.exp(0.5))
    cdf_t = torch.special.gammainc(torch.tensor([0.5, 4.0]), 2.0 * med["t"])
    torch.testing.assert_close(cdf_t, torch.full((2,), 0.5))
    assert torch.special.gammaincc(torch.tensor(3.0), 2.0 / med["i"]).item() == pytest.approx(0.5)
    assert betainc(2.0, 3.0, med["p"].item()) == pytest.approx(0.5)


def test_set_factor_writes_the_closed_form_update_in_place(float64: None) -> None:
    """set_factor puts the factor at a given member of its family (a CAVI update): the
    parameter tensors keep their identity (an optimizer's state stays attached), and the ELBO
    is then the exact log evidence for every particle."""
    guide = AutoPriorFamily(beta_binomial_model)
    guide()
    leaf = pyro.param("AutoPriorFamily.factors.concentration1.p").unconstrained()
    exact = dist.Beta(torch.tensor(A + Y), torch.tensor(B + N_TRIALS - Y))
    guide.set_factor("p", exact)
    assert pyro.param("AutoPriorFamily.factors.concentration1.p").unconstrained() is leaf
    q = guide.get_factors()["p"]
    assert q.concentration1.item() == pytest.approx(A + Y, rel=1e-14)
    assert q.concentration0.item() == pytest.approx(B + N_TRIALS - Y, rel=1e-14)
    log_w, _, _ = vectorized_importance_weights(
        beta_binomial_model, guide, num_samples=100, max_plate_nesting=0
    )
    assert log_w.std().item() < 1e-10

    with pytest.raises(TypeError, match="is a Beta, not a Gamma"):
        guide.set_factor("p", dist.Gamma(2.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        guide.set_factor("p", dist.Beta(torch.ones(3), torch.ones(3)))
    with pytest.raises(KeyError, match="no site 'q'"):
        guide.set_factor("q", exact)
