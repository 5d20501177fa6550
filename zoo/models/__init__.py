"""One module per application of the ELBO; importing this package registers them all."""

from zoo.models import gmm  # noqa: F401
