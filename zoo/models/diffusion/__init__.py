"""Diffusion models: the ELBO of a denoising diffusion model against the exact data density.

:mod:`~zoo.models.diffusion.model` holds the registered model (``diffusion``);
:mod:`~zoo.models.diffusion.maths` the schedules, kernels, KLs and whole-chain distributions;
:mod:`~zoo.models.diffusion.network` the denoiser network; :mod:`~zoo.models.diffusion.ode` the
probability-flow ODE; :mod:`~zoo.models.diffusion.exact` the data densities known exactly;
:mod:`~zoo.models.diffusion.figures` the figures.
"""

from zoo.models.diffusion.model import OBJECTIVES, Diffusion

__all__ = ["OBJECTIVES", "Diffusion"]
