"""What the runner's history records cost at each model's defaults.

Records draw their particles from a random stream of their own (seeded by the run's seed and
the step), so a run that records once trains exactly as the default one: the difference in
training seconds (``FitResult.seconds``: the loop, records and checkpoints, not the final
diagnostics) is the records' cost alone. Each model is run at its default settings (the
``--steps`` cap aside) with the default records and with one record at the end, alternating,
``--repeats`` times; the table gives the medians and the overhead (default / one record - 1).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_records.py [--models bayes-linreg vae] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

import zoo

MODELS = ("bayes-linreg", "normal-gamma", "vae", "predictive-coding")


def _seconds(name: str, steps: int | None, record_every: int | None) -> tuple[float, int, int]:
    """Training seconds, history rows and steps of one run."""
    result = zoo.fit(
        name, steps=steps, record_every=record_every, eval_particles=30, progress=False
    )
    return result.seconds, len(result.history), result.config.steps


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=None, help="cap on the steps (default: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"load {os.getloadavg()[0]:.2f}")
    print("| model | steps | records | s (default records) | s (one record) | overhead |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        _seconds(name, 20, None)  # warm-up: imports, first-step caches
        default, single = [], []
        records = steps = 0
        for _ in range(args.repeats):
            seconds, records, steps = _seconds(name, args.steps, None)
            default.append(seconds)
            single.append(_seconds(name, args.steps, 10**9)[0])
        a, b = statistics.median(default), statistics.median(single)
        row = {"model": name, "steps": steps, "records": records, "default": a, "single": b}
        rows.append(row)
        print(f"| `{name}` | {steps} | {records} | {a:.2f} | {b:.2f} | {100 * (a / b - 1):.1f}% |")
    return rows


if __name__ == "__main__":
    main()
