"""The free-energy brain: perception and learning as maximising the ELBO.

Follows Bogacz (2017), "A tutorial on the free-energy framework for modelling perception and
learning", J. Math. Psych. 76, 198-211; Friston (2005), "A theory of cortical responses",
Phil. Trans. R. Soc. B 360, 815-836; Friston (2010), "The free-energy principle: a unified brain
theory?", Nat. Rev. Neurosci. 11, 127-138; Rao & Ballard (1999), "Predictive coding in the
visual cortex", Nat. Neurosci. 2, 79-87.

The brain holds a generative model p(v) p(u | v) of its world and forms a recognition density
q(v) by minimising the free energy, the negative of Bogacz's F (eq. 32),

    F[q] = E_q[ln p(u, v) - ln q(v)] = ln p(u) - KL(q || p(v | u))          (Bogacz eqs. 33, 35)

which is the ELBO. Three registered models, one module each:

- ``free-energy-perception`` (:mod:`.perception`; Bogacz §2.1-§2.2, §3): one food item of
  size v seen through the light u = v^2 + noise; exact evidence by adaptive quadrature, the
  best Gaussian recognition density in closed form, a spline flow, and Bogacz's point estimate.
- ``free-energy-learning`` (:mod:`.learning`; Bogacz §2.4 and §3, eq. 35): the prior's
  parameters learnt from many items by maximising the ELBO, against the maximum-likelihood
  theta and the variational-EM optimum.
- ``predictive-coding`` (:mod:`.predictive_coding`; Bogacz §4.2, Rao & Ballard 1999): a
  linear-Gaussian hierarchy with two latent layers, where everything is exact.

Beside them: the scalar model's maths (:mod:`.maths`: evidences, the closed-form Gaussian ELBO,
Bogacz's gradient ascent), one-dimensional log-evidence integrals (:mod:`.quadrature`), the
linear-Gaussian hierarchy's closed forms (:mod:`.hierarchy`), the spline of the flow guide
(:mod:`.spline`) and the figures (:mod:`.figures`).
"""

from zoo.gaussian import LOG_2PI, log_normal
from zoo.models.free_energy.figures import free_energy_axes
from zoo.models.free_energy.hierarchy import (
    hierarchy_covariance,
    hierarchy_posterior_means,
    hierarchy_precision,
)
from zoo.models.free_energy.learning import (
    FreeEnergyLearning,
    best_gaussians,
    max_marginal_likelihood,
    simulate_items,
    variational_em,
)
from zoo.models.free_energy.maths import (
    EXERCISE_1,
    NOT_A_BOUND,
    VARIANCE_RANGE,
    best_gaussian,
    bogacz_gradient_ascent,
    gaussian_elbo,
    grid_log_evidence,
    integration_range,
    log_joint,
    perception_log_evidence,
    posterior_curvature,
    stationary_points,
)
from zoo.models.free_energy.perception import FreeEnergyPerception
from zoo.models.free_energy.predictive_coding import PredictiveCoding
from zoo.models.free_energy.quadrature import log_integral, log_trapezoid
from zoo.models.free_energy.spline import IDENTITY_SLOPE, ScalarSpline

__all__ = [
    "EXERCISE_1",
    "IDENTITY_SLOPE",
    "LOG_2PI",
    "NOT_A_BOUND",
    "VARIANCE_RANGE",
    "FreeEnergyLearning",
    "FreeEnergyPerception",
    "PredictiveCoding",
    "ScalarSpline",
    "best_gaussian",
    "best_gaussians",
    "bogacz_gradient_ascent",
    "free_energy_axes",
    "gaussian_elbo",
    "grid_log_evidence",
    "hierarchy_covariance",
    "hierarchy_posterior_means",
    "hierarchy_precision",
    "integration_range",
    "log_integral",
    "log_joint",
    "log_normal",
    "log_trapezoid",
    "max_marginal_likelihood",
    "perception_log_evidence",
    "posterior_curvature",
    "simulate_items",
    "stationary_points",
    "variational_em",
]
