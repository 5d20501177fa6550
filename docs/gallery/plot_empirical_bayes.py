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
# Baseball: fit the prior and a Beta per player
# ---------------------------------------------
# p_i ~ Beta(a, b), hits_i ~ Binomial(45, p_i). The default guide, ``prior-family``, is a free
# Beta factor per player; the model stores the prior as its mean a / (a + b) and concentration
# a + b, starting from the uniform prior a = b = 1.
import os

import zoo
import zoo.models.empirical_bayes  # registers the models (until zoo.models imports it)
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
# After the default 1500 steps the gap is a few thousandths of a nat (a quick build trains
# 300 steps and stops further short). Next, the hyperparameters against the exact type-II
# maximum, which the model finds with scipy's L-BFGS-B on the exact log marginal likelihood.
# The prior mean is pinned down; the concentration a + b is not. The marginal likelihood is a
# long flat ridge in a + b: every value from about 420 to 5200 is within 0.01 nats of the
# maximum at 793. SVI with a free guide is variational EM, and along that ridge it crawls
# (closed-form EM's rate there is 0.9996 per iteration), so it stops short in a + b, by the
# number of nats printed last.
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
# (a, b) as a dashed line (the two meet as the guide catches up), the ELBO's two halves, the
# shrinkage of each player's average from the first 45 at-bats (left) to the posterior mean
# (middle), next to the rest of his season (right), and the profile log marginal likelihood
# over a + b with the fitted value marked.
figures = result.figures()
# sphinx_gallery_thumbnail_number = 3
# sphinx_gallery_multi_image = "single"

# %%
# Three guides
# ------------
# The ``exact`` guide is the conditional posterior Beta(a + y_i, b + 45 - y_i) itself, a
# differentiable function of (a, b). Every particle's log weight is then log p(y | a, b)
# exactly, so the ELBO has no Monte Carlo error and SVI is gradient ascent on the marginal
# likelihood: with no guide to wait for, it runs along the ridge to the type-II maximum (the
# default 1500 steps end within 1% of a + b = 793; a quick build's 300 steps stop a few
# thousandths of a nat short). The ``mean-field`` guide (``AutoNormal``) is a Normal in logit
# space per player, a logit-normal, which cannot be a Beta: its best ELBO, found by quadrature,
# stays below the evidence (by 0.002 nats at the type-II maximum), and its importance weights
# are heavy-tailed (k-hat above 0.7), because a Beta's tails in logit space are exponential
# and a Normal's are not. All numbers are totals over the 18 players, in nats.
runs = {"prior-family": result}
for guide in ("mean-field", "exact"):
    runs[guide] = zoo.fit(
        "empirical-bayes",
        guide=guide,
        quick=QUICK,
        seed=0,
        eval_particles=EVAL_PARTICLES,
        progress=False,
    )
compare(
    runs,
    extra={
        "a + b": (lambda r: r.summary["prior_concentration"], "{:.1f}"),
        "log p below the max": (lambda r: r.summary["log_marginal_below_max"], "{:.2g}"),
    },
)
