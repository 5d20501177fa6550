"""A diffusion model on the 8-Gaussian mixture against the exact E log p_data, under a budget.

Targets (the diffusion issues): the ELBO within 0.05 nats per point of E_data log p_data in at
most 5 minutes on two CPU cores; then within 0.005 nats (standard error <= 0.002) in at most 10
CPU-minutes on one thread. Training is the zoo's own model and guide (``zoo.models.diffusion``,
objective ``vdm``: VDM's continuous-time bound, so no discretisation gap) under Pyro's SVI with
``Trace_ELBO`` and ClippedAdam, in one of two ways:

- ``--minutes M`` (the default): this script's own SVI loop under a wall-clock budget, the
  learning rate decaying exponentially with the elapsed fraction of it; every ``--eval-every``
  seconds a quick estimate on 1000 held-out points is logged (inside the budget: it takes well
  under a second);
- ``--steps N``: :func:`zoo.fit` for N steps (the learning rate decaying exponentially from
  ``--lr`` to ``--lr-final``), its step compiled (:mod:`zoo.compiled`) wherever the run
  qualifies (``--no-compile``: eager; the result says which, and why),
  with the model's options ``--ema`` (a moving average of the weights answers the evaluation)
  and ``--t-sampler`` (importance-sampled tau). The training CPU time counts this process and
  its finished children (the compiler's) from the first step to the end of the last.

At the end, on ``--test-points`` fresh points of the true distribution (not trained on),
with standard errors of the paired per-point differences:

- E log p_data (exact: closed form), in nats per point and as negative bits per dimension;
- the continuous-time ELBO (``--eval-draws`` stratified times per point, in chunks of
  ``--eval-chunk`` points) and its gap;
- the same gap through the exact denoiser (:meth:`~zoo.models.diffusion.Diffusion.denoising_gap`,
  ``--denoiser-draws`` per point): the network's squared error against E[eps | z], whose
  standard error is a few times 1e-4 where the direct estimate's is a few times 1e-3;
- the T-step ELBO of the same network (DDPM's bound with every step's analytic KL) for a few T,
  and the plain Monte Carlo chain ELBO at T = 1000 with its agreement with the analytic one;
- the probability-flow ODE likelihood (exact divergence, RK4) on ``--ode-points`` points.

Wall and CPU seconds are recorded (``load`` is the 1-minute load average: on shared cores the
process may get a fraction of a core).

    PYTHONPATH=. python benchmarks/bench_diffusion.py --minutes 5
    PYTHONPATH=. python benchmarks/bench_diffusion.py --steps 60000 --ema 0.999

Writes ``--out`` (JSON: settings, history, result) when given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

import zoo
from zoo.declarations import in_place_schedule, is_in_place_schedule
from zoo.model import ZooModel
from zoo.models.diffusion import Diffusion


def _paired(ideal: torch.Tensor, values: torch.Tensor) -> dict[str, float]:
    gap = ideal - values
    n = gap.numel()
    return {
        "value": values.mean().item(),
        "value_se": values.std().item() / math.sqrt(n),
        "gap": gap.mean().item(),
        "gap_se": gap.std().item() / math.sqrt(n),
        "neg_bits_per_dim": -values.mean().item() / (2 * math.log(2)),
    }


@torch.no_grad()
def quick_gap(model: Diffusion, points: int = 1000, draws: int = 64) -> dict[str, float]:
    x = model.x_test[:points]
    return _paired(model.log_p_data(x), model.continuous_terms(x, draws)["elbo"])


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the compiler's workers)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@torch.no_grad()
def continuous_in_chunks(model: Diffusion, x: torch.Tensor, draws: int, chunk: int) -> dict:
    """:meth:`~Diffusion.continuous_terms` a chunk of points at a time (memory: draws x chunk)."""
    parts = [model.continuous_terms(x[i : i + chunk], draws) for i in range(0, len(x), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def final_report(model: Diffusion, args) -> dict:
    torch.manual_seed(args.seed + 1)
    x = model.x_test
    lp = model.log_p_data(x)
    out: dict = {
        "test_points": x.shape[0],
        "log_p_data": lp.mean().item(),
        "log_p_data_neg_bits_per_dim": -lp.mean().item() / (2 * math.log(2)),
    }
    t = time.perf_counter()
    cont = continuous_in_chunks(model, x, args.eval_draws, args.eval_chunk)
    out["continuous"] = _paired(lp, cont["elbo"])
    out["continuous"].update({k: cont[k].mean().item() for k in ("L_0", "L_T", "diffusion")})
    out["continuous"]["draws"] = args.eval_draws
    out["continuous"]["seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    precise = model.denoising_gap(x, args.denoiser_draws)
    out["denoising_gap"] = {k: v for k, v in precise.items() if k != "per_point"}
    out["denoising_gap"]["draws"] = args.denoiser_draws
    out["denoising_gap"]["seconds"] = time.perf_counter() - t
    xs, lps = x[: args.step_points], lp[: args.step_points]
    out["discrete"] = {}
    for steps in args.timesteps:
        disc = model.discrete_terms(xs, steps)
        row = _paired(lps, disc["elbo"])
        row.update({k: disc[k].mean().item() for k in ("L_0", "L_T", "diffusion")})
        out["discrete"][str(steps)] = row
    if args.chain_points > 1:
        mc = model.chain_log_weights(xs[: args.chain_points], num_steps=1000)[0]
        disc = model.discrete_terms(xs[: args.chain_points], 1000)["elbo"]
        out["mc_chain_T1000"] = _paired(lps[: args.chain_points], mc)
        diff = disc - mc
        out["mc_chain_T1000"]["rb_minus_mc"] = diff.mean().item()
        out["mc_chain_T1000"]["rb_minus_mc_se"] = diff.std().item() / math.sqrt(diff.numel())
    if args.ode_points > 1:
        xo = x[: args.ode_points]
        t = time.perf_counter()
        ode = model.ode_log_likelihood(xo, args.ode_steps)
        out["ode"] = _paired(lp[: args.ode_points], ode)
        out["ode"]["seconds"] = time.perf_counter() - t
        elbo_same = model.continuous_terms(xo, args.eval_draws)["elbo"]
        out["ode"]["ode_minus_elbo"] = (ode - elbo_same).mean().item()
        out["ode"]["ode_minus_elbo_se"] = (ode - elbo_same).std().item() / math.sqrt(len(xo))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    # one thread: on the two shared cores a second thread made each step 5x slower (measured)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-points", type=int, default=20000, help="training points")
    parser.add_argument("--test-points", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--schedule", default="linear-logsnr")
    parser.add_argument("--parameterization", default="eps")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lr-final", type=float, default=3e-5)
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--eval-draws", type=int, default=512)
    parser.add_argument("--eval-chunk", type=int, default=1000, help="points per chunk")
    parser.add_argument("--denoiser-draws", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="train with zoo.fit, N steps")
    parser.add_argument("--no-compile", action="store_true", help="with --steps: eager steps")
    parser.add_argument("--ema", type=float, default=0.0, help="with --steps: weight average")
    parser.add_argument(
        "--t-sampler", default="stratified", help="with --steps: stratified, loss or gradient"
    )
    parser.add_argument(
        "--antithetic", action="store_true", help="with --steps: antithetic pairs of noises"
    )
    parser.add_argument("--records", type=int, default=10, help="with --steps: history rows")
    parser.add_argument("--step-points", type=int, default=1000)
    parser.add_argument("--chain-points", type=int, default=500, help="0: no chain")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 1000, 4000])
    parser.add_argument("--ode-points", type=int, default=500, help="0: no ODE")
    parser.add_argument("--ode-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--save", default=None, help="save the param store here (torch.save)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.steps is not None:
        return train_steps(args)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    budget = 60.0 * args.minutes
    model = Diffusion(
        num_points=args.num_points,
        test_points=args.test_points,
        schedule=args.schedule,
        parameterization=args.parameterization,
        hidden=args.hidden,
        depth=args.depth,
    )
    guide = model.build_guide("forward")
    optim = ClippedAdam({"lr": args.lr})
    elbo = Trace_ELBO(num_particles=args.particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model.model, guide, optim, elbo)
    history: list[dict] = []
    print(
        f"8gaussians N={model.num_data} test={args.test_points} objective=vdm "
        f"schedule={args.schedule} net={args.depth}x{args.hidden} {args.parameterization} "
        f"batch={args.batch} budget={budget:.0f}s threads={args.threads} "
        f"load={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    tic, cpu_tic = time.perf_counter(), time.process_time()
    last_eval, step, loss = tic, 0, math.nan
    while True:
        elapsed = time.perf_counter() - tic
        frac = elapsed / budget
        if frac >= 1.0:
            break
        step += 1
        lr = args.lr * (args.lr_final / args.lr) ** frac
        for state in optim.optim_objs.values():
            for group in state.param_groups:
                group["lr"] = lr
        loss = svi.step(subsample_size=args.batch) / args.batch
        if time.perf_counter() - last_eval > args.eval_every:
            last_eval = time.perf_counter()
            row = {
                "step": step,
                "seconds": round(last_eval - tic, 1),
                "cpu_seconds": round(time.process_time() - cpu_tic, 1),
                "train_loss_per_point": loss,
                "lr": lr,
                "load": os.getloadavg()[0],
                **{f"quick_{k}": v for k, v in quick_gap(model).items()},
            }
            history.append(row)
            print(json.dumps(row), flush=True)
    train_seconds = time.perf_counter() - tic
    train_cpu_seconds = time.process_time() - cpu_tic
    if args.save:
        torch.save(pyro.get_param_store().get_state(), args.save)
    t_eval = time.perf_counter()
    result = {
        "steps": step,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "load_at_end": os.getloadavg()[0],
        **final_report(model, args),
    }
    result["eval_seconds"] = time.perf_counter() - t_eval
    return _finish(args, history, result)


def _finish(args, history: list[dict], result: dict) -> dict:
    print("RESULT " + json.dumps(result, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"settings": vars(args), "history": history, "result": result}, fh, indent=1)
    return result


def train_steps(args) -> dict:
    """``--steps``: train through :func:`zoo.fit` (compiled unless ``--no-compile``), timing the
    training's CPU from the first step's hook to the end of the last step (the model's step
    hook marks both: the last step is taken to cost the mean of the others)."""
    model = Diffusion(
        num_points=args.num_points,
        test_points=args.test_points,
        schedule=args.schedule,
        parameterization=args.parameterization,
        hidden=args.hidden,
        depth=args.depth,
        ema=args.ema,
        t_sampler=args.t_sampler,
        antithetic=args.antithetic,
        eval_points=50,  # zoo.fit's own summary: small (the report below is the benchmark's)
        ode_points=0,
    )
    marks: dict[str, float] = {}
    hook = model.on_step

    def timed_hook(step: int, total: int) -> None:
        if step in (1, total):
            marks[str(step)] = cpu_seconds()
            marks[f"wall{step}"] = time.perf_counter()
        hook(step, total)

    if is_in_place_schedule(hook) or getattr(hook, "__func__", None) is ZooModel.on_step:
        timed_hook = in_place_schedule(timed_hook)  # reads a clock: the step may still compile
    model.on_step = timed_hook
    print(
        f"8gaussians N={model.num_data} test={args.test_points} objective=vdm "
        f"schedule={args.schedule} net={args.depth}x{args.hidden} {args.parameterization} "
        f"batch={args.batch} steps={args.steps} ema={args.ema} t_sampler={args.t_sampler} "
        f"antithetic={args.antithetic} "
        f"no_compile={args.no_compile} threads={args.threads} load={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    fit = zoo.fit(
        model,
        steps=args.steps,
        lr=args.lr,
        lr_final_factor=args.lr_final / args.lr,
        batch_size=args.batch,
        particles=args.particles,
        seed=args.seed,
        compile=False if args.no_compile else None,  # None: wherever the run qualifies
        record_every=max(1, args.steps // args.records),
        eval_particles=30,
        progress=False,
    )
    per_step = (marks[str(args.steps)] - marks["1"]) / max(1, args.steps - 1)
    history = fit.history.assign(elbo_per_point=fit.history["elbo"] / model.num_data)
    t_eval = time.perf_counter()
    result = {
        "steps": args.steps,
        "train_cpu_seconds": marks[str(args.steps)] - marks["1"] + per_step,
        "train_seconds": fit.seconds,
        "compiled": fit.compiled,
        "load_at_end": os.getloadavg()[0],
        **final_report(model, args),
    }
    result["eval_seconds"] = time.perf_counter() - t_eval
    return _finish(args, history.to_dict("records"), result)


if __name__ == "__main__":
    main()
