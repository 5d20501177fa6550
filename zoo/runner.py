"""The shared runner: stochastic variational inference for any zoo model.

:func:`fit` trains a model's guide (and the model's own parameters theta) by maximising the
ELBO with :class:`pyro.infer.SVI`, or by the model's closed-form coordinate ascent (EM, CAVI)
where it has one, then hands the result to the diagnostics. It knows nothing model-specific:

- a fresh param store per run, seeded with :func:`pyro.set_rng_seed` (same seed, same machine,
  same numbers);
- ``Trace_ELBO`` with vectorized particles unless the model or the user names another estimator;
- mini-batches through the model's subsampled data plate (``subsample_size``), and every pass
  over all the data a block of points at a time where the model's data plate has a
  ``block_size`` (:mod:`zoo.data_blocks`);
- the model's closed-form local step (CAVI for the factors of local latents) after every SVI
  step, where the guide has one (:class:`~zoo.declarations.Guide`);
- Adam with gradient clipping and an exponential learning-rate decay (``lr_final_factor``);
- a history row every ``record_every`` steps: the ELBO and its two halves from a few particles,
  and the exact log evidence and gap where the model knows them;
- checkpoints (parameters, optimizer state, RNG state, history) that :func:`resume` continues
  to exactly where an uninterrupted run would have ended;
- a one-line :class:`~zoo.errors.NonFiniteLossError` naming the step and the bad sites.
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.optim import ClippedAdam
from pyro.optim.clipped_adam import ClippedAdam as _TorchClippedAdam
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from zoo import distributed
from zoo.annealing import LatentScale, warmup_weight
from zoo.data_blocks import data_blocks, on_block
from zoo.diagnostics import evaluate, evaluation_subsample, quick_terms
from zoo.errors import NonFiniteLossError, ZooError, first_line
from zoo.estimators import make_estimator, prepare_guide
from zoo.live_logs import LiveLogs
from zoo.model import ZooModel
from zoo.options import thread_count
from zoo.outputs import (
    InterruptLatch,
    RunDirectory,
    RunInterrupted,
    save_run,
    write_atomic,
)
from zoo.registry import get_model
from zoo.results import FitResult, RunConfig
from zoo.run_files import CHECKPOINT, CONFIG, REPORT, RESUME_COMMAND
from zoo.settings import BY_NAME, SETTINGS, resolve, with_settings
from zoo.steppers import compile_status, local_step, make_stepper
from zoo.stored_runs import (
    data_provenance,
    read_checkpoint,
    read_config,
    resume_data,
)
from zoo.subsample import FastSubsample


@with_settings
def fit(
    model: str | ZooModel,
    data: Any = None,
    *,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    threads: int | None = None,
    **settings_and_options: Any,
) -> FitResult:
    """Train ``model`` (a registered name or a :class:`ZooModel`) and diagnose the result.

    The run's settings (``guide``, ``steps``, ``lr``... listed below, declared once in
    :mod:`zoo.settings`) are keywords; one not given comes from the model's
    :class:`~zoo.model.Training` defaults (``quick`` swaps in its short step count) or the
    setting's own default. Every other keyword is a model option (``components=3``...).

    With ``run_dir`` the run is written there whole: ``config.json`` (with the data's
    provenance: its path and sha256, or the in-memory array's sha256), checkpoints that
    :func:`resume` continues from, and on success every output with ``report.json`` last
    (:func:`zoo.outputs.save_run`). The directory is locked for the run's lifetime. One that
    holds a finished run is refused unless ``overwrite``; one that holds any run is replaced
    only once the new run has succeeded (it is written beside it first), so a failure or a
    kill leaves the old run intact. Ctrl-C stops at the end of a training step, keeps a
    checkpoint of it and raises :class:`~zoo.outputs.RunInterrupted` (a KeyboardInterrupt).
    ``threads`` sets torch's (process-wide) intra-op thread count; small models run fastest
    on one thread, especially when other work shares the cores. ``kl_warmup`` ramps the
    weight of the latent sites linearly from 0 to 1 over that many steps (KL annealing); the
    history and the diagnostics always report the ELBO at weight 1. ``local_steps`` applies
    the guide's closed-form local step around every SVI step (:class:`~zoo.declarations.Guide`);
    None: wherever the model has one for the guide.
    """
    settings = {k: v for k, v in settings_and_options.items() if k in BY_NAME}
    options = {k: v for k, v in settings_and_options.items() if k not in BY_NAME}
    device = BY_NAME["device"].check(settings.get("device") or "cpu")
    _check_device(device)
    distributed.setup()  # under torchrun: join the job's process group (zoo.distributed)
    if threads is not None:
        torch.set_num_threads(_checked(thread_count, threads, "threads"))
    if isinstance(model, ZooModel):
        if data is not None or options:
            raise ZooError("pass data and options when building the model, not to fit()")
        zoo_model = model
    else:
        zoo_model = get_model(model)(data, device=device, **options)
    config = _make_config(zoo_model, data, settings)
    config.data = data_provenance(data, model if isinstance(model, ZooModel) else None)
    directory = distributed.main_first(lambda: _locked(run_dir, overwrite=overwrite))
    if directory is None:  # no run directory (or a data-parallel rank other than 0: rank 0 writes)
        return _Trainer(zoo_model, config, None).run(progress)
    return _run_in(directory, zoo_model, config, progress)


def resume(
    run_dir: str | Path,
    *,
    steps: int | None = None,
    progress: bool | None = None,
    data: Any = None,
) -> FitResult:
    """Continue the run checkpointed in ``run_dir`` to its step count and write its outputs.

    ``steps`` extends the run to ``steps`` where that is more than the checkpoint's step (the
    learning-rate decay goes on at the run's rate: not the same as a fresh run of ``steps``);
    fewer steps than the checkpoint has trained are refused. The run's data must be what it
    was: a data file at its recorded path, or ``data`` (a path, or an array) where the run was
    fitted on in-memory data or the file has moved; its sha256 must match. A finished run
    (with ``report.json``) is continued beside itself and replaces itself only on success.
    """
    distributed.setup()  # under torchrun: join the job's process group (zoo.distributed)
    directory = distributed.main_first(lambda: _locked(run_dir, resume=True))
    try:
        target = Path(run_dir) if directory is None else directory.target
        loaded = load_run(target, steps=steps, data=data)
    except BaseException:
        if directory is not None:
            directory.release()
        raise
    if directory is None:  # a data-parallel rank other than 0: rank 0 writes the run
        return _Trainer(loaded.model, loaded.config, None).run(progress, loaded.checkpoint)
    return _run_in(directory, loaded.model, loaded.config, progress, loaded.checkpoint)


def _locked(run_dir: str | Path | None, **kwargs: bool) -> RunDirectory | None:
    """``run_dir`` as a locked :class:`RunDirectory` (see :class:`RunDirectory` for
    ``overwrite`` and ``resume``); None for None."""
    if run_dir is None:
        return None
    directory = RunDirectory(run_dir, **kwargs)
    directory.lock()
    return directory


# -- run directories ----------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A checked run directory: its config, its checkpoint and its model, rebuilt."""

    config: RunConfig
    checkpoint: dict[str, Any]
    model: ZooModel


def load_run(run_dir: str | Path, *, steps: int | None = None, data: Any = None) -> LoadedRun:
    """Read and check everything a resume of ``run_dir`` needs, without training.

    The config (every field), the checkpoint (every entry, and that it fits the model), the
    data (re-obtained and its hash checked, see :func:`resume`) and ``steps``; the model is
    rebuilt from the config. Every failure is a one-line :class:`ZooError`.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    checkpoint = read_checkpoint(run_dir)
    start = checkpoint["step"]
    if steps is not None:
        steps = BY_NAME["steps"].check(steps)
        if steps < start:
            raise ZooError(
                f"cannot shorten the run in {run_dir}: it has trained {start} steps; "
                f"--steps must be at least {start}"
            )
        config.steps = steps
    elif start > config.steps:
        raise ZooError(
            f"{run_dir / CHECKPOINT} is at step {start}, past the run's {config.steps} steps"
        )
    _check_device(config.device)
    data_arg = resume_data(run_dir, config, data)
    options = dict(config.options)
    options.pop("data", None)
    cls = get_model(config.model)
    try:
        zoo_model = cls(data_arg, device=config.device, **options)
    except ZooError:
        raise
    except (ValueError, TypeError, RuntimeError, OverflowError, IndexError, MemoryError) as exc:
        raise ZooError(
            f"{run_dir / CONFIG}: its options do not build a {config.model!r} model: "
            f"{first_line(exc, 120)}"
        ) from None
    checked = _make_config(zoo_model, None, {s.name: getattr(config, s.name) for s in SETTINGS})
    if checked.batch_size != config.batch_size:
        raise ZooError(
            f"{run_dir / CONFIG}: batch_size {config.batch_size} is not below the "
            f"{zoo_model.num_data} data points"
        )
    trial = _Trainer(zoo_model, config, None)  # the checkpoint must fit the model
    _, _, optim = trial._build()
    trial._restore(checkpoint, optim)
    return LoadedRun(config, checkpoint, zoo_model)


def _run_in(
    directory: RunDirectory,
    zoo_model: ZooModel,
    config: RunConfig,
    progress: bool | None,
    checkpoint: dict[str, Any] | None = None,
) -> FitResult:
    """Train in a locked :class:`RunDirectory`, write the outputs and commit them; on Ctrl-C
    keep the last checkpoint, on any other failure remove what this run wrote."""
    trainer: _Trainer | None = None
    try:
        directory.prepare()
        if checkpoint is not None and directory.staged:  # the copy resumes where the run is
            try:
                shutil.copyfile(directory.target / CHECKPOINT, directory.path / CHECKPOINT)
            except OSError as exc:
                raise ZooError(
                    f"cannot write {directory.path / CHECKPOINT}: {exc.strerror or exc}"
                ) from None
        write_atomic(directory.path / CONFIG, config.to_json().encode())
        trainer = _Trainer(zoo_model, config, directory.path)
        result = trainer.run(progress, checkpoint=checkpoint)
        save_run(result, directory.path)
        directory.commit()
    except KeyboardInterrupt:
        raise _interrupted(directory, trainer, checkpoint) from None
    except BaseException:
        directory.discard()
        raise
    finally:
        if trainer is not None:
            trainer.interrupts.disarm()
        directory.release()
    result.run_dir = directory.target
    return result


def _interrupted(
    directory: RunDirectory, trainer: _Trainer | None, checkpoint: dict[str, Any] | None
) -> RunInterrupted:
    """After Ctrl-C: keep what can be resumed, remove the rest, and say how to go on."""
    if (directory.path / REPORT).is_file():  # written whole before the interrupt took effect
        try:
            directory.commit()
        except (ZooError, KeyboardInterrupt):
            directory.discard()
            return RunInterrupted(f"interrupted; {directory.target} is unchanged")
        return RunInterrupted(
            f"interrupted after the run finished; see {directory.target}", directory.target
        )
    saved = trainer.saved_step if trainer is not None else None
    step = saved if saved is not None else (None if checkpoint is None else checkpoint["step"])
    kept = (directory.path / CHECKPOINT).is_file() and (saved is not None or not directory.staged)
    if kept and step is not None:
        unchanged = f" ({directory.target} is unchanged)" if directory.staged else ""
        return RunInterrupted(
            f"interrupted at step {step}{unchanged}; resume with: "
            f"{RESUME_COMMAND} {directory.path}",
            directory.path,
            step,
        )
    directory.discard()
    if directory.staged:
        return RunInterrupted(f"interrupted before any progress; {directory.target} is unchanged")
    return RunInterrupted("interrupted before the first checkpoint; nothing to resume")


# --------------------------------------------------------------------------------------------
def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ZooError(f"device {device!r} requested but CUDA is not available here")
        return
    raise ZooError(f"unknown device {device!r}; use cpu or cuda")


#: the most particles the final diagnostics take (their cost grows linearly in them)
def _checked(convert: Callable[[Any], Any], value: Any, what: str) -> Any:
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ZooError(f"{what}: {exc}") from None


def _make_config(zoo_model: ZooModel, data: Any, settings: dict[str, Any]) -> RunConfig:
    """The run's config: its settings settled (:func:`zoo.settings.resolve`), the model's
    options and, where the data is a file, its path."""
    values = resolve(zoo_model, settings)
    options = dict(zoo_model.option_values)
    if isinstance(data, str | os.PathLike):
        options["data"] = str(data)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    return RunConfig(model=zoo_model.name, options=options, **values)


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


def _check_optimizer_state(optim_state: dict[str, Any], params: dict[str, torch.Tensor]) -> None:
    """Each parameter's saved Adam state must load into an optimizer of that parameter (what
    Pyro does lazily at the first step); a one-line :class:`ZooError` where it does not."""
    for name, entry in optim_state.items():
        if name not in params:
            raise ZooError(f"checkpoint's optimizer state names no parameter of the model: {name}")
        param = params[name].detach().clone().requires_grad_(True)
        try:
            trial = _TorchClippedAdam([param], lr=1.0)
            trial.load_state_dict(copy.deepcopy(entry))
            tensors = [t for state in trial.state.values() for t in state.values()]
        except Exception as exc:  # torch raises KeyError, ValueError, TypeError... on bad state
            raise ZooError(
                f"checkpoint's optimizer state for {name!r} is unusable: {first_line(exc, 120)}"
            ) from None
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.dim() and tensor.shape != param.shape:
                raise ZooError(
                    f"checkpoint's optimizer state for {name!r} has shape {tuple(tensor.shape)}, "
                    f"the parameter {tuple(param.shape)}"
                )


def _elbo_of(row: dict[str, float]) -> float:
    return row["elbo"]


def _progress_postfix(row: dict[str, float]) -> dict[str, str]:
    """The progress bar's ELBO and gap (where the evidence is known)."""
    postfix = {"elbo": f"{row['elbo']:.4g}"}
    if math.isfinite(row["gap"]):
        postfix["gap"] = f"{row['gap']:.3g}"
    return postfix


class _Trainer:
    """One run: builds the guide and optimizer, loops, records, checkpoints, diagnoses."""

    #: the live history.csv and loggers (:mod:`zoo.live_logs`), set when :meth:`run` starts
    live: LiveLogs | None = None

    def __init__(self, zoo_model: ZooModel, config: RunConfig, run_dir: Path | None) -> None:
        self.model = zoo_model
        self.config = config
        self.run_dir = run_dir
        self.history: list[dict[str, float]] = []
        self.elapsed = 0.0
        #: the step of the last checkpoint this trainer wrote (None: none yet)
        self.saved_step: int | None = None
        #: Ctrl-C during training is deferred to the end of the step (which is checkpointed)
        self.interrupts = InterruptLatch()

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
            # torch.optim's first optimizer imports torch._dynamo (about 1.5 s): here, before
            # the run's clock starts, not inside its first timed step
            importlib.import_module("torch._dynamo")

            decay = cfg.lr_final_factor ** (1.0 / cfg.steps)
            optim = ClippedAdam({"lr": cfg.lr, "lrd": decay})
            estimator = make_estimator(
                cfg.elbo, particles=cfg.particles, max_plate_nesting=self.model.max_plate_nesting
            )
            train_model, train_guide = self.model.model, prepare_guide(cfg.elbo, guide)
            # mini-batches in O(batch), not randperm(N) (data-parallel: zoo.distributed's shards)
            if cfg.batch_size is not None and not distributed.active():
                train_model = FastSubsample()(train_model)
                train_guide = FastSubsample()(train_guide)
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
        svi = distributed.data_parallel(svi, self.model, guide, cfg)  # as is without torchrun
        return guide, svi, optim

    def _restore(self, checkpoint: dict[str, Any], optim) -> int:
        """Load a checkpoint (checked by :func:`read_checkpoint`) into the fresh param store
        and optimizer; a one-line :class:`ZooError` where it does not fit the model."""
        store = pyro.get_param_store()
        state = store.get_state()
        missing = set(state["params"]) ^ set(checkpoint["params"])
        if missing:
            raise ZooError(f"checkpoint does not match the model: parameters {sorted(missing)}")
        for name, value in checkpoint["params"].items():
            own = state["params"][name]
            if value.shape != own.shape or value.dtype != own.dtype:
                raise ZooError(
                    f"checkpoint does not match the model: parameter {name!r} is "
                    f"{value.dtype} {tuple(value.shape)}, the model's {own.dtype} "
                    f"{tuple(own.shape)}"
                )
        # the store adopts these tensors as they are: they must be leaves that require grad
        state["params"] = {
            k: v.to(self.model.device).requires_grad_(True) for k, v in checkpoint["params"].items()
        }
        store.set_state(state)
        if optim is not None:
            _check_optimizer_state(checkpoint["optim"], state["params"])
            optim.set_state(checkpoint["optim"])
        try:
            torch.set_rng_state(checkpoint["rng"])
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ZooError(f"checkpoint's random-number state is unusable: {exc}") from None
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
        write_atomic(self.run_dir / CHECKPOINT, buffer.getvalue())
        self.saved_step = step

    def _stop_if_interrupted(self, step: int, optim, bar: Any) -> None:
        """After a whole step: on a deferred Ctrl-C, checkpoint this step and stop."""
        if not self.interrupts.pending:
            return
        if self.saved_step != step:
            self._save_checkpoint(step, optim)
        bar.close()
        raise KeyboardInterrupt

    # -- the loop -------------------------------------------------------------------------------
    def _record(self, step: int, guide, train_elbo: float) -> dict[str, float]:
        cfg = self.config  # eval_subsample: the same subsample of the points at every record
        points = {"points": cfg.eval_subsample, "seed": cfg.seed, "step": step}
        terms = quick_terms(self.model, guide, cfg.trace_particles, **points)
        log_ev = self.model.log_evidence()
        row = {
            "step": step,
            **terms,
            "train_elbo": train_elbo,
            "kl_weight": self.latent_scale.weight,
        }
        row["log_evidence"] = math.nan if log_ev is None else float(log_ev)
        row["gap"] = row["log_evidence"] - row["elbo"]
        if self.model.held_out is not None:
            row.update(self._held_out_terms(step, guide))
        row["seconds"] = self.elapsed
        self.history.append(row)
        if self.live is not None:  # history.csv and the loggers, as the run goes
            self.live.record(self.history)
        return row

    def _held_out_terms(self, step: int, guide) -> dict[str, float]:
        """The ELBO per point on the model's held-out data, from particles of a random stream of
        their own (:func:`~zoo.diagnostics.quick_terms`): scoring them does not change the
        training."""
        held, held_guide = self.model.on_held_out(guide)
        cfg = self.config
        points = {"points": cfg.eval_subsample, "seed": cfg.seed, "step": step}
        terms = quick_terms(held, held_guide, cfg.trace_particles, **points)
        return {"held_out_elbo_per_point": terms["elbo"] / held.num_data}

    def run(self, progress: bool | None, checkpoint: dict[str, Any] | None = None) -> FitResult:
        """Train, diagnose, summarise; the model's own evaluations (its summary, an estimate of
        the run's work) score the run's subsample of the data points (``eval_subsample``:
        :func:`~zoo.diagnostics.evaluation_subsample`)."""
        with evaluation_subsample(self.config.eval_subsample, self.config.seed):
            return self._run(progress, checkpoint)

    def _run(self, progress: bool | None, checkpoint: dict[str, Any] | None) -> FitResult:
        cfg = self.config
        guide, svi, optim = self._build()
        self.guide = guide
        start = 0 if checkpoint is None else self._restore(checkpoint, optim)
        self.live = LiveLogs(self.run_dir)
        self.live.start(start, self.history)  # a resumed run: history.csv as its checkpoint's
        if progress is None:  # (data-parallel: rank 0 alone shows one)
            progress = sys.stderr.isatty() and distributed.is_main()
        if start == 0:
            if cfg.local_steps:
                local_step(self.model, guide, cfg.guide)
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
        stepper = make_stepper(
            cfg, self.model, guide, svi, self.latent_scale, self._kwargs(True), self._guarded
        )
        if self.run_dir is not None:
            self.interrupts.arm()
        tic = time.perf_counter()
        for step in range(start + 1, cfg.steps + 1):
            loss = stepper.step(step)
            last = step == cfg.steps
            if step % cfg.record_every == 0 or last:
                self.elapsed, tic = self.elapsed + time.perf_counter() - tic, time.perf_counter()
                record = functools.partial(self._record, step, guide, -loss)
                row = self._guarded(step, record, _elbo_of)
                bar.set_postfix(_progress_postfix(row), refresh=False)
            if step % cfg.checkpoint_every == 0 or last:
                self.elapsed, tic = self.elapsed + time.perf_counter() - tic, time.perf_counter()
                self._save_checkpoint(step, optim)
            bar.update(1)
            self._stop_if_interrupted(step, optim, bar)
        bar.close()
        self.interrupts.disarm(raise_pending=True)
        self.elapsed += time.perf_counter() - tic
        self._check_divergence()

        diagnostics = evaluate(
            self.model,
            guide,
            num_particles=cfg.eval_particles,
            guide_name=cfg.guide,
            points=cfg.eval_subsample,
            seed=cfg.seed,
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
            summary=self._summary(guide),
            posterior_draws=self._posterior_draws(guide),
            compiled=compile_status(stepper),
        )

    def _summary(self, guide) -> dict[str, Any]:
        """The model's summary, with the run's ``eval_subsample`` where its evaluations scored
        a subsample of the data points."""
        summary = self.model.summary(guide, self.config.guide)
        points = self.config.eval_subsample
        if points is not None and isinstance(summary, dict):
            summary.setdefault("eval_subsample", points)
        return summary

    def _check_divergence(self) -> None:
        """Refuse a run whose ELBO ended far below where it started: training that maximises
        the ELBO and ends lower by more than the starting value's own magnitude (and at least
        a nat), beyond four standard errors of the two records, diverged, even where no value
        became NaN (an oversized learning rate)."""
        rows = [r for r in self.history if math.isfinite(r.get("elbo", math.nan))]
        if len(rows) < 2 or rows[0]["step"] != 0:
            return
        start, end = rows[0]["elbo"], rows[-1]["elbo"]
        # beyond the records' own Monte Carlo error (a few particles of a model just
        # initialised can be tens of nats apart)
        noise = 4 * sum(_finite_or_zero(r.get("elbo_se")) for r in (rows[0], rows[-1]))
        if start - end > max(1.0, abs(start)) + noise:
            raise ZooError(
                f"training diverged: the ELBO fell from {start:.6g} at step 0 to {end:.6g} at "
                f"step {rows[-1]['step']} (try a smaller --lr)"
            )

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

    def _posterior_draws(self, guide) -> Any:
        """A :class:`~zoo.inference_data.PosteriorDraws`: draws from the fitted guide, scored
        under the model, for ArviZ. None unless the model's latent is a parameter vector."""
        if self.model.arviz is None:
            return None
        from zoo.inference_data import NUM_DRAWS, posterior_draws

        return posterior_draws(self.model, guide, NUM_DRAWS, **self._kwargs(False))


def _finite_or_zero(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(value) else 0.0
