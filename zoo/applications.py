"""The applications of the ELBO the zoo covers, in the order a course would take them.

Every model names one of them as its ``application``; the docs gallery and the models table
follow this order (then the model's name), so a new model takes its place by declaring it.
"""

from __future__ import annotations

#: the applications, in teaching order
APPLICATIONS: tuple[str, ...] = (
    "EM for Gaussian mixtures",
    "Mean-field variational Bayes",
    "Empirical Bayes",
    "Variational autoencoders",
    "Single-cell ZINB VAE (scVI)",
    "Ising free energy",
    "Diffusion ELBO",
    "Free-energy brain (predictive coding)",
)


def application_rank(application: str) -> int:
    """The position of ``application`` in :data:`APPLICATIONS` (unknown ones last)."""
    try:
        return APPLICATIONS.index(application)
    except ValueError:
        return len(APPLICATIONS)
