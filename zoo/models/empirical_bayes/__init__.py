"""Empirical Bayes: the hyperparameters of a hierarchical prior chosen by maximising the ELBO.

In empirical Bayes (type-II maximum likelihood) the hyperparameters theta of a prior are fitted
to the data by maximising the marginal likelihood p(y | theta) = int p(y | z) p(z | theta) dz.
Here theta are ``pyro.param`` sites of the joint, phi parameterise the guide, and SVI maximises
the ELBO L(theta, phi) = E_q[log p(y, z | theta) - log q_phi(z)] <= log p(y | theta) jointly
over both. When the guide family contains the conditional posterior p(z | y, theta) for every
theta, max_phi L(theta, phi) = log p(y | theta), so maximising the ELBO is type-II maximum
likelihood (Neal & Hinton 1998; Bishop, PRML §3.5 and §9.4; Blei, Kucukelbir & McAuliffe 2017).

Two conjugate hierarchies, where p(y | theta) and p(z | y, theta) are closed forms:

``empirical-bayes`` -- Efron & Morris's baseball averages. B. Efron and C. Morris, "Data
analysis using Stein's estimator and its generalizations", JASA 70 (1975) 311-319, Table 1: the
hits y_i of 18 major-league players in their first n = 45 at-bats of the 1970 season, and each
player's batting average over the rest of that season (the "truth" to shrink towards). The
beta-binomial

    p_i ~ Beta(a, b),    y_i | p_i ~ Binomial(45, p_i),

has p(y | a, b) = prod_i C(n, y_i) B(a + y_i, b + n - y_i) / B(a, b) and conditional posterior
Beta(a + y_i, b + n - y_i). (Efron & Morris shrank arcsine-transformed averages with the
James-Stein estimator; the beta-binomial is the conjugate version of the same idea.) The
hyperparameters are stored as the prior mean m = a / (a + b) (``prior_mean``) and concentration
kappa = a + b (``prior_concentration``), and a = m kappa, b = (1 - m) kappa: the marginal
likelihood is a long, flat ridge along kappa (the type-II maximum kappa = 793 is 0.014 nats
above kappa -> infinity), and in (log a, log b) that ridge is diagonal, which Adam's
per-coordinate steps cross slowly. Measured with the exact guide from a = b = 1 (lr 0.3, 1000
steps): 0.003 nats below the maximum in (a, b), 1e-7 in (m, kappa).

``eight-schools`` -- the SAT coaching experiments. D. B. Rubin, "Estimation in parallel
randomized experiments", J. Educational Statistics 6 (1981) 377-401; Gelman et al., *Bayesian
Data Analysis*, 3rd ed. (BDA3), §5.5 and Table 5.2: estimated coaching effects y_j with standard
errors sigma_j in eight schools, and

    theta_j ~ N(mu, tau^2),    y_j | theta_j ~ N(theta_j, sigma_j^2),

with p(y | mu, tau) = prod_j N(y_j | mu, sigma_j^2 + tau^2) and conditional posterior
N(mu + tau^2 / (tau^2 + sigma_j^2) (y_j - mu), tau^2 sigma_j^2 / (tau^2 + sigma_j^2)). The
type-II maximum of these data is on the boundary tau = 0 (complete pooling, mu = the
precision-weighted mean 7.69): the profile max_mu log p(y | mu, tau) has derivative 0 in tau at
tau = 0 and a negative derivative in tau^2 (the y_j spread less than their standard errors
alone explain) and decreases in tau from there. Nothing is clipped: tau is a positive-constrained
parameter (log tau unconstrained), SVI drives it towards 0, the gradient in log tau vanishes
like tau^2, and tau creeps. The report gives the profile, the SVI tau, how far (in nats) the
profile at that tau is below the boundary maximum, and the largest tau within 0.01 nats of it.

Guides (both models):

- ``prior-family`` (default): :class:`guides.prior_family.AutoPriorFamily`, a free Beta per
  player / Normal per school. The family contains the conditional posterior, so its best ELBO is
  the exact log marginal likelihood at the current hyperparameters. By default every SVI step is
  followed by the closed-form local step (CAVI: each factor set to p(z_j | y_j, theta) at the
  current theta; Hoffman, Blei, Wang & Paisley 2013, §3), so the gradient steps move theta only
  (``local_steps=False``, ``--no-local-steps`` turns it off).
- ``mean-field``: :class:`~pyro.infer.autoguide.AutoNormal`, a Normal per latent in
  unconstrained space: a logit-normal per player, which does *not* contain the Beta posterior
  (its best ELBO, by Gauss-Hermite quadrature and a deterministic optimiser per player, is below
  the evidence), and for eight schools a Normal per school again (identity transform).
- ``exact``: the conditional posterior at the current hyperparameters, in closed form and
  differentiable in them. Every particle's log weight is log p(y | theta) exactly, so the ELBO is
  the log marginal likelihood with zero variance and SVI is gradient ascent on it.

Why the local step. With free guide parameters moved by gradient steps alone, SVI is variational
EM: theta can only move as fast as the guide follows p(z | y, theta), and along a flat ridge that
is slow. Closed-form EM (exact E-step, exact M-step) has rate 0.9996 per iteration in the
baseball concentration at the type-II maximum (largest eigenvalue of the EM map's Jacobian: the
fraction of missing information), and for eight schools tau^2 falls like 1 / iteration. After
the local step the guide *is* the conditional posterior, so the gradient of the ELBO in theta is
the gradient of log p(y | theta) (Neal & Hinton 1998), and with the analytic KL of
``TraceMeanField_ELBO`` (theta enters the ELBO only through KL(q || p(z | theta))) it is exact:
SVI becomes deterministic gradient ascent on the marginal likelihood. Measured after the
default 1500 steps, identical for seeds 0-2: baseball 1.1e-6 nats below the type-II maximum
(a + b = 800.5 for 793, prior mean 0.26543), eight schools tau = 0.126 and 2.0e-4 nats below the
boundary maximum; gap 0 to 1e-12. Without the local step (``--no-local-steps``) the same runs
stop short along the ridges: a + b = 208-215, 0.079-0.086 nats below the maximum, and
tau = 0.41-0.44, 0.002 nats below (within the 0.01 nats that resolve tau: any tau < 0.894); the
mean-field fit of eight schools (AutoNormal, scales starting at 0.1) has tau = 1.69, 0.036 nats
below. The exact type-II maxima are found by a grid over the profile in the concentration (tau),
refined by Newton's method on the exact Hessian (Brent's method in tau) and verified by
conditions scaled to the problem (:mod:`zoo.optimize`).
"""

from zoo.models.empirical_bayes.base import EmpiricalBayesBase
from zoo.models.empirical_bayes.baseball import BaseballEmpiricalBayes, mse
from zoo.models.empirical_bayes.data import AT_BATS, BASEBALL, EIGHT_SCHOOLS
from zoo.models.empirical_bayes.eight_schools import EightSchools
from zoo.models.empirical_bayes.maxima import (
    KAPPA_MAX,
    BetaBinomialMax,
    NormalMax,
    beta_binomial_log_marginal,
    beta_binomial_log_pmf,
    beta_binomial_profile,
    beta_binomial_type2_max,
    concentration_interval,
    logit_normal_best_elbo,
    normal_dlogp_dtau2_at_zero,
    normal_log_marginal,
    normal_mu_hat,
    normal_profile,
    normal_type2_max,
    tau_within,
)

__all__ = [
    "AT_BATS",
    "BASEBALL",
    "EIGHT_SCHOOLS",
    "KAPPA_MAX",
    "BaseballEmpiricalBayes",
    "BetaBinomialMax",
    "EightSchools",
    "EmpiricalBayesBase",
    "NormalMax",
    "beta_binomial_log_marginal",
    "beta_binomial_log_pmf",
    "beta_binomial_profile",
    "beta_binomial_type2_max",
    "concentration_interval",
    "logit_normal_best_elbo",
    "mse",
    "normal_dlogp_dtau2_at_zero",
    "normal_log_marginal",
    "normal_mu_hat",
    "normal_profile",
    "normal_type2_max",
    "tau_within",
]
