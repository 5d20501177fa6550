"""One module per application of the ELBO; importing this package registers them all."""

from zoo.models import (  # noqa: F401
    bayes_linreg,
    diffusion,
    empirical_bayes,
    free_energy,
    gmm,
    ising,
    normal_gamma,
    scvi,
    vae,
)
