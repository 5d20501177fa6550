"""Time the zoo runner's SVI step against a hand-written PyTorch loop of the same estimator.

Both sides optimise the same single-particle ELBO (Trace_ELBO) on the same model from the same
starting point with the same Adam settings, so the ratio measures the runner's and Pyro's
overhead, nothing else:

- ``gmm``: EM-style SVI on the 500-point synthetic mixture; the guide is the exact posterior of
  the labels given the (detached) parameters, the gradient is E_q grad log p(x, z | theta).
- ``bayes-linreg``: a mean-field Normal guide on Bayesian linear regression (diabetes, 442 x 10),
  reparameterised.

Usage::

    python benchmarks/bench_svi_step.py [--steps 500] [--repeats 3] [--threads 1]

Prints one row per model: milliseconds per step for each side and their ratio (median of the
repeats, both measured in this one process, alternating).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.distributions as tdist

import zoo
from zoo.models.gmm import GaussianMixture, component_log_joint


def _time_runner(name: str, steps: int, **kw) -> float:
    result = zoo.fit(name, steps=steps, record_every=steps, eval_particles=30, progress=False, **kw)
    return result.seconds / steps


def _hand_gmm(steps: int, lr: float) -> float:
    m = GaussianMixture()
    x = m.x
    init = m.initial_parameters()
    weights_logits = init["weights"].log().clone().requires_grad_(True)
    locs = init["locs"].clone().requires_grad_(True)
    tril_raw = init["scale_trils"].clone()
    diag = tril_raw.diagonal(dim1=-2, dim2=-1)
    tril_raw = tril_raw.tril(-1) + torch.diag_embed(diag.log())
    tril_raw.requires_grad_(True)
    params = [weights_logits, locs, tril_raw]
    opt = torch.optim.Adam(params, lr=lr)
    tic = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        weights = torch.softmax(weights_logits, -1)
        tril = tril_raw.tril(-1) + torch.diag_embed(tril_raw.diagonal(dim1=-2, dim2=-1).exp())
        with torch.no_grad():
            z = tdist.Categorical(logits=component_log_joint(x, weights, locs, tril)).sample()
        log_p = weights.log()[z] + tdist.MultivariateNormal(locs[z], scale_tril=tril[z]).log_prob(x)
        (-log_p.sum()).backward()
        opt.step()
    return (time.perf_counter() - tic) / steps


def _hand_linreg(steps: int, lr: float) -> float:
    model = zoo.get_model("bayes-linreg")()
    x, y = model.x, model.y
    s_prior, s_noise = model.prior_scale, model.noise_scale
    d = x.shape[1]
    loc = torch.zeros(d, dtype=x.dtype, requires_grad=True)
    log_scale = torch.full((d,), math.log(0.1), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.Adam([loc, log_scale], lr=lr)
    tic = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        q = tdist.Normal(loc, log_scale.exp())
        w = q.rsample()
        elbo = (
            tdist.Normal((x * w).sum(-1), s_noise).log_prob(y).sum()
            + tdist.Normal(0.0, s_prior).log_prob(w).sum()
            - q.log_prob(w).sum()
        )
        (-elbo).backward()
        opt.step()
    return (time.perf_counter() - tic) / steps


CASES = {
    "gmm": (lambda s: _time_runner("gmm", s, elbo="trace", lr_final_factor=1.0), _hand_gmm, 0.05),
    "bayes-linreg": (
        lambda s: _time_runner(
            "bayes-linreg", s, guide="mean-field", elbo="trace", particles=1, lr_final_factor=1.0
        ),
        _hand_linreg,
        0.02,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}")
    print(f"{'model':<14}{'zoo ms/step':>14}{'torch ms/step':>15}{'ratio':>8}")
    for name, (runner, hand, lr) in CASES.items():
        if name not in zoo.model_names():
            continue
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(runner(args.steps))
            theirs.append(hand(args.steps, lr))
        a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
        print(f"{name:<14}{a:>14.3f}{b:>15.3f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
