"""KL annealing: down-weight the latent sites during the first steps of training.

With weight beta on log p(z) in the model and log q(z) in the guide, the training objective is
``E_q log p(x | z) - beta KL(q || p(z))`` (Bowman et al. 2016, "Generating sentences from a
continuous space"; Sønderby et al. 2016, "Ladder variational autoencoders"). For beta < 1 it is
not a bound on log p(x); the runner always reports the ELBO at beta = 1.
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


class LatentScale(Messenger):
    """Multiply the log-density of every latent (unobserved) sample site by ``self.weight``."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = msg["scale"] * self.weight


def warmup_weight(step: int, warmup_steps: int) -> float:
    """Linear warm-up: weight step / warmup_steps for the first steps, then 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
