"""scVI: a zero-inflated negative binomial VAE for single-cell RNA counts.

Follows Lopez, Regier, Cole, Jordan & Yosef (2018), "Deep generative modeling for single-cell
transcriptomics", Nature Methods 15, 1053-1058 (scVI), and its reference implementation,
scvi-tools (Gayoso et al. 2022, "A Python library for probabilistic analysis of single-cell
omics data", Nature Biotechnology 40, 163-166); the ELBO and the importance-weighted bound of
Kingma & Welling (2014) and Burda, Grosse & Salakhutdinov (2016).

x_n in N^G are the UMI counts of G genes in cell n. The generative process:

- z_n ~ N(0, I_q), a low-dimensional cell state (q = 10 by default);
- the library size l_n: *observed*, log l_n = log sum_g x_ng (scvi-tools' default), or
  *latent*, log l_n ~ N(mu_l, sigma_l^2) with mu_l, sigma_l^2 the mean and variance of the
  log library size over the training cells (the log-normal prior of the paper);
- a decoder network f(z_n) gives the normalised expression rho_n = softmax(f_rho(z_n)) (a point
  of the simplex over genes) and zero-inflation logits f_pi(z_n); the mean is
  mu_ng = l_n rho_ng;
- x_ng ~ ZINB(mean mu_ng, inverse dispersion theta_g, gate sigmoid(f_pi(z_n)_g)), with one
  theta_g per gene. Pyro's ``dist.ZeroInflatedNegativeBinomial(total_count=theta,
  logits=log mu - log theta, gate_logits=pi)`` is this distribution (it matches scvi-tools'
  ``log_zinb_positive``); ``likelihood="nb"`` drops the zero inflation, ``"poisson"`` also the
  over-dispersion (theta -> infinity).

The guide is amortized (:mod:`guides.amortized`): q(z_n | x_n) = N(m(y_n), diag v(y_n)) with
y_n = log(1 + x_n), an MLP encoder, and with a latent library a second encoder
q(log l_n | x_n). Training maximises the ELBO by SVI on mini-batches of cells through the
``cells`` plate, with the analytic Gaussian KL, optionally with KL warm-up (``kl_warmup``; the
reported ELBO is always at weight 1).

Evaluation on held-out cells (a seeded, label-stratified split, ``test_fraction``) with the
trained networks: the ELBO and the importance-sampled marginal log-likelihood
log p(x_n) ~ log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n), z_k ~ q (the encoder as proposal, K
samples per cell, with a delta-method standard error: the metric of the scVI paper, and of
scvi-tools' ``get_marginal_ll``), and the reconstruction error -E_q log p(x_n | z_n, l_n) (as
scvi-tools' ``get_reconstruction_error``), all per cell. With an observed library the
likelihood is conditional on it, log p(x_n | l_n), in both.

The observation distribution :class:`ScviCounts` evaluates the ZINB log-probability summed over
genes without ever holding K particles x N cells x G genes at once: the terms that depend on
the counts alone, log Gamma(x + theta) - log Gamma(theta) - log Gamma(x + 1), are computed once
per cell (not per particle), and the rest in chunks of particles. Its numbers are those of
Pyro's distribution (tested).

Data (:mod:`zoo.single_cell`): scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs x 765 genes,
10 cell types; no download), the user's ``.h5ad`` (a counts layer or X; ``backed`` reads
mini-batches from the file), 10x ``.mtx`` directories or CSV; or a seeded simulation from this
model's own generative process (:func:`simulate_scvi`). With ``backed`` the matrix is never held
in memory whole: training reads each mini-batch's rows, and every pass over all the cells (the
runner's history records and diagnostics, the held-out evaluation, the report's tables and
figures) reads ``data_block_size`` cells at a time (:mod:`zoo.data_blocks`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

from guides.amortized import AmortizedGuide, GaussianEncoder, MLPDecoder
from zoo.collapse import CollapseReport, report_from_moments
from zoo.data_blocks import index_blocks
from zoo.diagnostics import evaluate
from zoo.errors import DataError
from zoo.model import Option, Training, ZooModel, boolean, positive_int, seed_value
from zoo.registry import register
from zoo.single_cell import CountData, InMemoryCounts, load_counts, load_pbmc68k_reduced

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

LIKELIHOODS = ("zinb", "nb", "poisson")
LIBRARY_MODES = ("observed", "latent")
#: a count matrix up to this many entries is kept dense in memory (float32) for training
DENSE_LIMIT = 1 << 25


# --------------------------------------------------------------------------------------------
# Option converters
# --------------------------------------------------------------------------------------------


def _held_out_fraction(value: Any) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{value!r} is not in [0, 1)")
    return value


# --------------------------------------------------------------------------------------------
# The observation model
# --------------------------------------------------------------------------------------------
class ScviCounts(dist.TorchDistribution):
    """p(x_n | z_n, l_n): the counts of G genes, ZINB / NB / Poisson, with the mean
    l_n softmax(f(z_n)) from a decoder, as one distribution with event shape (G,).

    ``decoder(z)`` returns a dict with ``"scale"`` (the softmax logits of the normalised
    expression) and, for ZINB, ``"gate"`` (zero-inflation logits). ``log_library`` has shape
    (..., 1). :meth:`elementwise` is the same distribution gene by gene as Pyro's
    ``ZeroInflatedNegativeBinomial`` / ``NegativeBinomial`` / ``Poisson``; :meth:`log_prob`
    gives the same numbers summed over genes, computing the count-only terms once per cell and
    the rest in chunks of at most ``chunk_budget`` (batch element, gene) pairs.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)
    chunk_budget: int = 1 << 18

    def __init__(
        self,
        decoder: nn.Module,
        z: torch.Tensor,
        log_library: torch.Tensor,
        log_theta: torch.Tensor | None,
        likelihood: str = "zinb",
        num_genes: int | None = None,
        validate_args: bool | None = False,
    ) -> None:
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
        if likelihood != "poisson" and log_theta is None:
            raise ValueError(f"the {likelihood} likelihood needs the inverse dispersions")
        self.decoder, self.z, self.log_library = decoder, z, log_library
        self.log_theta, self.likelihood = log_theta, likelihood
        if num_genes is None:
            num_genes = decoder.heads["scale"].out_features
        self.num_genes = num_genes
        batch_shape = torch.broadcast_shapes(z.shape[:-1], log_library.shape[:-1])
        super().__init__(batch_shape, torch.Size([num_genes]), validate_args=validate_args)

    def expand(self, batch_shape: torch.Size | tuple, _instance: Any = None) -> ScviCounts:
        batch_shape = torch.Size(batch_shape)
        return ScviCounts(
            self.decoder,
            self.z.expand(batch_shape + self.z.shape[-1:]),
            self.log_library.expand((*batch_shape, 1)),
            self.log_theta,
            self.likelihood,
            self.num_genes,
        )

    # -- the decoder -----------------------------------------------------------------------------
    def decode(
        self, z: torch.Tensor, log_library: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log mu, gate logits or None): log mu = log l + log softmax(f_rho(z))."""
        out = self.decoder(z)
        log_mu = log_library + torch.log_softmax(out["scale"], dim=-1)
        return log_mu, out.get("gate")

    def elementwise(self) -> dist.TorchDistribution:
        """The per-gene distribution (batch shape ``batch_shape + (G,)``), from Pyro."""
        log_mu, gate = self.decode(self.z, self.log_library)
        log_mu = log_mu.expand(self.batch_shape + self.event_shape)
        if self.likelihood == "poisson":
            return dist.Poisson(log_mu.exp(), validate_args=False)
        log_theta = self.log_theta.expand_as(log_mu)
        theta, logits = log_theta.exp(), log_mu - log_theta
        if self.likelihood == "nb":
            return dist.NegativeBinomial(total_count=theta, logits=logits, validate_args=False)
        return dist.ZeroInflatedNegativeBinomial(
            total_count=theta,
            logits=logits,
            gate_logits=gate.expand_as(log_mu),
            validate_args=False,
        )

    @property
    def mean(self) -> torch.Tensor:
        return self.elementwise().mean

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.elementwise().sample(torch.Size(sample_shape))

    # -- the log-probability ---------------------------------------------------------------------
    def _count_terms(self, x: torch.Tensor) -> torch.Tensor:
        """The terms without the latents, summed over genes: log Gamma(x + theta) -
        log Gamma(theta) - log Gamma(x + 1) (Poisson: - log Gamma(x + 1)). They vanish where
        x = 0, so only the non-zero counts are evaluated (a third of them in PBMC data)."""
        lead, genes = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, genes)
        nonzero = flat > 0
        rows, cols = nonzero.nonzero(as_tuple=True)
        values = flat[rows, cols]
        terms = -torch.lgamma(values + 1.0)
        per_cell = None
        if self.likelihood != "poisson":
            if self.log_theta.dim() != 1:  # inverse dispersions beyond one per gene: dense
                theta = self.log_theta.exp()
                dense = torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0)
                return dense.sum(-1)
            theta = self.log_theta.exp()
            terms = terms + torch.lgamma(values + theta[cols])
            # sum over a cell's non-zero genes of log Gamma(theta_g): one matrix-vector product
            per_cell = nonzero.to(theta.dtype) @ torch.lgamma(theta)
        out = torch.zeros(flat.shape[0], dtype=terms.dtype, device=terms.device)
        out = out.index_add(0, rows, terms)
        if per_cell is not None:
            out = out - per_cell
        return out.reshape(lead)

    def _latent_terms(
        self, z: torch.Tensor, log_library: torch.Tensor, x: torch.Tensor, nonzero: torch.Tensor
    ) -> torch.Tensor:
        log_mu, gate = self.decode(z, log_library)
        if self.likelihood == "poisson":
            return (x * log_mu - log_mu.exp()).sum(-1)
        log_theta = self.log_theta
        theta = log_theta.exp()
        log_theta_mu = torch.log(theta + log_mu.exp())  # log(theta + mu): 3x logaddexp's speed
        log_nb_zero = theta * (log_theta - log_theta_mu)  # log NB(0)
        if self.likelihood == "nb":
            return (log_nb_zero + x * (log_mu - log_theta_mu)).sum(-1)
        # ZINB with gate pi = sigmoid(g): log(1 - pi) = -softplus(g), and at x = 0
        # log(pi + (1 - pi) NB(0)) = logaddexp(g, log NB(0)) - softplus(g)
        observed = log_nb_zero + x * (log_mu - log_theta_mu)
        zero = torch.logaddexp(gate, log_nb_zero)
        # zero + [x > 0] (observed - zero): a select, three times faster than torch.where here
        return (zero + nonzero * (observed - zero) - F.softplus(gate)).sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value = value.to(self.z.dtype)
        const = self._count_terms(value)
        nonzero = (value > 0).to(value.dtype)
        shape = self.batch_shape
        if len(shape) < 2 or shape.numel() * self.num_genes <= self.chunk_budget:
            return const + self._latent_terms(self.z, self.log_library, value, nonzero)
        z = self.z.expand(shape + self.z.shape[-1:])
        log_library = self.log_library.expand((*shape, 1))
        per_row = shape[1:].numel() * self.num_genes
        step = max(1, self.chunk_budget // per_row)
        sliced = value.dim() == len(shape) + 1 and value.shape[0] != 1
        parts = [
            self._latent_terms(
                z[i : i + step],
                log_library[i : i + step],
                value[i : i + step] if sliced else value,
                nonzero[i : i + step] if sliced else nonzero,
            )
            for i in range(0, shape[0], step)
        ]
        return const + torch.cat(parts, dim=0)


# --------------------------------------------------------------------------------------------
# A guide over several amortized sites
# --------------------------------------------------------------------------------------------
class ScviGuide(AmortizedGuide):
    """q(z_n | x_n) (and q(log l_n | x_n) with a latent library) for every cell in the plate.

    :class:`~guides.amortized.AmortizedGuide` with extra sites: every encoder reads the same
    mini-batch inside the one data plate (a second plate of the same name would draw its own
    subsample). ``extra`` maps a site name to its encoder, registered as ``<site>_encoder``.
    """

    def __init__(
        self,
        owner: Any,
        encoder: nn.Module,
        extra: dict[str, nn.Module] | None = None,
        *,
        site: str = "z",
        module_name: str = "encoder",
    ) -> None:
        super().__init__(owner, encoder, site=site, module_name=module_name)
        self.extra = dict(extra or {})

    def __call__(self, subsample_size: int | None = None, **kwargs: Any) -> torch.Tensor:
        pyro.module(self.module_name, self.encoder, update_module_params=True)
        for site, encoder in self.extra.items():
            pyro.module(f"{site}_encoder", encoder, update_module_params=True)
        with self.owner.plate(subsample_size) as idx:
            x = self.owner.encoder_input(None if subsample_size is None else idx)
            z = pyro.sample(self.site, self.encoder.distribution(x))
            for site, encoder in self.extra.items():
                pyro.sample(site, encoder.distribution(x))
        return z

    def bind(self, owner: Any) -> ScviGuide:
        return ScviGuide(
            owner, self.encoder, self.extra, site=self.site, module_name=self.module_name
        )

    def sync(self) -> nn.Module:
        for site, encoder in self.extra.items():
            pyro.module(f"{site}_encoder", encoder, update_module_params=True)
        return super().sync()


# --------------------------------------------------------------------------------------------
# A simulator: the model's own generative process with a known decoder
# --------------------------------------------------------------------------------------------
@dataclass
class ScviSimulation:
    """Counts drawn from the scVI generative process, with every true quantity."""

    counts: np.ndarray  # (N, G), integers stored as float32
    z: np.ndarray  # (N, q)
    log_library: np.ndarray  # (N,)
    log_inverse_dispersion: np.ndarray  # (G,)
    library_log_mean: float
    library_log_scale: float
    decoder: MLPDecoder
    likelihood: str

    @property
    def inverse_dispersion(self) -> np.ndarray:
        return np.exp(self.log_inverse_dispersion)


def make_decoder(latent_dim: int, num_genes: int, hidden: list[int], likelihood: str) -> MLPDecoder:
    """The scVI decoder: an MLP trunk, a softmax-logit head and (ZINB) a gate head."""
    heads = {"scale": num_genes}
    if likelihood == "zinb":
        heads["gate"] = num_genes
    return MLPDecoder(latent_dim, heads, hidden, dtype=torch.float32)


def simulate_scvi(
    num_cells: int = 1000,
    num_genes: int = 100,
    *,
    latent_dim: int = 2,
    hidden: int = 32,
    likelihood: str = "zinb",
    library_log_mean: float = math.log(1500.0),
    library_log_scale: float = 0.3,
    dispersion_range: tuple[float, float] = (0.5, 8.0),
    dropout: float = 0.1,
    seed: int = 0,
) -> ScviSimulation:
    """Draw ``num_cells`` cells from the scVI model with a seeded random decoder.

    z ~ N(0, I), log l ~ N(``library_log_mean``, ``library_log_scale``^2), theta_g log-uniform
    on ``dispersion_range``, the decoder a one-hidden-layer ReLU MLP with N(0, 1) first-layer
    weights (so that expression varies with z), softmax logits of spread about 1, and gate
    logits around logit(``dropout``); counts from :class:`ScviCounts`. Same seed, same data.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
    gen = torch.Generator().manual_seed(seed)
    decoder = make_decoder(latent_dim, num_genes, [hidden], likelihood)
    with torch.no_grad():
        first = decoder.trunk[0]
        first.weight.copy_(torch.randn(first.weight.shape, generator=gen))
        first.bias.copy_(0.5 * torch.randn(first.bias.shape, generator=gen))
        head = decoder.heads["scale"]
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) / math.sqrt(hidden))
        head.bias.copy_(torch.randn(head.bias.shape, generator=gen))
        if "gate" in decoder.heads:
            gate = decoder.heads["gate"]
            gate.weight.copy_(
                0.5 * torch.randn(gate.weight.shape, generator=gen) / math.sqrt(hidden)
            )
            logit = math.log(dropout / (1.0 - dropout))
            gate.bias.copy_(logit + 0.5 * torch.randn(gate.bias.shape, generator=gen))
    z = torch.randn(num_cells, latent_dim, generator=gen)
    log_library = library_log_mean + library_log_scale * torch.randn(num_cells, generator=gen)
    lo, hi = (math.log(v) for v in dispersion_range)
    log_theta = lo + (hi - lo) * torch.rand(num_genes, generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        counts = ScviCounts(decoder, z, log_library[:, None], log_theta, likelihood).sample()
    return ScviSimulation(
        counts=counts.numpy().astype(np.float32),
        z=z.numpy(),
        log_library=log_library.numpy(),
        log_inverse_dispersion=log_theta.numpy(),
        library_log_mean=library_log_mean,
        library_log_scale=library_log_scale,
        decoder=decoder,
        likelihood=likelihood,
    )


@torch.no_grad()
def grid_log_likelihood(
    decoder: nn.Module,
    log_theta: torch.Tensor | None,
    likelihood: str,
    counts: torch.Tensor,
    log_library: torch.Tensor,
    *,
    half_width: float = 6.0,
    points: int = 301,
) -> torch.Tensor:
    """log p(x_n | l_n) = log of the integral of N(z; 0, I) p(x_n | z, l_n) over a 1-D or 2-D
    latent, by the trapezoid-free Riemann sum on a uniform grid over [-w, w]^q (spectrally
    accurate for a smooth integrand that vanishes at the edges). For tests on simulated data."""
    q = decoder.latent_dim
    if q not in (1, 2):
        raise ValueError("the grid integral is for a 1- or 2-dimensional latent")
    axis = torch.linspace(-half_width, half_width, points)
    step = float(axis[1] - axis[0])
    grid = torch.cartesian_prod(*([axis] * q)).reshape(-1, q)
    log_prior = -0.5 * grid.pow(2).sum(-1) - 0.5 * q * math.log(2 * math.pi)
    # one decoder pass per grid point, shared by every cell: batch shape (grid, cells)
    lik = ScviCounts(
        decoder, grid.unsqueeze(1), log_library.reshape(1, -1, 1), log_theta, likelihood
    )
    log_joint = lik.log_prob(counts) + log_prior.unsqueeze(1)
    return torch.logsumexp(log_joint, 0) + q * math.log(step)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
@register
class SingleCellVI(ZooModel):
    name = "scvi"
    title = "scVI: ZINB VAE for single-cell counts"
    application = "variational autoencoders"
    reference = "Lopez, Regier, Cole, Jordan & Yosef (2018), Nature Methods 15:1053"
    options = (
        Option(
            "dataset",
            str,
            "pbmc68k-reduced",
            "bundled data: scanpy's pbmc68k_reduced counts, or a simulation from the model",
            choices=("pbmc68k-reduced", "simulated"),
        ),
        Option(
            "layer", str, "auto", "h5ad matrix: auto (layers/counts, else X), X, raw or a layer"
        ),
        Option("label_key", str, "auto", "obs column with cell types (auto: a usual name)"),
        Option("backed", boolean, False, "read h5ad mini-batches from disk (CSR or dense X)"),
        Option("allow_non_counts", boolean, False, "proceed (with a warning) on non-integers"),
        Option("latent_dim", positive_int, 10, "size q of the cell embedding z"),
        Option("hidden", positive_int, 128, "width of the encoder's and decoder's hidden layers"),
        Option("depth", positive_int, 1, "hidden layers in each network"),
        Option("likelihood", str, "zinb", "count likelihood", choices=LIKELIHOODS),
        Option(
            "library", str, "observed", "library size: observed or latent", choices=LIBRARY_MODES
        ),
        Option("test_fraction", _held_out_fraction, 0.1, "fraction of cells held out (0: none)"),
        Option("split_seed", seed_value, 0, "seed of the train/held-out split"),
        Option("test_particles", positive_int, 1000, "K of the held-out marginal likelihood"),
        Option("num_cells", positive_int, 1000, "cells of the simulated data set"),
        Option("num_genes", positive_int, 200, "genes of the simulated data set"),
        Option("data_seed", seed_value, 0, "seed of the simulated data set"),
    )
    data_help = (
        ".h5ad file (counts layer or X; --layer, --backed), 10x matrix directory "
        "(matrix.mtx, genes.tsv/features.tsv, barcodes.tsv) or CSV (cells x genes) of counts"
    )
    guides = ("gaussian",)
    default_guide = "gaussian"
    default_elbo = "trace"
    elbo_for_guide = {"gaussian": "meanfield"}
    # 200 epochs of 5 mini-batches: on the 630 PBMC training cells the held-out likelihood
    # peaks around here and then falls as the decoder overfits (benchmarks/README.md)
    # a history record scores 16 particles of every training cell (0.2 s): 20 records a run
    training = Training(
        steps=1000,
        lr=3e-3,
        quick_steps=250,
        lr_final_factor=0.1,
        particles=1,
        batch_size=128,
        records=20,
    )
    data_plate = "cells"
    max_plate_nesting = 1
    #: a (particle, cell) pair costs a decoder pass and G genes (:class:`ScviCounts` chunks the
    #: genes itself): smaller chunks of the diagnostics allocate less at once
    eval_chunk_budget = 100_000
    #: cells per block of every full pass over the data (the runner's initial trace, history
    #: records and diagnostics, the report's tables and figures): memory is bounded by a block,
    #: so a backed .h5ad is never read whole
    data_block_size = 4096
    dtype = torch.float32

    # -- data -----------------------------------------------------------------------------------
    def setup(self, data: Any, **opts: Any) -> None:
        from zoo.models.vae import split_indices

        self.likelihood_name = opts["likelihood"]
        self.library_mode = opts["library"]
        self.latent_dim = opts["latent_dim"]
        self.hidden = [opts["hidden"]] * opts["depth"]
        self.test_particles = opts["test_particles"]
        self.simulation: ScviSimulation | None = None
        label_key = None if opts["label_key"] in ("auto", "") else opts["label_key"]
        if data is None and opts["dataset"] == "simulated":
            sim = simulate_scvi(
                opts["num_cells"],
                opts["num_genes"],
                latent_dim=self.latent_dim,
                hidden=opts["hidden"],
                likelihood=self.likelihood_name,
                seed=opts["data_seed"],
            )
            self.simulation = sim
            n, g = sim.counts.shape
            self.data = CountData(
                InMemoryCounts(sim.counts),
                np.array([f"sim{i + 1}" for i in range(n)], dtype=object),
                np.array([f"gene{j + 1}" for j in range(g)], dtype=object),
                None,
                None,
                f"simulated scVI counts (seed {opts['data_seed']})",
            )
        elif data is None:
            self.data = load_pbmc68k_reduced(backed=opts["backed"])
        elif isinstance(data, str | Path):
            self.data = load_counts(
                data,
                layer=opts["layer"],
                backed=opts["backed"],
                label_key=label_key,
                allow_non_counts=opts["allow_non_counts"],
            )
        elif isinstance(data, CountData):
            self.data = data
        else:
            values = np.asarray(data)
            if values.ndim != 2:
                raise DataError(f"the count array has shape {values.shape}; expected cells x genes")
            from zoo.single_cell import check_counts

            check_counts(values, "the count array", allow_non_counts=opts["allow_non_counts"])
            n, g = values.shape
            self.data = CountData(
                InMemoryCounts(values),
                np.array([f"cell{i + 1}" for i in range(n)], dtype=object),
                np.array([f"gene{j + 1}" for j in range(g)], dtype=object),
                None,
                None,
                "count array",
            )
        d = self.data
        totals = d.source.totals()
        empty = int((totals <= 0).sum())
        if empty:
            raise DataError(f"{d.description}: {empty} cell(s) with no counts; filter them first")
        n = d.num_cells
        if opts["test_fraction"] > 0:
            train, test = split_indices(n, d.labels, opts["test_fraction"], opts["split_seed"])
            if len(train) < 2 or len(test) < 1:
                raise DataError(
                    f"{n} cells leave {len(train)} for training and {len(test)} held out"
                )
        else:
            train, test = np.arange(n), np.zeros(0, dtype=np.int64)
        self.train_index, self.test_index = train, test
        self.gene_names = d.gene_names
        self.num_genes = d.num_genes
        self.source = d.source.subset(train) if opts["test_fraction"] > 0 else d.source
        self.test_source = d.source.subset(test) if len(test) else None
        self.cell_names, self.cell_names_test = d.cell_names[train], d.cell_names[test]
        self.labels = None if d.labels is None else d.labels[train]
        self.labels_test = None if d.labels is None else d.labels[test]
        log_totals = np.log(totals)
        self.log_library = self.tensor(log_totals[train], self.dtype)
        self.log_library_test = self.tensor(log_totals[test], self.dtype)
        # the log-normal prior of a latent library: moments over the training cells
        self.library_log_mean = float(log_totals[train].mean())
        self.library_log_scale = float(max(log_totals[train].std(), 1e-3))
        self.num_data = len(train)
        self._reset_cache()
        self.encoder = self.library_encoder = self.decoder = None

    def _reset_cache(self) -> None:
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        dense_ok = not self.source.backed and self.num_data * self.num_genes <= DENSE_LIMIT
        self._dense = self._read_all() if dense_ok else None

    def _read_all(self) -> torch.Tensor:
        rows = self.source.to_csr().toarray()
        return torch.as_tensor(rows, dtype=self.dtype, device=self.device)

    # -- the data plate and what the networks see -------------------------------------------------
    def plate(self, subsample_size: int | None = None) -> pyro.plate:
        return pyro.plate(self.data_plate, self.num_data, subsample_size=subsample_size, dim=-1)

    def create_plates(self, subsample_size: int | None = None) -> pyro.plate:
        return self.plate(subsample_size)

    def counts(self, idx: torch.Tensor | None) -> torch.Tensor:
        """The count rows of the cells ``idx`` (all training cells for None), float32.

        Rows of a backed file are read on demand and only the last mini-batch is kept; every
        full pass of the zoo goes through :meth:`count_blocks` instead of ``idx=None``.
        """
        if idx is None and self._dense is not None:
            return self._dense
        if idx is None:
            return self._read_all()
        cached = self._batch
        if cached is not None and cached[0].shape == idx.shape and torch.equal(cached[0], idx):
            return cached[1]
        if self._dense is not None:
            tensor = self._dense[idx]
        else:
            rows = self.source.rows(idx.cpu().numpy())
            tensor = torch.as_tensor(rows, dtype=self.dtype, device=self.device)
        self._batch = (idx, tensor)
        return tensor

    def index_blocks(self) -> list[torch.Tensor]:
        """Consecutive blocks of at most ``data_block_size`` cell indices, covering the cells."""
        return index_blocks(self.num_data, self.data_block_size, self.device)

    def count_blocks(self) -> Iterator[torch.Tensor]:
        """The count rows, a block of cells at a time (see :meth:`index_blocks`)."""
        for idx in self.index_blocks():
            yield self.counts(idx)

    def encoder_input(self, idx: torch.Tensor | None) -> torch.Tensor:
        return torch.log1p(self.counts(idx))

    def observed_log_library(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.log_library if idx is None else self.log_library[idx]

    def on_test_split(self) -> SingleCellVI:
        """The same model (the same networks and parameters) on the held-out cells."""
        if self.test_source is None:
            raise DataError("no held-out cells: the model was built with test_fraction=0")
        other = copy.copy(self)
        other.source, other.test_source = self.test_source, self.source
        other.log_library, other.log_library_test = self.log_library_test, self.log_library
        other.labels, other.labels_test = self.labels_test, self.labels
        other.cell_names, other.cell_names_test = self.cell_names_test, self.cell_names
        other.train_index, other.test_index = self.test_index, self.train_index
        other.num_data = self.test_source.num_cells
        other._reset_cache()
        return other

    # -- networks, model, guide -------------------------------------------------------------------
    def build_networks(self) -> None:
        """Fresh encoder(s) and decoder (torch's RNG: the runner seeds it first)."""
        g, q = self.num_genes, self.latent_dim
        self.encoder = GaussianEncoder(g, q, self.hidden, dtype=self.dtype).to(self.device)
        self.decoder = make_decoder(q, g, self.hidden, self.likelihood_name).to(self.device)
        self.library_encoder = None
        if self.library_mode == "latent":
            enc = GaussianEncoder(g, 1, self.hidden, dtype=self.dtype)
            with torch.no_grad():  # start q(log l | x) at the prior: mean mu_l, sd sigma_l
                enc.head.bias[0] = self.library_log_mean
                enc.head.bias[1] = math.log(math.expm1(self.library_log_scale))
            self.library_encoder = enc.to(self.device)

    def ensure_networks(self) -> None:
        if self.decoder is None:
            self.build_networks()

    def prior(self) -> dist.TorchDistribution:
        zeros = torch.zeros(self.latent_dim, dtype=self.dtype, device=self.device)
        return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)

    def library_prior(self) -> dist.TorchDistribution:
        loc = self.tensor([self.library_log_mean], self.dtype)
        scale = self.tensor([self.library_log_scale], self.dtype)
        return dist.Normal(loc, scale, validate_args=False).to_event(1)

    def log_inverse_dispersion(self) -> torch.Tensor | None:
        """log theta_g, one per gene (scvi-tools' ``px_r``); None for the Poisson likelihood."""
        if self.likelihood_name == "poisson":
            return None
        init = torch.zeros(self.num_genes, dtype=self.dtype, device=self.device)
        return pyro.param("log_inverse_dispersion", lambda: init.clone())

    def model(self, subsample_size: int | None = None) -> None:
        self.ensure_networks()
        decoder = pyro.module("decoder", self.decoder, update_module_params=True)
        log_theta = self.log_inverse_dispersion()
        with self.plate(subsample_size) as idx:
            batch = None if subsample_size is None else idx
            x = self.counts(batch)
            z = pyro.sample("z", self.prior())
            if self.library_mode == "latent":
                log_library = pyro.sample("library", self.library_prior())
            else:
                log_library = self.observed_log_library(batch).unsqueeze(-1)
            likelihood = ScviCounts(
                decoder, z, log_library, log_theta, self.likelihood_name, self.num_genes
            )
            pyro.sample("x", likelihood, obs=x)

    def build_guide(self, name: str) -> ScviGuide:
        if name not in self.guides:
            return super().build_guide(name)  # raises the usual error
        self.build_networks()
        extra = {"library": self.library_encoder} if self.library_encoder is not None else {}
        return ScviGuide(self, self.encoder, extra)

    # -- the simulation's truth -------------------------------------------------------------------
    def set_true_parameters(self) -> None:
        """Write the simulation's decoder and inverse dispersions into the param store."""
        sim = self.simulation
        if sim is None:
            raise DataError("set_true_parameters needs dataset='simulated'")
        self.ensure_networks()
        store = pyro.get_param_store()
        for key, value in sim.decoder.state_dict().items():
            store[f"decoder$$${key}"] = value.detach().clone().to(self.device)
        if self.likelihood_name != "poisson":
            store["log_inverse_dispersion"] = self.tensor(sim.log_inverse_dispersion, self.dtype)
        pyro.module("decoder", self.decoder, update_module_params=True)

    # -- fitted quantities ------------------------------------------------------------------------
    @torch.no_grad()
    def fitted_log_theta(self) -> torch.Tensor | None:
        value = self.log_inverse_dispersion()
        return None if value is None else value.detach()

    @torch.no_grad()
    def posterior_means(self, guide: ScviGuide, held_out: bool = False) -> dict[str, np.ndarray]:
        """E_q[z | x] (and E_q[log l | x]) of every training (or held-out) cell."""
        owner = self.on_test_split() if held_out else self
        guide.sync()
        out: dict[str, list[np.ndarray]] = {"z": []}
        if guide.extra:
            out["library"] = []
        for idx in owner.index_blocks():
            y = owner.encoder_input(idx)
            out["z"].append(guide.encoder.distribution(y).mean.cpu().numpy())
            for site, encoder in guide.extra.items():
                out[site].append(encoder.distribution(y).mean.cpu().numpy())
        return {
            k: np.concatenate(v) if v else np.zeros((0, self.latent_dim)) for k, v in out.items()
        }

    @torch.no_grad()
    def collapse(self, guide: ScviGuide) -> CollapseReport:
        """Posterior-collapse diagnostics of q(z | x) over the training cells, from the
        encoder's means and variances (a block of cells at a time)."""
        guide.sync()
        loc, var = [], []
        for idx in self.index_blocks():
            q = guide.encoder.distribution(self.encoder_input(idx)).base_dist
            loc.append(q.loc)
            var.append(q.scale.pow(2))
        return report_from_moments(torch.cat(loc), torch.cat(var), kl_method="analytic")

    def latent_means_table(self, guide: ScviGuide) -> pd.DataFrame:
        """Per-cell posterior means E_q[z | x] (``z1``...), train and held-out cells, with the
        cell name, split and label: what the run saves as ``latent_means.csv``."""
        import pandas as pd

        frames = []
        splits = [("train", False)] + ([("held-out", True)] if self.test_source else [])
        for split, held_out in splits:
            means = self.posterior_means(guide, held_out)
            frame = pd.DataFrame(means["z"], columns=[f"z{d + 1}" for d in range(self.latent_dim)])
            if "library" in means:
                frame["log_library"] = means["library"][:, 0]
            names = self.cell_names_test if held_out else self.cell_names
            labels = self.labels_test if held_out else self.labels
            frame.insert(0, "cell", names)
            frame.insert(1, "split", split)
            if labels is not None:
                frame.insert(2, self.data.label_key or "label", labels)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def save_latent_means(self, guide: ScviGuide, path: str | Path) -> Path:
        """Write :meth:`latent_means_table` as CSV."""
        path = Path(path)
        self.latent_means_table(guide).to_csv(path, index=False)
        return path

    def tables(self, run: RunView) -> dict[str, pd.DataFrame]:
        """Tables a run saves next to its figures, by file stem (``<stem>.csv``)."""
        run.guide.sync()
        return {"latent_means": self.latent_means_table(run.guide)}

    @torch.no_grad()
    def generate(self, num_cells: int, seed: int = 0) -> np.ndarray:
        """Synthetic cells from the fitted generative model: z ~ N(0, I); l resampled from the
        training cells' libraries (observed) or from the log-normal prior (latent)."""
        return np.concatenate(list(self.generate_blocks(num_cells, seed)))

    @torch.no_grad()
    def generate_blocks(self, num_cells: int, seed: int = 0) -> Iterator[np.ndarray]:
        """:meth:`generate`, ``data_block_size`` cells at a time (the same cells)."""
        self.ensure_networks()
        decoder = pyro.module("decoder", self.decoder, update_module_params=True)
        log_theta = self.fitted_log_theta()
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for block in index_blocks(num_cells, self.data_block_size):
                n = len(block)
                z = torch.randn(n, self.latent_dim, generator=gen, dtype=self.dtype)
                if self.library_mode == "latent":
                    noise = torch.randn(n, 1, generator=gen, dtype=self.dtype)
                    log_library = self.library_log_mean + self.library_log_scale * noise
                else:
                    pick = torch.randint(self.num_data, (n,), generator=gen)
                    log_library = self.log_library.cpu()[pick].unsqueeze(-1)
                z, log_library = z.to(self.device), log_library.to(self.device)
                lik = ScviCounts(
                    decoder, z, log_library, log_theta, self.likelihood_name, self.num_genes
                )
                yield lik.sample().cpu().numpy()

    def training_counts(self) -> np.ndarray:
        """Every training cell's counts as one dense array (small data sets only)."""
        return self.counts(None).cpu().numpy()

    # -- reporting --------------------------------------------------------------------------------
    @torch.no_grad()
    def held_out_diagnostics(self, guide: ScviGuide, num_particles: int) -> dict[str, Any]:
        """On the held-out cells, with the trained networks: the ELBO, the importance-sampled
        marginal log-likelihood (IWAE, K = ``num_particles`` per cell) with standard errors,
        and the reconstruction error -E_q log p(x | z, l), totals and per cell."""
        test = self.on_test_split()
        d = evaluate(test, guide.bind(test), num_particles=num_particles, with_khat=False)
        n = d.num_data
        return {
            "num_cells": n,
            "num_particles": d.num_particles,
            "elbo": d.elbo,
            "elbo_se": d.elbo_se,
            "marginal_log_likelihood": d.iwae,
            "marginal_log_likelihood_se": d.iwae_se,
            "iwae_minus_elbo": d.iwae - d.elbo,
            "reconstruction_error": -d.expected_log_likelihood,
            "kl": d.kl,
            "kl_by_site": d.kl_by_site,
            "per_cell": {
                "elbo": d.elbo / n,
                "elbo_se": d.elbo_se / n,
                "marginal_log_likelihood": d.iwae / n,
                "marginal_log_likelihood_se": d.iwae_se / n,
                "iwae_minus_elbo": (d.iwae - d.elbo) / n,
                "reconstruction_error": -d.expected_log_likelihood / n,
                "kl": d.kl / n,
            },
        }

    @torch.no_grad()
    def reconstruction_error(self, guide: ScviGuide, num_particles: int = 16) -> float:
        """-E_q log p(x | z, l) per training cell (scvi-tools' reconstruction loss)."""
        d = evaluate(self, guide, num_particles=num_particles, with_khat=False)
        return -d.expected_log_likelihood / d.num_data

    def gene_statistics(self, seed: int = 0) -> tuple[dict[str, np.ndarray], ...]:
        """Per-gene statistics of the training cells and of as many generated ones, each
        accumulated a block of cells at a time."""
        real = gene_statistics(c.cpu().numpy() for c in self.count_blocks())
        fake = gene_statistics(self.generate_blocks(self.num_data, seed))
        return real, fake

    def generated_vs_real(self, seed: int = 0) -> dict[str, float]:
        """How synthetic cells (as many as training cells) match the real ones gene by gene:
        correlations of log mean, log variance and zero fraction across genes."""
        real, fake = self.gene_statistics(seed)

        def corr(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan

        return {
            "corr_log_mean": corr(np.log1p(real["mean"]), np.log1p(fake["mean"])),
            "corr_log_variance": corr(np.log1p(real["variance"]), np.log1p(fake["variance"])),
            "corr_zero_fraction": corr(real["zero_fraction"], fake["zero_fraction"]),
            "mean_abs_diff_zero_fraction": float(
                np.abs(real["zero_fraction"] - fake["zero_fraction"]).mean()
            ),
            "zero_fraction_real": float(real["zero_fraction"].mean()),
            "zero_fraction_generated": float(fake["zero_fraction"].mean()),
        }

    def summary(self, guide: ScviGuide, guide_name: str) -> dict[str, Any]:
        guide.sync()
        log_theta = self.fitted_log_theta()
        out: dict[str, Any] = {
            "data": self.data.description,
            "likelihood": self.likelihood_name,
            "library": self.library_mode,
            "num_genes": self.num_genes,
            "num_train": self.num_data,
            "num_test": len(self.test_index),
            "label_key": self.data.label_key,
            "library_log_mean": self.library_log_mean,
            "library_log_scale": self.library_log_scale,
            "reconstruction_error_per_cell": self.reconstruction_error(guide),
        }
        if log_theta is not None:
            theta = log_theta.exp().cpu().numpy()
            out["inverse_dispersion"] = {
                "median": float(np.median(theta)),
                "q10": float(np.quantile(theta, 0.1)),
                "q90": float(np.quantile(theta, 0.9)),
            }
        if self.test_source is not None:
            out["test"] = self.held_out_diagnostics(guide, self.test_particles)
        report = self.collapse(guide)
        out["collapse"] = {
            "kl_per_dim": report.kl_per_dim,
            "activity": report.activity,
            "active_units": report.active_units,
            "activity_threshold": report.threshold,
            "latent_dim": report.latent_dim,
        }
        out["generated_vs_real"] = self.generated_vs_real()
        if self.simulation is not None and log_theta is not None:
            truth = self.simulation.log_inverse_dispersion
            fitted = log_theta.cpu().numpy()
            out["simulation"] = {
                "corr_log_inverse_dispersion": float(np.corrcoef(truth, fitted)[0, 1]),
                "median_abs_error_log_inverse_dispersion": float(np.median(np.abs(truth - fitted))),
            }
        return out

    def plots(self, run: RunView) -> dict[str, Figure]:
        from zoo.models.vae import plot_kl_per_dim, plot_training

        guide: ScviGuide = run.guide
        guide.sync()
        self.ensure_networks()
        means = self.posterior_means(guide)["z"]
        figures = {
            "latent_embedding": plot_latent_embedding(means, self.labels, self.title),
            "generated_vs_real": plot_generated_vs_real(
                *self.gene_statistics(), self.title, self.num_data
            ),
            "kl_per_dim": plot_kl_per_dim(self.collapse(guide), self.title),
        }
        history = run.history
        if "kl_weight" in history and (history["kl_weight"] < 1).any():
            figures["training"] = plot_training(history, self.title)
        return figures


# --------------------------------------------------------------------------------------------
# Statistics and figures
# --------------------------------------------------------------------------------------------
def gene_statistics(counts: np.ndarray | Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Per gene: mean, variance (divisor N) and fraction of zeros over cells.

    ``counts`` is a cells x genes array, or an iterable of such blocks of cells (accumulated
    block by block: Chan, Golub & LeVeque's pairwise update of the sum of squared deviations).
    """
    blocks = [counts] if isinstance(counts, np.ndarray) else counts
    n, mean, m2, zeros = 0, None, None, None
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        k = block.shape[0]
        if k == 0:
            continue
        b_mean = block.mean(0)
        b_m2 = ((block - b_mean) ** 2).sum(0)
        b_zeros = (block == 0).sum(0)
        if mean is None:
            n, mean, m2, zeros = k, b_mean, b_m2, b_zeros
            continue
        delta = b_mean - mean
        total = n + k
        mean = mean + delta * (k / total)
        m2 = m2 + b_m2 + delta**2 * (n * k / total)
        zeros = zeros + b_zeros
        n = total
    if mean is None:
        raise ValueError("no cells")
    return {"mean": mean, "variance": m2 / n, "zero_fraction": zeros / n}


def embed_2d(means: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """A 2-D projection of the latent means: ``"pca"`` or ``"tsne"`` (scikit-learn)."""
    centred = means - means.mean(0)
    if means.shape[1] <= 2:
        return np.column_stack([centred, np.zeros((len(means), 2 - means.shape[1]))])
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(5.0, (len(means) - 1) / 3.0)))
        tsne = TSNE(2, init="pca", random_state=seed, perplexity=perplexity)
        return tsne.fit_transform(centred)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_latent_embedding(
    means: np.ndarray, labels: np.ndarray | None, title: str, max_tsne: int = 3000
) -> Figure:
    """The cells' posterior means E_q[z | x] in 2-D (PCA, and t-SNE for up to ``max_tsne``
    cells), coloured by cell type."""
    import matplotlib.pyplot as plt

    methods = ["pca"] + (["tsne"] if len(means) <= max_tsne and means.shape[1] > 2 else [])
    fig, axes = plt.subplots(
        1, len(methods), figsize=(5.2 * len(methods) + 2.6, 4.6), constrained_layout=True
    )
    axes = np.atleast_1d(axes)
    if labels is not None:
        names, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    else:
        names, codes = np.array(["cells"]), np.zeros(len(means), dtype=int)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for ax, method in zip(axes, methods, strict=True):
        xy = embed_2d(means, method)
        for k, name in enumerate(names):
            sel = codes == k
            ax.scatter(xy[sel, 0], xy[sel, 1], s=7, alpha=0.8, color=cmap(k % cmap.N), label=name)
        label = "PCA" if method == "pca" else "t-SNE"
        ax.set_title(f"{label} of E_q[z | x] (training cells)")
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is not None:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2)
    fig.suptitle(f"{title}: cell embedding")
    return fig


def plot_generated_vs_real(
    real: dict[str, np.ndarray], generated: dict[str, np.ndarray], title: str, num_cells: int
) -> Figure:
    """Per gene, real against synthetic cells (:func:`gene_statistics` of each): the
    mean-variance relation, the zero fraction against the mean, and the zero fraction of each
    gene, generated against real."""
    import matplotlib.pyplot as plt

    r, g = real, generated
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), constrained_layout=True)
    for stats, name, color in ((r, "real", "C0"), (g, "generated", "C3")):
        axes[0].scatter(stats["mean"], stats["variance"], s=5, alpha=0.6, color=color, label=name)
        axes[1].scatter(
            stats["mean"], stats["zero_fraction"], s=5, alpha=0.6, color=color, label=name
        )
    grid = np.logspace(np.log10(max(r["mean"].min(), 1e-3)), np.log10(r["mean"].max()), 50)
    axes[0].plot(grid, grid, "k--", lw=1, label="Poisson (var = mean)")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("gene mean count")
    axes[0].set_ylabel("gene variance")
    axes[0].set_title("mean-variance per gene")
    axes[1].plot(grid, np.exp(-grid), "k--", lw=1, label="Poisson exp(-mean)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("gene mean count")
    axes[1].set_ylabel("fraction of zero counts")
    axes[1].set_title("zeros per gene")
    axes[2].scatter(r["zero_fraction"], g["zero_fraction"], s=5, alpha=0.6, color="C2")
    axes[2].plot([0, 1], [0, 1], "k--", lw=1)
    axes[2].set_xlabel("zero fraction, real cells")
    axes[2].set_ylabel("zero fraction, generated cells")
    axes[2].set_title("zero fraction per gene")
    for ax in axes[:2]:
        ax.legend(fontsize=8, markerscale=2)
    fig.suptitle(f"{title}: {num_cells} generated cells against as many real ones")
    return fig
