"""Latent Dirichlet allocation: the exact evidence against brute force and quadrature, variational
EM's ascent below it, the closed-form ELBO against Monte Carlo, SVI, data and options."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import gammaln
from scipy.stats import beta as beta_dist

from zoo.errors import DataError, ZooError
from zoo.models.lda import (
    Corpus,
    LatentDirichletAllocation,
    bars_topics,
    count_lattice,
    document_elbos,
    e_step,
    log_evidence,
    m_step,
    num_states,
    simulate_bars,
)
from zoo.models.lda.cavi import log_emissions, update_gamma, update_phi
from zoo.runner import fit

torch.set_num_threads(1)

NAME = "lda"


def log_polya(z: np.ndarray, alpha: np.ndarray) -> float:
    """log p(z | alpha) of a topic sequence with theta integrated out (Dirichlet-multinomial)."""
    counts = np.bincount(z, minlength=len(alpha))
    a = alpha.sum()
    return float(
        gammaln(a) - gammaln(a + len(z)) + (gammaln(alpha + counts) - gammaln(alpha)).sum()
    )


def brute_force(words: np.ndarray, topics: np.ndarray, alpha: np.ndarray) -> float:
    """log p(w) = log sum over all K^N assignments z of p(z | alpha) prod_n beta[z_n, w_n]."""
    k = len(topics)
    terms = [
        log_polya(np.array(z), alpha) + np.log(topics[list(z), words]).sum()
        for z in itertools.product(range(k), repeat=len(words))
    ]
    return float(np.logaddexp.reduce(terms))


# -- the exact evidence -------------------------------------------------------------------------
def test_lattice_levels_hold_every_count_vector_once():
    levels = count_lattice(6, 4)
    for n, level in enumerate(levels):
        assert len(level.counts) == num_states(n, 4) == math.comb(n + 3, 3)
        assert (level.counts.sum(1) == n).all()
        assert len({tuple(c) for c in level.counts}) == len(level.counts)
        if n:  # each predecessor is c - e_k (or the zero row past the end where c_k = 0)
            prev = levels[n - 1].counts
            for k in range(4):
                has = level.counts[:, k] > 0
                np.testing.assert_array_equal(
                    prev[level.predecessor[k, has]] + np.eye(4, dtype=int)[k], level.counts[has]
                )
                assert (level.predecessor[k, ~has] == len(prev)).all()


def test_recursion_equals_brute_force_enumeration():
    rng = np.random.default_rng(1)
    k, v = 3, 5
    topics = rng.dirichlet(np.ones(v), size=k)
    alpha = np.array([0.3, 0.7, 1.6])  # asymmetric: the urn's weights differ by topic
    lengths = np.array([7, 5, 1, 3, 6])
    words = rng.integers(0, v, size=(len(lengths), 7))
    got = log_evidence(words, lengths, topics, alpha)
    for d, n in enumerate(lengths):  # 3^7 = 2187 assignments for the longest
        want = brute_force(words[d, :n], topics, alpha)
        assert got[d] == pytest.approx(want, rel=1e-10), d


def test_recursion_equals_quadrature_over_theta_for_two_topics():
    """K = 2: theta = (t, 1 - t), t ~ Beta(alpha_1, alpha_2), and
    p(w) = int_0^1 Beta(t) prod_n (t beta[0, w_n] + (1 - t) beta[1, w_n]) dt."""
    rng = np.random.default_rng(2)
    topics = rng.dirichlet(np.ones(4), size=2)
    alpha = np.array([1.5, 2.5])  # smooth at both ends: quad converges to rounding
    for n in (1, 9, 40, 200):  # 200 tokens: p(w) ~ 1e-120, the rescaling keeps it exact
        words = rng.integers(0, 4, size=n)
        p_word = topics[:, words]

        def log_like(t: float, p_word=p_word) -> float:
            return float(np.log(t * p_word[0] + (1 - t) * p_word[1]).sum())

        # scaled by the likelihood's largest value on a grid, so the integrand is O(1)
        shift = max(log_like(t) for t in np.linspace(1e-6, 1 - 1e-6, 2001))

        def integrand(t: float, log_like=log_like, shift=shift) -> float:
            return math.exp(log_like(t) - shift) * beta_dist.pdf(t, *alpha)

        value = integrate.quad(integrand, 0.0, 1.0, epsabs=0, epsrel=1e-12, limit=200)[0]
        want = math.log(value) + shift
        got = log_evidence(words[None], np.array([n]), topics, alpha)[0]
        assert got == pytest.approx(want, rel=1e-10, abs=1e-10), n


def test_an_impossible_document_has_log_evidence_minus_infinity():
    topics = np.array([[1.0, 0.0], [1.0, 0.0]])  # word 1 has probability 0 under every topic
    words = np.array([[0, 0], [0, 1]])
    got = log_evidence(words, np.array([2, 2]), topics, 0.5)
    assert got[0] == pytest.approx(0.0, abs=1e-15) and got[1] == -np.inf


# -- the closed-form ELBO and its updates ---------------------------------------------------------
def _small_problem(seed: int = 3):
    rng = np.random.default_rng(seed)
    k, v = 3, 6
    topics = torch.tensor(rng.dirichlet(np.ones(v), size=k))
    words = torch.tensor(rng.integers(0, v, size=(4, 5)))
    mask = torch.ones(4, 5, dtype=torch.float64)
    mask[1, 3:] = 0  # a document of 3 tokens among documents of 5
    alpha = torch.full((k,), 0.4, dtype=torch.float64)
    gamma = torch.tensor(rng.gamma(2.0, 1.0, size=(4, k)))
    phi = torch.tensor(rng.dirichlet(np.ones(k), size=(4, 5)))
    return topics, words, mask, alpha, gamma, phi


def test_closed_form_elbo_against_monte_carlo_and_below_the_evidence():
    topics, words, mask, alpha, gamma, phi = _small_problem()
    elbos = document_elbos(log_emissions(topics, words), mask, alpha, gamma, phi).numpy()
    lengths = mask.sum(1).long().numpy()
    exact = log_evidence(words.numpy(), lengths, topics.numpy(), alpha.numpy())
    rng = np.random.default_rng(0)
    a, b = alpha.numpy(), topics.numpy()
    s = 200_000
    for d in range(4):
        n = int(lengths[d])
        g, p, w = gamma[d].numpy(), phi[d, :n].numpy(), words[d, :n].numpy()
        theta = rng.dirichlet(g, size=s)
        z = (rng.random((s, n, 1)) > p.cumsum(-1)[None]).sum(-1).clip(max=len(a) - 1)
        log_theta = np.log(theta)
        log_p = (
            gammaln(a.sum())
            - gammaln(a).sum()
            + (log_theta * (a - 1)).sum(1)
            + np.take_along_axis(log_theta, z, 1).sum(1)
            + np.log(b[z, w]).sum(1)
        )
        log_q = (
            gammaln(g.sum())
            - gammaln(g).sum()
            + (log_theta * (g - 1)).sum(1)
            + np.log(p[np.arange(n), z]).sum(1)
        )
        log_w = log_p - log_q
        se = log_w.std() / math.sqrt(s)
        # pure Monte Carlo error: 4 SE fails 1 time in 16 000
        assert abs(elbos[d] - log_w.mean()) < 4 * se, d
        assert elbos[d] < exact[d]


def test_each_update_is_a_coordinate_ascent_step():
    """phi given gamma (eq. 6), gamma given phi (eq. 7) and beta given q (eq. 9) each maximise
    the ELBO in their block: the ELBO never falls, and moving off the update lowers it."""
    topics, words, mask, alpha, gamma, phi = _small_problem()
    log_emit = log_emissions(topics, words)

    def elbo(g, p, t=topics):
        return document_elbos(log_emissions(t, words), mask, alpha, g, p).sum().item()

    start = elbo(gamma, phi)
    phi1 = update_phi(log_emit, gamma)
    assert elbo(gamma, phi1) >= start
    gamma1 = update_gamma(phi1, mask, alpha)
    assert elbo(gamma1, phi1) >= elbo(gamma, phi1)
    phi_star, gamma_star, sweeps = e_step(log_emit, mask, alpha, gamma)
    best = elbo(gamma_star, phi_star)
    assert best >= elbo(gamma1, phi1) and sweeps > 1
    rng = np.random.default_rng(0)
    for factor in (0.97, 1.03):
        assert elbo(gamma_star * factor, phi_star) < best
    tilted = phi_star * torch.tensor(rng.uniform(0.9, 1.1, size=phi_star.shape))
    assert elbo(gamma_star, tilted / tilted.sum(-1, keepdim=True)) < best
    new = m_step(phi_star, words, mask, topics.shape[1])
    assert torch.allclose(new.sum(1), torch.ones(3, dtype=torch.float64))
    at_new = elbo(gamma_star, phi_star, new)
    assert at_new >= best
    tilted = new * torch.tensor(rng.uniform(0.9, 1.1, size=new.shape))
    assert elbo(gamma_star, phi_star, tilted / tilted.sum(-1, keepdim=True)) < at_new


# -- variational EM and SVI through the runner --------------------------------------------------
@pytest.fixture(scope="module")
def em():
    return fit(NAME, method="closed-form", eval_particles=4000, progress=False)


def test_variational_em_climbs_below_the_exact_evidence(em):
    h = em.history
    elbo = h["train_elbo"].to_numpy()[1:]  # the closed-form ELBO after every iteration
    log_ev = h["log_evidence"].to_numpy()[1:]  # log p(w | alpha, beta) at the same beta
    assert len(elbo) == em.config.steps == 60
    # coordinate ascent in every block: non-decreasing up to float64 rounding of a sum of
    # ~2000 nats (observed >= -5e-13)
    assert (np.diff(elbo) >= -1e-9).all(), "variational EM decreased the ELBO"
    assert (elbo < log_ev).all()
    # the gap is KL(q || posterior) summed over 100 documents: ~80 nats here
    assert 50 < log_ev[-1] - elbo[-1] < 120
    d = em.diagnostics
    assert d.exact_elbo == pytest.approx(elbo[-1], abs=1e-9)
    assert d.log_evidence == pytest.approx(log_ev[-1], abs=1e-9)
    assert em.method_label == "variational EM"


def test_closed_form_elbo_equals_the_monte_carlo_elbo_of_the_same_q(em):
    d = em.diagnostics
    # the diagnostics' 4000-particle estimate (observed within 1.6 SE over six seed pairs)
    assert abs(d.elbo - d.exact_elbo) < 4 * d.elbo_se
    assert d.kl_method == "analytic"
    assert d.iwae <= d.log_evidence + 4 * d.iwae_se
    assert d.iwae > d.elbo  # per-document IWAE: tighter than the ELBO


def test_gap_per_document_is_bounded(em):
    """Each document's gap KL(q_d || p(theta_d, z_d | w_d)) lies in [0, N_d log K].

    The bound: for any assignment z*, the family holds q(z) = point mass at z*,
    q(theta) = p(theta | z*) = Dirichlet(alpha + counts(z*)), whose ELBO is log p(w, z*), so
    the family's best gap is at most -log p(z* | w); the most probable z* has
    p(z* | w) >= K^-N. The fitted q is a local optimum of the ELBO; the E step started from the
    point mass at the fitted q's own most probable assignment climbs from that member, so its
    gap is at most -log p(z* | w) for that z*, document by document."""
    s = em.summary
    gaps = np.array(s["gap_per_document"])
    log_ev = np.array(s["log_evidence_per_document"])
    model = em.model
    k, lengths = model.num_topics, model.corpus.lengths
    assert (gaps >= -1e-9).all()
    # observed: max 2.35 nats (6.4 over six seed pairs), mean 0.8 against 12 log 6 = 21.5
    assert (gaps <= lengths * math.log(k)).all()
    assert s["gap_per_document_max"] == pytest.approx(gaps.max())
    with em.view().active():
        beta, _, phi = model._fitted()
    words, a = model.corpus.words, model.alpha
    z_star = phi.argmax(-1).numpy()
    counts = np.stack([np.bincount(z, minlength=k) for z in z_star])
    emitted = np.take_along_axis(beta.numpy()[z_star], words[..., None], -1)[..., 0]
    log_joint = np.log(emitted).sum(1) + np.array([log_polya(z, np.full(k, a)) for z in z_star])
    bound = log_ev - log_joint
    assert (bound > 0).all()
    start = model.alpha_vector + torch.tensor(counts, dtype=torch.float64)  # gamma of the point
    log_emit = log_emissions(beta, model.words)
    phi_e, gamma_e, _ = e_step(log_emit, model.mask, model.alpha_vector, start)
    elbo_e = document_elbos(log_emit, model.mask, model.alpha_vector, gamma_e, phi_e).numpy()
    assert (log_ev - elbo_e <= bound + 1e-9).all()


def test_em_recovers_the_bars(em):
    match = em.summary["topic_match"]
    # each true bar has a fitted topic within L1 distance 0.6 of it (of at most 2; observed
    # max 0.42 at the default seeds): the screened starts avoid the local optima where two
    # topics share a bar (Biernacki et al. 2003)
    assert max(match["l1_distance"]) < 0.6
    assert sorted(match["fitted_topic_of_true_topic"]) == list(range(6))
    assert len(em.summary["restarts"]["screened_elbos"]) == 8


def test_svi_with_local_steps_reaches_variational_em(em):
    svi = fit(NAME, method="svi", quick=True, eval_particles=2000, progress=False)
    assert svi.config.elbo == "enum" and svi.config.local_steps
    d = svi.diagnostics
    # gradient steps on beta with the E step around each: from the same screened start, 100
    # steps end 0.19 nats below EM's fixed point (400 steps: 0.03). Both climb to local optima:
    # from seed 1 SVI ends 0.68 nats above EM, in another basin
    assert abs(em.diagnostics.exact_elbo - d.exact_elbo) < 0.3
    assert abs(d.elbo - d.exact_elbo) < 4 * d.elbo_se
    assert d.exact_elbo < d.log_evidence


@pytest.mark.parametrize("elbo", ["trace", "graph"])
def test_score_function_svi_without_local_steps_runs(elbo):
    """Fitting phi and gamma by gradient too: slow (score-function gradients for z), but the
    closed-form and Monte Carlo ELBOs of whatever q it reaches agree."""
    result = fit(
        NAME,
        method="svi",
        elbo=elbo,
        local_steps=False,
        steps=5,
        eval_particles=500,
        progress=False,
    )
    d = result.diagnostics
    assert abs(d.elbo - d.exact_elbo) < 4 * d.elbo_se
    assert d.exact_elbo < d.log_evidence


def test_mini_batches_of_documents():
    """The guide subsamples the document plate as the model does (the local step still sets
    every document's factors)."""
    result = fit(NAME, method="svi", batch_size=20, steps=10, eval_particles=500, progress=False)
    assert result.config.batch_size == 20
    d = result.diagnostics
    assert abs(d.elbo - d.exact_elbo) < 4 * d.elbo_se and d.exact_elbo < d.log_evidence


def test_report_tables_and_figures(em, tmp_path):
    s = em.summary
    assert np.allclose(np.array(s["topics"]).sum(1), 1.0)
    np.testing.assert_array_equal(s["true_topics"], bars_topics(3))
    assert len(s["gap_per_document"]) == 100
    assert s["log_evidence"] == pytest.approx(sum(s["log_evidence_per_document"]))
    table = em.tables()["documents"]
    assert list(table.columns[:5]) == ["document", "tokens", "log_evidence", "elbo", "gap"]
    np.testing.assert_allclose(table.filter(like="theta_").sum(axis=1), 1.0)
    em.save(tmp_path)
    for stem in ("topics", "gaps", "elbo_trace"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
    assert (tmp_path / "documents.csv").exists()


# -- data and options -----------------------------------------------------------------------------
def test_bars_corpus_is_seeded_lda():
    a = simulate_bars(3, 50, 8, 0.1, seed=4)
    b = simulate_bars(3, 50, 8, 0.1, seed=4)
    np.testing.assert_array_equal(a.words, b.words)
    assert a.words.shape == (50, 8) and a.words.max() < 9
    # each token lies on a bar the document's proportions put weight on
    topics = bars_topics(3)
    mass = (a.true_proportions @ topics)[np.arange(50)[:, None], a.words]
    assert (mass > 0).all()
    counts = a.counts()
    assert counts.shape == (50, 9) and (counts.sum(1) == 8).all()


def test_document_term_table_with_ragged_lengths(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("doc,apple,pear,plum\na,2,0,1\nb,0,3,0\nc,1,1,4\nd,0,0,1\n")
    model = LatentDirichletAllocation(str(path), topics=2)
    assert model.corpus.vocabulary == ["apple", "pear", "plum"]
    np.testing.assert_array_equal(model.corpus.lengths, [3, 3, 6, 1])
    assert model.token_mask is not None
    result = fit(model, method="closed-form", steps=15, eval_particles=500, progress=False)
    d = result.diagnostics
    elbo = result.history["train_elbo"].to_numpy()[1:]
    assert (np.diff(elbo) >= -1e-9).all() and d.exact_elbo < d.log_evidence
    assert abs(d.elbo - d.exact_elbo) < 4 * d.elbo_se  # the padding counts for nothing
    # the evidence of each padded document is that of its own tokens
    with result.view().active():
        beta = model.topics().detach().numpy()
    per_doc = result.summary["log_evidence_per_document"]
    for doc, row in enumerate(model.corpus.counts()):
        tokens = np.repeat(np.arange(3), row)
        assert per_doc[doc] == pytest.approx(brute_force(tokens, beta, np.full(2, 0.1)), rel=1e-10)


def _one_line(message: str) -> bool:
    return "\n" not in message.strip()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"alpha": 0}, "--alpha"),
        ({"alpha": float("nan")}, "--alpha"),
        ({"grid": 1}, "--grid"),
        ({"num_docs": 0}, "--num-docs"),
        ({"doc_length": 2.5}, "--doc-length"),
        ({"topics": 0}, "--topics"),
        ({"n_init": 101}, "--n-init"),
        ({"data_seed": -1}, "--data-seed"),
        ({"topics": 40}, r"158,753,389,900 topic-count vectors"),
        ({"grid": 5}, r"293,930 topic-count vectors each"),
        ({"doc_length": 10**9}, r"topic-count vectors for a document of 1000000000 tokens"),
    ],
)
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ZooError, match=match) as caught:
        LatentDirichletAllocation(**options)
    assert _one_line(str(caught.value))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2.5\n", "count 2.5"),
        ("a,b\n1,-1\n", "count -1"),
        ("a,b\n1,2\n0,0\n", "document 2 has no words"),
    ],
)
def test_bad_document_term_tables(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as caught:
        LatentDirichletAllocation(str(path), topics=2)
    assert _one_line(str(caught.value))


def test_data_needs_a_number_of_topics(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="--topics"):
        LatentDirichletAllocation(str(path))
    with pytest.raises(DataError, match="topics=K"):
        LatentDirichletAllocation(np.array([[1, 2], [0, 3]]))
    model = LatentDirichletAllocation(np.array([[1, 2], [0, 3]]), topics=2)
    assert model.num_data == 2 and isinstance(model.corpus, Corpus)


def test_command_line_quick_run(tmp_path, capsys):
    from zoo import run

    code = run.main(["lda", "--quick", "--eval-particles", "200", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for line in ("ELBO (closed form)", "exact log evidence", "gap log p(x) - ELBO", "k-hat"):
        assert line in out
    assert list(tmp_path.rglob("report.json"))
