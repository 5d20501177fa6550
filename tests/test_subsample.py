"""Mini-batches in O(batch) (:mod:`zoo.subsample`): distinct indices, every subset equally
likely, and the runner's subsampled plates answered by them (the model replays the guide's)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from zoo.subsample import FastSubsample, sample_without_replacement


@pytest.mark.parametrize(("n", "k"), [(10, 0), (10, 3), (10, 10), (100_000, 128), (7, 5)])
def test_indices_are_distinct_and_in_range(n, k):
    torch.manual_seed(0)
    idx = sample_without_replacement(n, k)
    assert idx.dtype == torch.long and idx.shape == (k,)
    assert len(set(idx.tolist())) == k
    assert all(0 <= i < n for i in idx.tolist())


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="cannot draw 5 distinct indices from 3"):
        sample_without_replacement(3, 5)


def test_every_subset_is_equally_likely():
    """All C(12, 3) = 220 subsets of the sparse path (3 * 3 < 12), 44,000 draws: a chi-square
    test of uniformity (219 degrees of freedom; its 1e-4 upper quantile is 305.5), and the first
    index uniform over the 12 positions too (random order)."""
    torch.manual_seed(1)
    n, k, draws = 12, 3, 44_000
    subsets, firsts = Counter(), Counter()
    for _ in range(draws):
        idx = sample_without_replacement(n, k).tolist()
        subsets[tuple(sorted(idx))] += 1
        firsts[idx[0]] += 1
    assert len(subsets) == math.comb(n, k)
    expected = draws / math.comb(n, k)
    chi2 = sum((subsets[s] - expected) ** 2 / expected for s in itertools.combinations(range(n), k))
    assert chi2 < 305.5
    expected_first = draws / n
    chi2_first = sum((firsts[i] - expected_first) ** 2 / expected_first for i in range(n))
    assert chi2_first < 37.4  # 11 degrees of freedom: the 1e-4 upper quantile is 37.37


def test_the_model_replays_the_guides_fast_indices():
    n, b = 50_000, 16

    def model():
        with pyro.plate("data", n, subsample_size=b) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=idx.double())

    def guide():
        with pyro.plate("data", n, subsample_size=b):
            pass

    torch.manual_seed(2)
    guide_trace = poutine.trace(FastSubsample()(guide)).get_trace()
    model_trace = poutine.trace(poutine.replay(FastSubsample()(model), guide_trace)).get_trace()
    indices = guide_trace.nodes["data"]["value"]
    assert torch.equal(model_trace.nodes["data"]["value"], indices)
    assert torch.equal(model_trace.nodes["x"]["value"], indices.double())
    assert len(set(indices.tolist())) == b
