"""Variational EM for LDA: the mean-field E step, the M step in the topics, and the ELBO.

Blei, Ng & Jordan (2003), "Latent Dirichlet allocation", JMLR 3, 993-1022, §5.2-5.3 and
Appendix A.3. For document d with tokens w_d1..w_dN, the family is

    q(theta_d, z_d) = Dirichlet(theta_d | gamma_d) prod_n Categorical(z_dn | phi_dn),

and, with E_q[log theta_di] = digamma(gamma_di) - digamma(sum_j gamma_dj),

- the E step alternates phi_dni proportional to beta[i, w_dn] exp(digamma(gamma_di)) (eq. 6)
  and gamma_d = alpha + sum_n phi_dn (eq. 7); each is the exact maximiser of the ELBO in its
  block given the other, so the ELBO never decreases along them;
- the M step sets beta_ij proportional to sum_d sum_n phi_dni [w_dn = j] (eq. 9), the exact
  maximiser of the ELBO in beta given q (beta is a parameter: type-II maximum likelihood);
- the ELBO of document d (Appendix A.3, with beta a parameter rather than a latent):

      L_d = log Gamma(A) - sum_i log Gamma(alpha_i) + sum_i (alpha_i - 1) E[log theta_di]
          + sum_n sum_i phi_dni E[log theta_di]
          + sum_n sum_i phi_dni log beta[i, w_dn]
          - log Gamma(sum_i gamma_di) + sum_i log Gamma(gamma_di)
          - sum_i (gamma_di - 1) E[log theta_di]
          - sum_n sum_i phi_dni log phi_dni,

  with A = sum_i alpha_i; L_d <= log p(w_d | alpha, beta), the gap being
  KL(q_d || p(theta_d, z_d | w_d)).

Everything here takes float64 tensors: ``log_emit`` (D, N, K) holds log beta[i, w_dn], ``mask``
(D, N) is 1 at a document's own tokens and 0 at the padding of shorter documents, whose phi is
kept uniform and never counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: the E step stops when no gamma_di moves by more than this (Blei et al.'s lda-c stops on a
#: relative ELBO change of 1e-6; gamma is a count of tokens, so 1e-10 is converged to rounding)
E_STEP_TOL = 1e-10
#: ... or after this many sweeps of (phi, gamma)
E_STEP_SWEEPS = 500
#: the smallest topic-word probability the M step writes: a word no token of a topic has any
#: responsibility for (a word absent from the corpus) would get beta = 0 and log beta = -inf,
#: which the simplex's unconstrained coordinates cannot hold. Its effect on the ELBO is below
#: 1e-280 nats
BETA_FLOOR = 1e-300


#: the smallest phi_dni the E step writes, float64's smallest normal number: a topic whose
#: beta for a word sits at :data:`BETA_FLOOR` would otherwise underflow to phi = 0, which the
#: simplex's unconstrained coordinates (log phi) cannot hold; the ELBO moves by < 1e-300 nats
PHI_FLOOR = float(torch.finfo(torch.float64).tiny)


def expected_log_theta(gamma: torch.Tensor) -> torch.Tensor:
    """E_q[log theta_di] = digamma(gamma_di) - digamma(sum_j gamma_dj), shape of ``gamma``."""
    return torch.digamma(gamma) - torch.digamma(gamma.sum(-1, keepdim=True))


def update_phi(log_emit: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """phi_dni proportional to beta[i, w_dn] exp(digamma(gamma_di)) (eq. 6), shape (D, N, K),
    floored at :data:`PHI_FLOOR`."""
    logits = log_emit + torch.digamma(gamma)[:, None, :]
    phi = (logits - logits.amax(-1, keepdim=True)).exp_()  # torch.softmax is slower at K ~ 10
    return (phi / phi.sum(-1, keepdim=True)).clamp_min_(PHI_FLOOR)


def update_gamma(phi: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """gamma_d = alpha + sum_n phi_dn over the document's own tokens (eq. 7), shape (D, K)."""
    return alpha + (phi * mask[..., None]).sum(-2)


def e_step(
    log_emit: torch.Tensor,
    mask: torch.Tensor,
    alpha: torch.Tensor,
    gamma: torch.Tensor,
    *,
    tol: float = E_STEP_TOL,
    max_sweeps: int = E_STEP_SWEEPS,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Alternate eqs. 6 and 7 from ``gamma`` until gamma stops moving (``tol``) or
    ``max_sweeps``; returns (phi, gamma, sweeps). Pads get a uniform phi."""
    uniform = torch.full_like(log_emit, 1.0 / log_emit.shape[-1])
    sweeps = 0
    while True:
        sweeps += 1
        phi = torch.where(mask[..., None] > 0, update_phi(log_emit, gamma), uniform)
        new = update_gamma(phi, mask, alpha)
        moved = (new - gamma).abs().max().item()
        gamma = new
        if moved <= tol or sweeps >= max_sweeps:
            return phi, gamma, sweeps


def m_step(
    phi: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, vocabulary_size: int
) -> torch.Tensor:
    """beta_ij proportional to sum_d sum_n phi_dni [w_dn = j] (eq. 9), floored at
    :data:`BETA_FLOOR`; shape (K, V)."""
    k = phi.shape[-1]
    weights = (phi * mask[..., None]).reshape(-1, k)
    counts = torch.zeros(vocabulary_size, k, dtype=phi.dtype, device=phi.device)
    counts.index_add_(0, words.reshape(-1), weights)
    beta = (counts / counts.sum(0, keepdim=True)).T
    if (beta < BETA_FLOOR).any():
        beta = beta.clamp_min(BETA_FLOOR)
        beta = beta / beta.sum(-1, keepdim=True)
    return beta


def document_elbos(
    log_emit: torch.Tensor,
    mask: torch.Tensor,
    alpha: torch.Tensor,
    gamma: torch.Tensor,
    phi: torch.Tensor,
) -> torch.Tensor:
    """The ELBO L_d of every document (Appendix A.3), shape (D,)."""
    e_log = expected_log_theta(gamma)  # (D, K)
    weights = phi * mask[..., None]  # (D, N, K): the padding counts for nothing
    log_prior = (
        torch.lgamma(alpha.sum()) - torch.lgamma(alpha).sum() + ((alpha - 1) * e_log).sum(-1)
    )
    log_z = (weights.sum(-2) * e_log).sum(-1)
    log_w = torch.where(weights > 0, weights * log_emit, 0.0).sum((-1, -2))
    log_q_theta = (
        torch.lgamma(gamma.sum(-1)) - torch.lgamma(gamma).sum(-1) + ((gamma - 1) * e_log).sum(-1)
    )
    log_q_z = torch.special.xlogy(weights, phi).sum((-1, -2))
    return log_prior + log_z + log_w - log_q_theta - log_q_z


def log_emissions(topics: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """log beta[i, w_dn] as a (D, N, K) tensor."""
    return topics.log()[:, words].permute(1, 2, 0).contiguous()


def em_sweep(
    topics: torch.Tensor,
    gamma: torch.Tensor,
    words: torch.Tensor,
    mask: torch.Tensor,
    alpha: torch.Tensor,
    *,
    max_sweeps: int = E_STEP_SWEEPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One variational-EM iteration (§5.3): the E step from ``gamma`` at ``topics``, then the
    M step. Returns (new topics, gamma, phi, the documents' ELBOs at the new topics)."""
    phi, gamma, _ = e_step(log_emissions(topics, words), mask, alpha, gamma, max_sweeps=max_sweeps)
    topics = m_step(phi, words, mask, topics.shape[-1])
    elbos = document_elbos(log_emissions(topics, words), mask, alpha, gamma, phi)
    return topics, gamma, phi, elbos


def kmeans_plusplus_topics(counts: np.ndarray, topics: int, rng: np.random.Generator) -> np.ndarray:
    """A start for the topics from the documents: k-means++ centres among the documents' word
    frequencies (Arthur & Vassilvitskii 2007, D^2 sampling), every document given to its
    nearest centre, and each topic the pooled word counts of its documents plus one per word
    (the add-one smoothing of Blei et al.'s lda-c "seeded" start). Shape (K, V)."""
    # not sklearn's kmeans_plusplus: same rule, but its RandomState would change every seeded start
    freq = counts / counts.sum(1, keepdims=True)
    centres = [int(rng.integers(len(freq)))]
    dist2 = ((freq - freq[centres[0]]) ** 2).sum(1)
    for _ in range(1, topics):
        total = dist2.sum()
        pick = (
            int(rng.choice(len(freq), p=dist2 / total))
            if total > 0
            else int(rng.integers(len(freq)))
        )
        centres.append(pick)
        dist2 = np.minimum(dist2, ((freq - freq[pick]) ** 2).sum(1))
    nearest = ((freq[:, None, :] - freq[centres][None]) ** 2).sum(-1).argmin(1)
    pooled = np.stack([counts[nearest == k].sum(0) for k in range(topics)])
    start = pooled + 1.0
    return start / start.sum(1, keepdims=True)


#: variational-EM iterations each start gets before the best is chosen
SCREEN_STEPS = 20
#: E-step sweeps per iteration while screening (the ELBO rises along every sweep, so a cap
#: only slows the climb)
SCREEN_SWEEPS = 50


@dataclass(frozen=True)
class Restarts:
    """Starts of the topics drawn from ``seed``: each start's ELBO after :data:`SCREEN_STEPS`
    EM iterations, the best one's index, and its topics after them (where the run starts).
    With one start nothing is screened: ``elbos`` is empty and ``topics`` is the start."""

    seed: int
    elbos: tuple[float, ...]
    best: int
    topics: np.ndarray


def screen_starts(
    counts: np.ndarray,
    words: torch.Tensor,
    mask: torch.Tensor,
    alpha: torch.Tensor,
    num_topics: int,
    n_init: int,
    seed: int,
) -> Restarts:
    """``n_init`` k-means++ starts (:func:`kmeans_plusplus_topics`), each followed by a few
    variational-EM iterations; the one with the highest ELBO is kept. Variational EM for LDA
    climbs to a local maximum of the ELBO that depends on its start (Blei et al. 2003, §5.3
    and §7, start from documents for this reason); short runs from several starts and a longer
    one from the best is the strategy of Biernacki, Celeux & Govaert (2003), Comput. Stat. Data
    Anal. 41, 561-575."""
    rng = np.random.default_rng(seed)
    starts = [kmeans_plusplus_topics(counts, num_topics, rng) for _ in range(n_init)]
    if n_init == 1:
        return Restarts(seed, (), 0, starts[0])
    lengths = mask.sum(-1, keepdim=True)
    elbos, ends = [], []
    for start in starts:
        topics = torch.as_tensor(start, dtype=mask.dtype, device=mask.device)
        gamma = alpha + lengths / num_topics
        for _ in range(SCREEN_STEPS):
            topics, gamma, _, doc_elbos = em_sweep(
                topics, gamma, words, mask, alpha, max_sweeps=SCREEN_SWEEPS
            )
        elbos.append(doc_elbos.sum().item())
        ends.append(topics.cpu().numpy())
    best = int(np.argmax(elbos))
    return Restarts(seed, tuple(elbos), best, ends[best])
