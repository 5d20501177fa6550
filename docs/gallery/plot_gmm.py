"""
EM for Gaussian mixtures
========================

A three-component Gaussian mixture fitted to 500 simulated 2-D points by EM, written as
coordinate ascent on the ELBO. The guide is the exact posterior of each point's component label
given the current weights, means and covariances, so after every E-step the ELBO *equals* the
log-likelihood log p(x | θ): the gap is zero to rounding error, and each M-step can only raise
the bound. Follows Dempster, Laird & Rubin (1977), Neal & Hinton (1998), "A view of the EM
algorithm that justifies incremental, sparse, and other variants", and Bishop, PRML §9.2–9.4.
"""

# %%
# The model
# ---------
# Each point :math:`x_n \in \mathbb{R}^2` has a component label :math:`z_n \in \{1, \dots, K\}`,
# K = 3, the latent variable; the weights, means and full covariances
# θ = (π, μ, Σ) are parameters, :math:`\mathcal{N}(\cdot \mid \text{mean},
# \text{covariance})`:
#
# .. math::
#
#    p(x, z \mid \theta) = \prod_{n=1}^{N} \pi_{z_n} \mathcal{N}(x_n \mid \mu_{z_n}, \Sigma_{z_n}).
#
# The guide is the exact posterior of the labels at the current θ, the responsibilities
# (PRML eq. 9.23), held fixed while θ moves:
#
# .. math::
#
#    q(z_n = k) = r_{nk} = \frac{\pi_k \mathcal{N}(x_n \mid \mu_k, \Sigma_k)}
#    {\sum_{j=1}^{K} \pi_j \mathcal{N}(x_n \mid \mu_j, \Sigma_j)}.
#
# The ELBO and its gap (PRML eqs. 9.70–9.72), and the exact log evidence, a log-sum-exp over
# the components (PRML eq. 9.14):
#
# .. math::
#
#    \mathrm{ELBO}(q, \theta) &= \sum_{n=1}^{N} \sum_{k=1}^{K} r_{nk}
#    \log \frac{\pi_k \mathcal{N}(x_n \mid \mu_k, \Sigma_k)}{r_{nk}} \\
#    &= \log p(x \mid \theta) - \sum_{n=1}^{N} \mathrm{KL}\bigl(q(z_n) \,\|\,
#    p(z_n \mid x_n, \theta)\bigr),
#
# .. math::
#
#    \log p(x \mid \theta) = \sum_{n=1}^{N} \log \sum_{k=1}^{K} \pi_k
#    \mathcal{N}(x_n \mid \mu_k, \Sigma_k).
#
# EM is coordinate ascent on the ELBO: the E-step sets q to the posterior, which makes every
# KL zero, and the M-step (PRML eqs. 9.24–9.26) maximises the ELBO in θ with q held fixed:
#
# .. math::
#
#    \theta^{\mathrm{new}} = \operatorname*{arg\,max}_{\theta}\, \sum_{n=1}^{N}
#    \sum_{k=1}^{K} r_{nk} \log \bigl(\pi_k \mathcal{N}(x_n \mid \mu_k, \Sigma_k)\bigr).

# %%
# Fit
# ---
# ``method="closed-form"`` trains with the model's own updates instead of SVI: here the E-step
# (recompute the label posteriors) and the M-step (the weights, means and covariances that
# maximise the expected complete-data log-likelihood). The diagnostics then draw particles from
# the guide and estimate the ELBO, its two halves, the importance-weighted bound and k-hat; the
# model adds the exact log evidence, a log-sum-exp over the components.
import os

import zoo
from zoo.run import format_result

QUICK = os.environ.get("ZOO_DOCS_QUICK") == "1"  # set by `make -C docs html-quick`

result = zoo.fit(
    "gmm",
    method="closed-form",
    seed=0,
    quick=QUICK,
    eval_particles=200 if QUICK else 1000,
    progress=False,
)
print(format_result(result))

# %%
# The numbers are totals over the 500 points, in nats. Because the guide is the exact
# posterior of the labels, every particle's log importance ratio is the same number,
# log p(x | θ): the ELBO's standard error is zero to rounding, the importance-weighted bound
# (IWAE) equals the ELBO, k-hat is ``-inf`` and the gap is rounding error.
d = result.diagnostics
print(f"gap log p(x) - ELBO: {d.gap:.3g} nats in total, {d.gap / d.num_data:.3g} per point")

# %%
# Where EM ends depends on where it starts. Before the run, the model draws ``n_init = 10``
# k-means++ starts (each point given to its nearest centre, as scikit-learn's
# ``init_params="k-means++"``), runs cheap closed-form EM from each, and starts the run from
# the best (Biernacki, Celeux & Govaert 2003). Starts that collapse a component onto a few
# points are discarded with a warning. The summary keeps every start's final log-likelihood
# and how far the run ended from the best of them:
s = result.summary
print("final log-likelihood of each start:", [f"{v:.2f}" for v in s["restart_log_likelihoods"]])
print(f"best start {s['best_restart_log_likelihood']:.6f}, run {s['log_likelihood']:.6f}")
print(f"shortfall from the best start: {s['shortfall_from_best_restart']:.3g} nats")

# %%
# The same fit by scikit-learn's ``GaussianMixture``, started from the same (best) start,
# reaches the same log-likelihood per point:
print(f"zoo EM       {d.log_evidence / d.num_data:.6f} nats per point")
print(f"scikit-learn {s['peer_sklearn_log_likelihood_per_point']:.6f} nats per point")

# %%
# Figures
# -------
# :meth:`~zoo.FitResult.figures` draws every figure of the run. First the ELBO after each EM
# iteration with the exact log evidence as a dashed line: the two coincide, since the E-step
# closes the gap and the M-step raises both. Then the ELBO split into the expected
# log-likelihood E_q log p(x | z) and KL(q(z) ‖ p(z)), where the prior p(z) is the mixture
# weights: as the components separate, each point's label posterior grows confident and moves
# away from the weights, so the KL rises, but the expected log-likelihood rises faster.
# Last the model's own picture: the points coloured by their most probable component, each
# component's 2-sigma ellipse and its weight.
figures = result.figures()
# sphinx_gallery_thumbnail_number = 3
# sphinx_gallery_multi_image = "single"

# %%
# The same model trains by SVI too (``zoo.fit("gmm", elbo="enum")`` sums over the labels
# exactly, ``elbo="trace"`` samples them): the :ref:`leaderboard
# <sphx_glr_auto_examples_leaderboard_plot_leaderboard.py>` puts the three side by side.
