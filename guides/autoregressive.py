"""Guides for binary lattices: an autoregressive network (VAN) and factorised mean field.

Any model whose latent is one site of binary spins on a lattice (values 0/1, read as spins
s = 2z - 1 = ±1, event shape ``lattice_shape``) can use these two families.

:class:`AutoregressiveLatticeGuide` follows the variational autoregressive networks of Wu,
Wang & Zhang (2019), "Solving statistical mechanics using variational autoregressive networks",
PRL 122, 080602: q(s) = prod_i q(s_i | s_<i) in raster order, each conditional a logistic
function of the spins before it, computed by a masked dense network (:class:`MaskedDenseNet`,
MADE: Germain, Gregor, Murray & Larochelle 2015, the "dense" VAN of WWZ 2019):

    h^(1) = tanh(x (W_1 * M_1) + c_1), ..., logit q(s_i = +1 | s_<i) = (h^(D) (V * M_out))_i
                                                                      + b_i + sum_{j<i} C_ij s_j,

with masks from the units' degrees, so log q of a full configuration is one pass of masked
matrix products, and sampling is N sequential steps vectorised over particles that compute
each hidden unit once, when its inputs have been drawn (one forward pass in all). Z2
symmetrisation (WWZ 2019, eq. 6): q_sym(s) = ½ (q(s) + q(-s)), sampled by drawing s ~ q and
flipping every spin with probability ½; it is exact for a Hamiltonian even in s (no field).

Discrete spins have no reparameterisation: both guides are trained with the score-function
(REINFORCE) gradient through Pyro's :class:`~pyro.infer.TraceGraph_ELBO` (estimator
``graph``), with VAN's baseline, the batch mean of the log ratio log p~(s) - log q(s) over the
vectorized particles (WWZ 2019, eq. 5). The baseline needs the model's unnormalised log density
of the spins, ``log_target``; the guide computes it after sampling and hands it to Pyro as the
site's ``baseline_value`` (Pyro reads it when it builds the surrogate loss, after the model has
run). Without ``log_target`` there is no baseline.

:class:`FactorisedLatticeGuide` is naive mean field: independent Bernoulli spins with one
logit each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn


class MaskedDenseNet(nn.Module):
    """The autoregressive conditionals of N spins: a masked dense network (MADE).

    Hidden units carry degrees d in {0..N-2}, sorted, spread evenly over ``hidden`` units per
    layer; a unit of degree d sees inputs x_j with j <= d (first layer) or units of degree
    <= d (later layers), and the logit of x_i sees units of degree < i, plus a masked direct
    linear term sum_{j<i} C_ij x_j (Germain et al. 2015). ``logits(x)`` maps spins
    x in {-1, +1}^N (shape (..., N)) to the N logits of q(x_i = +1 | x_<i) in one pass of
    masked matrix products. ``sample(num)`` draws in N steps, computing at step i only the
    units whose degree is i - 1 (they have just become computable): one forward pass in all.
    """

    def __init__(
        self, num_sites: int, hidden: int = 256, depth: int = 1, *, init_scale: float = 0.01
    ) -> None:
        super().__init__()
        n = num_sites
        self.num_sites, self.hidden, self.depth = n, hidden, depth
        gen = torch.Generator().manual_seed(0)
        degrees = (torch.arange(hidden) * max(n - 1, 1)) // hidden  # sorted, 0..n-2
        self.register_buffer("degrees", degrees)
        # ends[d] = number of units with degree <= d (units are sorted by degree)
        ends = torch.searchsorted(degrees, torch.arange(n), right=True)
        self.register_buffer("ends", ends)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        masks = []
        fan_in = n
        in_degrees = torch.arange(n)
        for _ in range(depth):
            w = torch.randn(fan_in, hidden, generator=gen) / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(hidden)))
            masks.append((in_degrees[:, None] <= degrees[None, :]).float())
            fan_in, in_degrees = hidden, degrees
        for k, mask in enumerate(masks):
            self.register_buffer(f"mask{k}", mask)
        out_in = hidden if depth else n
        self.V = nn.Parameter(init_scale * torch.randn(out_in, n, generator=gen))
        self.register_buffer("out_mask", (in_degrees[:, None] < torch.arange(n)[None, :]).float())
        self.b = nn.Parameter(torch.zeros(n))
        self.C = nn.Parameter(torch.zeros(n, n))
        self.register_buffer("direct_mask", torch.ones(n, n).tril(-1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for k in range(self.depth):
            mask = getattr(self, f"mask{k}")
            h = torch.tanh(h @ (self.weights[k] * mask) + self.biases[k])
        out = h @ (self.V * self.out_mask) if self.depth else 0.0
        return out + self.b + x @ (self.C * self.direct_mask).T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) of spins ±1, shape (..., N) -> (...)."""
        return -nn.functional.softplus(-x * self.logits(x)).sum(-1)

    @torch.no_grad()
    def sample(self, num: int) -> torch.Tensor:
        """``num`` configurations of spins ±1, shape (num, N), in N steps."""
        n, dtype, device = self.num_sites, self.b.dtype, self.b.device
        x = torch.zeros(num, n, dtype=dtype, device=device)
        hs = [torch.zeros(num, self.hidden, dtype=dtype, device=device) for _ in range(self.depth)]
        cm = self.C * self.direct_mask
        ends = self.ends.tolist()
        u = torch.rand(num, n, dtype=dtype, device=device)
        done = 0  # hidden units computed so far (the same in every layer)
        for i in range(n):
            if self.depth and i > 0 and ends[i - 1] > done:
                s, e = done, ends[i - 1]
                prev = x[:, :i]
                for k in range(self.depth):
                    pre = prev @ self.weights[k][: prev.shape[1], s:e] + self.biases[k][s:e]
                    hs[k][:, s:e] = torch.tanh(pre)
                    prev = hs[k][:, :e]
                done = e
            logit = self.b[i] + x[:, :i] @ cm[i, :i]
            if self.depth and done:
                logit = logit + hs[-1][:, :done] @ self.V[:done, i]
            x[:, i] = torch.where(u[:, i] < torch.sigmoid(logit), 1.0, -1.0).to(dtype)
        return x


class AutoregressiveLattice(TorchDistribution):
    """q(z) over binary lattices z in {0, 1}^shape from an autoregressive network.

    ``sample`` runs the network's autoregressive loop (vectorised over the batch), ``log_prob``
    scores full configurations in one pass; ``z2=True`` gives q_sym(s) = ½ (q(s) + q(-s)).
    The log-probability of the last sample can be cached (see :meth:`cache_log_prob`) so the
    guide, Pyro's trace and the score function share one network pass.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(
        self,
        net: MaskedDenseNet,
        lattice_shape: tuple[int, ...],
        *,
        z2: bool = False,
        batch_shape: torch.Size | tuple[int, ...] = (),
        _cache: dict[str, Any] | None = None,
    ) -> None:
        self.net, self.lattice_shape, self.z2 = net, tuple(lattice_shape), z2
        self._cache = {} if _cache is None else _cache
        super().__init__(torch.Size(batch_shape), torch.Size(lattice_shape), validate_args=False)

    @constraints.dependent_property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.boolean, len(self.lattice_shape))

    def expand(self, batch_shape, _instance=None) -> AutoregressiveLattice:
        return AutoregressiveLattice(
            self.net, self.lattice_shape, z2=self.z2, batch_shape=batch_shape, _cache=self._cache
        )

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        num = max(1, math.prod(shape))
        x = self.net.sample(num)
        if self.z2:
            flip = torch.rand(num, 1, dtype=x.dtype, device=x.device) < 0.5
            x = torch.where(flip, -x, x)
        return ((x + 1) / 2).reshape(*shape, *self.lattice_shape)

    def _log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch = value.shape[: value.dim() - len(self.lattice_shape)]
        x = (2 * value - 1).reshape(*batch, -1).to(self.net.b.dtype)
        lp = self.net.log_prob(x)
        if self.z2:
            lp = torch.logaddexp(lp, self.net.log_prob(-x)) - math.log(2.0)
        return lp

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        cached = self._cache.get("value")
        if cached is value and self._cache.get("grad") == torch.is_grad_enabled():
            return self._cache["log_prob"]
        return self._log_prob(value)

    def cache_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log q(value), remembered for later calls with this same tensor."""
        lp = self._log_prob(value)
        self._cache.update(value=value, log_prob=lp, grad=torch.is_grad_enabled())
        return lp


def _spins(z: torch.Tensor) -> torch.Tensor:
    return 2 * z - 1


class _BaselineGuide:
    """Shared machinery: sample the site, then set VAN's batch-mean baseline for Pyro."""

    site: str
    log_target: Callable[[torch.Tensor], torch.Tensor] | None

    def _sample_with_baseline(self, fn: TorchDistribution, log_q: Callable) -> torch.Tensor:
        training = torch.is_grad_enabled() and self.log_target is not None
        baseline: dict[str, Any] = {}
        infer = {"baseline": baseline} if training else {}
        z = pyro.sample(self.site, fn, infer=infer)
        if training:
            # Pyro copies ``infer`` shallowly: this dict is the one on the trace
            with torch.no_grad():
                ratio = self.log_target(z) - log_q(z).detach()
            baseline["baseline_value"] = ratio.mean().expand(ratio.shape)
        return z


class AutoregressiveLatticeGuide(_BaselineGuide):
    """A VAN guide for the binary lattice site ``site`` of shape ``lattice_shape``.

    ``log_target(z)`` is the model's unnormalised log density of the lattice (any constant
    offset is fine), used for the batch-mean baseline during training; the network's
    parameters live in Pyro's param store under ``name``.
    """

    def __init__(
        self,
        site: str,
        lattice_shape: tuple[int, ...],
        *,
        hidden: int = 256,
        depth: int = 1,
        z2: bool = True,
        log_target: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str = "van",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.site, self.lattice_shape, self.z2 = site, tuple(lattice_shape), z2
        self.log_target, self.name, self.dtype = log_target, name, dtype
        self.net = MaskedDenseNet(math.prod(lattice_shape), hidden, depth).to(
            dtype=dtype, device=device
        )

    def distribution(self) -> AutoregressiveLattice:
        return AutoregressiveLattice(self.net, self.lattice_shape, z2=self.z2)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # update_module_params: after a resumed checkpoint the store holds the trained tensors
        pyro.module(self.name, self.net, update_module_params=True)
        fn = self.distribution()
        return self._sample_with_baseline(fn, fn.cache_log_prob)


class FactorisedLatticeGuide(_BaselineGuide):
    """Naive mean field: independent Bernoulli spins, q(z_i = 1) = sigmoid(logit_i).

    The logits are the param ``<name>_logits`` (initialised at ``init_logits``, default 0).
    """

    def __init__(
        self,
        site: str,
        lattice_shape: tuple[int, ...],
        *,
        log_target: Callable[[torch.Tensor], torch.Tensor] | None = None,
        init_logits: torch.Tensor | None = None,
        name: str = "mean_field",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.site, self.lattice_shape, self.log_target = site, tuple(lattice_shape), log_target
        self.param_name = f"{name}_logits"
        init = torch.zeros(lattice_shape, dtype=dtype) if init_logits is None else init_logits
        self.init_logits = init.detach().clone()

    def distribution(self) -> dist.TorchDistribution:
        logits = pyro.param(self.param_name, lambda: self.init_logits.clone())
        return dist.Bernoulli(logits=logits).to_event(len(self.lattice_shape))

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        fn = self.distribution()
        return self._sample_with_baseline(fn, fn.log_prob)

    def magnetisation(self) -> torch.Tensor:
        """The means m_i = E_q s_i = tanh(logit_i / 2)."""
        return torch.tanh(pyro.param(self.param_name).detach() / 2)
