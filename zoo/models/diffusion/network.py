"""The denoiser network of the diffusion model.

DDPM's epsilon-prediction MLP (Ho, Jain & Abbeel 2020, NeurIPS, §3.2 and appendix B),
conditioned on the log-SNR gamma through Fourier features as in VDM (Kingma, Salimans, Poole &
Ho 2021, NeurIPS, appendix B), with EDM's preconditioning as an option (Karras, Aittala, Aila &
Laine 2022, NeurIPS, §5 and table 1). Notation as in :mod:`zoo.models.diffusion.maths`.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from zoo.models.diffusion.maths import alpha_sigma


class MLPDenoiser(nn.Module):
    """eps_hat(z, gamma) from an MLP with a Fourier embedding of gamma (DDPM's epsilon
    parameterisation, conditioned on the log-SNR as in VDM rather than on the step index).

    ``parameterization``:

    - ``eps``: eps_hat = F(z, gamma), DDPM's network as it is;
    - ``edm``: EDM's preconditioning (Karras et al. 2022) around the data's mean m and
      variance v: with c^2 = sigma^2 + alpha^2 v and u = (z - alpha m) / c,
      ``eps_hat = (sigma (z - alpha m) - alpha sqrt(v) c F(u, gamma)) / c^2``. With F = 0 it
      is the exact denoiser of N(m, v I) data and F's target has unit scale at every noise
      level; but trained on the ELBO it stays on a plateau near F = 0 far longer than ``eps``
      (measured on the 8 Gaussians), so ``eps`` is the default.

    ``init_scale`` multiplies the last layer's initial weights.

    The network computes in float32 (speed); inputs and outputs are float64.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        frequencies: int = 8,
        parameterization: str = "edm",
        data_mean: torch.Tensor | None = None,
        data_var: float = 1.0,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if parameterization not in ("eps", "edm"):
            raise ValueError(f"unknown parameterization {parameterization!r}; use eps or edm")
        self.parameterization = parameterization
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1.0))
        mean = torch.zeros(dim, dtype=torch.float64) if data_mean is None else data_mean
        self.register_buffer("data_mean", mean.to(torch.float64))
        self.data_var = float(data_var)
        sizes = [dim + 1 + 2 * frequencies] + [hidden] * depth + [dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        if init_scale != 1.0:
            with torch.no_grad():
                layers[-1].weight.mul_(init_scale)
                layers[-1].bias.mul_(init_scale)
        self.net = nn.Sequential(*layers)

    def features(self, u: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        g = (gamma / 10.0).to(torch.float32).unsqueeze(-1)
        angles = g * self.freqs
        g = g.expand((*u.shape[:-1], 1))
        angles = angles.expand(u.shape[:-1] + angles.shape[-1:])
        return torch.cat([u.to(torch.float32), g, torch.sin(angles), torch.cos(angles)], -1)

    def forward(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        gamma = torch.as_tensor(gamma, dtype=torch.float64).expand(z.shape[:-1])
        if self.parameterization == "eps":
            return self.net(self.features(z, gamma)).to(z.dtype)
        alpha, sigma = (s.unsqueeze(-1) for s in alpha_sigma(gamma))
        v = self.data_var
        centred = z - alpha * self.data_mean
        c2 = sigma**2 + alpha**2 * v
        c = c2.sqrt()
        out = self.net(self.features(centred / c, gamma)).to(z.dtype)
        return (sigma * centred - alpha * math.sqrt(v) * c * out) / c2
