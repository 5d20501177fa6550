"""Amortized encoders and decoders, and the guide that uses an encoder: one network maps each
data point to the parameters of its own posterior approximation.

A variational autoencoder (Kingma & Welling 2014, "Auto-encoding variational Bayes", ICLR;
Rezende, Mohamed & Wierstra 2014, "Stochastic backpropagation and approximate inference in deep
generative models", ICML) has a latent z_n per data point x_n. Instead of one set of variational
parameters per point, the guide is a network, the *encoder*: q_phi(z_n | x_n) = N(m(x_n), V(x_n)),
sampled by the reparameterization z = m(x) + V(x)^{1/2} eps, eps ~ N(0, I), so that the ELBO's
gradient flows through the sample. Pieces, all plain :class:`torch.nn.Module` objects:

- :func:`mlp`, a multilayer perceptron builder;
- :class:`GaussianEncoder`, q(z | x) = N(m(x), diag V(x)) from an MLP trunk with two heads;
- :class:`LinearGaussianEncoder`, m(x) = A x + b with one covariance shared by every x, full
  (a Cholesky factor) or diagonal: the family that contains the exact posterior of a
  linear-Gaussian decoder (probabilistic PCA);
- :class:`IAFEncoder`, inverse autoregressive flow layers on top of a Gaussian encoder (Kingma,
  Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improved variational inference with
  inverse autoregressive flow", NeurIPS), conditioned on the encoder's hidden features;
- :class:`MLPDecoder`, an MLP trunk with named linear heads (Bernoulli logits, Gaussian means,
  or the several outputs of a count likelihood);
- :class:`AmortizedGuide`, the Pyro guide: it reads the mini-batch through the model it is
  bound to, so the same trained encoder scores another data set (a test split) by
  :meth:`AmortizedGuide.bind`; more amortized sites in the same data plate (scVI's library
  size) are extra encoders of the one guide.

Every encoder has ``distribution(x)``: a Pyro distribution over z with event dimension 1 and
batch shape ``x.shape[:-1]``, which Pyro's particle plate expands to vectorized particles.
Networks are registered with ``pyro.module(..., update_module_params=True)``: the param store
holds their weights (so checkpoints and :meth:`zoo.FitResult.activate` see them) and a network
always runs with the store's current values.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.nn import functional as F

#: ReLU in place: at evaluation (thousands of particles per point) it halves the peak memory
RELU: Callable[[], nn.Module] = functools.partial(nn.ReLU, inplace=True)


def mlp(
    sizes: Sequence[int],
    *,
    activation: Callable[[], nn.Module] = RELU,
    final_activation: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between
    them (and after the last one if ``final_activation``)."""
    if len(sizes) < 2:
        raise ValueError("an MLP needs an input and an output size")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation())
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """q(z | x) = N(m(x), diag V(x)) (Kingma & Welling 2014, appendix C.2).

    An MLP trunk ``x -> h`` and one linear layer ``head`` with 2q outputs: the first q are the
    mean m(h), the last q give the standard deviation ``softplus(.) + min_scale``. (One layer
    rather than two: fewer parameter tensors, less per-parameter work for the optimizer.)
    ``forward`` returns ``(loc, scale, h)``; the hidden features h are the context of flow
    layers stacked on top (:class:`IAFEncoder`).
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (256,),
        *,
        activation: Callable[[], nn.Module] = RELU,
        min_scale: float = 1e-4,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the Gaussian encoder needs at least one hidden layer")
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.hidden_dim = hidden[-1]
        self.min_scale = min_scale
        self.trunk = mlp(
            [input_dim, *hidden], activation=activation, final_activation=True, dtype=dtype
        )
        self.head = nn.Linear(hidden[-1], 2 * latent_dim, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        loc, raw = self.head(h).split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + self.min_scale, h

    def distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, scale, _ = self(x)
        return dist.Normal(loc, scale, validate_args=False).to_event(1)


class LinearGaussianEncoder(nn.Module):
    """q(z | x) = N(A x + b, S): a linear mean and one covariance S shared by every x.

    ``covariance="full"`` parameterises S = L L^T by a lower-triangular L with a positive
    (exponentiated) diagonal; ``"diagonal"`` by a positive standard deviation per dimension.
    The mean is computed as A (x - c) + b' with a fixed ``input_shift`` c (the training mean,
    say): the same family, better conditioned for gradient descent when x is far from 0.
    For probabilistic PCA the exact posterior, N(M^{-1} W^T (x - mu), sigma^2 M^{-1}) with
    M = W^T W + sigma^2 I (Tipping & Bishop 1999), is in the full family, and the best fully
    factorised Gaussian is in the diagonal one.
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        covariance: str = "full",
        *,
        input_shift: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if covariance not in ("full", "diagonal"):
            raise ValueError(f"covariance must be 'full' or 'diagonal', not {covariance!r}")
        self.covariance = covariance
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.mean = nn.Linear(input_dim, latent_dim, dtype=dtype)
        shift = torch.zeros(input_dim, dtype=dtype) if input_shift is None else input_shift
        self.register_buffer("input_shift", shift.detach().clone().to(dtype))
        nn.init.zeros_(self.mean.weight)
        nn.init.zeros_(self.mean.bias)
        self.log_diag = nn.Parameter(torch.zeros(latent_dim, dtype=dtype))  # log L_ii
        if covariance == "full":
            self.offdiag = nn.Parameter(torch.zeros(latent_dim, latent_dim, dtype=dtype))

    def scale_tril(self) -> torch.Tensor:
        """The Cholesky factor L of the shared covariance (diagonal for ``"diagonal"``)."""
        diag = torch.diag_embed(self.log_diag.exp())
        return diag if self.covariance == "diagonal" else diag + self.offdiag.tril(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(x - self.input_shift), self.scale_tril()

    def distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc = self.mean(x - self.input_shift)
        if self.covariance == "diagonal":
            return dist.Normal(loc, self.log_diag.exp(), validate_args=False).to_event(1)
        return dist.MultivariateNormal(loc, scale_tril=self.scale_tril(), validate_args=False)

    def raw_values(
        self, weight: torch.Tensor, bias: torch.Tensor, scale_tril: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The module's parameter values (by name) for m(x) = weight x + bias and Cholesky
        factor ``scale_tril``: what to write into the param store to set the encoder."""
        covariance = self.covariance
        values = {
            "mean.weight": weight,
            "mean.bias": bias + weight @ self.input_shift,
            "log_diag": scale_tril.diagonal().log(),
        }
        if covariance == "full":
            values["offdiag"] = scale_tril.tril(-1)
        return values


class IAFEncoder(nn.Module):
    """Inverse autoregressive flow on top of a Gaussian encoder (Kingma et al. 2016).

    z_0 ~ N(m(x), diag V(x)), then ``num_flows`` affine autoregressive layers
    z_t = sigma_t * z_{t-1} + (1 - sigma_t) * mu_t (the numerically stable, gated form of the
    paper's eq. 14), where (mu_t, sigma_t) come from a MADE network (Germain et al. 2015) of
    z_{t-1} and of the encoder's hidden features h(x) (the paper's context). Each layer reverses
    the variable order of the one before. q(z | x) is then no longer Gaussian, and log q is
    exact: log N(z_0) minus the sum of log sigma_t.
    """

    def __init__(
        self,
        base: GaussianEncoder,
        *,
        num_flows: int = 2,
        hidden: Sequence[int] | None = None,
        context_dim: int = 32,
    ) -> None:
        super().__init__()
        if num_flows < 1:
            raise ValueError("an IAF encoder needs at least one flow layer")
        self.base = base
        self.latent_dim = base.latent_dim
        d = base.latent_dim
        hidden = list(hidden) if hidden is not None else [max(8 * d, 32)]
        # h(x) is projected once per data point; the MADE sees [context, z] per particle
        self.context = nn.Sequential(
            nn.Linear(base.hidden_dim, context_dim, dtype=base.head.weight.dtype), nn.ELU()
        )
        order = torch.arange(d)
        flows = []
        for t in range(num_flows):
            permutation = order if t % 2 == 0 else order.flip(0)
            arn = ConditionalAutoRegressiveNN(d, context_dim, hidden, permutation=permutation)
            flows.append(ConditionalAffineAutoregressive(arn, stable=True))
        self.flows = nn.ModuleList(flows)

    def distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, scale, h = self.base(x)
        base = dist.Normal(loc, scale, validate_args=False).to_event(1)
        context = self.context(h)
        transforms = [flow.condition(context) for flow in self.flows]
        return dist.TransformedDistribution(base, transforms, validate_args=False)


class MLPDecoder(nn.Module):
    """z -> an MLP trunk -> one linear head per output, returned as a dict by name.

    ``heads={"logits": 64}`` is a Bernoulli decoder for 8x8 images; a count model names several
    heads (a mean, a dispersion, a zero-inflation logit) on the same trunk.
    """

    def __init__(
        self,
        latent_dim: int,
        heads: dict[str, int],
        hidden: Sequence[int] = (256,),
        *,
        activation: Callable[[], nn.Module] = RELU,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a decoder needs at least one head")
        self.latent_dim = latent_dim
        self.trunk = mlp(
            [latent_dim, *hidden], activation=activation, final_activation=True, dtype=dtype
        )
        width = hidden[-1] if hidden else latent_dim
        self.heads = nn.ModuleDict(
            {name: nn.Linear(width, size, dtype=dtype) for name, size in heads.items()}
        )

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(z)
        return {name: head(h) for name, head in self.heads.items()}


class DataOwner(Protocol):
    """What :class:`AmortizedGuide` needs from the model it is bound to."""

    def plate(self, subsample_size: int | None = None) -> pyro.plate: ...

    def encoder_input(self, idx: torch.Tensor | None) -> torch.Tensor: ...


class AmortizedGuide:
    """The guide q(z_n | x_n) = ``encoder.distribution(x_n)`` for every point in the data plate.

    The guide owns no data: it opens ``owner.plate(subsample_size)`` (the model's data plate,
    the same name, size and subsample as in the model) and asks ``owner.encoder_input(idx)`` for
    the encoder's input of the points in the mini-batch (``idx`` is None for the full data).
    :meth:`bind` returns the same guide (the same encoder and parameters) on another owner,
    for example the model on the test split.
    """

    def __init__(
        self,
        owner: DataOwner,
        encoder: nn.Module,
        *,
        site: str = "z",
        module_name: str = "encoder",
        extra: dict[str, nn.Module] | None = None,
    ) -> None:
        self.owner = owner
        self.encoder = encoder
        self.site = site
        self.module_name = module_name
        #: more amortized sites in the same data plate, site name -> encoder (registered as
        #: ``<site>_encoder``): a second plate of the same name would draw its own subsample
        self.extra = dict(extra or {})

    def _register(self) -> nn.Module:
        main = pyro.module(self.module_name, self.encoder, update_module_params=True)
        for name, encoder in self.extra.items():
            pyro.module(f"{name}_encoder", encoder, update_module_params=True)
        return main

    def __call__(self, subsample_size: int | None = None, **kwargs: Any) -> torch.Tensor:
        self._register()
        with self.owner.plate(subsample_size) as idx:
            full = subsample_size is None
            x = self.owner.encoder_input(None if full else idx)
            z = pyro.sample(self.site, self.encoder.distribution(x))
            for name, encoder in self.extra.items():
                pyro.sample(name, encoder.distribution(x))
            return z

    def bind(self, owner: DataOwner) -> AmortizedGuide:
        """This guide (same encoders, same parameters) reading its data from ``owner``."""
        return AmortizedGuide(
            owner, self.encoder, site=self.site, module_name=self.module_name, extra=self.extra
        )

    def sync(self) -> nn.Module:
        """Load the param store's current values into the encoders; return the main one."""
        return self._register()

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x) for a batch of inputs, outside any Pyro trace (at the store's values)."""
        self.sync()
        return self.encoder.distribution(x)
