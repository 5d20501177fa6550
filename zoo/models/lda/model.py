"""Latent Dirichlet allocation fitted by variational EM, against its exact evidence.

Blei, Ng & Jordan (2003), "Latent Dirichlet allocation", JMLR 3, 993-1022: documents
d = 1..D of N_d tokens over a vocabulary of V words, K topics,

    theta_d ~ Dirichlet(alpha),   z_dn | theta_d ~ Categorical(theta_d),
    w_dn | z_dn ~ Categorical(beta[z_dn]),

with a fixed symmetric alpha and the topics beta (K x V) a parameter, fitted by variational EM
(§5.3: type-II maximum likelihood in beta, the ELBO as the objective). The exact evidence is
log p(w | alpha, beta) at the current beta, summed over the count-vector lattice
(:mod:`~zoo.models.lda.exact`), which is affordable for short documents and few topics.

The guide ``mean-field`` is the paper's family (§5.2, Fig. 5), q(theta_d) = Dirichlet(gamma_d)
and q(z_dn) = Categorical(phi_dn), with gamma (positive) and phi (simplex) Pyro parameters.
``method="closed-form"`` is variational EM (:mod:`~zoo.models.lda.cavi`: the E step to
convergence, then the M step), whose closed-form ELBO (Appendix A.3) never decreases. SVI
moves beta by gradient steps on the same ELBO; by default the E step runs around every step
as the closed-form local step, which makes it the stochastic variational inference of Hoffman,
Blei, Wang & Paisley (2013), JMLR 14, 1303-1347, §3 and Fig. 4, whose running example is LDA.
Without local steps SVI also fits gamma and phi, with score-function gradients for the discrete
z under ``trace`` and ``graph``, or summing z out under ``enum``.

Data: the "bars" corpus of Griffiths & Steyvers (2004) (:mod:`~zoo.models.lda.corpus`), or a
CSV document-term table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

from zoo.errors import DataError, ZooError
from zoo.model import (
    ClosedForm,
    DataPlate,
    Estimators,
    Guide,
    Option,
    Training,
    ZooModel,
    at_least,
    positive_int,
    seed_value,
)
from zoo.models.lda import cavi, exact
from zoo.models.lda.corpus import (
    Corpus,
    corpus_from_counts,
    read_document_term_csv,
    simulate_bars,
)
from zoo.options import start_count
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

#: the Dirichlet concentration alpha accepted: below 1e-3 a draw of theta underflows to a point
#: mass in float64, above 1e3 documents are indistinguishable from one mixed topic
ALPHA_RANGE = (1e-3, 1e3)
#: the most starts of the topics one run may screen
MAX_N_INIT = 100
#: bytes one chunk of a pass over the documents may take: a (particle, document) pair holds the
#: N x V word probabilities of its topic draws (a few copies: budgeted 4 x 8 N (V + K) bytes)
CHUNK_BYTES = 1 << 26


def alpha_value(value: Any) -> float:
    """An option type: the symmetric Dirichlet concentration, a number in :data:`ALPHA_RANGE`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    low, high = ALPHA_RANGE
    if not (low <= number <= high):
        raise ValueError(f"{value!r} is not a number in [{low:g}, {high:g}]")
    return number


#: an option type: starts of the topics, an integer in [1, MAX_N_INIT]
n_init_value = start_count(MAX_N_INIT)


def match_topics(fitted: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair fitted topics with true ones (the Hungarian method on the L1 distance, at most
    2). Returns, for each true topic, the index of its fitted topic and their L1 distance."""
    from scipy.optimize import linear_sum_assignment

    cost = np.abs(true[:, None, :] - fitted[None, :, :]).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(true), dtype=np.int64)
    order[rows] = cols
    return order, cost[np.arange(len(true)), order]


def _local_e_step(model: LatentDirichletAllocation, guide: Any) -> None:
    """The mean-field guide's local step: the E step (:meth:`LatentDirichletAllocation.e_step`)."""
    model.e_step()


@register
class LatentDirichletAllocation(ZooModel):
    name = "lda"
    title = "Latent Dirichlet allocation"
    application = "Mean-field variational Bayes"
    reference = (
        "Blei, Ng & Jordan (2003) §5 and Appendix A; Griffiths & Steyvers (2004); "
        "Hoffman, Blei, Wang & Paisley (2013) §3"
    )
    options = (
        Option("topics", positive_int, None, "topics K (None: 2 x grid, the number of bars)"),
        Option("alpha", alpha_value, 0.1, "symmetric Dirichlet concentration of theta"),
        Option("grid", at_least(2), 3, "side of the bars image: grid^2 words, 2 grid topics"),
        Option("num_docs", positive_int, 100, "documents in the bars corpus"),
        Option("doc_length", positive_int, 12, "tokens per document of the bars corpus"),
        Option("data_seed", seed_value, 0, "seed of the bars corpus"),
        Option(
            "n_init",
            n_init_value,
            8,
            "k-means++ starts of the topics, each followed by a few EM iterations; the run "
            "starts from the best (1: a single start, no screening)",
        ),
    )
    data_help = (
        "CSV document-term table: a row per document, a numeric column per word (counts); "
        "needs --topics"
    )
    #: with the E step as the local step, ``enum`` sums the topic assignments out under q and
    #: the gradient in beta is exact (theta does not enter it): one particle is enough
    guides = {"mean-field": Guide(elbo="enum", local_step=_local_e_step)}
    default_guide = "mean-field"
    #: discrete topic assignments: ``enum`` sums them out under q; no ``meanfield`` (the
    #: z sites are not reparameterised)
    estimators = Estimators(("trace", "graph", "enum", "iwae"))
    #: the training a user of LDA expects: variational EM (Blei et al. 2003, §5.3)
    closed_form = ClosedForm("variational EM", default=True)
    # EM: every E step runs to convergence; from the screened start, 60 iterations bring the
    # ELBO to a fixed point (its last 10 changes are rounding). SVI with local steps: Adam on
    # beta's unconstrained coordinates, 400 steps from lr 0.2 decayed 20-fold end 0.03 nats
    # below EM's fixed point (0.13 at lr 0.05)
    training = Training(
        steps=400,
        lr=0.2,
        quick_steps=100,
        lr_final_factor=0.05,
        particles=1,
        closed_form_steps=60,
        records=50,
    )
    #: the contract's and the command-line smoke tests' run: 20 short documents, two starts
    smoke_options = {"num_docs": 20, "doc_length": 6, "n_init": 2}
    max_plate_nesting = 2
    data_plate = DataPlate("documents", dim=-2)
    leaderboard = ({"method": "closed-form"}, {"method": "svi"})

    # -- data ---------------------------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        if data is None:
            k = opts["topics"] if opts["topics"] is not None else 2 * opts["grid"]
            self._check_affordable(np.array([opts["doc_length"]]), k, copies=opts["num_docs"])
            corpus = simulate_bars(
                opts["grid"], opts["num_docs"], opts["doc_length"], opts["alpha"], opts["data_seed"]
            )
        elif isinstance(data, str | Path):
            if opts["topics"] is None:
                raise DataError("name the number of topics of a data file with --topics")
            k = opts["topics"]
            corpus = read_document_term_csv(data, check=lambda n: self._check_affordable(n, k))
        elif isinstance(data, Corpus):
            if opts["topics"] is None and data.grid is None:
                raise DataError("name the number of topics of a corpus with topics=K")
            k = opts["topics"] if opts["topics"] is not None else 2 * data.grid
            self._check_affordable(data.lengths, k)
            corpus = data
        else:
            if opts["topics"] is None:
                raise DataError("name the number of topics of a count matrix with topics=K")
            k = opts["topics"]
            corpus = corpus_from_counts(data, check=lambda n: self._check_affordable(n, k))
        if len(corpus.vocabulary) < 2:
            raise DataError("the corpus needs a vocabulary of at least 2 words")
        self.corpus = corpus
        self.num_topics = k
        self.num_data = corpus.num_docs
        self.alpha = opts["alpha"]
        self.alpha_vector = self.tensor(np.full(k, opts["alpha"]))
        self.words = self.tensor(corpus.words, dtype=torch.long)
        self.mask = self.tensor(corpus.mask.astype(np.float64))
        self.token_mask = self.tensor(corpus.mask, dtype=torch.bool) if corpus.ragged else None
        self.n_init = opts["n_init"]
        self.restarts: cavi.Restarts | None = None
        self._evidence: tuple[torch.Tensor, np.ndarray] | None = None
        vocab = len(corpus.vocabulary)
        pair_bytes = 4 * 8 * corpus.max_length * (vocab + k)
        self.data_plate = type(self).data_plate.with_sizes(
            chunk_budget=max(2 * corpus.num_docs, CHUNK_BYTES // pair_bytes)
        )

    def _check_affordable(self, lengths: np.ndarray, topics: int, copies: int = 1) -> None:
        problem = exact.affordability(lengths, topics, copies=copies)
        if problem is not None:
            raise ZooError(f"model {self.name!r}: {problem}")

    # -- parameters, model and guide ------------------------------------------------------------
    def initial_topics(self) -> torch.Tensor:
        """The run's starting beta: the best of ``n_init`` screened starts, drawn from the
        run's seed (the runner seeds torch before it creates the parameters)."""
        seed = torch.initial_seed() % 2**32
        if self.restarts is None or self.restarts.seed != seed:
            self.restarts = cavi.screen_starts(
                self.corpus.counts().astype(np.float64),
                self.words,
                self.mask,
                self.alpha_vector,
                self.num_topics,
                self.n_init,
                seed,
            )
        return self.tensor(self.restarts.topics)

    def topics(self) -> torch.Tensor:
        """beta, the K x V topic-word probabilities (a simplex-constrained Pyro parameter)."""
        return pyro.param("beta", self.initial_topics, constraint=constraints.simplex)

    def _tokens(self, idx: torch.Tensor) -> Any:
        """The token plate, masked to each document's own tokens where lengths differ."""
        if self.token_mask is None:
            return contextlib.nullcontext()
        return poutine.mask(mask=self.token_mask[idx])

    def model(self, subsample_size: int | None = None) -> None:
        # logits rather than probabilities throughout: torch clamps a Categorical's
        # probabilities at float64's epsilon (2e-16) before taking logs, which would score a
        # topic-word probability of 1e-30 as -36 nats instead of -69
        log_beta = self.topics().log()
        width = self.corpus.max_length
        with pyro.plate("documents", self.num_data, dim=-2, subsample_size=subsample_size) as idx:
            theta = pyro.sample("theta", dist.Dirichlet(self.alpha_vector))
            with pyro.plate("tokens", width, dim=-1), self._tokens(idx):
                z = pyro.sample("z", dist.Categorical(logits=theta.log()))
                pyro.sample("w", dist.Categorical(logits=log_beta[z]), obs=self.words[idx])

    def variational_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma (D x K, positive) and phi (D x N x K, simplex), starting where lda-c starts:
        gamma_d = alpha + N_d / K, phi uniform."""
        k = self.num_topics
        gamma = pyro.param(
            "gamma",
            lambda: self.alpha_vector + self.mask.sum(-1, keepdim=True) / k,
            constraint=constraints.positive,
        )
        phi = pyro.param(
            "phi",
            lambda: torch.full(
                (*self.words.shape, k), 1.0 / k, dtype=self.mask.dtype, device=self.device
            ),
            constraint=constraints.simplex,
        )
        return gamma, phi

    def mean_field_guide(self, subsample_size: int | None = None) -> None:
        """q(theta_d) = Dirichlet(gamma_d), q(z_dn) = Categorical(phi_dn) (Blei et al. §5.2)."""
        gamma, phi = self.variational_parameters()
        width = self.corpus.max_length
        with pyro.plate("documents", self.num_data, dim=-2, subsample_size=subsample_size) as idx:
            pyro.sample("theta", dist.Dirichlet(gamma[idx].unsqueeze(-2)))
            with pyro.plate("tokens", width, dim=-1), self._tokens(idx):
                pyro.sample("z", dist.Categorical(logits=phi[idx].log()))

    def build_guide(self, name: str) -> Callable[..., Any]:
        if name == "mean-field":
            return self.mean_field_guide
        return super().build_guide(name)

    # -- variational EM -------------------------------------------------------------------------
    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """beta, gamma and phi from the param store, detached."""
        gamma, phi = self.variational_parameters()
        return self.topics().detach(), gamma.detach(), phi.detach()

    def _check_guide(self, guide_name: str) -> None:
        if guide_name != "mean-field":
            raise ZooError(f"variational EM updates the mean-field guide, not {guide_name!r}")

    def e_step(self) -> None:
        """The E step at the current beta (eqs. 6-7 to convergence), written into gamma, phi."""
        beta, gamma, _ = self._fitted()
        log_emit = cavi.log_emissions(beta, self.words)
        phi, gamma, _ = cavi.e_step(log_emit, self.mask, self.alpha_vector, gamma)
        store = pyro.get_param_store()
        store["gamma"], store["phi"] = gamma, phi  # __setitem__ keeps the constraints

    def closed_form_step(self, guide: Any, guide_name: str) -> float:
        """One variational-EM iteration: the E step to convergence from the stored gamma, then
        the M step (eq. 9). Returns the ELBO (Appendix A.3) at the new beta."""
        self._check_guide(guide_name)
        beta, gamma, _ = self._fitted()
        beta, gamma, phi, elbos = cavi.em_sweep(
            beta, gamma, self.words, self.mask, self.alpha_vector
        )
        store = pyro.get_param_store()
        store["beta"], store["gamma"], store["phi"] = beta, gamma, phi
        return elbos.sum().item()

    # -- what is known exactly ------------------------------------------------------------------
    def document_log_evidence(self) -> np.ndarray:
        """log p(w_d | alpha, beta) of every document at the current beta (cached per beta)."""
        beta = self.topics().detach()
        if self._evidence is not None and torch.equal(self._evidence[0], beta):
            return self._evidence[1]
        values = exact.log_evidence(
            self.corpus.words, self.corpus.lengths, beta.cpu().numpy(), self.alpha
        )
        self._evidence = (beta.clone(), values)
        return values

    def log_evidence(self) -> float:
        return float(self.document_log_evidence().sum())

    def document_elbos(self) -> np.ndarray:
        """The fitted q's ELBO of every document, in closed form (Appendix A.3)."""
        beta, gamma, phi = self._fitted()
        log_emit = cavi.log_emissions(beta, self.words)
        return cavi.document_elbos(log_emit, self.mask, self.alpha_vector, gamma, phi).cpu().numpy()

    def exact_elbo(self, guide: Any, guide_name: str) -> float | None:
        """The mean-field guide's ELBO in closed form (Appendix A.3), summed over documents."""
        return float(self.document_elbos().sum()) if guide_name == "mean-field" else None

    # -- reporting ------------------------------------------------------------------------------
    def topic_match(self) -> dict[str, Any] | None:
        """Each true topic's fitted topic and their L1 distance, where the corpus is simulated
        with as many topics as are fitted."""
        true = self.corpus.true_topics
        if true is None or len(true) != self.num_topics:
            return None
        fitted = self.topics().detach().cpu().numpy()
        order, l1 = match_topics(fitted, true)
        return {"fitted_topic_of_true_topic": order.tolist(), "l1_distance": l1.tolist()}

    def summary(self, guide: Any, guide_name: str) -> dict[str, Any]:
        beta = self.topics().detach()
        log_ev = self.document_log_evidence()
        elbos = self.document_elbos()
        gaps = log_ev - elbos
        out: dict[str, Any] = {
            "corpus": {
                "documents": self.num_data,
                "vocabulary": list(self.corpus.vocabulary),
                "tokens": int(self.corpus.lengths.sum()),
                "longest_document": self.corpus.max_length,
                "grid": self.corpus.grid,
            },
            "topics": beta.cpu().numpy().tolist(),
            "alpha": self.alpha,
            "lattice_states": exact.num_states(self.corpus.max_length, self.num_topics),
            "log_evidence": float(log_ev.sum()),
            "elbo_closed_form": float(elbos.sum()),
            "gap_closed_form": float(gaps.sum()),
            "log_evidence_per_document": log_ev.tolist(),
            "elbo_per_document": elbos.tolist(),
            "gap_per_document": gaps.tolist(),
            "gap_per_document_max": float(gaps.max()),
            "gap_per_document_mean": float(gaps.mean()),
        }
        if self.corpus.true_topics is not None:
            out["true_topics"] = self.corpus.true_topics.tolist()
        match = self.topic_match()
        if match is not None:
            out["topic_match"] = match
        restarts = self.restarts
        if restarts is not None:
            out["restarts"] = {
                "seed": restarts.seed,
                "screened_elbos": list(restarts.elbos),
                "best": restarts.best,
            }
        return out

    def tables(self, run: RunView) -> dict[str, pd.DataFrame]:
        """``documents``: each document's length, exact log evidence, closed-form ELBO, gap and
        E_q[theta_d] = gamma_d / sum_k gamma_dk."""
        _, gamma, _ = self._fitted()
        log_ev, elbos = self.document_log_evidence(), self.document_elbos()
        frame = pd.DataFrame(
            {
                "document": np.arange(1, self.num_data + 1),
                "tokens": self.corpus.lengths,
                "log_evidence": log_ev,
                "elbo": elbos,
                "gap": log_ev - elbos,
            }
        )
        mean = (gamma / gamma.sum(-1, keepdim=True)).cpu().numpy()
        for k in range(self.num_topics):
            frame[f"theta_{k + 1}"] = mean[:, k]
        return {"documents": frame}

    def plots(self, run: RunView) -> dict[str, Figure]:
        """``topics``: the true and fitted topics as images (the bars) or bars over the
        vocabulary; ``gaps``: the ELBO against the exact log evidence over the run and per
        document."""
        from zoo.models.lda import figures

        fitted = self.topics().detach().cpu().numpy()
        true = self.corpus.true_topics
        match = self.topic_match()
        order = None if match is None else np.array(match["fitted_topic_of_true_topic"])
        history = run.history
        closed = history["train_elbo"].to_numpy(dtype=float)
        trace = closed if np.isfinite(closed[1:]).all() and len(closed) > 1 else None
        log_ev, elbos = self.document_log_evidence(), self.document_elbos()
        return {
            "topics": figures.topics_figure(
                fitted,
                true,
                order=order,
                grid=self.corpus.grid,
                vocabulary=self.corpus.vocabulary,
                title=f"{self.title}: topics ({run.method})",
            ),
            "gaps": figures.gaps_figure(
                history["step"].to_numpy(),
                history["elbo"].to_numpy(dtype=float),
                history["log_evidence"].to_numpy(dtype=float),
                log_ev,
                elbos,
                self.corpus.lengths,
                closed_form_elbo=trace,
                title=f"{self.title}: {run.method}, K = {self.num_topics}",
            ),
        }
