"""A large seeded count matrix from scVI's generative process, written as a CSR ``.h5ad`` a block
of cells at a time.

Lopez et al. (2018), Nature Methods 15, 1053-1058, "Methods": z_n ~ N(0, I_q), log l_n ~
N(mu_l, sigma_l^2), x_ng ~ ZINB(l_n softmax(f(z_n))_g, theta_g, pi_g(z_n)), with the seeded
decoder and inverse dispersions of :func:`zoo.models.scvi.simulate_scvi`. Cells are drawn in
blocks of ``--block`` (block b from torch's generator seeded by (seed, b)), so a file of fewer
cells with the same seed is the first cells of a larger one, and memory is one block (a dense
``block x genes`` float32 array) whatever the number of cells.

The matrix is written as anndata writes it by default (Virshup et al. 2024, JOSS): ``X`` a CSR
group with contiguous, uncompressed ``data`` (float32), ``indices`` (int32) and ``indptr``
(int64), ``obs`` and ``var`` with their names. As the number of non-zeros is known only once
every block is drawn, the blocks' values and column indices go to two flat files beside the
output first and are then copied into the ``.h5ad`` a block at a time.

The default library size (mean log l = log 300, spread 0.3) leaves about 92% of the entries
zero at 2,000 genes, as in a 10x data set restricted to its highly variable genes.

Usage::

    python benchmarks/make_big_h5ad.py /tmp/cells_1m.h5ad --cells 1000000 --genes 2000

The file is not to be committed: it is written where the command says (1.3 GB for the default
million cells).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

#: cells drawn (and held dense) at a time
BLOCK = 8192


def _block_seed(seed: int, block: int) -> int:
    return (seed * 1_000_003 + block + 1) % 2**63


def count_blocks(
    cells: int,
    genes: int,
    *,
    seed: int = 0,
    block: int = BLOCK,
    latent_dim: int = 10,
    hidden: int = 128,
    library_log_mean: float = math.log(300.0),
    library_log_scale: float = 0.3,
) -> Any:
    """The cells as CSR blocks of at most ``block`` rows, in order (a generator)."""
    import scipy.sparse as sp
    import torch

    from zoo.models.scvi import simulate_scvi
    from zoo.models.scvi.likelihood import ScviCounts

    # the seeded decoder and inverse dispersions of the simulator (two cells drawn and dropped)
    truth = simulate_scvi(2, genes, latent_dim=latent_dim, hidden=hidden, seed=seed)
    log_theta = torch.as_tensor(truth.log_inverse_dispersion)
    for b, start in enumerate(range(0, cells, block)):
        n = min(block, cells - start)
        gen = torch.Generator().manual_seed(_block_seed(seed, b))
        z = torch.randn(n, latent_dim, generator=gen)
        log_library = library_log_mean + library_log_scale * torch.randn(n, 1, generator=gen)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(_block_seed(seed, b))
            counts = ScviCounts(truth.decoder, z, log_library, log_theta, "zinb").sample()
        dense = counts.numpy().astype(np.float32)
        empty = np.flatnonzero(dense.sum(1) == 0)
        dense[empty, 0] = 1.0  # a cell with no counts is refused by every scVI reader
        yield sp.csr_matrix(dense)


def _write_strings(group: Any, name: str, count: int, fill: Any) -> None:
    """A string-array dataset of ``count`` names, written in slices by ``fill(start, stop)``."""
    import h5py

    ds = group.create_dataset(name, shape=(count,), dtype=h5py.string_dtype())
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"
    step = 1 << 16
    for start in range(0, count, step):
        stop = min(start + step, count)
        ds[start:stop] = fill(start, stop)


def _frame(f: Any, name: str, count: int, prefix: str) -> None:
    import h5py

    group = f.create_group(name)
    group.attrs["encoding-type"] = "dataframe"
    group.attrs["encoding-version"] = "0.2.0"
    group.attrs["_index"] = "_index"
    group.attrs["column-order"] = np.array([], dtype=h5py.string_dtype())
    _write_strings(
        group,
        "_index",
        count,
        lambda a, b: np.array([f"{prefix}{i + 1}" for i in range(a, b)], dtype=object),
    )


def write_big_h5ad(path: str | Path, cells: int, genes: int, **kwargs: Any) -> dict[str, Any]:
    """Write ``cells`` x ``genes`` simulated counts (:func:`count_blocks`; ``kwargs`` go there)
    to ``path`` as a CSR ``.h5ad``; returns what was written (non-zeros, zero fraction, sizes,
    seconds)."""
    import h5py

    tic = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values_file, columns_file = path.with_suffix(".data.tmp"), path.with_suffix(".indices.tmp")
    indptr = np.zeros(cells + 1, dtype=np.int64)
    nnz, row = 0, 0
    try:
        with open(values_file, "wb") as fv, open(columns_file, "wb") as fc:
            for block in count_blocks(cells, genes, **kwargs):
                block.data.astype(np.float32).tofile(fv)
                block.indices.astype(np.int32).tofile(fc)
                indptr[row + 1 : row + 1 + block.shape[0]] = nnz + block.indptr[1:]
                nnz += block.nnz
                row += block.shape[0]
        drawn = time.perf_counter() - tic
        values = np.memmap(values_file, dtype=np.float32, mode="r", shape=(nnz,))
        columns = np.memmap(columns_file, dtype=np.int32, mode="r", shape=(nnz,))
        with h5py.File(path, "w") as f:
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            x = f.create_group("X")
            x.attrs["encoding-type"] = "csr_matrix"
            x.attrs["encoding-version"] = "0.1.0"
            x.attrs["shape"] = np.array([cells, genes], dtype=np.int64)
            data = x.create_dataset("data", shape=(nnz,), dtype=np.float32)
            indices = x.create_dataset("indices", shape=(nnz,), dtype=np.int32)
            step = 1 << 24
            for start in range(0, nnz, step):
                stop = min(start + step, nnz)
                data[start:stop] = values[start:stop]
                indices[start:stop] = columns[start:stop]
            x.create_dataset("indptr", data=indptr)
            _frame(f, "obs", cells, "cell")
            _frame(f, "var", genes, "gene")
            for key in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
                empty = f.create_group(key)
                empty.attrs["encoding-type"] = "dict"
                empty.attrs["encoding-version"] = "0.1.0"
        del values, columns
    finally:
        values_file.unlink(missing_ok=True)
        columns_file.unlink(missing_ok=True)
    return {
        "path": str(path),
        "cells": cells,
        "genes": genes,
        "nnz": int(nnz),
        "zero_fraction": 1.0 - nnz / (cells * genes),
        "file_mib": path.stat().st_size / 2**20,
        "dense_float32_mib": cells * genes * 4 / 2**20,
        "draw_seconds": drawn,
        "seconds": time.perf_counter() - tic,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the .h5ad to write (not in the repository)")
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=BLOCK, help="cells drawn at a time")
    parser.add_argument(
        "--library", type=float, default=300.0, help="median library size (total counts)"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    info = write_big_h5ad(
        args.path,
        args.cells,
        args.genes,
        seed=args.seed,
        block=args.block,
        library_log_mean=math.log(args.library),
    )
    print(json.dumps(info))


if __name__ == "__main__":
    main()
