"""The exact evidence of latent Dirichlet allocation for short documents.

For a document of N tokens w_1..w_N under topics beta (K x V) and a Dirichlet(alpha) prior on
its topic proportions theta, integrating theta out leaves the Dirichlet-multinomial (Polya urn)
law of the topic assignments, P(z_n = k | z_1..z_{n-1}) = (alpha_k + c_k) / (A + n - 1) with
c the topic counts so far and A = sum_k alpha_k (Blei, Ng & Jordan 2003, JMLR 3, §3, the
marginal of a document, eq. 3; Griffiths & Steyvers 2004, PNAS 101, the collapsed P(z)), so

    p(w | alpha, beta) = sum over z in {1..K}^N of
                         prod_n beta[z_n, w_n] (alpha_{z_n} + c_{z_n}(z_<n)) / (A + n - 1).

The summand depends on z_<n only through the count vector c, so the K^N assignments collapse
onto the lattice of count vectors: after n tokens, f_n(c) is the total weight of the
assignments with counts c, and

    f_n(c) = sum_{k: c_k >= 1} f_{n-1}(c - e_k) beta[k, w_n] (alpha_k + c_k - 1) / (A + n - 1),

with p(w) = sum_{|c| = N} f_N(c). Level n holds C(n + K - 1, K - 1) states, so a document costs
K C(N + K, K) multiply-adds rather than K^N. Every document of a corpus walks the same lattice
(only its words differ), so the recursion runs over all documents at once, the longest first
(at level n only the documents of n tokens or more go on). Each level is rescaled by its
largest value and the logarithms of the scales summed (the scaled forward recursion of a
hidden Markov model): log space without a log-sum-exp, clear of underflow at any length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: the most count vectors one level of the lattice may hold
MAX_STATES = 400_000
#: the most multiply-adds (documents x K x lattice states) one evaluation may cost: about a
#: second on one core
MAX_WORK = 400_000_000


def num_states(tokens: int, topics: int) -> int:
    """Topic-count vectors of ``tokens`` tokens over ``topics`` topics: C(N + K - 1, K - 1)."""
    return math.comb(tokens + topics - 1, topics - 1)


def lattice_work(lengths: np.ndarray, topics: int, *, copies: int = 1) -> int:
    """Multiply-adds of :func:`log_evidence` for documents of these lengths (each ``copies``
    times): a document of N tokens walks levels 1..N, K sum_{n <= N} C(n + K - 1, K - 1) =
    K C(N + K, K)."""
    values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    per = [topics * math.comb(int(n) + topics, topics) for n in values]
    return copies * sum(int(c) * w for c, w in zip(counts, per, strict=True))


def _count(number: int) -> str:
    return f"{number:,}" if number < 10**12 else f"{number:.3g}"


def affordability(lengths: np.ndarray, topics: int, *, copies: int = 1) -> str | None:
    """Why the exact evidence of documents of these lengths (each ``copies`` times) is not
    affordable (one line, naming the state count), or None."""
    longest = int(np.max(lengths))
    states = num_states(longest, topics)
    if states > MAX_STATES:
        return (
            f"the exact evidence would sum over {_count(states)} topic-count vectors for a "
            f"document of {longest} tokens over {topics} topics, more than {MAX_STATES:,}: use "
            "fewer topics or shorter documents"
        )
    work = lattice_work(lengths, topics, copies=copies)
    if work > MAX_WORK:
        return (
            f"the exact evidence of {copies * np.size(lengths)} documents (up to {_count(states)} "
            f"topic-count vectors each: {longest} tokens over {topics} topics) would cost "
            f"{work:.2g} operations, more than {MAX_WORK:.0e}: use fewer documents, topics or "
            "tokens"
        )
    return None


@dataclass(frozen=True)
class Level:
    """The count vectors c with |c| = n, and for each topic k the index of c - e_k in level
    n - 1 (the size of level n - 1, one past its end, where c_k = 0)."""

    counts: np.ndarray  # (S_n, K) int64
    predecessor: np.ndarray  # (K, S_n) int64


@lru_cache(maxsize=8)
def count_lattice(tokens: int, topics: int) -> tuple[Level, ...]:
    """Levels 0..``tokens`` of the lattice of topic-count vectors (cached).

    A count vector is keyed by sum_k c_k (N + 1)^k; the keys of each level are sorted, so a
    predecessor's index is a binary search."""
    radix = np.array([(tokens + 1) ** k for k in range(topics)], dtype=np.int64)
    if (tokens + 1) ** topics >= 2**62:
        raise ValueError(f"{tokens} tokens over {topics} topics overflow the lattice's keys")
    eye = np.eye(topics, dtype=np.int64)
    counts = np.zeros((1, topics), dtype=np.int64)
    keys = np.zeros(1, dtype=np.int64)
    levels = [Level(counts, np.ones((topics, 1), dtype=np.int64))]
    for _ in range(tokens):
        candidates = (counts[:, None, :] + eye[None]).reshape(-1, topics)
        new_keys, first = np.unique(candidates @ radix, return_index=True)
        new_counts = candidates[first]
        pred = np.searchsorted(keys, new_keys[None, :] - radix[:, None])
        pred = np.where(new_counts.T > 0, pred, len(keys))  # the zero row past the end
        levels.append(Level(new_counts, pred))
        counts, keys = new_counts, new_keys
    return tuple(levels)


def log_evidence(
    words: np.ndarray, lengths: np.ndarray, topics: np.ndarray, alpha: np.ndarray
) -> np.ndarray:
    """log p(w_d | alpha, beta) of every document, exactly, in float64.

    ``words`` (D, N) holds each document's word indices, padded past its length (the padding
    is never read); ``lengths`` (D,) the numbers of tokens (each >= 1); ``topics`` the K x V
    topic-word probabilities beta; ``alpha`` the K Dirichlet concentrations (a scalar: a
    symmetric prior). Returns the D log evidences (-inf where a document is impossible).
    """
    words = np.asarray(words, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    beta = np.asarray(topics, dtype=np.float64)
    k = beta.shape[0]
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (k,))
    total = float(alpha.sum())
    num_docs, width = words.shape
    longest = int(lengths.max())
    if longest > width or lengths.min() < 1:
        raise ValueError("every document needs 1 to words.shape[1] tokens")
    levels = count_lattice(longest, k)
    # longest documents first: at level n the documents still going are a prefix
    order = np.argsort(-lengths, kind="stable")
    words, lengths = words[order], lengths[order]
    going = num_docs
    f = np.ones((1, num_docs))  # level 0: one empty count vector, weight 1
    log_scale = np.zeros(num_docs)
    out = np.full(num_docs, -np.inf)
    with np.errstate(divide="ignore"):
        for n in range(1, longest + 1):
            going = int((lengths >= n).sum())
            level = levels[n]
            # a zero row for the predecessors that do not exist (c_k = 0)
            padded = np.concatenate([f[:, :going], np.zeros((1, going))])
            prior = alpha[:, None] + level.counts.T - 1  # (K, S_n): alpha_k + c_k before token n
            emit = beta[:, words[:going, n - 1]]  # (K, D_n): beta[k, w_dn]
            new = np.zeros((len(level.counts), going))
            for j in range(k):
                term = np.take(padded, level.predecessor[j], axis=0)
                term *= prior[j][:, None]
                term *= emit[j]
                new += term
            scale = new.max(axis=0)
            dead = ~(scale > 0)
            scale[dead] = 1.0
            f = new / scale
            log_scale[:going] += np.log(scale) - math.log(total + n - 1)
            log_scale[:going][dead] = -np.inf
            done = np.flatnonzero(lengths[:going] == n)
            out[done] = log_scale[done] + np.log(f[:, done].sum(axis=0))
    result = np.empty(num_docs)
    result[order] = out
    return result
