"""The zoo's scVI against scvi-tools' ``SCVI`` on the same cells: held-out marginal
log-likelihood and seconds per epoch, both measured in this one run.

Both sides get scanpy's bundled ``pbmc68k_reduced`` counts (700 cells x 765 genes) with the
zoo model's seeded, label-stratified split (630 training cells, 70 held out; the peer reads the
split from h5ad files written by :func:`zoo.models.scvi.write_h5ad`, so every run also checks
that anndata reads that writer's files), and the same architecture: a 765 -> 128 -> 2 x 10
Gaussian encoder on log1p counts, a 10 -> 128 decoder with softmax and zero-inflation heads,
one inverse dispersion per gene, ZINB likelihood, observed library size, mini-batches of 128
cells. Each trains for its own default number of epochs (the zoo: 1000 steps = 200 epochs;
scvi-tools: 400 below 20,000 cells; ``--peer-epochs 200 400`` runs the peer at both). What
differs around the architecture is each library's defaults: scvi-tools adds batch
normalisation to both networks and dropout 0.1 to the encoder, trains with Adam (lr 1e-3,
weight decay 1e-6, eps 0.01) and a KL warm-up over 400 epochs; the zoo uses plain MLPs and the
runner's ClippedAdam with lr 3e-3 decaying to 3e-4, no warm-up (``--kl-warmup-epochs``).

Held-out marginal log-likelihood: for both, the importance-sampled estimate of scVI (Lopez et
al. 2018), log p(x_n | l_n) ~ log (1/K) sum_k p(x_n, z_k | l_n) / q(z_k | x_n) with K = 1000
draws from the encoder for each held-out cell, averaged over cells (nats per cell, higher is
better; conditional on the observed library size in both). scvi-tools' ``get_marginal_ll``
computes exactly this per cell; with ``return_mean=True`` it averages the per-*batch* means,
so the worker asks for the per-cell values and averages them itself. The zoo's number is the
per-cell IWAE of :func:`zoo.diagnostics.evaluate` on the held-out cells, with its delta-method
standard error. Epoch time: training wall time divided by the epochs (the zoo: the runner's
``seconds``, which include its two history records; scvi-tools: ``model.train`` end to end,
and the median epoch from a Lightning callback).

Usage::

    bash benchmarks/scvi_peer.sh                     # once: scvi-tools in a venv of its own
    python benchmarks/bench_scvi.py [--epochs 400] [--threads 1] [--particles 1000]
    python benchmarks/bench_scvi.py --no-peer        # the zoo only

The peer runs in a subprocess with the Python of ``--peer-python`` (default: the venv made by
``benchmarks/scvi_peer.sh``, ``$SCVI_VENV`` or ``/tmp/elbo-zoo-scvi-venv``); this same file is
its worker (``--peer-worker``), which imports scvi-tools and nothing of the zoo.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from zoo.models.scvi import SingleCellVI

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path(os.environ.get("SCVI_VENV", "/tmp/elbo-zoo-scvi-venv"))
BATCH = 128
HIDDEN = 128
LATENT = 10


# --------------------------------------------------------------------------------------------
# The peer worker: runs inside the scvi-tools venv
# --------------------------------------------------------------------------------------------
def peer_worker(
    data_path: Path, out_path: Path, epochs: int, particles: int, threads: int, seed: int
) -> None:
    import anndata
    import numpy as np
    import scvi
    import torch
    from lightning.pytorch.callbacks import Callback

    torch.set_num_threads(threads)
    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
    scvi.settings.verbosity = 30
    # the zoo wrote these with zoo.models.scvi.write_h5ad: anndata reading them checks the writer
    train = anndata.read_h5ad(data_path / "train.h5ad")
    test = anndata.read_h5ad(data_path / "test.h5ad")
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(
        train,
        n_hidden=HIDDEN,
        n_latent=LATENT,
        n_layers=1,
        gene_likelihood="zinb",
        dispersion="gene",
    )

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            self._tic = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.times.append(time.perf_counter() - self._tic)

    timer = EpochTimer()
    tic = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=BATCH,
        train_size=1.0,
        accelerator="cpu",
        devices=1,
        early_stopping=False,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    per_cell = model.get_marginal_ll(test, n_mc_samples=particles, return_mean=False)
    eval_seconds = time.perf_counter() - tic
    per_cell = per_cell.double().numpy()
    result = {
        "library": f"scvi-tools {scvi.__version__}, torch {torch.__version__}",
        "epochs": epochs,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / epochs,
        "median_epoch_seconds": float(np.median(timer.times)) if timer.times else math.nan,
        "heldout_marginal_ll_per_cell": float(per_cell.mean()),
        "heldout_marginal_ll_per_cell_sd_over_cells": float(per_cell.std()),
        "heldout_marginal_ll_batch_mean_convention": float(
            model.get_marginal_ll(test, n_mc_samples=particles, return_mean=True)
        ),
        "heldout_elbo_per_cell": float(model.get_elbo(test)),
        "heldout_reconstruction_error_per_cell": float(
            model.get_reconstruction_error(test)["reconstruction_loss"]
        ),
        "train_elbo_per_cell": float(model.get_elbo(train)),
        "eval_seconds": eval_seconds,
    }
    out_path.write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------------------------
# The zoo side
# --------------------------------------------------------------------------------------------
def export_split(model: SingleCellVI, directory: Path) -> None:
    """The model's training and held-out counts as ``train.h5ad`` and ``test.h5ad`` (CSR, gene
    and cell names, cell types), written by :func:`zoo.models.scvi.write_h5ad`."""
    from zoo.models.scvi import write_h5ad

    for name, source, cells, labels in (
        ("train", model.source, model.cell_names, model.labels),
        ("test", model.test_source, model.cell_names_test, model.labels_test),
    ):
        obs = {} if labels is None else {"cell_type": labels}
        write_h5ad(
            directory / f"{name}.h5ad",
            source.to_csr(),
            cell_names=cells,
            gene_names=model.gene_names,
            obs=obs,
        )


def run_zoo(epochs: int, particles: int, warmup_epochs: int, seed: int) -> dict:
    import torch

    import zoo
    from zoo.models.scvi import SingleCellVI

    model = SingleCellVI(test_particles=particles)
    steps_per_epoch = math.ceil(model.num_data / BATCH)
    steps = epochs * steps_per_epoch
    result = zoo.fit(
        model,
        steps=steps,
        kl_warmup=warmup_epochs * steps_per_epoch,
        record_every=steps,
        eval_particles=100,
        seed=seed,
        progress=False,
    )
    test = result.summary["test"]["per_cell"]
    return {
        "library": f"elbo-zoo (pyro {__import__('pyro').__version__}, torch {torch.__version__})",
        "epochs": epochs,
        "steps": steps,
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds / epochs,
        "heldout_marginal_ll_per_cell": test["marginal_log_likelihood"],
        "heldout_marginal_ll_se": test["marginal_log_likelihood_se"],
        "heldout_elbo_per_cell": test["elbo"],
        "heldout_elbo_se": test["elbo_se"],
        "heldout_reconstruction_error_per_cell": test["reconstruction_error"],
        "train_elbo_per_cell": result.diagnostics.elbo / result.diagnostics.num_data,
        "model": model,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=200, help="the zoo's epochs (its default: 1000 steps)"
    )
    parser.add_argument(
        "--peer-epochs",
        type=int,
        nargs="+",
        default=[400],
        help="scvi-tools' epochs, one run each (400: its default below 20,000 cells)",
    )
    parser.add_argument("--particles", type=int, default=1000, help="K of the marginal LL")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kl-warmup-epochs", type=int, default=0, help="the zoo's warm-up")
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_VENV / "bin" / "python")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--peer-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_worker is not None:
        peer_worker(
            args.peer_worker, args.out, args.epochs, args.particles, args.threads, args.seed
        )
        return 0

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE.parent))
    rows = []
    ours = run_zoo(args.epochs, args.particles, args.kl_warmup_epochs, args.seed)
    model = ours.pop("model")
    rows.append(("zoo scvi", ours))
    if not args.no_peer:
        if not args.peer_python.exists():
            print(
                f"no scvi-tools venv at {args.peer_python}: run `bash benchmarks/scvi_peer.sh` "
                "first (or --no-peer)",
                file=sys.stderr,
            )
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            export_split(model, data)
            for epochs in args.peer_epochs:
                out = Path(tmp) / f"peer{epochs}.json"
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                cmd = [
                    str(args.peer_python),
                    str(Path(__file__).resolve()),
                    "--peer-worker",
                    str(data),
                    "--out",
                    str(out),
                    "--epochs",
                    str(epochs),
                    "--particles",
                    str(args.particles),
                    "--threads",
                    str(args.threads),
                    "--seed",
                    str(args.seed),
                ]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-4000:], file=sys.stderr)
                    return 1
                rows.append((f"scvi-tools ({epochs} ep)", json.loads(out.read_text())))

    print(
        f"pbmc68k_reduced: {model.num_data} training / {len(model.test_index)} held-out cells x "
        f"{model.num_genes} genes; mini-batches of {BATCH}; K = {args.particles}"
    )
    header = (
        f"{'':<22}{'epochs':>7}{'held-out log p(x) / cell':>26}{'held-out ELBO':>15}"
        f"{'recon. err.':>13}{'s / epoch':>11}{'train s':>9}"
    )
    print(header)
    for name, r in rows:
        se = r.get("heldout_marginal_ll_se")
        mll = f"{r['heldout_marginal_ll_per_cell']:.2f}" + (f" ± {se:.2f}" if se else "")
        print(
            f"{name:<22}{r['epochs']:>7}{mll:>26}{r['heldout_elbo_per_cell']:>15.2f}"
            f"{r['heldout_reconstruction_error_per_cell']:>13.2f}"
            f"{r['seconds_per_epoch']:>11.3f}{r['train_seconds']:>9.1f}"
        )
    for name, r in rows:
        print(f"{name}: {r['library']}")
        if "median_epoch_seconds" in r:
            print(
                f"  median epoch (Lightning callback) {r['median_epoch_seconds']:.3f} s; "
                f"get_marginal_ll(return_mean=True) "
                f"{r['heldout_marginal_ll_batch_mean_convention']:.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps(dict(rows), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
