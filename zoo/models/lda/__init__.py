"""Latent Dirichlet allocation by variational EM against its exact evidence (Blei, Ng & Jordan
2003, JMLR 3, 993-1022; Griffiths & Steyvers 2004, PNAS 101, 5228-5235).

- :mod:`~zoo.models.lda.model`: the registered model ``lda``
  (:class:`LatentDirichletAllocation`), its guide and report;
- :mod:`~zoo.models.lda.cavi`: variational EM (the E step, the M step, the closed-form ELBO,
  the screened starts);
- :mod:`~zoo.models.lda.exact`: log p(w | alpha, beta) by a recursion over topic-count
  vectors;
- :mod:`~zoo.models.lda.corpus`: the bars corpus and the reader of document-term tables;
- :mod:`~zoo.models.lda.figures`: the topics and the gaps, drawn from arrays.
"""

from zoo.models.lda.cavi import document_elbos, e_step, em_sweep, m_step
from zoo.models.lda.corpus import (
    Corpus,
    bars_topics,
    corpus_from_counts,
    read_document_term_csv,
    simulate_bars,
)
from zoo.models.lda.exact import count_lattice, log_evidence, num_states
from zoo.models.lda.model import LatentDirichletAllocation, match_topics

__all__ = [
    "Corpus",
    "LatentDirichletAllocation",
    "bars_topics",
    "corpus_from_counts",
    "count_lattice",
    "document_elbos",
    "e_step",
    "em_sweep",
    "log_evidence",
    "m_step",
    "match_topics",
    "num_states",
    "read_document_term_csv",
    "simulate_bars",
]
