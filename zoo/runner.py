"""The shared runner: stochastic variational inference for any zoo model.

:func:`fit` trains a model's guide (and the model's own parameters theta) by maximising the
ELBO with :class:`pyro.infer.SVI`, or by the model's closed-form coordinate ascent (EM, CAVI)
where it has one, then hands the result to the diagnostics. It knows nothing model-specific:

- a fresh param store per run, seeded with :func:`pyro.set_rng_seed` (same seed, same machine,
  same numbers);
- ``Trace_ELBO`` with vectorized particles unless the model or the user names another estimator;
- mini-batches through the model's subsampled data plate (``subsample_size``), and every pass
  over all the data a block of points at a time where the model sets ``data_block_size``
  (:mod:`zoo.data_blocks`);
- the model's closed-form local step (CAVI for the factors of local latents) after every SVI
  step, where it has one for the guide (:meth:`ZooModel.local_step`);
- Adam with gradient clipping and an exponential learning-rate decay (``lr_final_factor``);
- a history row every ``record_every`` steps: the ELBO and its two halves from a few particles,
  and the exact log evidence and gap where the model knows them;
- checkpoints (parameters, optimizer state, RNG state, history) that :func:`resume` continues
  to exactly where an uninterrupted run would have ended;
- a one-line :class:`~zoo.errors.NonFiniteLossError` naming the step and the bad sites.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.optim import ClippedAdam
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from zoo.annealing import LatentScale, warmup_weight
from zoo.data_blocks import data_blocks, on_block
from zoo.diagnostics import evaluate, quick_terms
from zoo.errors import NonFiniteLossError, ZooError
from zoo.estimators import ESTIMATORS, make_estimator, prepare_guide
from zoo.model import ZooModel
from zoo.psis import MIN_DRAWS
from zoo.registry import get_model
from zoo.results import FitResult, RunConfig

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METHODS = ("svi", "closed-form")


def fit(
    model: str | ZooModel,
    data: Any = None,
    *,
    guide: str | None = None,
    elbo: str | None = None,
    method: str = "svi",
    steps: int | None = None,
    lr: float | None = None,
    lr_final_factor: float | None = None,
    particles: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    quick: bool = False,
    eval_particles: int = 1000,
    trace_particles: int = 16,
    record_every: int | None = None,
    checkpoint_every: int | None = None,
    run_dir: str | Path | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    kl_warmup: int = 0,
    local_steps: bool | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` (a registered name or a :class:`ZooModel`) and diagnose the result.

    Unset training settings come from the model's :class:`~zoo.model.Training` defaults;
    ``quick`` swaps in its short step count. Model-specific options (``components=3``...) go
    in ``**options``. With ``run_dir`` the run checkpoints there and can be resumed.
    ``threads`` sets torch's (process-wide) intra-op thread count; small models run fastest
    on one thread, especially when other work shares the cores. ``kl_warmup`` ramps the
    weight of the latent sites linearly from 0 to 1 over that many steps (KL annealing); the
    history and the diagnostics always report the ELBO at weight 1. ``local_steps`` applies
    the model's closed-form local step around every SVI step (:meth:`ZooModel.local_step`);
    None: wherever the model has one for the guide.
    """
    _check_device(device)
    if threads is not None:
        torch.set_num_threads(_positive_int(threads, "threads"))
    if isinstance(model, ZooModel):
        if data is not None or options:
            raise ZooError("pass data and options when building the model, not to fit()")
        zoo_model = model
    else:
        zoo_model = get_model(model)(data, device=device, **options)
    config = _make_config(
        zoo_model,
        data=data,
        guide=guide,
        elbo=elbo,
        method=method,
        steps=steps,
        lr=lr,
        lr_final_factor=lr_final_factor,
        particles=particles,
        batch_size=batch_size,
        seed=seed,
        device=device,
        quick=quick,
        eval_particles=eval_particles,
        trace_particles=trace_particles,
        record_every=record_every,
        checkpoint_every=checkpoint_every,
        kl_warmup=kl_warmup,
        local_steps=local_steps,
    )
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(run_dir / CONFIG, config.to_json().encode())
    return _Trainer(zoo_model, config, run_dir).run(progress)


def resume(run_dir: str | Path, *, steps: int | None = None, progress: bool | None = None):
    """Continue the run checkpointed in ``run_dir`` up to its step count (or ``steps``)."""
    run_dir = Path(run_dir)
    try:
        config = RunConfig.from_json((run_dir / CONFIG).read_text())
        checkpoint = torch.load(run_dir / CHECKPOINT, weights_only=True)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise ZooError(f"cannot resume from {run_dir}: {exc}") from None
    if steps is not None:
        config.steps = _positive_int(steps, "steps")
    options = dict(config.options)
    data = options.pop("data", None)
    zoo_model = get_model(config.model)(data, device=config.device, **options)
    return _Trainer(zoo_model, config, run_dir).run(progress, checkpoint=checkpoint)


# --------------------------------------------------------------------------------------------
def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ZooError(f"device {device!r} requested but CUDA is not available here")
        return
    raise ZooError(f"unknown device {device!r}; use cpu or cuda")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ZooError(f"{what} must be a positive integer, got {value!r}")
    return value


def _make_config(zoo_model: ZooModel, *, data: Any, **kw: Any) -> RunConfig:
    m = zoo_model
    guide = kw["guide"] or m.default_guide
    if guide not in m.guides:
        raise ZooError(
            f"model {m.name!r} has no guide {guide!r}; choose from {', '.join(m.guides)}"
        )
    t = m.training_settings(guide)
    method = kw["method"]
    if method not in METHODS:
        raise ZooError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "closed-form" and not m.has_closed_form():
        raise ZooError(f"model {m.name!r} has no closed-form updates; use --method svi")
    elbo = kw["elbo"] or m.elbo_for_guide.get(guide, m.default_elbo)
    if elbo not in ESTIMATORS:
        raise ZooError(f"unknown estimator {elbo!r}; choose from {', '.join(ESTIMATORS)}")
    if method == "closed-form":
        default = max(10, t.closed_form_steps // 5) if kw["quick"] else t.closed_form_steps
    else:
        default = t.quick_steps if kw["quick"] else t.steps
    steps = _positive_int(default if kw["steps"] is None else kw["steps"], "steps")
    lr = t.lr if kw["lr"] is None else float(kw["lr"])
    factor = t.lr_final_factor if kw["lr_final_factor"] is None else float(kw["lr_final_factor"])
    if not (lr > 0 and math.isfinite(lr)):
        raise ZooError(f"lr must be a positive number, got {lr!r}")
    if not (0 < factor <= 1):
        raise ZooError(f"lr_final_factor must be in (0, 1], got {factor!r}")
    particles = _positive_int(
        t.particles if kw["particles"] is None else kw["particles"], "particles"
    )
    batch = kw["batch_size"] if kw["batch_size"] is not None else t.batch_size
    if batch is not None:
        batch = _positive_int(batch, "batch_size")
        if m.data_plate is None:
            raise ZooError(f"model {m.name!r} has no data plate to mini-batch over")
        if batch >= m.num_data:
            batch = None
    if m.data_plate is not None and m.num_data is None:
        raise ZooError("model did not set num_data")
    eval_particles = _positive_int(kw["eval_particles"], "eval_particles")
    if eval_particles < MIN_DRAWS:
        raise ZooError(f"eval_particles must be at least {MIN_DRAWS} (k-hat needs a tail)")
    trace_particles = _positive_int(kw["trace_particles"], "trace_particles")
    record = kw["record_every"]
    if record is None:
        record = 1 if method == "closed-form" else max(1, steps // t.records)
    record = _positive_int(record, "record_every")
    kl_warmup = kw["kl_warmup"]
    if isinstance(kl_warmup, bool) or not isinstance(kl_warmup, int) or kl_warmup < 0:
        raise ZooError(f"kl_warmup must be a non-negative integer, got {kl_warmup!r}")
    if kl_warmup and method != "svi":
        raise ZooError("kl_warmup applies to SVI only")
    local = kw["local_steps"]
    has_local = method == "svi" and guide in m.local_step_guides
    if local and not has_local:
        where = f"guide {guide!r}" if method == "svi" else f"method {method!r}"
        raise ZooError(f"model {m.name!r} has no closed-form local step for {where}")
    local = has_local if local is None else bool(local)
    checkpoint = kw["checkpoint_every"]
    checkpoint = _positive_int(
        max(1, steps // 10) if checkpoint is None else checkpoint, "checkpoint_every"
    )
    options = dict(m.option_values)
    if isinstance(data, str | os.PathLike):
        options["data"] = str(data)
    return RunConfig(
        model=m.name,
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
        guide=guide,
        elbo=elbo,
        method=method,
        steps=steps,
        lr=lr,
        lr_final_factor=factor,
        particles=particles,
        batch_size=batch,
        seed=int(kw["seed"]),
        device=kw["device"],
        eval_particles=eval_particles,
        trace_particles=trace_particles,
        record_every=record,
        checkpoint_every=checkpoint,
        quick=bool(kw["quick"]),
        kl_warmup=kl_warmup,
        local_steps=local,
    )


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def non_finite_sites(model: Callable, guide: Callable, **kwargs: Any) -> list[str]:
    """Names of the sites (and parameters) whose log-probability or value is not finite."""
    bad = [
        f"param {name!r}"
        for name, value in pyro.get_param_store().items()
        if not torch.isfinite(value).all()
    ]
    with pyro.validation_enabled(False), torch.no_grad():
        try:
            guide_trace = poutine.trace(guide).get_trace(**kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                **kwargs
            )
        except (ValueError, RuntimeError) as exc:
            return [*bad, f"(tracing failed: {str(exc).splitlines()[0]})"]
        for label, trace in (("guide", guide_trace), ("model", model_trace)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                try:
                    lp = site["fn"].log_prob(site["value"])
                except (ValueError, RuntimeError):
                    bad.append(f"{label} site {name!r}")
                    continue
                if not torch.isfinite(lp).all():
                    bad.append(f"{label} site {name!r}")
    return bad


class _Trainer:
    """One run: builds the guide and optimizer, loops, records, checkpoints, diagnoses."""

    def __init__(self, zoo_model: ZooModel, config: RunConfig, run_dir: Path | None) -> None:
        self.model = zoo_model
        self.config = config
        self.run_dir = run_dir
        self.history: list[dict[str, float]] = []
        self.elapsed = 0.0

    # -- set-up ---------------------------------------------------------------------------------
    def _kwargs(self, training: bool) -> dict[str, Any]:
        if self.model.data_plate is None:
            return {}
        return {"subsample_size": self.config.batch_size if training else None}

    def _build(self):
        cfg = self.config
        pyro.clear_param_store()
        pyro.set_rng_seed(cfg.seed)
        guide = self.model.build_guide(cfg.guide)
        svi = optim = None
        self.latent_scale = LatentScale(warmup_weight(0, cfg.kl_warmup))
        if cfg.method == "svi":
            decay = cfg.lr_final_factor ** (1.0 / cfg.steps)
            optim = ClippedAdam({"lr": cfg.lr, "lrd": decay})
            estimator = make_estimator(
                cfg.elbo, particles=cfg.particles, max_plate_nesting=self.model.max_plate_nesting
            )
            train_model, train_guide = self.model.model, prepare_guide(cfg.elbo, guide)
            if cfg.kl_warmup:
                train_model = self.latent_scale(train_model)
                train_guide = self.latent_scale(train_guide)
            svi = SVI(train_model, train_guide, optim, estimator)
        # create every parameter now, so a checkpoint can be loaded into them (one block of
        # the data is enough: parameters have the data plate's full size)
        block = data_blocks(self.model)[0]
        with torch.no_grad():
            guide_trace = poutine.trace(on_block(guide, self.model, block)).get_trace()
            poutine.replay(on_block(self.model.model, self.model, block), trace=guide_trace)()
        return guide, svi, optim

    def _restore(self, checkpoint: dict[str, Any], optim) -> int:
        store = pyro.get_param_store()
        state = store.get_state()
        missing = set(state["params"]) ^ set(checkpoint["params"])
        if missing:
            raise ZooError(f"checkpoint does not match the model: parameters {sorted(missing)}")
        # the store adopts these tensors as they are: they must be leaves that require grad
        state["params"] = {
            k: v.to(self.model.device).requires_grad_(True) for k, v in checkpoint["params"].items()
        }
        store.set_state(state)
        if optim is not None:
            optim.set_state(checkpoint["optim"])
        torch.set_rng_state(checkpoint["rng"])
        self.history = list(checkpoint["history"])
        self.elapsed = float(checkpoint["elapsed"])
        return int(checkpoint["step"])

    def _save_checkpoint(self, step: int, optim) -> None:
        if self.run_dir is None:
            return
        import io

        store = pyro.get_param_store().get_state()
        payload = {
            "step": step,
            "params": {k: v.detach().cpu().clone() for k, v in store["params"].items()},
            "optim": optim.get_state() if optim is not None else {},
            "rng": torch.get_rng_state(),
            "history": self.history,
            "elapsed": self.elapsed,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        _atomic_write(self.run_dir / CHECKPOINT, buffer.getvalue())

    # -- the loop -------------------------------------------------------------------------------
    def _record(self, step: int, guide, train_elbo: float) -> dict[str, float]:
        terms = quick_terms(self.model, guide, self.config.trace_particles)
        log_ev = self.model.log_evidence()
        row = {
            "step": step,
            **terms,
            "train_elbo": train_elbo,
            "kl_weight": self.latent_scale.weight,
        }
        row["log_evidence"] = math.nan if log_ev is None else float(log_ev)
        row["gap"] = row["log_evidence"] - row["elbo"]
        row["seconds"] = self.elapsed
        self.history.append(row)
        return row

    def run(self, progress: bool | None, checkpoint: dict[str, Any] | None = None) -> FitResult:
        cfg = self.config
        guide, svi, optim = self._build()
        self.guide = guide
        start = 0 if checkpoint is None else self._restore(checkpoint, optim)
        if progress is None:
            progress = sys.stderr.isatty()
        if start == 0:
            self._local_step(guide)
            self._record(0, guide, math.nan)
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            disable=not progress,
            file=sys.stderr,
            desc=f"{self.model.name}/{cfg.guide}",
            dynamic_ncols=True,
            leave=False,
        )
        train_kwargs = self._kwargs(True)
        tic = time.perf_counter()
        for step in range(start + 1, cfg.steps + 1):
            if svi is None:
                with torch.no_grad():
                    value = self.model.closed_form_step(guide)
                loss = math.nan if value is None else -float(value)
            else:
                self.latent_scale.weight = warmup_weight(step, cfg.kl_warmup)
                self.model.on_step(step, cfg.steps)
                loss = float(self._guarded(step, lambda: svi.step(**train_kwargs)))
                self._local_step(guide)
            if step % cfg.record_every == 0 or step == cfg.steps:
                self.elapsed += time.perf_counter() - tic
                tic = time.perf_counter()
                record = functools.partial(self._record, step, guide, -loss)
                row = self._guarded(step, record, lambda r: r["elbo"])
                postfix = {"elbo": f"{row['elbo']:.4g}"}
                if math.isfinite(row["gap"]):
                    postfix["gap"] = f"{row['gap']:.3g}"
                bar.set_postfix(postfix, refresh=False)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.elapsed += time.perf_counter() - tic
                tic = time.perf_counter()
                self._save_checkpoint(step, optim)
            bar.update(1)
        bar.close()
        self.elapsed += time.perf_counter() - tic

        diagnostics = evaluate(
            self.model, guide, num_particles=cfg.eval_particles, guide_name=cfg.guide
        )
        store = pyro.get_param_store().get_state()
        param_state = {
            "params": {k: v.detach().clone() for k, v in store["params"].items()},
            "constraints": dict(store["constraints"]),
        }
        return FitResult(
            config=cfg,
            model=self.model,
            guide=guide,
            history=pd.DataFrame(self.history),
            diagnostics=diagnostics,
            seconds=self.elapsed,
            param_state=param_state,
            summary=self.model.summary(guide),
            posterior_draws=self._posterior_draws(guide),
        )

    def _local_step(self, guide) -> None:
        if self.config.local_steps:
            with torch.no_grad():
                self.model.local_step(guide)

    def _guarded(
        self, step: int, action: Callable[[], Any], value_of: Callable[[Any], float] = float
    ) -> Any:
        """Run ``action``; turn a non-finite result or an invalid-distribution error into a
        one-line :class:`NonFiniteLossError` naming the step and the bad sites."""
        try:
            value = action()
        except (ValueError, RuntimeError) as exc:
            sites = self._non_finite_sites()
            if sites:
                raise NonFiniteLossError(step, sites) from None
            raise ZooError(f"step {step} failed: {str(exc).splitlines()[0]}") from exc
        if not math.isfinite(value_of(value)):
            raise NonFiniteLossError(step, self._non_finite_sites())
        return value

    def _non_finite_sites(self) -> list[str]:
        """The bad sites over all the data, a block at a time (the first block that has any)."""
        sites: list[str] = []
        for block in data_blocks(self.model):
            model = on_block(self.model.model, self.model, block)
            sites = non_finite_sites(model, on_block(self.guide, self.model, block))
            if sites:
                break
        return sites

    @torch.no_grad()
    def _posterior_draws(self, guide, num: int = 1000) -> dict[str, torch.Tensor] | None:
        if not self.model.save_posterior_draws:
            return None
        dim = -(self.model.max_plate_nesting + 1)
        with pyro.plate("draws", num, dim=dim):
            trace = poutine.trace(guide).get_trace(**self._kwargs(False))
        draws = {}
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                if name.startswith("_"):  # auxiliary latents of joint guides
                    continue
                value, event_dim = site["value"], site["fn"].event_dim
                axis = value.dim() - event_dim + dim
                batch = [n for n in value.shape[axis + 1 : value.dim() - event_dim] if n > 1]
                event = value.shape[value.dim() - event_dim :]
                draws[name] = value.movedim(axis, 0).reshape(num, *batch, *event).cpu()
        return draws
