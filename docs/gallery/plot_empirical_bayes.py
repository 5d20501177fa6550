"""
Empirical Bayes: Efron & Morris's baseball averages
===================================================

Empirical Bayes chooses a prior's hyperparameters by maximising the marginal likelihood. Here
they are ``pyro.param`` sites of the model, and SVI maximises the ELBO over them and the guide
together; since the guide family contains the conditional posterior, the best ELBO *is* the
marginal likelihood, which both models know in closed form. For Efron & Morris's 18 batters a
fitted Beta(a, b) prior shrinks the averages of the first 45 at-bats towards their mean and
predicts the rest of the season about three times better (the eight schools, whose type-II
maximum sits on the boundary tau = 0, have a page of their own). Follows Efron & Morris (1975),
"Data analysis using Stein's estimator and its generalizations".
"""

# %%
# The model
# ---------
# Player i has :math:`y_i` hits in n = 45 at-bats; his batting probability :math:`p_i` is the
# latent variable, and the prior's (a, b), stored as the mean m = a / (a + b) and the
# concentration κ = a + b, are parameters of the model, fitted by maximising the ELBO:
#
# .. math::
#
#    p(y, p \mid a, b) = \prod_{i=1}^{18} \operatorname{Beta}(p_i \mid a, b)\,
#    \operatorname{Binomial}(y_i \mid 45, p_i), \qquad a = m \kappa, \quad b = (1 - m) \kappa.
#
# The prior is conjugate, so the conditional posterior is a Beta per player, and the
# marginal likelihood of (a, b) is the beta-binomial, with B the beta function:
#
# .. math::
#
#    p(p_i \mid y_i, a, b) = \operatorname{Beta}(p_i \mid a + y_i, b + 45 - y_i), \qquad
#    p(y \mid a, b) = \prod_{i=1}^{18} \binom{45}{y_i} \frac{B(a + y_i, b + 45 - y_i)}{B(a, b)}.
#
# The guides: ``prior-family`` is a free Beta per player,
# :math:`q(p) = \prod_i \operatorname{Beta}(p_i \mid \alpha_i, \beta_i)`, which the local step
# sets to the conditional posterior after every gradient step; ``exact`` is that posterior as a
# function of (a, b); ``mean-field`` is a Normal per player in logit space,
# :math:`\operatorname{logit} p_i \sim \mathcal{N}(\mu_i, s_i^2)`, which cannot be a Beta. For
# each, the ELBO falls short of the log marginal likelihood by the KL divergence to the
# posterior:
#
# .. math::
#
#    \mathrm{ELBO}(a, b, q) &= \mathbb{E}_q[\log p(y \mid p)]
#    - \mathrm{KL}(q(p) \,\|\, p(p \mid a, b)) \\
#    &= \log p(y \mid a, b) - \mathrm{KL}(q(p) \,\|\, p(p \mid y, a, b)).
#
# Maximising it over (a, b) with q at the posterior is type-II maximum likelihood. The
# posterior mean shrinks each raw average towards the prior mean by the factor
# :math:`\kappa / (\kappa + 45)`:
#
# .. math::
#
#    \mathbb{E}[p_i \mid y_i, a, b] = \frac{a + y_i}{\kappa + 45}
#    = \frac{\kappa}{\kappa + 45}\, m + \frac{45}{\kappa + 45}\, \frac{y_i}{45}.

# %%
# Baseball: fit the prior and a Beta per player
# ---------------------------------------------
# p_i ~ Beta(a, b), hits_i ~ Binomial(45, p_i). The default guide, ``prior-family``, is a free
# Beta factor per player; the model stores the prior as its mean a / (a + b) and concentration
# a + b, starting from the uniform prior a = b = 1. After every gradient step the runner applies
# the model's closed-form local step: each Beta factor is set to the conditional posterior
# Beta(a + y_i, b + 45 - y_i) at the current (a, b), the coordinate-ascent (CAVI) update of
# that factor. The gradient steps then only have to move (a, b).
import os

import zoo
from zoo.leaderboard import compare
from zoo.run import format_result

QUICK = os.environ.get("ZOO_DOCS_QUICK") == "1"  # set by `make -C docs html-quick`
EVAL_PARTICLES = 200 if QUICK else 1000

result = zoo.fit(
    "empirical-bayes", quick=QUICK, seed=0, eval_particles=EVAL_PARTICLES, progress=False
)
print(format_result(result))
d = result.diagnostics
print(f"\nELBO {d.elbo:.4f} ± {d.elbo_se:.4f}   exact log p(y | a, b) {d.log_evidence:.4f}")
print(f"gap log p(y | a, b) - ELBO = KL(q || p(p | y, a, b)) = {d.gap:.4f} nats")

# %%
# The factors are the conditional posterior, so the gap is zero up to rounding. Next, the
# hyperparameters against the exact type-II maximum, which the model finds with scipy's
# L-BFGS-B on the exact log marginal likelihood. The prior mean is pinned down; the
# concentration a + b much less so: the marginal likelihood is a long flat ridge in a + b, and
# every value from about 420 to 5200 is within 0.01 nats of the maximum at 793. With the guide
# at the conditional posterior, the gradient of the ELBO in (a, b) is the gradient of
# log p(y | a, b) itself (exact, as the KL term is analytic), so SVI runs along the ridge: the
# default 1500 steps end 1e-6 nats below the maximum (a quick build's 300 steps, a few
# thousandths of a nat).
s = result.summary
top = s["type2_max"]
print("               prior mean   a + b   shrinkage (a + b) / (a + b + 45)")
print(
    f"SVI            {s['prior_mean']:.5f}   {s['prior_concentration']:7.1f}   "
    f"{s['shrinkage_factor']:.3f}"
)
print(
    f"type-II max    {top['prior_mean']:.5f}   {top['prior_concentration']:7.1f}   "
    f"{top['shrinkage_factor']:.3f}"
)
print(f"log p(y | a, b) below the maximum: {s['log_marginal_below_max']:.4f} nats")

# %%
# Shrinkage
# ---------
# Efron & Morris's point: the early averages are noisy, and pulling each towards the common mean
# predicts the rest of the season far better. Mean squared errors against the season averages:
print(f"raw y / 45                           {s['mse_raw']:.5f}")
print(f"empirical Bayes (fitted guide)       {s['mse_eb']:.5f}")
print(f"empirical Bayes (exact, type-II max) {s['mse_eb_at_type2_max']:.5f}")
print(f"the grand mean for everyone          {s['mse_grand_mean']:.5f}")

# %%
# The figures: the ELBO during training with the exact log marginal likelihood at the current
# (a, b) as a dashed line (the two coincide: the factors are at the conditional posterior
# after every step), the ELBO's two halves, the
# shrinkage of each player's average from the first 45 at-bats (left) to the posterior mean
# (middle), next to the rest of his season (right), and the profile log marginal likelihood
# over a + b with the fitted value marked.
figures = result.figures()
# sphinx_gallery_thumbnail_number = 3
# sphinx_gallery_multi_image = "single"

# %%
# Guides, and the local step
# --------------------------
# Without the local step (``local_steps=False``, ``--no-local-steps``) the same Beta factors are
# moved by gradient steps too, and SVI behaves like variational EM: (a, b) can only move as fast
# as the factors follow the conditional posterior, and along the ridge that is slow (closed-form
# EM's rate there is 0.9996 per iteration). After 1500 steps its a + b is about 210, 0.08 nats
# below the maximum, though its gap at its own (a, b) is still a few thousandths of a nat. The
# ``exact`` guide is the conditional posterior Beta(a + y_i, b + 45 - y_i) written as a
# differentiable function of (a, b): every particle's log weight is then log p(y | a, b), and SVI
# is gradient ascent on it, like the local step. The ``mean-field`` guide (``AutoNormal``) is a
# Normal in logit space per player, a logit-normal, which cannot be a Beta: its best ELBO, found
# by quadrature, stays below the evidence (by 0.002 nats at the type-II maximum), and its
# importance weights are heavy-tailed (k-hat above 0.7), because a Beta's tails in logit space are
# exponential and a Normal's are not. All numbers are totals over the 18 players, in nats.
runs = {"prior-family": result}
for label, settings in (
    ("prior-family, no local steps", {"local_steps": False}),
    ("mean-field", {"guide": "mean-field"}),
    ("exact", {"guide": "exact"}),
):
    runs[label] = zoo.fit(
        "empirical-bayes",
        quick=QUICK,
        seed=0,
        eval_particles=EVAL_PARTICLES,
        progress=False,
        **settings,
    )
compare(
    runs,
    extra={
        "a + b": (lambda r: r.summary["prior_concentration"], "{:.1f}"),
        "log p below the max": (lambda r: r.summary["log_marginal_below_max"], "{:.2g}"),
    },
)
