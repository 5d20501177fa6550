"""A simulator: scVI's own generative process with a known, seeded decoder, and the exact
log-likelihood of a 1- or 2-dimensional latent by a grid integral (for tests).

Lopez et al. (2018), Nature Methods 15, 1053-1058, "Methods": z ~ N(0, I), a log-normal
library size, one inverse dispersion per gene, counts from the ZINB (or NB, Poisson)
likelihood of :class:`~zoo.models.scvi.likelihood.ScviCounts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from guides.amortized import MLPDecoder
from zoo.models.scvi.likelihood import LIKELIHOODS, ScviCounts


@dataclass
class ScviSimulation:
    """Counts drawn from the scVI generative process, with every true quantity."""

    counts: np.ndarray  # (N, G), integers stored as float32
    z: np.ndarray  # (N, q)
    log_library: np.ndarray  # (N,)
    log_inverse_dispersion: np.ndarray  # (G,)
    library_log_mean: float
    library_log_scale: float
    decoder: MLPDecoder
    likelihood: str

    @property
    def inverse_dispersion(self) -> np.ndarray:
        return np.exp(self.log_inverse_dispersion)


def make_decoder(latent_dim: int, num_genes: int, hidden: list[int], likelihood: str) -> MLPDecoder:
    """The scVI decoder: an MLP trunk, a softmax-logit head and (ZINB) a gate head."""
    heads = {"scale": num_genes}
    if likelihood == "zinb":
        heads["gate"] = num_genes
    return MLPDecoder(latent_dim, heads, hidden, dtype=torch.float32)


def simulate_scvi(
    num_cells: int = 1000,
    num_genes: int = 100,
    *,
    latent_dim: int = 2,
    hidden: int = 32,
    likelihood: str = "zinb",
    library_log_mean: float = math.log(1500.0),
    library_log_scale: float = 0.3,
    dispersion_range: tuple[float, float] = (0.5, 8.0),
    dropout: float = 0.1,
    seed: int = 0,
) -> ScviSimulation:
    """Draw ``num_cells`` cells from the scVI model with a seeded random decoder.

    z ~ N(0, I), log l ~ N(``library_log_mean``, ``library_log_scale``^2), theta_g log-uniform
    on ``dispersion_range``, the decoder a one-hidden-layer ReLU MLP with N(0, 1) first-layer
    weights (so that expression varies with z), softmax logits of spread about 1, and gate
    logits around logit(``dropout``); counts from :class:`ScviCounts`. Same seed, same data.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
    gen = torch.Generator().manual_seed(seed)
    decoder = make_decoder(latent_dim, num_genes, [hidden], likelihood)
    with torch.no_grad():
        first = decoder.trunk[0]
        first.weight.copy_(torch.randn(first.weight.shape, generator=gen))
        first.bias.copy_(0.5 * torch.randn(first.bias.shape, generator=gen))
        head = decoder.heads["scale"]
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) / math.sqrt(hidden))
        head.bias.copy_(torch.randn(head.bias.shape, generator=gen))
        if "gate" in decoder.heads:
            gate = decoder.heads["gate"]
            gate.weight.copy_(
                0.5 * torch.randn(gate.weight.shape, generator=gen) / math.sqrt(hidden)
            )
            logit = math.log(dropout / (1.0 - dropout))
            gate.bias.copy_(logit + 0.5 * torch.randn(gate.bias.shape, generator=gen))
    z = torch.randn(num_cells, latent_dim, generator=gen)
    log_library = library_log_mean + library_log_scale * torch.randn(num_cells, generator=gen)
    lo, hi = (math.log(v) for v in dispersion_range)
    log_theta = lo + (hi - lo) * torch.rand(num_genes, generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        counts = ScviCounts(decoder, z, log_library[:, None], log_theta, likelihood).sample()
    return ScviSimulation(
        counts=counts.numpy().astype(np.float32),
        z=z.numpy(),
        log_library=log_library.numpy(),
        log_inverse_dispersion=log_theta.numpy(),
        library_log_mean=library_log_mean,
        library_log_scale=library_log_scale,
        decoder=decoder,
        likelihood=likelihood,
    )


@torch.no_grad()
def grid_log_likelihood(
    decoder: nn.Module,
    log_theta: torch.Tensor | None,
    likelihood: str,
    counts: torch.Tensor,
    log_library: torch.Tensor,
    *,
    half_width: float = 6.0,
    points: int = 301,
) -> torch.Tensor:
    """log p(x_n | l_n) = log of the integral of N(z; 0, I) p(x_n | z, l_n) over a 1-D or 2-D
    latent, by the trapezoid-free Riemann sum on a uniform grid over [-w, w]^q (spectrally
    accurate for a smooth integrand that vanishes at the edges). For tests on simulated data."""
    q = decoder.latent_dim
    if q not in (1, 2):
        raise ValueError("the grid integral is for a 1- or 2-dimensional latent")
    axis = torch.linspace(-half_width, half_width, points)
    step = float(axis[1] - axis[0])
    grid = torch.cartesian_prod(*([axis] * q)).reshape(-1, q)
    log_prior = -0.5 * grid.pow(2).sum(-1) - 0.5 * q * math.log(2 * math.pi)
    # one decoder pass per grid point, shared by every cell: batch shape (grid, cells)
    lik = ScviCounts(
        decoder, grid.unsqueeze(1), log_library.reshape(1, -1, 1), log_theta, likelihood
    )
    log_joint = lik.log_prob(counts) + log_prior.unsqueeze(1)
    return torch.logsumexp(log_joint, 0) + q * math.log(step)
