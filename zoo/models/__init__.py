"""One module per application of the ELBO; importing this package registers them all."""

from zoo.models import bayes_linreg, empirical_bayes, gmm, normal_gamma  # noqa: F401
