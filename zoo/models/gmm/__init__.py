"""EM for Gaussian mixtures as ELBO maximisation (Dempster, Laird & Rubin 1977; Neal & Hinton
1998; Bishop, PRML §9.2-9.4; Biernacki, Celeux & Govaert 2003).

- :mod:`~zoo.models.gmm.model`: the registered model ``gmm`` (:class:`GaussianMixture`), its
  data, its exact-posterior guide and its report;
- :mod:`~zoo.models.gmm.em`: the E- and M-steps, EM to convergence, and the one-line error of a
  collapsed component;
- :mod:`~zoo.models.gmm.restarts`: the k-means++ starts and the best of them;
- :mod:`~zoo.models.gmm.figures`: the components figure, drawn from arrays.
"""

from zoo.models.gmm.em import (
    POLISH_MAX_ITER,
    POLISH_ULPS,
    SCREEN_MAX_ITER,
    SCREEN_TOL,
    SINGULAR_VARIANCE,
    CollapsedComponentError,
    EMFit,
    component_log_joint,
    em_update,
    fit_em,
    log_likelihood,
)
from zoo.models.gmm.model import (
    CHUNK_BYTES,
    MAX_N_INIT,
    RECORD_PARTICLES,
    GaussianMixture,
    simulate_mixture,
)
from zoo.models.gmm.restarts import (
    CollapsedStartWarning,
    Restarts,
    Start,
    kmeans_plusplus_start,
    start_seeds,
)

__all__ = [
    "CHUNK_BYTES",
    "MAX_N_INIT",
    "POLISH_MAX_ITER",
    "POLISH_ULPS",
    "RECORD_PARTICLES",
    "SCREEN_MAX_ITER",
    "SCREEN_TOL",
    "SINGULAR_VARIANCE",
    "CollapsedComponentError",
    "CollapsedStartWarning",
    "EMFit",
    "GaussianMixture",
    "Restarts",
    "Start",
    "component_log_joint",
    "em_update",
    "fit_em",
    "kmeans_plusplus_start",
    "log_likelihood",
    "simulate_mixture",
    "start_seeds",
]
