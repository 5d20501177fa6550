"""Throughput of data-parallel SVI (:mod:`zoo.distributed`) on 1 and 2 processes.

Each run times the runner's own SVI step (``_Trainer._build``: ``pyro.infer.SVI`` on one
process, :class:`~zoo.distributed.DataParallelSVI` under ``torchrun``, the step's mini-batch
and noise set as the runner sets them), the median over ``--rounds`` rounds of ``--steps``
steps after ``--warmup`` steps, every rank starting each round together; each run is launched
``--repeats`` times, the runs interleaved, and the median kept (the machine's other work comes
and goes). Steps per second, and points (images, cells) per second: the global mini-batch
times the step rate. Runs:

- ``one process``: without ``torchrun``, one torch thread, at the batch B and at B / 2; and
  with 2 threads (what one process makes of both cores);
- ``torchrun N``: ``torchrun --nproc-per-node N``, one thread per rank (N = 1: the
  data-parallel algorithm on one process, its own overhead).

Workloads: ``vae`` on the digits (1,437 training images, batch 128, the model's 64-256-8
networks) and ``scvi`` on simulated counts (``--cells`` x ``--genes``, batch 256).

From the one-process times at B and B / 2 the step time is split as t(b) = c0 + c1 b (c0 the
per-step cost that does not shrink with the batch: Pyro's tracing, the optimizer, Python; c1
the cost per point), and the 2-process step as t_2 = c0 + c1 B / 2 + c: c is what the
reduction (and waiting for the slower rank) costs here. The scaling model for W machines
(benchmarks/README.md)::

    t(W) = c0 + c1 B / W + 2 (W - 1) alpha + 2 (W - 1) / W * S / beta

with S the bytes of the gradients (a ring all-reduce), alpha the latency of a message and beta
the bandwidth between machines; the speed-ups it gives for ``--machines`` are printed.

Usage::

    python benchmarks/bench_distributed.py [--steps 100] [--rounds 5] [--repeats 2]
        [--device cpu|cuda] [--cells 5000] [--genes 1000] [--models vae scvi]
        [--machines 2 4 8 16 64] [--alpha-us 50] [--gbps 1.25]

``--device cuda`` runs each rank on ``cuda:LOCAL_RANK`` (NCCL for the gradients) and the one
process runs on ``cuda``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def workloads(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The runs measured, by name: zoo.fit's model and keywords, and the global batch."""
    return {
        "vae": {"model": "vae", "batch_size": 128, "options": {"test_particles": 100}},
        "scvi": {
            "model": "scvi",
            "batch_size": 256,
            "options": {
                "dataset": "simulated",
                "num_cells": args.cells,
                "num_genes": args.genes,
                "test_fraction": 0.0,
            },
        },
    }


def step_time(spec: dict[str, Any], args: argparse.Namespace, batch: int) -> float:
    """Median seconds per step of the runner's own SVI step (``_Trainer._build``: plain SVI,
    or :class:`~zoo.distributed.DataParallelSVI` under torchrun), over ``--rounds`` rounds of
    ``--steps`` steps after ``--warmup`` steps; every rank starts each round together."""
    import statistics

    import torch

    from zoo import distributed, runner
    from zoo.registry import get_model

    model = get_model(spec["model"])(None, device=args.device, **spec["options"])
    settings = {"steps": 100_000, "batch_size": batch, "device": args.device}
    config = runner._make_config(model, None, settings)
    trainer = runner._Trainer(model, config, None)
    _, svi, _ = trainer._build()
    kwargs = trainer._kwargs(True)
    begin = getattr(svi, "begin_step", None)
    done = 0

    def run(count: int) -> None:
        nonlocal done
        for _ in range(count):
            done += 1
            if begin is not None:
                begin(done)
            svi.step(**kwargs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    run(args.warmup)
    times = []
    for _ in range(args.rounds):
        if distributed.active():
            torch.distributed.barrier()
        tic = time.perf_counter()
        run(args.steps)
        times.append((time.perf_counter() - tic) / args.steps)
    spec["param_bytes"] = sum(
        p.numel() * p.element_size() for _, p in runner.pyro.get_param_store().named_parameters()
    )
    return statistics.median(times)


def worker(args: argparse.Namespace) -> None:
    """One process (or one rank of a torchrun job): the step time of every workload."""
    import torch

    from zoo import distributed

    torch.set_num_threads(args.threads)
    distributed.setup()
    specs = workloads(args)
    out = {}
    for name in args.models:
        spec = specs[name]
        batch = spec["batch_size"] // args.divide
        rate = step_time(spec, args, batch)
        out[name] = {"seconds_per_step": rate, "batch": batch, "param_bytes": spec["param_bytes"]}
    if distributed.is_main():
        print("RESULT " + json.dumps(out), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace, nproc: int | None, threads: int, divide: int = 1) -> dict:
    """Run :func:`worker` in one process (``nproc`` None) or under torchrun; its results."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    own = [
        str(Path(__file__).resolve()),
        "--worker",
        *("--steps", str(args.steps), "--rounds", str(args.rounds), "--warmup", str(args.warmup)),
        *("--device", args.device),
        *("--cells", str(args.cells), "--genes", str(args.genes)),
        *("--threads", str(threads), "--divide", str(divide), "--models", *args.models),
    ]
    if nproc is None:
        command = [sys.executable, *own]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        command += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *own]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


#: the runs compared: (label, processes under torchrun or None, threads each, batch divisor)
RUNS = (
    ("one process, 1 thread", None, 1, 1),
    ("one process, 1 thread, B/2", None, 1, 2),
    ("one process, 2 threads", None, 2, 1),
    ("torchrun 1, 1 thread", 1, 1, 1),
    ("torchrun 2, 1 thread each", 2, 1, 1),
)


def scaling_line(name: str, times: dict[str, dict], args: argparse.Namespace) -> list[str]:
    """The fit t(b) = c0 + c1 b, the 2-rank overhead c, and the model's speed-ups for W."""
    one = times["one process, 1 thread"][name]
    half = times["one process, 1 thread, B/2"][name]
    batch, size = one["batch"], one["param_bytes"]
    c1 = 2 * (one["seconds_per_step"] - half["seconds_per_step"]) / batch
    c0 = one["seconds_per_step"] - c1 * batch
    line = f"  {name}: c0 = {1e3 * c0:.2f} ms, c1 = {1e6 * c1:.2f} us/point"
    two = times.get("torchrun 2, 1 thread each", {}).get(name)
    if two is not None:
        c = two["seconds_per_step"] - (c0 + c1 * batch / 2)
        line += f"; 2 ranks here: c = {1e3 * c:.2f} ms per step"
    speedups = []
    for w in args.machines:
        ring = 2 * (w - 1) * args.alpha_us * 1e-6 + 2 * (w - 1) / w * size / (args.gbps * 1e9)
        speedups.append(f"W={w} {one['seconds_per_step'] / (c0 + c1 * batch / w + ring):.2f}x")
    model = (
        f"  model (B = {batch}, S = {size / 1e6:.2f} MB, alpha = {args.alpha_us:g} us, "
        f"beta = {args.gbps:g} GB/s): " + ", ".join(speedups)
    )
    return [line, model]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="launches of each run (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=["vae", "scvi"], choices=["vae", "scvi"])
    parser.add_argument(
        "--machines", type=int, nargs="+", default=[2, 4, 8, 16, 64], help="W of the model"
    )
    parser.add_argument("--alpha-us", type=float, default=50.0, help="message latency (model)")
    parser.add_argument("--gbps", type=float, default=1.25, help="bandwidth, GB/s (model)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--divide", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import statistics

    tic = time.time()
    found: dict[str, list[dict]] = {label: [] for label, *_ in RUNS}
    for _ in range(args.repeats):  # the runs interleaved: load that comes and goes hits all
        for label, nproc, threads, divide in RUNS:
            found[label].append(launch(args, nproc, threads, divide))
    times = {
        label: {
            name: {
                **results[0][name],
                "seconds_per_step": statistics.median(r[name]["seconds_per_step"] for r in results),
            }
            for name in args.models
        }
        for label, results in found.items()
    }
    print(
        f"device {args.device}; median of {args.repeats} launches x {args.rounds} rounds x "
        f"{args.steps} steps ({time.time() - tic:.0f} s)"
    )
    print(f"{'workload':<9}{'run':<28}{'batch':>6}{'ms/step':>9}{'steps/s':>9}{'points/s':>10}")
    for name in args.models:
        for label, result in times.items():
            r = result[name]
            t = r["seconds_per_step"]
            points = f"{r['batch'] / t:>10.0f}"
            print(f"{name:<9}{label:<28}{r['batch']:>6}{1e3 * t:>9.2f}{1 / t:>9.1f}{points}")
        print("\n".join(scaling_line(name, times, args)))


if __name__ == "__main__":
    main()
