"""Time the command line's start: ``python -m zoo.run --help``, ``--list`` and ``gmm --help``.

Each command runs in a fresh interpreter (as a user runs it); the wall time includes Python's
own start. ``--help`` and ``--list`` import no model and no torch (``tests/test_startup.py``
checks that); ``gmm --help`` imports the one model's package, and with it torch and Pyro.

Usage::

    python benchmarks/bench_startup.py [--repeats 5]

Prints one row per command: the median wall time over the repeats, and the fastest and slowest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = (("--help",), ("--list",), ("gmm", "--help"))


def _wall_time(args: tuple[str, ...]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "zoo.run", *args],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    args = parser.parse_args()
    times: dict[tuple[str, ...], list[float]] = {c: [] for c in COMMANDS}
    for _ in range(args.repeats):  # the commands alternate, so a busy moment hits all of them
        for command in COMMANDS:
            times[command].append(_wall_time(command))
    print(f"| command | median s | min s | max s |  ({args.repeats} runs each)")
    print("|---|---|---|---|")
    for command, values in times.items():
        label = "python -m zoo.run " + " ".join(command)
        print(
            f"| `{label}` | {statistics.median(values):.2f} | {min(values):.2f} "
            f"| {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
