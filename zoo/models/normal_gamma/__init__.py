"""The univariate Gaussian with unknown mean and precision: CAVI against SVI and the exact
answer (Bishop, PRML §10.1.3; Murphy 2007, §5-6; Blei, Kucukelbir & McAuliffe 2017).

- :mod:`~zoo.models.normal_gamma.model`: the registered model ``normal-gamma``
  (:class:`NormalGamma`), its data, guides and report;
- :mod:`~zoo.models.normal_gamma.conjugate`: the closed forms (exact posterior and evidence,
  the CAVI updates and the mean-field ELBO, the full-rank guide's ELBO by quadrature);
- :mod:`~zoo.models.normal_gamma.figures`: the posterior contours, drawn from arrays.
"""

from zoo.models.normal_gamma.conjugate import (
    MeanField,
    NormalGammaParams,
    cavi_fixed_point,
    cavi_update,
    exact_posterior,
    log_evidence,
    log_tau_gaussian_elbo,
    log_tau_gaussian_log_density,
    log_tau_gaussian_moments,
    mean_field_elbo,
    mean_field_log_density,
    mean_field_moments,
    normal_gamma_log_density,
    normal_gamma_moments,
)
from zoo.models.normal_gamma.model import NormalGamma, simulate

__all__ = [
    "MeanField",
    "NormalGamma",
    "NormalGammaParams",
    "cavi_fixed_point",
    "cavi_update",
    "exact_posterior",
    "log_evidence",
    "log_tau_gaussian_elbo",
    "log_tau_gaussian_log_density",
    "log_tau_gaussian_moments",
    "mean_field_elbo",
    "mean_field_log_density",
    "mean_field_moments",
    "normal_gamma_log_density",
    "normal_gamma_moments",
    "simulate",
]
