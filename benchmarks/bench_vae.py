"""Time the zoo's VAE against hand-written PyTorch: the SVI step and the IWAE evaluation.

Both sides compute the same estimator on the same data (the binarised digits training split,
1,437 images) with the same architecture (64 -> 256 -> 2 x 8 encoder, 8 -> 256 -> 64
Bernoulli decoder) from the same initial weights:

- **SVI step** (batch 128, one particle): the zoo's step is exactly the runner's —
  ``pyro.infer.SVI`` with ``TraceMeanField_ELBO`` (vectorized particles, the analytic KL of
  Kingma & Welling's estimator B), ``ClippedAdam``, the mini-batch drawn by the model's data
  plate. The hand-written step draws ``randperm(N)[:128]``, runs encoder, reparameterised
  sample, decoder, ``-(N / B) (log p(x | z) - KL)``, ``backward`` and ``torch.optim.Adam``.
  A third row times the runner end to end (:func:`zoo.fit`, with one history record).
- **IWAE evaluation** (test split, 360 images, K = 1000): the zoo's
  :func:`zoo.diagnostics.evaluate` (which also computes the ELBO, its two halves, the
  analytic KL and the per-point weights; k-hat off) against a hand-written loop over the same
  particle chunks computing only log w, the ELBO and ``logsumexp``.

Usage::

    python benchmarks/bench_vae.py [--steps 300] [--repeats 3] [--threads 1] [--jit]
    python benchmarks/bench_vae.py --flow [--flow-steps 6000]   # IAF vs Gaussian encoder gap

Prints milliseconds for each side and their ratio (median of the repeats, both sides measured
in this one process, alternating). ``--jit`` adds ``JitTraceMeanField_ELBO`` as Pyro 1.9.2
ships it (it re-traces on every step) and compiled once (:class:`CachedJitTraceMeanField_ELBO`;
its losses and gradients match the plain estimator's in distribution); ``--flow``
trains the Gaussian and the IAF encoder for the same number of steps and prints the train and
test ELBO, IWAE and their gap.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import pyro
import torch
from torch import nn
from torch.nn import functional as F

import zoo
from zoo.diagnostics import _CHUNK_BUDGET, evaluate
from zoo.estimators import make_estimator
from zoo.models.vae import VariationalAutoencoder

BATCH = 128
LR = 2e-3


def _fresh(model: VariationalAutoencoder, seed: int = 0):
    """A fresh param store and the zoo's guide, every parameter created (as the runner does)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = model.build_guide("mean-field")
    with torch.no_grad():
        guide()
        model.model()
    return guide


class _HandVAE(nn.Module):
    """The same networks written out in plain PyTorch, initialised from the zoo's weights."""

    def __init__(self, model: VariationalAutoencoder) -> None:
        super().__init__()
        d, q, h = model.data_dim, model.latent_dim, model.hidden[0]
        self.enc = nn.Linear(d, h)
        self.enc_head = nn.Linear(h, 2 * q)
        self.dec, self.dec_out = nn.Linear(q, h), nn.Linear(h, d)
        e, dd = model.encoder, model.decoder
        with torch.no_grad():
            for mine, theirs in (
                (self.enc, e.trunk[0]),
                (self.enc_head, e.head),
                (self.dec, dd.trunk[0]),
                (self.dec_out, dd.heads["logits"]),
            ):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        self.min_scale = e.min_scale

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.enc_head(F.relu(self.enc(x))).chunk(2, dim=-1)
        return loc, F.softplus(raw) + self.min_scale

    def log_lik(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self.dec_out(F.relu(self.dec(z)))
        return -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)


# --------------------------------------------------------------------------------------------
class CachedJitTraceMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that compiles once.

    Pyro 1.9.2's ``differentiable_loss`` tests for ``self._loss_and_surrogate_loss`` but stores
    the compiled function as ``self._differentiable_loss``, so it builds (and traces) a new one
    on every call. Correct only while nothing outside the param store changes between steps:
    the KL-annealing weight of ``kl_warmup`` would be frozen into the trace.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._loss_and_surrogate_loss = self._differentiable_loss
        return loss


def time_zoo_step(model, steps: int, jit: str = "", validation: bool = True) -> float:
    from pyro.infer import SVI, JitTraceMeanField_ELBO
    from pyro.optim import ClippedAdam

    guide = _fresh(model)
    if jit:
        cls = CachedJitTraceMeanField_ELBO if jit == "cached" else JitTraceMeanField_ELBO
        estimator = cls(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    else:
        estimator = make_estimator("meanfield", particles=1, max_plate_nesting=1)
    svi = SVI(model.model, guide, ClippedAdam({"lr": LR, "lrd": 1.0}), estimator)
    with pyro.validation_enabled(validation), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):  # warm-up (and the JIT's compilation)
            svi.step(subsample_size=BATCH)
        tic = time.perf_counter()
        for _ in range(steps):
            svi.step(subsample_size=BATCH)
    return (time.perf_counter() - tic) / steps


def time_runner(steps: int) -> float:
    result = zoo.fit(
        "vae",
        steps=steps,
        record_every=steps,
        eval_particles=30,
        test_particles=30,
        progress=False,
        lr=LR,
        lr_final_factor=1.0,
    )
    return result.seconds / steps


def time_hand_step(model, steps: int) -> float:
    _fresh(model)
    net = _HandVAE(model)
    x_all, n = model.x, model.num_data
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def step() -> None:
        x = x_all[torch.randperm(n)[:BATCH]]
        loc, scale = net.encode(x)
        z = loc + scale * torch.randn_like(loc)
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()).sum(-1)
        loss = -(n / BATCH) * (net.log_lik(z, x) - kl).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - tic) / steps


# --------------------------------------------------------------------------------------------
def time_zoo_iwae(model, k: int) -> tuple[float, float]:
    guide = _fresh(model)
    test = model.on_test_split()
    tic = time.perf_counter()
    d = evaluate(test, guide.bind(test), num_particles=k, with_khat=False)
    return time.perf_counter() - tic, d.iwae


@torch.no_grad()
def time_hand_iwae(model, k: int) -> tuple[float, float]:
    _fresh(model)
    net = _HandVAE(model)
    x = model.x_test
    n = x.shape[0]
    per_chunk = max(2, min(k, _CHUNK_BUDGET // n))  # the diagnostics' chunks
    tic = time.perf_counter()
    loc, scale = net.encode(x)
    log_w, done = [], 0
    while done < k:
        m = min(per_chunk, k - done)
        eps = torch.randn(m, *loc.shape)
        z = loc + scale * eps
        log_p = -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
        log_q = (-0.5 * eps.pow(2) - scale.log()).sum(-1) - 0.5 * z.shape[-1] * math.log(
            2 * math.pi
        )
        log_w.append(net.log_lik(z, x) + log_p - log_q)
        done += m
    lw = torch.cat(log_w).double()
    iwae = (torch.logsumexp(lw, 0) - math.log(k)).sum().item()
    _elbo = lw.mean(0).sum().item()
    return time.perf_counter() - tic, iwae


# --------------------------------------------------------------------------------------------
def flow_versus_plain(steps: int) -> None:
    """Train both encoders for ``steps`` and print the bounds and the gap IWAE - ELBO."""
    print(f"IAF vs Gaussian encoder, {steps} steps each, K = 1000 (nats per image)")
    print(f"{'guide':<10}{'split':<7}{'ELBO':>10}{'IWAE':>10}{'IWAE-ELBO':>11}{'secs':>8}")
    for guide in ("mean-field", "iaf"):
        result = zoo.fit("vae", guide=guide, steps=steps, record_every=steps // 20, progress=False)
        d, t = result.diagnostics, result.summary["test"]["per_point"]
        n = d.num_data
        print(
            f"{guide:<10}{'train':<7}{d.elbo / n:>10.3f}{d.iwae / n:>10.3f}"
            f"{(d.iwae - d.elbo) / n:>11.3f}{result.seconds:>8.1f}"
        )
        print(
            f"{guide:<10}{'test':<7}{t['elbo']:>10.3f}{t['iwae']:>10.3f}"
            f"{t['iwae_minus_elbo']:>11.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--particles", type=int, default=1000, help="K of the IWAE timing")
    parser.add_argument("--jit", action="store_true", help="also time JitTraceMeanField_ELBO")
    parser.add_argument("--flow", action="store_true", help="IAF vs Gaussian encoder gap")
    parser.add_argument("--flow-steps", type=int, default=6000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}")
    if args.flow:
        flow_versus_plain(args.flow_steps)
        return
    model = VariationalAutoencoder()
    rows: dict[str, list[float]] = {"zoo": [], "zoo-novalid": [], "runner": [], "hand": []}
    if args.jit:
        rows["zoo-jit"], rows["zoo-jit-cached"] = [], []
    iwae: dict[str, list[float]] = {"zoo": [], "hand": []}
    bounds = {}
    for _ in range(args.repeats):
        rows["zoo"].append(time_zoo_step(model, args.steps))
        rows["zoo-novalid"].append(time_zoo_step(model, args.steps, validation=False))
        rows["runner"].append(time_runner(args.steps))
        if args.jit:
            rows["zoo-jit"].append(time_zoo_step(model, args.steps, jit="pyro"))
            rows["zoo-jit-cached"].append(time_zoo_step(model, args.steps, jit="cached"))
        rows["hand"].append(time_hand_step(model, args.steps))
        seconds, bounds["zoo"] = time_zoo_iwae(model, args.particles)
        iwae["zoo"].append(seconds)
        seconds, bounds["hand"] = time_hand_iwae(model, args.particles)
        iwae["hand"].append(seconds)
    hand = statistics.median(rows["hand"]) * 1e3
    print(f"SVI step, batch {BATCH}, {args.steps} steps x {args.repeats} repeats (ms per step)")
    labels = {
        "zoo": "zoo SVI step (TraceMeanField_ELBO)",
        "zoo-novalid": "zoo SVI step, validation off",
        "zoo-jit": "zoo SVI step, JitTraceMeanField_ELBO",
        "zoo-jit-cached": "  the same, compiled once (see class)",
        "runner": "zoo.fit end to end (1 record)",
        "hand": "hand-written PyTorch",
    }
    for key, values in rows.items():
        ms = statistics.median(values) * 1e3
        print(f"  {labels[key]:<40}{ms:>9.3f}{ms / hand:>8.2f}x")
    h = statistics.median(iwae["hand"])
    print(f"IWAE evaluation, test split ({model.x_test.shape[0]} images), K = {args.particles} (s)")
    for key, label in (("zoo", "zoo.diagnostics.evaluate"), ("hand", "hand-written PyTorch")):
        s = statistics.median(iwae[key])
        print(f"  {label:<40}{s:>9.3f}{s / h:>8.2f}x   IWAE {bounds[key]:.2f} nats")


if __name__ == "__main__":
    main()
