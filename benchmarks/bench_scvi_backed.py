"""Peak memory of an scVI run on a backed ``.h5ad`` against the same file read into memory.

Writes a seeded sparse count matrix (default 20,000 cells x 1,000 genes, 5% non-zero: 1.0 M
counts, 80 MB as a dense float32 array) to a CSR ``.h5ad``, then runs ``zoo.fit`` on it in a
fresh subprocess per mode, end to end as a user does (training with mini-batches of 128 cells,
the history records, the final diagnostics, the held-out evaluation, and ``save``: report,
tables, figures), and reads the subprocess's peak resident memory (``ru_maxrss``). A third
subprocess only imports the zoo and builds nothing: the baseline every mode pays. (Linux keeps
a process's peak across fork and exec, so this parent imports nothing heavy: it writes the file
in a subprocess too, and stays far below every worker.)

With ``backed`` the training mini-batches read their rows from the file and every full pass
reads ``data_plate.block_size`` cells at a time, so the peak should not grow with the number of
cells; in memory the CSR matrix is held whole (never densified).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_scvi_backed.py [--cells 20000] [--genes 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKER = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
import zoo
from zoo.models.scvi import SingleCellVI
path, mode, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tic = time.perf_counter()
if mode != "import":
    model = SingleCellVI(path, backed=mode == "backed", test_particles=30)
    result = zoo.fit(model, steps=steps, eval_particles=30, trace_particles=2,
                     record_every=steps, progress=False)
    result.save(out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
print(json.dumps({"mode": mode, "peak_mib": peak, "seconds": time.perf_counter() - tic}))
"""


def write_counts(path: Path, cells: int, genes: int, density: float, seed: int) -> int:
    """A seeded sparse count matrix as a CSR h5ad; returns its number of non-zeros."""
    import numpy as np
    import scipy.sparse as sp

    from zoo.models.scvi import write_h5ad

    rng = np.random.default_rng(seed)
    matrix = sp.random(
        cells,
        genes,
        density=density,
        format="csr",
        random_state=seed,
        data_rvs=lambda k: rng.geometric(0.3, k).astype(np.float32),
        dtype=np.float32,
    )
    matrix = (
        matrix
        + sp.csr_matrix((np.ones(cells), (np.arange(cells), np.zeros(cells))), shape=(cells, genes))
    ).tocsr()  # no empty cell
    write_h5ad(path, matrix)
    return int(matrix.nnz)


def _subprocess(args: list[str], what: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def run_worker(path: Path, mode: str, steps: int, out: Path) -> dict:
    return json.loads(_subprocess(["-c", WORKER, str(path), mode, str(steps), str(out)], mode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=1_000)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the writer subprocess
    args = parser.parse_args()
    if args.write is not None:
        print(write_counts(args.write, args.cells, args.genes, args.density, args.seed))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "counts.h5ad"
        tic = time.perf_counter()
        sizes = ["--cells", str(args.cells), "--genes", str(args.genes)]
        sizes += ["--density", str(args.density), "--seed", str(args.seed)]
        nnz = int(_subprocess([__file__, "--write", str(path), *sizes], "writing the counts"))
        dense_mib = args.cells * args.genes * 4 / 2**20
        print(
            f"{args.cells} cells x {args.genes} genes, {nnz} non-zeros "
            f"(dense float32 {dense_mib:.0f} MiB, file {path.stat().st_size / 2**20:.0f} MiB), "
            f"written in {time.perf_counter() - tic:.1f} s"
        )
        rows = [
            run_worker(path, mode, args.steps, Path(tmp) / mode)
            for mode in ("import", "in-memory", "backed")
        ]
    base = rows[0]["peak_mib"]
    print(f"| mode | peak RSS (MiB) | above import (MiB) | wall (s), {args.steps} steps + report |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['peak_mib']:.0f} | {row['peak_mib'] - base:.0f} | "
            f"{row['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
