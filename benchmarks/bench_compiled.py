"""Time the runner's compiled step (``compile=True``, :mod:`zoo.compiled`) against its eager step
and a hand-written eager PyTorch loop of the same estimator.

Each row trains one model through :func:`zoo.fit` twice, eagerly and compiled, with one history
record and no learning-rate decay, and reports the milliseconds per step of each: the eager
run's ``seconds / steps``, and the compiled run's ``(seconds - build_seconds) / steps`` (the
build, tracing and TorchInductor's compilation, is reported on its own: it is paid once a run).
Where ``bench_svi_step.py`` or ``bench_vae.py`` has a hand-written loop of the same model (the
same single-particle estimator, Adam), it runs too, and the ratios are to it:

- ``bayes-linreg``: mean field, ``Trace_ELBO``, one particle (``_hand_linreg``);
- ``bayes-linreg-128``: the same with the model's default 128 vectorized particles;
- ``vae``: batch 128, ``TraceMeanField_ELBO`` (``time_hand_step``);
- ``free-energy-learning`` and ``linear-vae``: the models' defaults (no hand-written loop).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_compiled.py [--steps 1000] [--repeats 3]
        [--cases bayes-linreg vae ...]

Median of the repeats; the sides alternate within each repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo

#: name -> (model, zoo.fit settings, hand-written loop or None)
CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "bayes-linreg": (
        "bayes-linreg",
        {"guide": "mean-field", "elbo": "trace", "particles": 1},
        "linreg",
    ),
    "bayes-linreg-128": ("bayes-linreg", {"guide": "mean-field", "elbo": "trace"}, None),
    "vae": ("vae", {"test_particles": 30}, "vae"),
    "free-energy-learning": ("free-energy-learning", {}, None),
    "linear-vae": ("linear-vae", {}, None),
}


def time_runner(name: str, steps: int, compile: bool, **settings: Any) -> tuple[float, float]:
    """(seconds per step, build seconds) of one run."""
    result = zoo.fit(
        name,
        steps=steps,
        record_every=steps,
        eval_particles=30,
        progress=False,
        lr_final_factor=1.0,
        compile=compile,
        **settings,
    )
    build = 0.0
    if compile:
        if not result.compiled["compiled"]:
            raise SystemExit(f"bench_compiled.py: {name} did not compile: {result.compiled['why']}")
        build = result.compiled["build_seconds"]
    return (result.seconds - build) / steps, build


def time_hand(kind: str, steps: int) -> float:
    if kind == "linreg":
        from bench_svi_step import _hand_linreg

        return _hand_linreg(steps, zoo.get_model("bayes-linreg").training.lr)
    from bench_vae import time_hand_step

    return time_hand_step(zoo.get_model("vae")(), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, list[float]]] = {
        case: {"eager": [], "compiled": [], "build": [], "hand": []} for case in args.cases
    }
    for _ in range(args.repeats):
        for case in args.cases:
            name, settings, hand = CASES[case]
            row = rows[case]
            row["eager"].append(time_runner(name, args.steps, False, **settings)[0])
            step, build = time_runner(name, args.steps, True, **settings)
            row["compiled"].append(step)
            row["build"].append(build)
            if hand is not None:
                row["hand"].append(time_hand(hand, args.steps))
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}, "
        f"median of {args.repeats}"
    )
    print(
        f"{'case':<22}{'eager ms':>10}{'compiled ms':>13}{'build s':>9}{'hand ms':>9}"
        f"{'eager/hand':>12}{'compiled/hand':>15}{'speed-up':>10}"
    )
    for case, row in rows.items():
        m = {k: statistics.median(v) if v else float("nan") for k, v in row.items()}
        e, c, h = m["eager"] * 1e3, m["compiled"] * 1e3, m["hand"] * 1e3
        print(
            f"{case:<22}{e:>10.3f}{c:>13.3f}{m['build']:>9.1f}{h:>9.3f}"
            f"{e / h:>12.2f}{c / h:>15.2f}{e / c:>10.2f}"
        )


if __name__ == "__main__":
    main()
