"""scVI on a backed ``.h5ad`` of 10^4, 10^5 and 10^6 cells: time per epoch and peak memory.

For each size, a seeded CSR ``.h5ad`` of simulated counts (2,000 genes, about 95% zeros:
``benchmarks/make_big_h5ad.py``, written under ``--dir`` unless already there, never in the
repository) is trained for one epoch (N_train / batch steps of 128-cell mini-batches read from
the file) with ``zoo.fit(model, ...)`` in a fresh subprocess, end to end as a user runs it: the
history records, the final diagnostics and the model's summary (held-out marginal likelihood,
reconstruction error, posterior collapse, generated against real cells), all on a subsample of
``--eval-subsample`` cells (``eval_subsample``: totals N x the subsample's mean, standard
errors with the subsampling). Each subprocess reports its peak resident memory (``ru_maxrss``)
and its resident memory after building the model, and times separately: building the model
(the streamed count checks and library sizes), the training steps, the history records, the
final diagnostics and the summary. A subprocess that only imports the zoo gives the baseline.

``--max-steps`` caps the steps of an epoch (time per epoch then extrapolated from the steps
timed, and said so). Linux keeps a process's peak memory across fork and exec, so this parent
imports nothing heavy.

The peak resident memory of a run is mostly freed temporaries of the evaluation (a block of
cells x 2,000 genes, 16-32 MB each) that glibc's allocator keeps once its mmap threshold has
grown, and it varies from run to run by hundreds of MB; ``--malloc-mmap-threshold 1048576``
fixes the threshold (``MALLOC_MMAP_THRESHOLD_``) so that the peak is the memory in use.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_scvi_scale.py --dir /tmp/scvi_scale
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKER = """
import json, math, resource, sys, time
tic = time.perf_counter()
import torch
torch.set_num_threads(1)
import zoo
from zoo import runner
from zoo.models.scvi import SingleCellVI


def rss_mib(key="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


args = json.loads(sys.argv[1])
out = {"import_seconds": time.perf_counter() - tic}
if args.get("path") is not None:
    tic = time.perf_counter()
    model = SingleCellVI(args["path"], backed=True, test_particles=args["test_particles"])
    out["setup_seconds"] = time.perf_counter() - tic
    out["rss_after_setup_mib"] = rss_mib()
    n_train = model.num_data
    epoch = math.ceil(n_train / args["batch"])
    steps = epoch if args["max_steps"] is None else min(epoch, args["max_steps"])
    timers = {"record": [], "diagnostics": [], "summary": []}

    def timed(key, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[key].append(time.perf_counter() - start)
        return wrapper

    runner._Trainer._record = timed("record", runner._Trainer._record)
    runner.evaluate = timed("diagnostics", runner.evaluate)
    model.summary = timed("summary", model.summary)
    tic = time.perf_counter()
    result = zoo.fit(model, steps=steps, batch_size=args["batch"], progress=False,
                     eval_subsample=args["eval_subsample"], eval_particles=args["eval_particles"],
                     record_every=steps)
    out["fit_seconds"] = time.perf_counter() - tic
    last_record = timers["record"][-1] if len(timers["record"]) > 1 else 0.0
    train = result.seconds - last_record  # the record at the last step is in the run's clock
    d, test = result.diagnostics, result.summary.get("test", {})
    out.update({
        "cells": n_train + len(model.test_index),
        "train_cells": n_train,
        "genes": model.num_genes,
        "epoch_steps": epoch,
        "steps": steps,
        "train_seconds": train,
        "epoch_seconds": train * epoch / steps,
        "record_seconds": timers["record"],
        "diagnostics_seconds": sum(timers["diagnostics"]),
        "summary_seconds": sum(timers["summary"]),
        "elbo_per_cell": d.elbo / d.num_data,
        "elbo_per_cell_se": d.elbo_se / d.num_data,
        "eval_points": d.eval_points,
        "test_marginal_ll_per_cell": test.get("per_cell", {}).get("marginal_log_likelihood"),
        "test_marginal_ll_per_cell_se": test.get("per_cell", {}).get("marginal_log_likelihood_se"),
        "test_eval_points": test.get("eval_points"),
    })
out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps(out))
"""


#: the workers' environment (``--malloc-mmap-threshold`` adds glibc's)
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def _subprocess(args: list[str], what: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=ENV
    )
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def ensure_file(directory: Path, cells: int, genes: int, seed: int) -> tuple[Path, dict | None]:
    """The seeded file of ``cells`` cells under ``directory``, written if absent."""
    path = directory / f"cells_{cells}_genes_{genes}_seed_{seed}.h5ad"
    if path.is_file():
        return path, None
    sizes = ["--cells", str(cells), "--genes", str(genes), "--seed", str(seed)]
    line = _subprocess([str(HERE / "make_big_h5ad.py"), str(path), *sizes], f"writing {path}")
    return path, json.loads(line)


def run_worker(settings: dict, what: str) -> dict:
    return json.loads(_subprocess(["-c", WORKER, json.dumps(settings)], what))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the .h5ad files live")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128, help="cells per mini-batch")
    parser.add_argument("--eval-subsample", type=int, default=2_000)
    parser.add_argument("--eval-particles", type=int, default=100)
    parser.add_argument("--test-particles", type=int, default=100)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap an epoch's steps and extrapolate"
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        help="glibc's MALLOC_MMAP_THRESHOLD_ for the workers (bytes): the peak is then the "
        "memory in use, not freed temporaries the allocator keeps",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.malloc_mmap_threshold is not None:
        ENV["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    args.dir.mkdir(parents=True, exist_ok=True)
    base = run_worker({}, "import")
    rows = []
    for cells in args.sizes:
        path, written = ensure_file(args.dir, cells, args.genes, args.seed)
        if written is not None:
            print(
                f"wrote {cells:,} cells: {written['nnz']:,} non-zeros "
                f"({written['zero_fraction']:.1%} zeros), {written['file_mib']:.0f} MiB, "
                f"{written['seconds']:.0f} s",
                flush=True,
            )
        settings = {
            "path": str(path),
            "batch": args.batch,
            "eval_subsample": args.eval_subsample,
            "eval_particles": args.eval_particles,
            "test_particles": args.test_particles,
            "max_steps": args.max_steps,
        }
        row = run_worker(settings, f"{cells} cells")
        row["file_mib"] = path.stat().st_size / 2**20
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"import": base, "rows": rows}, indent=1))
    _table(base, rows, args)


def _table(base: dict, rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\nbatch {args.batch}, eval_subsample {args.eval_subsample}, eval_particles "
        f"{args.eval_particles}, test_particles {args.test_particles}; import alone: "
        f"{base['peak_mib']:.0f} MiB; MALLOC_MMAP_THRESHOLD_ "
        f"{ENV.get('MALLOC_MMAP_THRESHOLD_', 'glibc default')}"
    )
    print(
        "| cells | file (MiB) | steps timed / epoch | s / epoch | steps / s | cells / s | "
        "build model (s) | 2 records (s) | diagnostics (s) | summary (s) | "
        "RSS after build (MiB) | peak RSS (MiB) | ELBO per cell |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_step = r["train_seconds"] / r["steps"]
        records = sum(r["record_seconds"])
        print(
            f"| {r['cells']:,} | {r['file_mib']:,.0f} | {r['steps']:,} / {r['epoch_steps']:,} | "
            f"{r['epoch_seconds']:,.1f} | {1 / per_step:.1f} | {args.batch / per_step:,.0f} | "
            f"{r['setup_seconds']:.1f} | {records:.1f} | {r['diagnostics_seconds']:.1f} | "
            f"{r['summary_seconds']:.1f} | {r['rss_after_setup_mib']:,.0f} | "
            f"{r['peak_mib']:,.0f} | {r['elbo_per_cell']:.2f} ± {r['elbo_per_cell_se']:.2f} |"
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        ratio = last["cells"] / first["cells"]
        growth = (last["epoch_seconds"] / first["epoch_seconds"]) / ratio
        cells = last["cells"] - first["cells"]
        built = (last["rss_after_setup_mib"] - first["rss_after_setup_mib"]) * 2**20 / cells
        print(
            f"\nepoch time x{last['epoch_seconds'] / first['epoch_seconds']:.0f} for x{ratio:.0f} "
            f"cells (time per cell x{growth:.2f}); memory after building the model "
            f"{built:+.0f} bytes per cell; peak {last['peak_mib'] - first['peak_mib']:+,.0f} MiB"
        )


if __name__ == "__main__":
    main()
