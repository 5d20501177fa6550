"""Mini-batches drawn in O(batch), not O(data).

A subsampled :class:`pyro.plate` draws its indices as ``torch.randperm(N)[:B]``: a permutation
of all N points for every mini-batch of B (4 ms at 90,000 cells, more than the step of a small
network). :class:`FastSubsample` answers the plate's subsample site instead with a uniformly
random B-subset drawn in O(B log B): indices drawn with replacement until B distinct ones are
found, then a random B of them in random order. Given how many distinct indices the draws hit,
which ones they are is a uniformly random subset (every index plays the same part), so the
mini-batch has exactly the distribution of ``randperm(N)[:B]``. Where B is more than a third
of N the permutation is as cheap and is used. The model replays the guide's indices as before;
the draws come from torch's generator, so a checkpoint's random state resumes them.

Data-parallel training (:mod:`zoo.distributed`) draws each step's global mini-batch from a
generator of its own, the same on every rank, and hands each rank its shard through
:class:`BatchShard`: the plate then subsamples exactly the shard's points on that rank.
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import site_is_subsample


def sample_without_replacement(
    n: int,
    k: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``k`` distinct indices of ``range(n)``, a uniformly random subset in random order.

    Drawn from torch's default generator on ``device``, or from ``generator`` (on its own
    device; the indices are then moved to ``device``)."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct indices from {n}")
    target, device = device, (device if generator is None else generator.device)
    if 3 * k > n:
        chosen = torch.randperm(n, generator=generator, device=device)[:k]
    else:
        chosen = torch.empty(0, dtype=torch.long, device=device)
        while chosen.numel() < k:
            missing = k - chosen.numel()
            size = (missing + missing // 4 + 8,)
            draws = torch.randint(n, size, generator=generator, device=device)
            chosen = torch.unique(torch.cat([chosen, draws]))
        chosen = chosen[torch.randperm(chosen.numel(), generator=generator, device=device)[:k]]
    return chosen if generator is None or target is None else chosen.to(target)


class FastSubsample(Messenger):
    """Answer every subsampled plate's index site with :func:`sample_without_replacement`."""

    def _pyro_sample(self, msg) -> None:
        fn = msg["fn"]
        if not isinstance(fn, _Subsample) or msg["value"] is not None:
            return
        if fn.subsample_size is None or fn.subsample_size >= fn.size:
            return
        msg["value"] = sample_without_replacement(fn.size, fn.subsample_size, fn.device)


class BatchShard(Messenger):
    """Answer the subsample site of the plate called ``plate`` with :attr:`indices` (this
    rank's shard of the step's global mini-batch, set before each step). The plate then scales
    the shard's log densities by ``size / len(indices)``; the model replays the guide's
    indices as it does with any subsample. With :attr:`indices` None the plate draws its own."""

    def __init__(self, plate: str) -> None:
        super().__init__()
        self.plate = plate
        self.indices: torch.Tensor | None = None

    def _pyro_sample(self, msg) -> None:
        if self.indices is None or msg["name"] != self.plate or not site_is_subsample(msg):
            return
        msg["value"] = self.indices
