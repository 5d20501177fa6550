"""
Empirical Bayes: the eight schools
==================================

The hierarchical normal model of Rubin's eight SAT-coaching experiments, theta_j ~ N(mu, tau^2)
and y_j ~ N(theta_j, sigma_j^2), with the hyperparameters (mu, tau) fitted by maximising the
ELBO. The marginal likelihood is a closed form, and its maximum sits on the boundary tau = 0:
SVI drives tau towards 0 without reaching it, the guide's Normal factors narrow with it, and
the ELBO equals the exact log marginal likelihood at every step. Follows Rubin
(1981), "Estimation in parallel randomized experiments"; BDA3 §5.5, Table 5.2.
"""

# %%
# The model
# ---------
# The school effects :math:`\theta_1, \dots, \theta_8` are the latent variables; the
# standard errors :math:`\sigma_j` are known, and the hyperparameters μ and τ are parameters
# of the model, fitted by maximising the ELBO (:math:`\mathcal{N}(\cdot \mid \text{mean},
# \text{variance})`):
#
# .. math::
#
#    p(y, \theta \mid \mu, \tau) = \prod_{j=1}^{8} \mathcal{N}(\theta_j \mid \mu, \tau^2)\,
#    \mathcal{N}(y_j \mid \theta_j, \sigma_j^2).
#
# Every guide is a Normal per school, :math:`q(\theta) = \prod_j \mathcal{N}(\theta_j \mid m_j,
# s_j^2)`: free factors (``prior-family``, ``mean-field``), or the conditional posterior
# itself, written as a function of (μ, τ) (``exact``, and where the local step puts the
# ``prior-family`` factors after every step):
#
# .. math::
#
#    p(\theta_j \mid y_j, \mu, \tau) = \mathcal{N}\Bigl(\theta_j \Bigm| \mu
#    + \frac{\tau^2}{\tau^2 + \sigma_j^2} (y_j - \mu),\ \frac{\tau^2 \sigma_j^2}{\tau^2
#    + \sigma_j^2}\Bigr).
#
# The ELBO is a lower bound on the marginal likelihood of the hyperparameters, short of it by
# the KL divergence to that posterior:
#
# .. math::
#
#    \mathrm{ELBO}(\mu, \tau, q) &= \mathbb{E}_q[\log p(y \mid \theta)]
#    - \mathrm{KL}(q(\theta) \,\|\, p(\theta \mid \mu, \tau)) \\
#    &= \log p(y \mid \mu, \tau) - \mathrm{KL}(q(\theta) \,\|\, p(\theta \mid y, \mu, \tau)),
#
# and the marginal likelihood is a product of Normals:
#
# .. math::
#
#    \log p(y \mid \mu, \tau) = \sum_{j=1}^{8} \log \mathcal{N}(y_j \mid \mu,
#    \sigma_j^2 + \tau^2).
#
# Since every family here contains the conditional posterior, maximising the ELBO over (μ, τ)
# and q is type-II maximum likelihood. For these data the maximum is on the boundary, complete
# pooling with μ the precision-weighted mean:
#
# .. math::
#
#    \hat\tau = 0, \qquad \hat\mu = \frac{\sum_j y_j / \sigma_j^2}{\sum_j 1 / \sigma_j^2}.

# %%
# Fit
# ---
# tau is a positive-constrained parameter (SVI moves log tau) and nothing clips it. The default
# guide, ``prior-family``, is a free Normal per school, set after every gradient step to the
# conditional posterior of theta_j at the current (mu, tau) (the closed-form local step), so
# the gradient steps move (mu, tau) along the exact gradient of the marginal likelihood.
import os

import zoo
from zoo.leaderboard import compare
from zoo.run import format_result

QUICK = os.environ.get("ZOO_DOCS_QUICK") == "1"  # set by `make -C docs html-quick`
EVAL_PARTICLES = 200 if QUICK else 1000

result = zoo.fit(
    "eight-schools", quick=QUICK, seed=0, eval_particles=EVAL_PARTICLES, progress=False
)
print(format_result(result))

# %%
# A maximum on the boundary
# -------------------------
# The eight estimates spread *less* than their standard errors alone would make them, so the
# marginal likelihood is largest at tau = 0: complete pooling, with mu the precision-weighted
# mean. scipy's L-BFGS-B, started at the sample standard deviation of the y_j, stops on the
# bound tau = 0. The profile max_mu log p(y | mu, tau) has derivative 0 in tau there and a
# negative derivative in tau^2, so the gradient in log tau vanishes like tau^2 and SVI's tau
# creeps: the report gives how far the profile at SVI's tau is below the maximum, against the
# 0.01 nats within which the data cannot tell tau values apart.
s = result.summary
top = s["type2_max"]
print(f"SVI:          mu = {s['mu']:.4f}, tau = {s['tau']:.3g}")
print(
    f"type-II max:  mu = {top['mu']:.4f}, tau = {top['tau']:g} (on the boundary: "
    f"{top['on_boundary']}), d log p / d tau^2 at 0 = {top['dlogp_dtau2_at_zero']:.4f}"
)
print(
    f"profile at SVI's tau: {s['profile_below_max_at_tau']:.4f} nats below the maximum; "
    f"any tau below {top['tau_within_0.01_nats']:.3f} is within 0.01 nats"
)

# %%
# Figures
# -------
# The ELBO during training with the exact log marginal likelihood at the current (mu, tau) as a
# dashed line, the ELBO's two halves, the eight estimates y_j ± sigma_j next to the posterior
# means (pulled almost all the way to mu), and the profile over tau with SVI's tau marked; the
# inset is the 0.01-nat neighbourhood of the boundary.
figures = result.figures()
# sphinx_gallery_thumbnail_number = 3
# sphinx_gallery_multi_image = "single"

# %%
# Guides, and the local step
# --------------------------
# ``exact`` is the conditional posterior of each theta_j given (mu, tau), differentiable in
# them: the ELBO is the log marginal likelihood for every particle and SVI is gradient ascent
# on it, which is what the local step gives ``prior-family`` too (the two reach the same tau).
# Without the local step the Normal factors are moved by gradient steps and have to follow tau
# down, which is slow (variational EM): tau stops larger, though still within the 0.01 nats
# that resolve it. ``mean-field`` (``AutoNormal``) is the same family, a Normal per school,
# parameterised differently (softplus scales starting at 0.1), with no local step: its gap
# closes too, but it stops at a larger tau still. Totals over the eight schools, in nats.
runs = {"prior-family": result}
for label, settings in (
    ("prior-family, no local steps", {"local_steps": False}),
    ("mean-field", {"guide": "mean-field"}),
    ("exact", {"guide": "exact"}),
):
    runs[label] = zoo.fit(
        "eight-schools",
        quick=QUICK,
        seed=0,
        eval_particles=EVAL_PARTICLES,
        progress=False,
        **settings,
    )
compare(
    runs,
    extra={
        "mu": (lambda r: r.summary["mu"], "{:.3f}"),
        "tau": (lambda r: r.summary["tau"], "{:.3g}"),
        "log p below the max": (lambda r: r.summary["log_marginal_below_max"], "{:.2g}"),
    },
)
