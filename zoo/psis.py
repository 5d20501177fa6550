"""Pareto-smoothed importance sampling (PSIS) tail index k-hat of importance ratios.

For draws z_s ~ q(z), s = 1..S, from a guide, the log importance ratios are
``log w_s = log p(x, z_s) - log q(z_s)``. PSIS fits a generalized Pareto distribution to the
largest ``M = min(S / 5, 3 sqrt(S))`` ratios; its estimated shape k-hat says how heavy the right
tail of the weights is (Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto smoothed importance
sampling", JMLR 25(72):1-58). Used as a diagnostic of variational inference (Yao, Vehtari,
Simpson & Gelman 2018, "Yes, but did it work?: Evaluating variational inference", ICML):

- k-hat < 0.5: the guide is a good importance proposal for the posterior;
- 0.5 <= k-hat <= 0.7: usable, with slow Monte Carlo convergence;
- k-hat > 0.7: importance sampling with the guide is unreliable (the weights have infinite
  variance already above k = 0.5, and PSIS itself breaks down above about 0.7);
- for small S the reliability threshold is ``min(1 - 1 / log10(S), 0.7)`` (Vehtari et al. 2024).

The fit is ArviZ's, and both ArviZ lines are supported, detected by feature:

- ArviZ 0.x: ``arviz.psislw(log_weights, reff)`` takes the log importance *weights* themselves
  (its PSIS-LOO callers pass ``-log_likelihood``), so it is given ``log_ratios``;
- ArviZ 1.x: ``arviz_stats.base.array_stats.psislw(ary, r_eff)`` takes the pointwise
  *log-likelihood* (LOO convention) and negates it internally (``_ps_tail(-ary, ...)``), so it is
  given ``-log_ratios``. (``array_stats.pareto_khat(..., log_weights=True)`` is not used: in
  arviz-stats 1.3.3 it does not pass ``log_weights`` on to the tail fit, which then fits the log
  weights instead of the weights and returns k-hat near 0 for any tail.)

The draws are taken as independent (relative efficiency ``r_eff = 1``), as they are when they
come from a guide. Only numpy and ArviZ are needed; a torch tensor is accepted (detached and
moved to the CPU) but torch is never imported here.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["MIN_DRAWS", "pareto_khat"]

#: Fewest log ratios accepted. The Pareto fit needs at least 6 tail draws in arviz-stats 1.x
#: (with 5, its first-quartile check always fails and it returns NaN; with fewer it raises), and
#: the tail holds ``floor(S / 5)`` draws for small S, so S >= 30. k-hat from so few draws is
#: itself very noisy: its reliability threshold is then ``1 - 1 / log10(30) = 0.32``.
MIN_DRAWS = 30
#: log ratios whose spread is below this (relative) are equal up to floating-point rounding
_ROUNDING = 1e-9


@functools.cache
def _khat_backend() -> Callable[[np.ndarray], float]:
    """Return ``log_ratios -> raw k-hat`` from the installed ArviZ line (chosen by feature)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz 0.x warns about its refactor on import
        import arviz as az

        try:
            psislw_0x = az.psislw  # arviz 0.x; arviz 1.x raises AttributeError here
        except AttributeError:
            psislw_0x = None
        if psislw_0x is None:
            from arviz_stats.base import array_stats

    if psislw_0x is not None:

        def khat_0x(log_ratios: np.ndarray) -> float:
            # arviz 0.x: right tail of the log weights as given.
            return float(psislw_0x(log_ratios, reff=1.0)[1])

        return khat_0x

    def khat_1x(log_ratios: np.ndarray) -> float:
        # arviz 1.x: expects log-likelihoods and fits the right tail of their negation.
        return float(array_stats.psislw(-log_ratios, r_eff=1.0)[1])

    return khat_1x


def _tail_length(num_draws: int) -> int:
    """Number of largest ratios ArviZ fits: ``min(S / 5, 3 sqrt(S))``, rounded down."""
    return math.floor(3 * math.sqrt(num_draws) if num_draws > 225 else num_draws / 5)


def _as_float_array(log_ratios: Any) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(log_ratios, torch.Tensor):
        log_ratios = log_ratios.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.array(log_ratios, dtype=np.float64)  # a copy: ArviZ must never touch the input


def pareto_khat(log_ratios: Any) -> float:
    """PSIS tail index k-hat of importance ratios ``log p(x, z_s) - log q(z_s)``, ``z_s ~ q``.

    Parameters
    ----------
    log_ratios
        1-D array of S >= ``MIN_DRAWS`` finite log importance ratios (numpy array, torch tensor,
        or anything ``numpy.asarray`` understands), larger meaning more weight. An additive
        constant (e.g. an unknown log normalizer) does not change k-hat.

    Returns
    -------
    float
        The estimated generalized-Pareto shape of the right tail of the weights ``exp(log_ratios)``
        (see the module docstring for how to read it), with two conventions of its own:

        - ``-inf``: the weights have no tail at all. This is the case when all the log ratios
          are equal (an exact guide: every weight is identical), and more generally when at
          least as many draws as the fitted tail holds share the largest ratio (the weights are
          bounded by an atom at their maximum), where ArviZ's fit raises or returns nonsense;
        - ``inf``: ArviZ could not fit the tail (ties just below the largest ratios, e.g. from
          discrete latents, or ratios spread over more than about 700 nats so that all but a few
          weights underflow to zero). Treat it as unreliable: it compares above 0.7.

    Raises
    ------
    ValueError
        If ``log_ratios`` is not 1-D, has fewer than ``MIN_DRAWS`` entries, or has a non-finite
        entry.
    """
    lr = _as_float_array(log_ratios)
    if lr.ndim != 1:
        raise ValueError(f"log_ratios must be 1-D (one ratio per draw); got shape {lr.shape}")
    num_draws = lr.shape[0]
    if num_draws < MIN_DRAWS:
        raise ValueError(
            f"k-hat needs at least {MIN_DRAWS} log ratios to fit a Pareto tail; got {num_draws}"
        )
    bad = int(np.count_nonzero(~np.isfinite(lr)))
    if bad:
        raise ValueError(f"log_ratios must be finite; got {bad} NaN/inf of {num_draws} values")

    if np.ptp(lr) <= _ROUNDING * max(1.0, float(np.abs(lr).max())):
        return -math.inf  # equal up to rounding: an exact guide computed in floating point
    if np.count_nonzero(lr == lr.max()) >= _tail_length(num_draws):
        return -math.inf  # no tail above the largest weight (all equal: an exact guide)

    khat_of = _khat_backend()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # we report k-hat ourselves
        khat = khat_of(lr)
    return khat if math.isfinite(khat) else math.inf
