"""The data sets of the diffusion model and their densities, known exactly.

Every data set is a mixture of isotropic Gaussians: FFJORD's eight Gaussians on a circle
(Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, ICLR, §5.1) in closed form, and
scikit-learn's two moons and swiss roll by Gauss-Legendre quadrature along their curve. So the
data density, its entropy and the optimal denoiser E[eps | z] of the noised data are known
(:class:`IsotropicMixture`; notation as in :mod:`zoo.models.diffusion.maths`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from zoo.models.diffusion.maths import alpha_sigma

_CHUNK = 2_000_000  # rows x components per chunk


@dataclass
class IsotropicMixture:
    """p(x) = sum_k w_k N(x | mu_k, s^2 I): the data density, exact (``exact``) or a
    quadrature of a curve's density with ``locs`` the nodes and ``log_weights`` the weights.

    Everything about the noised data is then in closed form too: z = alpha x + sigma eps is
    the mixture sum_k w_k N(alpha mu_k, (alpha^2 s^2 + sigma^2) I), and the optimal denoiser
    E[eps | z] (:meth:`eps_star`) is a responsibility-weighted sum of the components' linear
    denoisers.
    """

    locs: torch.Tensor  # (K, D) float64
    log_weights: torch.Tensor  # (K,) float64, logsumexp = 0
    scale: float
    description: str
    exact: bool = True

    @property
    def dim(self) -> int:
        return self.locs.shape[-1]

    def _chunks(self, n: int) -> list[slice]:
        size = max(1, _CHUNK // self.locs.shape[0])
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    def _component_terms(
        self, z: torch.Tensor, gamma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, sigma = alpha_sigma(gamma)
        c2 = alpha**2 * self.scale**2 + sigma**2
        diff = z.unsqueeze(-2) - alpha.unsqueeze(-1).unsqueeze(-1) * self.locs
        log_n = -0.5 * (diff.pow(2).sum(-1) / c2.unsqueeze(-1)) - 0.5 * self.dim * torch.log(
            2 * math.pi * c2
        ).unsqueeze(-1)
        return self.log_weights + log_n, diff, c2, sigma

    def marginal_log_prob(self, z: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
        """log q(z) for z = alpha x + sigma eps at log-SNR ``gamma`` (broadcast over points)."""
        flat = z.reshape(-1, self.dim).to(torch.float64)
        g = torch.as_tensor(gamma, dtype=torch.float64).expand(z.shape[:-1]).reshape(-1)
        out = [
            torch.logsumexp(self._component_terms(flat[c], g[c])[0], -1)
            for c in self._chunks(flat.shape[0])
        ]
        return torch.cat(out).reshape(z.shape[:-1])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of the data density itself (no noise)."""
        flat = x.reshape(-1, self.dim).to(torch.float64)
        out = []
        for c in self._chunks(flat.shape[0]):
            diff = flat[c].unsqueeze(-2) - self.locs
            log_n = -0.5 * diff.pow(2).sum(-1) / self.scale**2 - self.dim * math.log(
                math.sqrt(2 * math.pi) * self.scale
            )
            out.append(torch.logsumexp(self.log_weights + log_n, -1))
        return torch.cat(out).reshape(x.shape[:-1])

    def eps_star(self, z: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
        """The optimal denoiser E[eps | z] = sum_k r_k(z) sigma (z - alpha mu_k) / c^2."""
        flat = z.reshape(-1, self.dim).to(torch.float64)
        g = torch.as_tensor(gamma, dtype=torch.float64).expand(z.shape[:-1]).reshape(-1)
        out = []
        for c in self._chunks(flat.shape[0]):
            logits, diff, c2, sigma = self._component_terms(flat[c], g[c])
            resp = torch.softmax(logits, -1).unsqueeze(-1)
            out.append((resp * diff).sum(-2) * (sigma / c2).unsqueeze(-1))
        return torch.cat(out).reshape(z.shape)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        weights = torch.softmax(self.log_weights, 0).numpy()
        k = rng.choice(len(weights), size=n, p=weights / weights.sum())
        return self.locs.numpy()[k] + self.scale * rng.standard_normal((n, self.dim))


def _gauss_legendre(panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(0.0, 1.0, panels + 1)
    left, width = edges[:-1, None], np.diff(edges)[:, None]
    return (left + width * (nodes + 1) / 2).ravel(), (width * weights / 2).ravel()


def eight_gaussians(
    radius: float = 2 * math.sqrt(2), std: float = 0.5 / math.sqrt(2)
) -> IsotropicMixture:
    """Eight equal-weight isotropic Gaussians on a circle: FFJORD's ``8gaussians``
    (Grathwohl et al. 2019: centres at radius 4, std 0.5, all divided by 1.414). Exact."""
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    locs = radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return IsotropicMixture(
        locs,
        torch.full((8,), -math.log(8), dtype=torch.float64),
        float(std),
        f"8 Gaussians on a circle of radius {radius:.4g}, std {std:.4g} (closed form)",
    )


def expected_log_density(density: IsotropicMixture, nodes: int = 40) -> float:
    """E_{x ~ p} log p(x) = -H[p] of an isotropic Gaussian mixture, by a product Gauss-Hermite
    rule per component (``nodes`` per axis): E = sum_k w_k E_{N(mu_k, s^2 I)} log p(x), and
    log p is smooth, so the rule converges fast (40 nodes: within 5e-10 of 80 on the 8
    Gaussians)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    grid = np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    weights = torch.tensor(np.outer(w, w).ravel())
    total = 0.0
    for log_wk, loc in zip(density.log_weights, density.locs, strict=True):
        points = loc + density.scale * torch.tensor(grid)
        total += float(log_wk.exp() * (weights * density.log_prob(points)).sum())
    return total


def moons_density(noise: float, panels: int = 16, order: int = 8) -> IsotropicMixture:
    """The density of scikit-learn's ``make_moons`` in the limit of many points: each half-moon
    is a uniform curve parameter u in [0, 1] (``make_moons`` spaces it evenly), the outer arc
    (cos pi u, sin pi u) and the inner (1 - cos pi u, 0.5 - sin pi u), plus isotropic noise;
    ``p(x) = 1/2 sum_arcs int_0^1 N(x | c(u), noise^2 I) du`` by composite Gauss-Legendre."""
    u, w = _gauss_legendre(panels, order)
    outer = np.stack([np.cos(np.pi * u), np.sin(np.pi * u)], -1)
    inner = np.stack([1 - np.cos(np.pi * u), 0.5 - np.sin(np.pi * u)], -1)
    locs = np.concatenate([outer, inner])
    weights = np.concatenate([w, w]) / 2
    return IsotropicMixture(
        torch.tensor(locs),
        torch.tensor(np.log(weights)),
        float(noise),
        f"two moons, noise {noise:.4g}: quadrature, {len(weights)} Gauss-Legendre nodes",
        exact=False,
    )


#: the swiss roll is divided by this, so that it spans about [-2.7, 2.9]
SWISS_ROLL_SCALE = 5.0


def swiss_roll_density(noise: float, panels: int = 128, order: int = 8) -> IsotropicMixture:
    """The density of scikit-learn's ``make_swiss_roll`` (its first and third columns, divided
    by :data:`SWISS_ROLL_SCALE`): t ~ U(1.5 pi, 4.5 pi), c(t) = (t cos t, t sin t) / 5, plus
    isotropic noise of std ``noise`` (in the scaled units); quadrature in t."""
    u, w = _gauss_legendre(panels, order)
    t = 1.5 * np.pi * (1 + 2 * u)
    locs = np.stack([t * np.cos(t), t * np.sin(t)], -1) / SWISS_ROLL_SCALE
    return IsotropicMixture(
        torch.tensor(locs),
        torch.tensor(np.log(w)),
        float(noise),
        f"swiss roll, noise {noise:.4g}: quadrature, {len(w)} Gauss-Legendre nodes",
        exact=False,
    )


DATASETS = ("8gaussians", "moons", "swissroll")
#: the noise (component std) of each data set unless told otherwise
DEFAULT_NOISE = {"8gaussians": 0.5 / math.sqrt(2), "moons": 0.1, "swissroll": 0.1}


#: the circle of the 8 Gaussians unless told otherwise
DEFAULT_RADIUS = 2 * math.sqrt(2)


def make_dataset(
    name: str, num_points: int, seed: int, noise: float | None = None, radius: float | None = None
) -> tuple[np.ndarray, IsotropicMixture]:
    """(points (num_points, 2), their density). Moons and the swiss roll come from
    scikit-learn's generators (``random_state=seed``); the mixture from its own sampler, on a
    circle of ``radius`` (8 Gaussians only)."""
    noise = DEFAULT_NOISE[name] if noise is None else float(noise)
    if radius is not None and name != "8gaussians":
        raise ValueError(f"--radius applies to 8gaussians, not to {name}")
    if name == "8gaussians":
        density = eight_gaussians(DEFAULT_RADIUS if radius is None else float(radius), noise)
        return density.sample(num_points, np.random.default_rng(seed)), density
    if name == "moons":
        from sklearn.datasets import make_moons

        points, _ = make_moons(num_points, noise=noise, random_state=seed)
        return points, moons_density(noise)
    if name == "swissroll":
        from sklearn.datasets import make_swiss_roll

        points, _ = make_swiss_roll(num_points, noise=noise * SWISS_ROLL_SCALE, random_state=seed)
        return points[:, [0, 2]] / SWISS_ROLL_SCALE, swiss_roll_density(noise)
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
