"""``scvi``: the registered scVI model, bound to cells as a value.

Lopez, Regier, Cole, Jordan & Yosef (2018), "Deep generative modeling for single-cell
transcriptomics", Nature Methods 15, 1053-1058, "Methods", and scvi-tools (Gayoso et al. 2022,
Nature Biotechnology 40, 163-166): the generative process, the amortized guide, training by
SVI on mini-batches of cells, and the held-out evaluation (the importance-sampled marginal
log-likelihood of ``get_marginal_ll``, the reconstruction error of
``get_reconstruction_error``). The model reads a :class:`Cells` value; the held-out numbers,
tables and figures are its own methods on ``self.on_test_split()``
(:meth:`~zoo.models.amortized.AmortizedModel.with_data`). See :mod:`zoo.models.scvi` for the
model in full.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from guides.amortized import AmortizedGuide, GaussianEncoder
from zoo.data_blocks import index_blocks
from zoo.diagnostics import evaluate, run_subsample
from zoo.errors import DataError
from zoo.model import DataPlate, Guide, Option, Training, boolean, positive_int, seed_value
from zoo.models.amortized import (
    AmortizedModel,
    CollapseReport,
    plot_kl_per_dim,
    plot_training,
    report_from_moments,
    split_indices,
)
from zoo.models.scvi.anndata_io import (
    anndata_available,
    latent_adata_of,
)
from zoo.models.scvi.counts import (
    CountData,
    CountSource,
    InMemoryCounts,
    compare_gene_statistics,
    gene_statistics,
    select_genes,
)
from zoo.models.scvi.data import GENES_IN_ROWS_CSV_ONLY, load_pbmc68k_reduced, user_count_data
from zoo.models.scvi.figures import plot_generated_vs_real, plot_latent_embedding
from zoo.models.scvi.genes import GeneSelection, highly_variable_genes
from zoo.models.scvi.likelihood import LIKELIHOODS, ScviCounts
from zoo.models.scvi.simulate import ScviSimulation, make_decoder, simulate_scvi
from zoo.models.scvi.work import WorkClock
from zoo.options import fraction_below_one
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

LIBRARY_MODES = ("observed", "latent")
#: a count matrix up to this many entries is kept dense in memory (float32) for training
DENSE_LIMIT = 1 << 25


@dataclass(frozen=True, eq=False)
class Cells:
    """Cells an scVI model reads (:meth:`~zoo.models.amortized.AmortizedModel.with_data`): their
    counts, log library sizes log sum_g x_ng, names and cell-type labels (or None)."""

    source: CountSource
    log_library: torch.Tensor
    names: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.source.num_cells


@register
class SingleCellVI(AmortizedModel):
    """scVI (Lopez et al. 2018, "Methods"): z_n ~ N(0, I), an observed or log-normal library
    size l_n, counts x_ng ~ ZINB / NB / Poisson with mean l_n softmax(f(z_n))_g and one inverse
    dispersion per gene; amortized Gaussian q(z_n | x_n) (and q(log l_n | x_n)) reading
    log(1 + x_n). Bound to a :class:`Cells` value: the held-out metrics are the same methods on
    ``self.on_test_split()``, as scvi-tools' ``get_marginal_ll(adata=...)``."""

    name = "scvi"
    title = "scVI: ZINB VAE for single-cell counts"
    application = "Single-cell ZINB VAE (scVI)"
    smoke_options = {"test_particles": 50}
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
        Option(
            "genes_in_rows",
            boolean,
            False,
            "a CSV --data holds one row per gene and one column per cell (R's write.csv of a "
            "count matrix); false: one row per cell",
        ),
        Option(
            "n_top_genes",
            positive_int,
            None,
            "keep the N highly variable genes of the training cells (scanpy's flavor "
            "'seurat'); None: every gene",
        ),
        Option("latent_dim", positive_int, 10, "size q of the cell embedding z"),
        Option("hidden", positive_int, 128, "width of the encoder's and decoder's hidden layers"),
        Option("depth", positive_int, 1, "hidden layers in each network"),
        Option("likelihood", str, "zinb", "count likelihood", choices=LIKELIHOODS),
        Option(
            "library", str, "observed", "library size: observed or latent", choices=LIBRARY_MODES
        ),
        Option("test_fraction", fraction_below_one, 0.1, "fraction of cells held out (0: none)"),
        Option("split_seed", seed_value, 0, "seed of the train/held-out split"),
        Option("test_particles", positive_int, 1000, "K of the held-out marginal likelihood"),
        Option("num_cells", positive_int, 1000, "cells of the simulated data set"),
        Option("num_genes", positive_int, 200, "genes of the simulated data set"),
        Option("data_seed", seed_value, 0, "seed of the simulated data set"),
    )
    data_help = (
        ".h5ad file (counts layer or X; --layer, --backed), 10x matrix directory "
        "(matrix.mtx, genes.tsv/features.tsv, barcodes.tsv) or CSV of counts: cells x genes, "
        "or genes x cells with --genes-in-rows true"
    )
    guides = {"mean-field": Guide(elbo="meanfield")}
    default_guide = "mean-field"
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
        kl_warmup_fraction=0.1,
    )
    #: cells per block of every full pass over the data (the runner's initial trace, history
    #: records and diagnostics, the report's tables and figures): memory is bounded by a block,
    #: so a backed .h5ad is never read whole. A (particle, cell) pair of the diagnostics costs a
    #: decoder pass and G genes (:class:`ScviCounts` chunks the genes itself): smaller chunks
    #: of the diagnostics allocate less at once
    data_plate = DataPlate("cells", block_size=4096, chunk_budget=100_000)
    dtype = torch.float32

    # -- data -----------------------------------------------------------------------------------
    data: Cells
    held_out: Cells | None

    def setup(self, data: Any, **opts: Any) -> None:
        self.likelihood_name = opts["likelihood"]
        self.library_mode = opts["library"]
        self.latent_dim = opts["latent_dim"]
        self.hidden = [opts["hidden"]] * opts["depth"]
        self.test_particles = opts["test_particles"]
        self.simulation: ScviSimulation | None = None
        #: the estimate of a run's work, once its first steps are timed (:meth:`on_step`)
        self.work_estimate: dict[str, Any] | None = None
        self._work_clock = WorkClock()
        self._guide: AmortizedGuide | None = None
        label_key = None if opts["label_key"] in ("auto", "") else opts["label_key"]
        if data is None and opts["genes_in_rows"]:
            raise DataError(GENES_IN_ROWS_CSV_ONLY.format(data=f"the {opts['dataset']} data"))
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
            self.dataset = CountData(
                InMemoryCounts(sim.counts),
                np.array([f"sim{i + 1}" for i in range(n)], dtype=object),
                np.array([f"gene{j + 1}" for j in range(g)], dtype=object),
                None,
                None,
                f"simulated scVI counts (seed {opts['data_seed']})",
            )
        elif data is None:
            self.dataset = load_pbmc68k_reduced(backed=opts["backed"])
        else:  # the user's own: a file, an AnnData, a matrix
            self.dataset = user_count_data(
                data,
                layer=opts["layer"],
                backed=opts["backed"],
                label_key=label_key,
                allow_non_counts=opts["allow_non_counts"],
                genes_in_rows=opts["genes_in_rows"],
            )
        d = self.dataset
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
        source, self.gene_names = d.source, d.gene_names
        self.gene_selection: GeneSelection | None = None
        if opts["n_top_genes"] is not None:  # on the training cells, normalised by all genes
            on_train = d.source.subset(train) if len(test) else d.source
            self.gene_selection = selection = highly_variable_genes(
                on_train, totals[train], opts["n_top_genes"], d.description
            )
            source = select_genes(d.source, selection.kept)
            self.gene_names = d.gene_names[selection.kept]
            totals = source.totals()
            empty = int((totals <= 0).sum())
            if empty:
                raise DataError(
                    f"{d.description}: {empty} cell(s) with no counts in the {len(selection.kept)} "
                    "highly variable genes; filter them first or keep more genes (--n-top-genes)"
                )
        self.num_genes = source.num_genes
        log_totals = np.log(totals)

        def cells(index: np.ndarray, source: CountSource) -> Cells:
            labels = None if d.labels is None else d.labels[index]
            log_library = self.tensor(log_totals[index], self.dtype)
            return Cells(source, log_library, d.cell_names[index], labels)

        whole = source.subset(train) if opts["test_fraction"] > 0 else source
        self.held_out = cells(test, source.subset(test)) if len(test) else None
        # the log-normal prior of a latent library: moments over the training cells
        self.library_log_mean = float(log_totals[train].mean())
        self.library_log_scale = float(max(log_totals[train].std(), 1e-3))
        self.bind(cells(train, whole))
        self.encoder = self.library_encoder = self.decoder = None

    def data_bound(self) -> None:
        """A new binding drops the cached mini-batch and reads the counts dense where small."""
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        dense_ok = not self.source.backed and self.num_data * self.num_genes <= DENSE_LIMIT
        self._dense = self._read_all() if dense_ok else None

    def _read_all(self) -> torch.Tensor:
        rows = self.source.to_csr().toarray()
        return torch.as_tensor(rows, dtype=self.dtype, device=self.device)

    # -- the bound cells -----------------------------------------------------------------------
    @property
    def source(self) -> CountSource:
        """The bound cells' counts."""
        return self.data.source

    @property
    def log_library(self) -> torch.Tensor:
        """log sum_g x_ng of every bound cell."""
        return self.data.log_library

    @property
    def cell_names(self) -> np.ndarray:
        return self.data.names

    @property
    def labels(self) -> np.ndarray | None:
        return self.data.labels

    @property
    def test_source(self) -> CountSource | None:
        """The held-out cells' counts (None: nothing held out)."""
        return None if self.held_out is None else self.held_out.source

    @property
    def cell_names_test(self) -> np.ndarray:
        """The held-out cells' names (empty when nothing is held out)."""
        return self.dataset.cell_names[self.test_index]

    @property
    def labels_test(self) -> np.ndarray | None:
        labels = self.dataset.labels
        return None if labels is None else labels[self.test_index]

    # -- what the networks see -----------------------------------------------------------------
    def counts(self, idx: torch.Tensor | None) -> torch.Tensor:
        """The count rows of the bound cells ``idx`` (all of them for None), float32.

        Rows of a backed file are read on demand and only the last mini-batch is kept; every
        full pass of the zoo goes through :meth:`count_blocks` instead of ``idx=None``.
        """
        if idx is None and self._dense is not None:
            return self._dense
        if idx is None:
            return self._read_all()
        if self._dense is not None:  # an index, no cache (and a step zoo.compiled can record)
            return self._dense[idx]
        cached = self._batch
        if cached is not None and cached[0].shape == idx.shape and torch.equal(cached[0], idx):
            return cached[1]
        rows = self.source.rows(idx.cpu().numpy())
        tensor = torch.as_tensor(rows, dtype=self.dtype, device=self.device)
        self._batch = (idx, tensor)
        return tensor

    def index_blocks(self) -> list[torch.Tensor]:
        """Consecutive blocks of at most ``data_plate.block_size`` cell indices, covering the
        cells."""
        return index_blocks(self.num_data, self.data_plate.block_size, self.device)

    def count_blocks(self) -> Iterator[torch.Tensor]:
        """The count rows, a block of cells at a time (see :meth:`index_blocks`)."""
        for idx in self.index_blocks():
            yield self.counts(idx)

    def evaluation_blocks(self) -> list[torch.Tensor]:
        """The blocks of bound cells a summary or a figure scores: every cell
        (:meth:`index_blocks`), or, inside a run's subsample of the data points (``eval_subsample``:
        :func:`~zoo.diagnostics.run_subsample`), the subsample's cells, in blocks of
        ``data_plate.block_size``."""
        sample = run_subsample()
        index = None if sample is None else sample.indices(self.num_data)
        if index is None:
            return self.index_blocks()
        size = self.data_plate.block_size
        return [
            torch.as_tensor(index[start : start + size], device=self.device)
            for start in range(0, len(index), size)
        ]

    def encoder_input(self, idx: torch.Tensor | None) -> torch.Tensor:
        return torch.log1p(self.counts(idx))

    def observed_log_library(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.log_library if idx is None else self.log_library[idx]

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

    def build_guide(self, name: str) -> AmortizedGuide:
        if name not in self.guides:
            return super().build_guide(name)  # raises the usual error
        self.build_networks()
        extra = {"library": self.library_encoder} if self.library_encoder is not None else {}
        self._guide = AmortizedGuide(self, self.encoder, extra=extra)
        return self._guide

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
    def posterior_means(
        self,
        guide: AmortizedGuide,
        held_out: bool = False,
        blocks: list[torch.Tensor] | None = None,
    ) -> dict[str, np.ndarray]:
        """E_q[z | x] (and E_q[log l | x]) of every bound cell (every held-out cell with
        ``held_out``), or of the cells in ``blocks`` (of indices)."""
        owner = self.on_test_split() if held_out else self
        guide.sync()
        out: dict[str, list[np.ndarray]] = {"z": []}
        if guide.extra:
            out["library"] = []
        for idx in owner.index_blocks() if blocks is None else blocks:
            y = owner.encoder_input(idx)
            out["z"].append(guide.encoder.distribution(y).mean.cpu().numpy())
            for site, encoder in guide.extra.items():
                out[site].append(encoder.distribution(y).mean.cpu().numpy())
        return {
            k: np.concatenate(v) if v else np.zeros((0, self.latent_dim)) for k, v in out.items()
        }

    @torch.no_grad()
    def collapse(self, guide: AmortizedGuide) -> CollapseReport:
        """Posterior-collapse diagnostics of q(z | x) over the training cells (the run's
        subsample of them, :meth:`evaluation_blocks`), from the encoder's means and variances
        (a block of cells at a time)."""
        guide.sync()
        loc, var = [], []
        for idx in self.evaluation_blocks():
            q = guide.encoder.distribution(self.encoder_input(idx)).base_dist
            loc.append(q.loc)
            var.append(q.scale.pow(2))
        return report_from_moments(torch.cat(loc), torch.cat(var), kl_method="analytic")

    def latent_means_table(self, guide: AmortizedGuide) -> pd.DataFrame:
        """Per-cell posterior means E_q[z | x] (``z1``...), train and held-out cells, with the
        cell name, split and label: what the run saves as ``latent_means.csv``."""
        import pandas as pd

        frames = []
        splits = [("train", self)] + ([("held-out", self.on_test_split())] if self.held_out else [])
        for split, bound in splits:
            means = bound.posterior_means(guide)
            frame = pd.DataFrame(means["z"], columns=[f"z{d + 1}" for d in range(self.latent_dim)])
            if "library" in means:
                frame["log_library"] = means["library"][:, 0]
            frame.insert(0, "cell", bound.cell_names)
            frame.insert(1, "split", split)
            if bound.labels is not None:
                frame.insert(2, self.dataset.label_key or "label", bound.labels)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def save_latent_means(self, guide: AmortizedGuide, path: str | Path) -> Path:
        """Write :meth:`latent_means_table` as CSV."""
        path = Path(path)
        self.latent_means_table(guide).to_csv(path, index=False)
        return path

    def latent_adata(self, guide: AmortizedGuide, table: pd.DataFrame | None = None) -> Any:
        """The cells as an ``AnnData`` with the posterior means in ``obsm["X_scvi"]``
        (:func:`~zoo.models.scvi.anndata_io.latent_adata_of`); ``table`` is
        :meth:`latent_means_table` where already computed."""
        table = self.latent_means_table(guide) if table is None else table
        return latent_adata_of(self, table)

    def tables(self, run: RunView) -> dict[str, Any]:
        """Tables a run saves next to its figures, by file stem: ``latent_means`` (a data
        frame, ``latent_means.csv``) and, where anndata is installed, ``latent``
        (:meth:`latent_adata`, ``latent.h5ad``)."""
        run.guide.sync()
        tables: dict[str, Any] = {"latent_means": self.latent_means_table(run.guide)}
        if anndata_available():
            tables["latent"] = self.latent_adata(run.guide, tables["latent_means"])
        return tables

    @torch.no_grad()
    def generate(self, num_cells: int, seed: int = 0) -> np.ndarray:
        """Synthetic cells from the fitted generative model: z ~ N(0, I); l resampled from the
        training cells' libraries (observed) or from the log-normal prior (latent)."""
        return np.concatenate(list(self.generate_blocks(num_cells, seed)))

    @torch.no_grad()
    def generate_blocks(self, num_cells: int, seed: int = 0) -> Iterator[np.ndarray]:
        """:meth:`generate`, ``data_plate.block_size`` cells at a time (the same cells)."""
        self.ensure_networks()
        decoder = pyro.module("decoder", self.decoder, update_module_params=True)
        log_theta = self.fitted_log_theta()
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for block in index_blocks(num_cells, self.data_plate.block_size):
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

    # -- the work of a run ------------------------------------------------------------------------
    def on_step(self, step: int, total: int) -> None:
        """Time the first training steps and announce the run's work once they are timed
        (:class:`~zoo.models.scvi.work.WorkClock`); the run's numbers do not change."""
        estimate = self._work_clock.tick(self, step, total)
        if estimate is not None:
            self.work_estimate = estimate

    # -- reporting --------------------------------------------------------------------------------
    @torch.no_grad()
    def held_out_diagnostics(self, guide: AmortizedGuide, num_particles: int) -> dict[str, Any]:
        """On the held-out cells, with the trained networks: the ELBO, the importance-sampled
        marginal log-likelihood (IWAE, K = ``num_particles`` per cell) with standard errors,
        and the reconstruction error -E_q log p(x | z, l), totals and per cell."""
        d = self.evaluate_held_out(guide, num_particles)
        n = d.num_data
        scored = {} if d.eval_points is None else {"eval_points": d.eval_points}
        return {
            **scored,
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
    def reconstruction_error(self, guide: AmortizedGuide, num_particles: int = 16) -> float:
        """-E_q log p(x | z, l) per training cell (scvi-tools' reconstruction loss)."""
        d = evaluate(self, guide, num_particles=num_particles, with_khat=False)
        return -d.expected_log_likelihood / d.num_data

    def gene_statistics(self, seed: int = 0) -> tuple[dict[str, np.ndarray], ...]:
        """Per-gene statistics of the training cells (the run's subsample of them,
        :meth:`evaluation_blocks`) and of as many generated ones, each accumulated a block of
        cells at a time."""
        blocks = self.evaluation_blocks()
        real = gene_statistics(self.counts(idx).cpu().numpy() for idx in blocks)
        fake = gene_statistics(self.generate_blocks(sum(len(b) for b in blocks), seed))
        return real, fake

    def generated_vs_real(self, seed: int = 0) -> dict[str, float]:
        """How synthetic cells (as many as training cells) match the real ones gene by gene:
        correlations of log mean, log variance and zero fraction across genes."""
        return compare_gene_statistics(*self.gene_statistics(seed))

    def summary(self, guide: AmortizedGuide, guide_name: str) -> dict[str, Any]:
        guide.sync()
        log_theta = self.fitted_log_theta()
        out: dict[str, Any] = {
            "data": self.dataset.description,
            "likelihood": self.likelihood_name,
            "library": self.library_mode,
            "num_genes": self.num_genes,
            "num_train": self.num_data,
            "num_test": len(self.test_index),
            "label_key": self.dataset.label_key,
            "library_log_mean": self.library_log_mean,
            "library_log_scale": self.library_log_scale,
            "reconstruction_error_per_cell": self.reconstruction_error(guide),
        }
        if self.gene_selection is not None:
            out["gene_selection"] = self.gene_selection.record(self.dataset.num_genes)
        if self.work_estimate is not None:
            out["work_estimate"] = dict(self.work_estimate)
        if log_theta is not None:
            theta = log_theta.exp().cpu().numpy()
            out["inverse_dispersion"] = {
                "median": float(np.median(theta)),
                "q10": float(np.quantile(theta, 0.1)),
                "q90": float(np.quantile(theta, 0.9)),
            }
        if self.held_out is not None:
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
        guide: AmortizedGuide = run.guide
        guide.sync()
        self.ensure_networks()
        blocks = self.evaluation_blocks()  # every cell, or the run's eval_subsample
        cells = torch.cat(blocks).cpu().numpy()
        means = self.posterior_means(guide, blocks=blocks)["z"]
        labels = None if self.labels is None else self.labels[cells]
        figures = {
            "latent_embedding": plot_latent_embedding(means, labels, self.title),
            "generated_vs_real": plot_generated_vs_real(
                *self.gene_statistics(), self.title, len(cells)
            ),
            "kl_per_dim": plot_kl_per_dim(self.collapse(guide), self.title),
        }
        history = run.history
        if "kl_weight" in history and (history["kl_weight"] < 1).any():
            figures["training"] = plot_training(history, self.title)
        return figures
