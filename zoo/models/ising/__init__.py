"""The 2-D Ising model: variational free energy against the exact partition function.

:mod:`~zoo.models.ising.model` holds the registered model (``ising``) and the mean-field
optimum, :mod:`~zoo.models.ising.exact` the exact log Z (brute force, transfer matrix,
Kaufman, Onsager) and thermodynamics, :mod:`~zoo.models.ising.figures` the figures.
"""

from zoo.models.ising.exact import BETA_C
from zoo.models.ising.model import Ising, mean_field_elbo, mean_field_optimum

__all__ = ["BETA_C", "Ising", "mean_field_elbo", "mean_field_optimum"]
