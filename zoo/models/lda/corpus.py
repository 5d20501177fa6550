"""The corpora of the LDA model: the simulated "bars" corpus, or the user's document-term table.

The bars corpus follows Griffiths & Steyvers (2004), "Finding scientific topics", PNAS 101
(suppl. 1), 5228-5235, §2 and Fig. 1: the vocabulary is the G x G pixels of a small image, the
2G true topics are its rows and columns (a horizontal or vertical bar, uniform over its G
pixels), and each document is drawn from LDA's generative process (Blei, Ng & Jordan 2003,
JMLR 3, §3): theta_d ~ Dirichlet(alpha), then for each of its N tokens a topic
z_dn ~ Categorical(theta_d) and a pixel w_dn ~ Categorical(beta[z_dn]). Drawn as an image, a
document is a few bars' worth of lit pixels.

A user's corpus is a CSV document-term table: one row per document, one numeric column per word
(the header names the words), each cell the number of times the word occurs in the document
(bag of words: LDA's likelihood does not depend on the order of a document's tokens); text
columns (document names) are ignored. In Python, a D x V array of counts does the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data import read_numeric_table
from zoo.errors import DataError


@dataclass(frozen=True)
class Corpus:
    """Documents as padded word indices: ``words[d, :lengths[d]]`` are document d's tokens."""

    words: np.ndarray  # (D, N_max) int64, padded with word 0
    lengths: np.ndarray  # (D,) int64, each >= 1
    vocabulary: list[str]
    #: the side G of the image for the bars corpus (its words are the G x G pixels); None for
    #: a user's corpus
    grid: int | None = None
    #: the topics that generated the corpus (K x V), where it was simulated
    true_topics: np.ndarray | None = None
    #: the topic proportions that generated each document (D x K), where simulated
    true_proportions: np.ndarray | None = None

    @property
    def num_docs(self) -> int:
        return int(self.words.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.words.shape[1])

    @property
    def mask(self) -> np.ndarray:
        """(D, N_max) booleans: True at a document's own tokens, False at the padding."""
        return np.arange(self.max_length)[None, :] < self.lengths[:, None]

    @property
    def ragged(self) -> bool:
        return bool((self.lengths != self.max_length).any())

    def counts(self) -> np.ndarray:
        """The D x V document-term counts."""
        out = np.zeros((self.num_docs, len(self.vocabulary)), dtype=np.int64)
        rows = np.repeat(np.arange(self.num_docs), self.max_length)
        keep = self.mask.ravel()
        np.add.at(out, (rows[keep], self.words.ravel()[keep]), 1)
        return out


def bars_topics(grid: int) -> np.ndarray:
    """The 2G bars of a G x G image as topics (2G x G^2): rows first, then columns; pixel
    (r, c) is word r G + c."""
    topics = np.zeros((2 * grid, grid, grid))
    for r in range(grid):
        topics[r, r, :] = 1.0 / grid
        topics[grid + r, :, r] = 1.0 / grid
    return topics.reshape(2 * grid, grid * grid)


def simulate_bars(grid: int, num_docs: int, doc_length: int, alpha: float, seed: int) -> Corpus:
    """``num_docs`` documents of ``doc_length`` pixels from LDA with the bars of a ``grid`` x
    ``grid`` image as topics and a symmetric Dirichlet(``alpha``) on the proportions, seeded."""
    rng = np.random.default_rng(seed)
    topics = bars_topics(grid)
    k, v = topics.shape
    theta = rng.dirichlet(np.full(k, alpha), size=num_docs)
    # a Dirichlet draw with a tiny alpha can underflow to all zeros: put its mass on its argmax
    bad = ~(theta.sum(1) > 0.5)
    theta[bad] = np.eye(k)[rng.integers(0, k, size=int(bad.sum()))]
    z = np.stack([rng.choice(k, size=doc_length, p=t / t.sum()) for t in theta])
    # each bar is uniform over its pixels: pick one of its G pixels
    pick = rng.integers(0, grid, size=z.shape)
    rows = z < grid
    words = np.where(rows, z * grid + pick, pick * grid + (z - grid))
    names = [f"({r},{c})" for r in range(grid) for c in range(grid)]
    assert words.max() < v
    return Corpus(
        words=words.astype(np.int64),
        lengths=np.full(num_docs, doc_length, dtype=np.int64),
        vocabulary=names,
        grid=grid,
        true_topics=topics,
        true_proportions=theta,
    )


def read_document_term_csv(
    path: str | Path, check: Callable[[np.ndarray], None] | None = None
) -> Corpus:
    """A CSV document-term table (see the module docstring) as a :class:`Corpus`.

    Refused with a one-line :class:`DataError`: anything :func:`zoo.data.read_numeric_table`
    refuses, and what :func:`corpus_from_counts` refuses."""
    table, names = read_numeric_table(path, min_rows=1, allow_constant=True, max_abs=1e9)
    return corpus_from_counts(table, names, where=repr(str(path)), check=check)


def corpus_from_counts(
    counts: Any,
    vocabulary: Sequence[str] | None = None,
    *,
    where: str = "the counts",
    check: Callable[[np.ndarray], None] | None = None,
) -> Corpus:
    """A D x V document-term count matrix as a :class:`Corpus` (each document's tokens in word
    order: the likelihood does not depend on their order).

    Refused with a one-line :class:`DataError`: not a finite 2-D array, counts that are not
    non-negative integers, a document with no words. ``check`` sees the documents' lengths
    before their tokens are laid out (it raises where they are too long to afford)."""
    table = np.asarray(counts)
    if table.dtype.kind not in "iuf" or table.ndim != 2 or table.size == 0:
        raise DataError(f"{where}: a document-term table is a 2-D array of counts")
    table = table.astype(np.float64)
    names = [f"w{j + 1}" for j in range(table.shape[1])] if vocabulary is None else list(vocabulary)
    if len(names) != table.shape[1]:
        raise DataError(f"{where}: {len(names)} word names for {table.shape[1]} columns")
    bad = ~np.isfinite(table) | (table < 0) | (table != np.round(table))
    if bad.any():
        d, j = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: document {d + 1}, word {names[j]!r} has count {table[d, j]:g}; a "
            "document-term table holds non-negative integer counts"
        )
    if table.max() > 1e9:
        raise DataError(f"{where}: a count of {table.max():g} is more than 1e9")
    lengths = table.sum(1).astype(np.int64)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise DataError(f"{where}: document {int(empty[0]) + 1} has no words")
    if check is not None:
        check(lengths)
    words = np.zeros((len(table), int(lengths.max())), dtype=np.int64)
    for d, row in enumerate(table.astype(np.int64)):
        tokens = np.repeat(np.arange(len(row)), row)
        words[d, : tokens.size] = tokens
    return Corpus(words=words, lengths=lengths, vocabulary=names)
