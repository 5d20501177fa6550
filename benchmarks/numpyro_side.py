"""The NumPyro side of ``benchmarks/bench_numpyro.py``: the zoo's two timing problems written in
NumPyro, trained with a jitted ``svi.update`` on JAX's CPU backend, one thread.

Runs in the peer's virtual environment (``benchmarks/numpyro_peer.sh``: numpyro, jax[cpu],
scikit-learn; no torch) and imports nothing of the zoo. The problems follow the zoo's models:

- ``bayes-linreg``: w ~ N(0, s^2 I), y_n | w ~ N(x_n^T w, sigma^2) on scikit-learn's diabetes
  data (442 x 10, features and target standardised with the population sd; s = 1, sigma = 0.7),
  as ``zoo/models/bayes_linreg.py`` (Bishop, PRML §3.3). Guide: ``AutoNormal`` (mean field in
  unconstrained space, initial scale 0.1, as Pyro's), ``Trace_ELBO`` with one particle, float64
  (the zoo's dtype for this model).
- ``vae``: the zoo's ``vae`` on binarised digits (Kingma & Welling 2014, section 3 and appendix
  C.2): encoder 64 -> 256 (ReLU) -> 2 x 8, scale softplus(.) + 1e-4; decoder 8 -> 256 (ReLU) ->
  64 Bernoulli logits; p(z) = N(0, I); mini-batches of 128 drawn by the data plate (without
  replacement, the ELBO scaled by N / 128); ``TraceMeanField_ELBO`` (the analytic KL), one
  particle, float32. The MLPs are plain ``jax.numpy`` on ``numpyro.param`` arrays (no flax or
  haiku), weights stored as (in, out).

Both use ``numpyro.optim.ClippedAdam`` (Adam with every gradient element clipped to
[-10, 10], as Pyro's ``ClippedAdam`` that the zoo's runner uses) at the zoo's learning rate.

Usage (with the peer's Python, e.g. ``/tmp/elbo-zoo-numpyro-venv/bin/python``)::

    python benchmarks/numpyro_side.py --problem vae --steps 300 --repeats 3   # one JSON object
    python benchmarks/numpyro_side.py --problem vae --data arrays.npz --serve

Without ``--data`` the data come from scikit-learn (the digits' training split is a seeded
permutation of 1,437 of the 1,797 images, the weights drawn as PyTorch's ``nn.Linear`` draws
them); ``bench_numpyro.py`` passes the zoo's own arrays and initial weights in an ``.npz``.
With ``--serve`` the process compiles the step, prints one JSON line (versions, the time of
``svi.init`` and of the first jitted call, which includes the compilation) and then, for each
line ``N`` read from standard input, runs N steps and prints one JSON line with the seconds per
step; an empty line or the end of the input ends it. Timing starts after the compilation and
five warm-up steps, and stops when the last step's state is ready (``block_until_ready``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# One CPU thread for XLA, set before JAX is imported (the caller sets them too).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import numpy as np

PROBLEMS = ("bayes-linreg", "vae")
BATCH = 128
WARMUP = 5


# --------------------------------------------------------------------------------------------
# Data and settings
# --------------------------------------------------------------------------------------------
def _standardize(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(0)) / values.std(0)


def _torch_like_linear(rng: np.random.Generator, fan_in: int, fan_out: int):
    """Weights (in, out) and bias as ``nn.Linear`` draws them: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / np.sqrt(fan_in)
    w = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
    return w, rng.uniform(-bound, bound, size=fan_out).astype(np.float32)


def default_arrays(problem: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The problem's arrays and settings from scikit-learn's bundled data."""
    if problem == "bayes-linreg":
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        return {
            "linreg_x": _standardize(data.data),
            "linreg_y": _standardize(data.target[:, None])[:, 0],
            "linreg_prior_scale": np.array(1.0),
            "linreg_noise_scale": np.array(0.7),
            "linreg_lr": np.array(0.3),
        }
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    images = (load_digits().data / 16.0 > 0.5).astype(np.float32)
    train = rng.permutation(len(images))[: len(images) - int(np.ceil(0.2 * len(images)))]
    d, q, h = images.shape[1], 8, 256
    out = {"vae_x": images[train], "vae_lr": np.array(2e-3), "vae_min_scale": np.array(1e-4)}
    for name, (fan_in, fan_out) in {
        "enc1": (d, h),
        "enc2": (h, 2 * q),
        "dec1": (q, h),
        "dec2": (h, d),
    }.items():
        out[f"{name}_w"], out[f"{name}_b"] = _torch_like_linear(rng, fan_in, fan_out)
    return out


# --------------------------------------------------------------------------------------------
# The two problems in NumPyro
# --------------------------------------------------------------------------------------------
def build(problem: str, arrays: dict[str, np.ndarray]):
    """(svi, args of the model and guide) of ``problem``."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.infer.initialization import init_to_feasible
    from numpyro.optim import ClippedAdam

    if problem == "bayes-linreg":
        x = jnp.asarray(arrays["linreg_x"], dtype=jnp.float64)
        y = jnp.asarray(arrays["linreg_y"], dtype=jnp.float64)
        prior_scale = float(arrays["linreg_prior_scale"])
        noise_scale = float(arrays["linreg_noise_scale"])

        def model(x, y):
            d = x.shape[-1]
            w = numpyro.sample("w", dist.Normal(jnp.zeros(d, x.dtype), prior_scale).to_event(1))
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("y", dist.Normal(x @ w, noise_scale), obs=y)

        guide = AutoNormal(model, init_loc_fn=init_to_feasible, init_scale=0.1)
        optim = ClippedAdam(step_size=float(arrays["linreg_lr"]), clip_norm=10.0)
        return SVI(model, guide, optim, Trace_ELBO(num_particles=1)), (x, y)

    x = jnp.asarray(arrays["vae_x"], dtype=jnp.float32)
    min_scale = float(arrays["vae_min_scale"])
    latent = arrays["dec1_w"].shape[0]
    init = {
        k: jnp.asarray(v, dtype=jnp.float32)
        for k, v in arrays.items()
        if k.startswith(("enc", "dec"))
    }

    def params(net: str) -> list:
        """(w1, b1, w2, b2) of the encoder or decoder as ``numpyro.param`` sites."""
        names = (f"{net}{i}_{p}" for i in (1, 2) for p in "wb")
        return [numpyro.param(name, init[name]) for name in names]

    def model(x):
        w1, b1, w2, b2 = params("dec")
        with numpyro.plate("data", x.shape[0], subsample_size=BATCH) as idx:
            prior = dist.Normal(jnp.zeros(latent, x.dtype), 1.0).to_event(1)
            z = numpyro.sample("z", prior)
            logits = jax.nn.relu(z @ w1 + b1) @ w2 + b2
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x[idx])

    def guide(x):
        w1, b1, w2, b2 = params("enc")
        with numpyro.plate("data", x.shape[0], subsample_size=BATCH) as idx:
            loc, raw = jnp.split(jax.nn.relu(x[idx] @ w1 + b1) @ w2 + b2, 2, axis=-1)
            numpyro.sample("z", dist.Normal(loc, jax.nn.softplus(raw) + min_scale).to_event(1))

    optim = ClippedAdam(step_size=float(arrays["vae_lr"]), clip_norm=10.0)
    return SVI(model, guide, optim, TraceMeanField_ELBO(num_particles=1)), (x,)


class Stepper:
    """A compiled ``svi.update`` and its state; :meth:`run` times ``steps`` further steps."""

    def __init__(self, problem: str, arrays: dict[str, np.ndarray], seed: int = 0) -> None:
        import jax

        if problem == "bayes-linreg":
            jax.config.update("jax_enable_x64", True)
        self.jax = jax
        self.svi, self.args = build(problem, arrays)
        tic = time.perf_counter()
        self.state = self.svi.init(jax.random.PRNGKey(seed), *self.args)
        jax.block_until_ready(self.state)
        self.init_seconds = time.perf_counter() - tic
        self.update = jax.jit(self.svi.update)
        tic = time.perf_counter()
        self.state, _ = self.update(self.state, *self.args)
        jax.block_until_ready(self.state)
        self.compile_seconds = time.perf_counter() - tic  # trace + compile + one step
        for _ in range(WARMUP - 1):
            self.state, _ = self.update(self.state, *self.args)
        jax.block_until_ready(self.state)
        self.start = self.state  # every run starts here: after the same steps as Pyro's warm-up

    def _loop(self, steps: int, sync: bool) -> tuple[float, float, list]:
        update, state, args = self.update, self.start, self.args
        block = self.jax.block_until_ready
        losses = []
        cpu = time.process_time()
        tic = time.perf_counter()
        for _ in range(steps):
            state, loss = update(state, *args)
            if sync:
                block(state)
            losses.append(loss)
        block(state)
        seconds = time.perf_counter() - tic
        cpu = time.process_time() - cpu
        return seconds, cpu, losses

    def run(self, steps: int) -> dict[str, float]:
        """``steps`` steps as JAX runs them (dispatch of the next step overlaps the running one),
        then the same ``steps`` steps again, waiting for each step before dispatching the next
        (one thing at a time, as eager PyTorch). Both start from the state after the warm-up,
        with the same random draws: the loss is that of ``WARMUP + steps`` steps."""
        seconds, cpu, losses = self._loop(steps, sync=False)
        sync_seconds, sync_cpu, _ = self._loop(steps, sync=True)
        tail = np.asarray(self.jax.numpy.stack(losses[-min(50, steps) :]), dtype=np.float64)
        return {
            "seconds_per_step": sync_seconds / steps,
            "cpu_per_wall": sync_cpu / sync_seconds,
            "async_seconds_per_step": seconds / steps,
            "async_cpu_per_wall": cpu / seconds,
            "mean_loss_tail": float(tail.mean()),
        }


def versions() -> str:
    import jax
    import jaxlib
    import numpyro

    return f"numpyro {numpyro.__version__}, jax {jax.__version__}, jaxlib {jaxlib.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=PROBLEMS, required=True)
    parser.add_argument("--data", help=".npz of arrays and settings (default: scikit-learn's)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help="answer step counts from stdin")
    args = parser.parse_args()
    if args.data:
        with np.load(args.data) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        arrays = default_arrays(args.problem, args.seed)
    stepper = Stepper(args.problem, arrays, args.seed)
    head = {
        "problem": args.problem,
        "library": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "init_seconds": stepper.init_seconds,
        "compile_seconds": stepper.compile_seconds,
    }
    if args.serve:
        print(json.dumps({"ready": True, **head}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                break
            print(json.dumps(stepper.run(int(line))), flush=True)
        return
    runs = [stepper.run(args.steps) for _ in range(args.repeats)]
    head["steps"], head["runs"] = args.steps, runs
    head["median_ms_per_step"] = 1e3 * statistics.median(r["seconds_per_step"] for r in runs)
    print(json.dumps(head, indent=2))


if __name__ == "__main__":
    main()
