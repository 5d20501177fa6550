"""Figures of the Ising model, from arrays and plain values.

The free energy per site -log Z / (beta N) against beta (Feynman 1972, ch. 2; Wu, Wang & Zhang
2019, PRL 122, 080602, fig. 2), the relative free-energy error (log Z - ELBO) / log Z, and
lattices drawn from mean field and from a fitted guide. :meth:`Ising.plots
<zoo.models.ising.model.Ising.plots>` gathers the arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from zoo.models.ising.exact import BETA_C

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def free_energy_figure(
    betas: np.ndarray,
    exact_log_z: np.ndarray,
    mean_field_elbo: np.ndarray,
    onsager_log_z_per_site: np.ndarray | None,
    *,
    beta: float,
    elbo: float,
    elbo_se: float,
    num_sites: int,
    label: str,
    colour: str,
    title: str,
    exact_label: str,
) -> Figure:
    """Free energy per site against beta: exact (where finite), Onsager's infinite lattice
    (where given), mean field's best ELBO, and this run's ELBO at its beta with 2 SE bars.

    ``exact_log_z`` and ``mean_field_elbo`` are totals over the ``num_sites`` spins at each of
    ``betas`` (NaN where unknown); ``onsager_log_z_per_site`` is per site.
    """
    import matplotlib.pyplot as plt

    n = num_sites
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    if np.isfinite(exact_log_z).any():
        ax.plot(betas, -exact_log_z / (betas * n), "k-", label=exact_label)
    if onsager_log_z_per_site is not None:
        ax.plot(betas, -onsager_log_z_per_site / betas, "k:", label="Onsager, L = inf")
    ax.plot(betas, -mean_field_elbo / (betas * n), "C1--", label="mean field (best ELBO)")
    ax.errorbar(
        [beta],
        [-elbo / (beta * n)],
        yerr=[2 * elbo_se / (beta * n)],
        fmt="o",
        color=colour,
        label=label,
    )
    ax.axvline(BETA_C, color="0.7", lw=0.8)
    ax.set_xlabel("beta")
    ax.set_ylabel("free energy per site  -log Z / (beta N)")
    ax.set_title(title)
    ax.legend()
    return fig


def relative_error_figure(
    betas: np.ndarray,
    exact_log_z: np.ndarray,
    mean_field_elbo: np.ndarray,
    *,
    beta: float,
    gap: float | None,
    log_evidence: float | None,
    elbo_se: float,
    label: str,
    colour: str,
) -> Figure:
    """Relative free-energy error (log Z - ELBO) / log Z on a log axis: mean field's best
    against beta, and this run's at its beta with 2 SE bars (where log Z is known)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    if np.isfinite(exact_log_z).any():
        rel_mf = (exact_log_z - mean_field_elbo) / exact_log_z
        ax.semilogy(betas, rel_mf, "C1--", label="mean field (best ELBO)")
        if log_evidence is not None and gap is not None:
            rel = gap / log_evidence
            ax.errorbar(
                [beta],
                [max(rel, 1e-12)],
                yerr=[
                    [min(2 * elbo_se / log_evidence, max(rel, 1e-12) * 0.999)],
                    [2 * elbo_se / log_evidence],
                ],
                fmt="o",
                color=colour,
                label=label,
            )
    ax.axvline(BETA_C, color="0.7", lw=0.8)
    ax.set_xlabel("beta")
    ax.set_ylabel("relative error  (log Z - ELBO) / log Z")
    ax.set_title("relative free-energy error (2 SE bars)")
    ax.legend()
    return fig


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out = np.empty(len(values))
    for k in range(len(values)):
        out[k] = np.mean(values[max(0, k - window + 1) : k + 1])
    return out


def convergence_figure(
    steps: np.ndarray,
    elbo: np.ndarray,
    nis: np.ndarray,
    log_z: np.ndarray,
    *,
    final: tuple[float, float, float, float, int],
    beta: float,
    num_sites: int,
    record_particles: int,
    colour: str,
    title: str,
    window: int = 10,
) -> Figure:
    """The bound and the importance-sampled estimate approaching the exact free energy.

    Left: free energy per site -log Z / (beta N) against the training step, from each history
    record's ``record_particles`` draws (dots): their ELBO, an estimate of the bound, and log
    mean w, the neural importance sampling estimate (Nicoli et al. 2020); lines are the means
    of the last ``window`` records. The exact value (Kaufman's, or the transfer matrix's) is the
    black line; at the last step both estimates from the ``final`` draws (ELBO, its SE, log
    mean w, its SE, the draws) with 2 SE bars. Right: the relative errors |log Z - estimate| /
    |log Z| of the windowed means and of the final estimates, on a log axis. ``log_z`` is each
    record's exact log Z (it follows an annealed beta); ``elbo`` and ``nis`` are totals.
    """
    import matplotlib.pyplot as plt

    scale = 1.0 / (beta * num_sites)
    elbo_end, elbo_se, nis_end, nis_se, draws = final
    smooth_elbo, smooth_nis = _rolling_mean(elbo, window), _rolling_mean(nis, window)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 4.0), constrained_layout=True)
    left.plot(steps, -log_z * scale, "k-", lw=1.0, label="exact")
    left.plot(steps, -elbo * scale, ".", color=colour, ms=2, alpha=0.35)
    left.plot(steps, -nis * scale, ".", color="C2", ms=2, alpha=0.35)
    left.plot(steps, -smooth_elbo * scale, "-", color=colour, lw=1.2, label="ELBO (the bound)")
    left.plot(steps, -smooth_nis * scale, "-", color="C2", lw=1.2, label="NIS: log mean w")
    last = steps[-1] if len(steps) else 0
    for value, se, shade in ((elbo_end, elbo_se, colour), (nis_end, nis_se, "C2")):
        left.errorbar([last], [-value * scale], yerr=[2 * se * scale], fmt="s", color=shade, ms=4)
    exact = -log_z[-1] * scale if len(log_z) else np.nan
    tail = np.abs(-smooth_elbo[len(steps) // 4 :] * scale - exact)
    spread = float(np.nanmax(tail)) if tail.size else np.nan
    if np.isfinite(exact) and np.isfinite(spread) and spread > 0:
        left.set_ylim(exact - 1.2 * spread, exact + 1.5 * spread)
    left.set_xlabel("training step")
    left.set_ylabel("free energy per site  -log Z / (beta N)")
    left.set_title(title)
    left.legend(
        fontsize=8,
        title=f"dots: a record's K = {record_particles}; lines: mean of {window} records; "
        f"squares: K = {draws:,}, 2 SE",
        title_fontsize=7,
    )
    rel = np.abs(log_z)
    with np.errstate(divide="ignore", invalid="ignore"):
        right.semilogy(steps, np.abs(log_z - smooth_elbo) / rel, "-", color=colour, label="ELBO")
        right.semilogy(steps, np.abs(log_z - smooth_nis) / rel, "-", color="C2", label="NIS")
        for value, shade in ((elbo_end, colour), (nis_end, "C2")):
            right.semilogy([last], [abs(log_z[-1] - value) / rel[-1]], "s", color=shade, ms=4)
    right.set_xlabel("training step")
    right.set_ylabel("relative error  |log Z - estimate| / |log Z|")
    right.set_title(f"relative free-energy error (lines: mean of {window} records)")
    right.legend(fontsize=8)
    return fig


def samples_figure(rows: list[tuple[str, np.ndarray]], shape: tuple[int, int]) -> Figure:
    """One row of lattices per ``(title, spins)``, spins ±1 of shape (per_row, N) drawn as
    ``shape`` images (white = +1)."""
    import matplotlib.pyplot as plt

    per_row = rows[0][1].shape[0]
    fig, axes = plt.subplots(
        len(rows), per_row, figsize=(1.6 * per_row, 1.75 * len(rows)), constrained_layout=True
    )
    for r, (title, spins) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.imshow(spins[c].reshape(shape), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_title(title, loc="left", fontsize=8)
    fig.suptitle("samples from q (white = +1)")
    return fig
