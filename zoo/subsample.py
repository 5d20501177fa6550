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
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample


def sample_without_replacement(
    n: int, k: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``k`` distinct indices of ``range(n)``, a uniformly random subset in random order."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct indices from {n}")
    if 3 * k > n:
        return torch.randperm(n, device=device)[:k]
    chosen = torch.empty(0, dtype=torch.long, device=device)
    while chosen.numel() < k:
        missing = k - chosen.numel()
        draws = torch.randint(n, (missing + missing // 4 + 8,), device=device)
        chosen = torch.unique(torch.cat([chosen, draws]))
    return chosen[torch.randperm(chosen.numel(), device=device)[:k]]


class FastSubsample(Messenger):
    """Answer every subsampled plate's index site with :func:`sample_without_replacement`."""

    def _pyro_sample(self, msg) -> None:
        fn = msg["fn"]
        if not isinstance(fn, _Subsample) or msg["value"] is not None:
            return
        if fn.subsample_size is None or fn.subsample_size >= fn.size:
            return
        msg["value"] = sample_without_replacement(fn.size, fn.subsample_size, fn.device)
