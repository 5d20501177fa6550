"""The zoo's models: one module per registered model, a package per application that needs more
than one file. :mod:`zoo.registry` imports every module here on first use; nothing to list."""
