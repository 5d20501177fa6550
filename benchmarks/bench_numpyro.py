"""Time the zoo's SVI step against NumPyro's jitted step on the same two problems.

Three sides, each from the same start with the same single-particle estimator and the same
optimizer (Adam with element-wise gradient clipping at 10: Pyro's ``ClippedAdam``, which the
zoo's runner uses, and ``numpyro.optim.ClippedAdam``) at the zoo's learning rate:

- **zoo**: :func:`zoo.fit` end to end, ``result.seconds / steps`` (one history record, no
  learning-rate decay), as ``bench_svi_step.py`` and ``bench_vae.py`` time it; and **compiled**,
  the same with ``compile=True`` (:mod:`zoo.compiled`), the build (once a run) left out;
- **bare Pyro**: a plain ``pyro.infer.SVI(model.model, guide, ClippedAdam, estimator)`` step
  loop on the zoo's model and guide (the estimator the runner builds: vectorized particles,
  ``max_plate_nesting=1``), after five warm-up steps;
- **NumPyro**: the same model and guide written in NumPyro (``benchmarks/numpyro_side.py``), one
  ``jax.jit(svi.update)`` call per step, JAX on the CPU, after the compilation and five warm-up
  steps; each step finishes before the next is dispatched, as in eager PyTorch (the time with
  JAX's overlapping dispatch is printed too, and so are the compilation's seconds).

The problems:

- ``bayes-linreg``: diabetes (442 x 10), w ~ N(0, I), noise sd 0.7 (Bishop, PRML §3.3),
  mean-field Normal guide (Pyro's and NumPyro's ``AutoNormal``), ``Trace_ELBO``, float64;
- ``vae``: binarised digits (1,437 training images), 64 -> 256 -> 2 x 8 Gaussian encoder,
  8 -> 256 -> 64 Bernoulli decoder (Kingma & Welling 2014), mini-batches of 128,
  ``TraceMeanField_ELBO`` (analytic KL), float32; NumPyro starts from the zoo's initial weights.

NumPyro runs in a virtual environment of its own (``bash benchmarks/numpyro_peer.sh``; the
Python of ``--peer-python``, default ``$NUMPYRO_VENV`` or ``/tmp/elbo-zoo-numpyro-venv``), one
subprocess per problem that compiles once and then answers step counts, so that the three
sides alternate within each repeat (median of ``--repeats``). The arrays (the zoo's data and
initial weights) go to it in an ``.npz``. One thread each: torch at ``--threads``; XLA with
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``, which still
leaves XLA's CPU client a pool of two threads that hand each step to one another (about 1.5
cores of CPU time, and no faster); so the benchmark pins itself, and with it the NumPyro
subprocesses, to one CPU (``--cpu``, default the last one it may use; ``--cpu -1`` does not
pin).

Usage::

    bash benchmarks/numpyro_peer.sh                # once: the peer's venv
    OMP_NUM_THREADS=1 python benchmarks/bench_numpyro.py [--steps 500] [--vae-steps 300]
        [--repeats 3] [--threads 1] [--cpu N] [--problems bayes-linreg vae]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path(os.environ.get("NUMPYRO_VENV", "/tmp/elbo-zoo-numpyro-venv"))
PROBLEMS = ("bayes-linreg", "vae")
BATCH = 128
WARMUP = 5
XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


# --------------------------------------------------------------------------------------------
# The zoo's side
# --------------------------------------------------------------------------------------------
def _fit_settings(name: str) -> dict[str, Any]:
    """What the runner is given besides the steps: one particle of the mean field and
    ``Trace_ELBO`` on ``bayes-linreg`` (as ``bench_svi_step.py``), the model's defaults else."""
    if name == "bayes-linreg":
        return {"guide": "mean-field", "elbo": "trace", "particles": 1}
    return {"test_particles": 30}


def time_runner(name: str, steps: int, compile: bool = False) -> float:
    """The runner's seconds per step; compiled (``compile=True``, :mod:`zoo.compiled`), the
    build (tracing and TorchInductor, once a run) left out (``bench_compiled.time_runner``)."""
    from bench_compiled import time_runner as runner_step

    return runner_step(name, steps, compile, **_fit_settings(name))[0]


def _fresh(model: Any, seed: int = 0) -> Any:
    """A fresh param store and the model's mean-field guide, every parameter created."""
    import pyro
    import torch

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = model.build_guide("mean-field")
    with torch.no_grad():
        guide(**_batch(model))
        model.model(**_batch(model))
    return guide


def _batch(model: Any) -> dict[str, int]:
    return {"subsample_size": BATCH} if model.name == "vae" else {}


def time_bare_pyro(model: Any, steps: int) -> tuple[float, float]:
    """(seconds per step, mean loss of the last 50 steps) of a plain ``pyro.infer.SVI`` loop."""
    from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
    from pyro.optim import ClippedAdam

    guide = _fresh(model)
    estimator = TraceMeanField_ELBO if model.name == "vae" else Trace_ELBO
    elbo = estimator(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model.model, guide, ClippedAdam({"lr": model.training.lr}), elbo)
    kwargs = _batch(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(WARMUP):
            svi.step(**kwargs)
        losses = []
        tic = time.perf_counter()
        for _ in range(steps):
            losses.append(svi.step(**kwargs))
        seconds = time.perf_counter() - tic
    return seconds / steps, statistics.fmean(losses[-min(50, steps) :])


def export_arrays(models: dict[str, Any], path: Path) -> None:
    """The zoo's data, settings and (for the VAE) initial weights, for the NumPyro side."""
    import numpy as np

    arrays: dict[str, Any] = {}
    if "bayes-linreg" in models:
        m = models["bayes-linreg"]
        arrays |= {
            "linreg_x": m.x.numpy(),
            "linreg_y": m.y.numpy(),
            "linreg_prior_scale": np.array(m.prior_scale),
            "linreg_noise_scale": np.array(m.noise_scale),
            "linreg_lr": np.array(m.training.lr),
        }
    if "vae" in models:
        m = models["vae"]
        _fresh(m)
        enc, dec = m.encoder, m.decoder
        arrays |= {
            "vae_x": m.x.numpy(),
            "vae_lr": np.array(m.training.lr),
            "vae_min_scale": np.array(enc.min_scale),
        }
        layers = {
            "enc1": enc.trunk[0],
            "enc2": enc.head,
            "dec1": dec.trunk[0],
            "dec2": dec.heads["logits"],
        }
        for name, layer in layers.items():
            arrays[f"{name}_w"] = layer.weight.detach().numpy().T.copy()  # (in, out)
            arrays[f"{name}_b"] = layer.bias.detach().numpy().copy()
    np.savez(path, **arrays)


# --------------------------------------------------------------------------------------------
# The NumPyro side: one subprocess per problem, compiled once
# --------------------------------------------------------------------------------------------
class Peer:
    """``numpyro_side.py --serve`` in the peer's Python: one JSON line per request."""

    def __init__(self, python: Path, problem: str, data: Path, log: Path) -> None:
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=XLA_FLAGS, OMP_NUM_THREADS="1")
        self.log = log
        command = [str(python), str(HERE / "numpyro_side.py"), "--problem", problem]
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [*command, "--data", str(data), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
        self.head = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            lines = self.log.read_text().strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"the NumPyro side stopped: {lines[-1]}")
        return json.loads(line)

    def run(self, steps: int) -> dict[str, float]:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _pin(cpu: int | None) -> str:
    """Pin this process (and so its subprocesses) to one CPU: ``cpu``, or the last one it may
    use when None; -1 leaves it unpinned."""
    if cpu == -1 or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    chosen = sorted(os.sched_getaffinity(0))[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="steps of bayes-linreg")
    parser.add_argument("--vae-steps", type=int, default=300, help="steps of the vae")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--cpu", type=int, default=None, help="CPU to pin to (default the last one; -1: none)"
    )
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_VENV / "bin" / "python")
    args = parser.parse_args()
    if not args.peer_python.exists():
        print(
            f"bench_numpyro.py: no NumPyro peer at {args.peer_python}; create it with "
            "`bash benchmarks/numpyro_peer.sh` (venv at $NUMPYRO_VENV) or pass --peer-python",
            file=sys.stderr,
        )
        sys.exit(2)
    pinned = _pin(args.cpu)

    import pyro
    import torch

    import zoo

    torch.set_num_threads(args.threads)
    steps = {"bayes-linreg": args.steps, "vae": args.vae_steps}
    models = {name: zoo.get_model(name)() for name in args.problems}
    peers: dict[str, Peer] = {}
    with tempfile.TemporaryDirectory(prefix="bench-numpyro-") as tmp:
        data = Path(tmp) / "arrays.npz"
        export_arrays(models, data)
        try:
            for name in args.problems:
                peers[name] = Peer(args.peer_python, name, data, Path(tmp) / f"{name}.log")
        except RuntimeError as err:
            for peer in peers.values():
                peer.close()
            print(
                f"bench_numpyro.py: {err} (peer {args.peer_python}); recreate it with "
                "`bash benchmarks/numpyro_peer.sh`",
                file=sys.stderr,
            )
            sys.exit(2)
        rows: dict[str, dict[str, list[float]]] = {}
        try:
            for name in args.problems:
                rows[name] = {"zoo": [], "compiled": [], "pyro": [], "numpyro": [], "async": []}
                rows[name] |= {"pyro_loss": [], "numpyro_loss": [], "cpu": []}
            for _ in range(args.repeats):
                for name in args.problems:
                    row, n = rows[name], steps[name]
                    row["zoo"].append(time_runner(name, n))
                    row["compiled"].append(time_runner(name, n, compile=True))
                    seconds, loss = time_bare_pyro(models[name], n)
                    row["pyro"].append(seconds)
                    row["pyro_loss"].append(loss)
                    answer = peers[name].run(n)
                    row["numpyro"].append(answer["seconds_per_step"])
                    row["async"].append(answer["async_seconds_per_step"])
                    row["numpyro_loss"].append(answer["mean_loss_tail"])
                    row["cpu"].append(answer["cpu_per_wall"])
        finally:
            for peer in peers.values():
                peer.close()

    first = next(iter(peers.values())).head
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}; "
        f"{first['library']}; {pinned}; median of {args.repeats}"
    )
    print(
        f"{'problem':<14}{'steps':>6}{'zoo ms':>9}{'compiled':>10}{'Pyro ms':>9}{'NumPyro ms':>12}"
        f"{'zoo/NumPyro':>13}{'compiled/NumPyro':>18}{'Pyro/NumPyro':>14}"
    )
    med = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in rows.items()}
    for name, m in med.items():
        a, b, c = m["zoo"] * 1e3, m["pyro"] * 1e3, m["numpyro"] * 1e3
        k = m["compiled"] * 1e3
        print(
            f"{name:<14}{steps[name]:>6}{a:>9.3f}{k:>10.3f}{b:>9.3f}{c:>12.3f}{a / c:>13.1f}"
            f"{k / c:>18.1f}{b / c:>14.1f}"
        )
    print("NumPyro details (jitted svi.update):")
    for name, m in med.items():
        head = peers[name].head
        print(
            f"  {name:<13} overlapping dispatch {m['async'] * 1e3:.3f} ms/step, "
            f"CPU/wall {m['cpu']:.2f}; svi.init {head['init_seconds']:.2f} s, "
            f"first jitted step (compilation) {head['compile_seconds']:.2f} s"
        )
    print("mean loss (-ELBO) of the last 50 steps, bare Pyro / NumPyro (one particle: noisy; a")
    print("check that both train the same problem, not a comparison):")
    for name, m in med.items():
        print(f"  {name:<13} {m['pyro_loss']:.1f} / {m['numpyro_loss']:.1f}")


if __name__ == "__main__":
    main()
