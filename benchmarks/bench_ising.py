"""VAN on the periodic Ising model at beta_c against Kaufman's exact log Z, under a time budget.

Targets (the Ising issues): relative free-energy error (log Z - estimate) / log Z <= 2e-5 on
the periodic 8 x 8 lattice, <= 1e-4 on 16 x 16 and <= 1e-3 on 32 x 32 at
beta_c = ln(1 + sqrt 2) / 2, each within 30 CPU-minutes. Training is the zoo's own model and
guide (``zoo.models.ising``, ``guides.autoregressive``) under Pyro's SVI with
``TraceGraph_ELBO`` (score function, VAN's batch-mean baseline) and ClippedAdam; this script
only adds a budget of ``--minutes`` of this process's CPU time (``--clock wall``: wall time):
the learning rate decays exponentially with the elapsed fraction of the budget, and beta is
annealed over the first ``--anneal-frac`` of it. From ``--eval-draws`` fresh draws of q at the
end: the ELBO (a bound) with its standard error, and from the same draws the neural importance
sampling estimate log mean w (Nicoli et al. 2020) with its delta-method SE, Kish ESS and
Pareto k-hat. Wall and CPU seconds are both recorded (``load`` in the output is the 1-minute
load average).

    PYTHONPATH=. python benchmarks/bench_ising.py --size 8 --minutes 25
    PYTHONPATH=. python benchmarks/bench_ising.py --size 16 --minutes 25 --batch 500

Writes ``--out`` (JSON: settings, history, result) when given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import pyro
import torch
from pyro.infer import SVI, TraceGraph_ELBO
from pyro.optim import ClippedAdam

from zoo.diagnostics import effective_sample_size, iwae_with_se
from zoo.models.ising import Ising
from zoo.models.ising.exact import BETA_C, kaufman_log_z
from zoo.psis import pareto_khat


@torch.no_grad()
def log_weights(model: Ising, guide, draws: int, chunk: int = 2000) -> torch.Tensor:
    """log w = log p~(z) - log q(z) (at the target beta) of ``draws`` fresh draws of q."""
    values = []
    for start in range(0, draws, chunk):
        fn = guide.distribution()
        z = fn.sample((min(chunk, draws - start),))
        values.append(model.log_weight(z, model.beta) - fn.log_prob(z).double())
    return torch.cat(values)


def evaluate(model: Ising, guide, draws: int) -> tuple[float, float]:
    """ELBO on log Z (at the target beta) and its standard error from ``draws`` draws."""
    lw = log_weights(model, guide, draws)
    return lw.mean().item(), (lw.std() / math.sqrt(lw.numel())).item()


def nis(lw: torch.Tensor, log_z: float) -> dict:
    """The neural importance sampling estimate log mean w of log Z (Nicoli et al., PRE 101,
    023304, 2020) from the same draws: its delta-method SE, Kish ESS and Pareto k-hat."""
    value, se = iwae_with_se(lw)
    return {
        "nis_log_z": value.item(),
        "nis_se": se.item(),
        "nis_rel_error": (log_z - value.item()) / log_z,
        "nis_rel_error_se": se.item() / log_z,
        "nis_ess": effective_sample_size(lw),
        "nis_khat": pareto_khat(lw),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--beta", type=float, default=BETA_C)
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what --minutes counts: this process's CPU time (default) or wall time",
    )
    parser.add_argument("--hidden", type=int, default=0, help="0: the model's default")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-final", type=float, default=1e-5)
    parser.add_argument("--anneal-frac", type=float, default=0.1)
    parser.add_argument("--eval-draws", type=int, default=100_000)
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    budget = 60.0 * args.minutes
    model = Ising(size=args.size, beta=args.beta, hidden=args.hidden, depth=args.depth)
    log_z = kaufman_log_z(args.size, args.size, args.beta)
    guide = model.build_guide("autoregressive")
    optim = ClippedAdam({"lr": args.lr})
    svi = SVI(
        model.model,
        guide,
        optim,
        TraceGraph_ELBO(num_particles=args.batch, vectorize_particles=True, max_plate_nesting=0),
    )
    history: list[dict] = []
    tic, cpu_tic = time.perf_counter(), time.process_time()
    last_eval, step, anneal_steps = tic, 0, None
    print(
        f"L={args.size} N={model.num_data} beta={args.beta:.6f} log Z={log_z:.10f} "
        f"hidden={model.hidden} depth={args.depth} batch={args.batch} z2={model.z2} "
        f"budget={budget:.0f}s ({args.clock}) threads={args.threads} load={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    clock_tic = clock()
    while True:
        elapsed = clock() - clock_tic
        frac = elapsed / budget
        if frac >= 1.0:
            break
        step += 1
        if anneal_steps is None and step == 21:  # after 20 steps, convert the time fraction
            per_step = elapsed / 20
            anneal_steps = max(1, int(args.anneal_frac * budget / per_step))
            model.anneal_steps = anneal_steps
        elif anneal_steps is None:
            model.anneal_steps = 10**9  # tiny beta while the step time is measured
        model.on_step(step, 0)
        lr = args.lr * (args.lr_final / args.lr) ** frac
        for state in optim.optim_objs.values():
            for group in state.param_groups:
                group["lr"] = lr
        loss = svi.step()
        if time.perf_counter() - last_eval > args.eval_every:
            last_eval = time.perf_counter()
            elbo, se = evaluate(model, guide, 4000)
            row = {
                "step": step,
                "seconds": round(last_eval - tic, 1),
                "cpu_seconds": round(time.process_time() - cpu_tic, 1),
                "beta_train": model.beta * min(1.0, step / (anneal_steps or 10**9)),
                "train_loss": loss,
                "elbo": elbo,
                "elbo_se": se,
                "rel_error": (log_z - elbo) / log_z,
                "lr": lr,
            }
            history.append(row)
            print(json.dumps(row), flush=True)
    train_seconds = time.perf_counter() - tic
    train_cpu_seconds = time.process_time() - cpu_tic
    t_eval = time.perf_counter()
    lw = log_weights(model, guide, args.eval_draws)
    elbo, se = lw.mean().item(), (lw.std() / math.sqrt(lw.numel())).item()
    # energy, magnetisation and heat capacity under q against the exact values
    thermo = {"q": model.guide_estimates(guide, 20_000), "exact": model.exact_thermodynamics()}
    result = {
        "size": args.size,
        "beta": args.beta,
        "log_z": log_z,
        "elbo": elbo,
        "elbo_se": se,
        "rel_error": (log_z - elbo) / log_z,
        "rel_error_se": se / log_z,
        **nis(lw, log_z),
        "steps": step,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "eval_seconds": time.perf_counter() - t_eval,
        "anneal_steps": anneal_steps,
        "load_at_end": os.getloadavg()[0],
        "thermodynamics": thermo,
    }
    print("RESULT " + json.dumps(result), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"settings": vars(args), "history": history, "result": result}, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
