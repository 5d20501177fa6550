"""Data-parallel SVI on ``torch.distributed``: ``torchrun --nproc-per-node N -m zoo.run <model>``.

Launched under ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``),
:func:`zoo.fit` and :func:`zoo.resume` join the job's process group (:func:`setup`: gloo on
CPU; on a machine with GPUs ``cpu:gloo,cuda:nccl``, so tensors on a GPU are reduced by NCCL,
and each rank's ``--device cuda`` is ``cuda:LOCAL_RANK``) and train data-parallel: every rank
holds the whole model and guide, scores its own shard of each mini-batch, and the gradients are
reduced before one and the same optimizer step on every rank. The command line and
:func:`zoo.fit` need no other change; without ``torchrun`` nothing here runs. (A script that
builds a model on the GPU itself, before :func:`zoo.fit`, calls :func:`setup` first, so the
model lands on its rank's GPU.)

Why plain ``torch.distributed`` and not PyTorch Lightning (Pyro's ``examples/svi_lightning.py``):
Lightning is a heavy dependency the zoo does not have, and it would replace what the runner
already guarantees (run directories written atomically and locked, checkpoints that resume to
exactly where an uninterrupted run ends, data checked by sha256, live ``history.csv`` and
loggers) with its own loop, loggers and checkpoints, and Pyro's global param store and
per-parameter ``ClippedAdam`` with ``PyroModule`` and a torch optimizer. What data parallelism
needs is one all-reduce of the gradients between Pyro's ``loss_and_grads`` and its optimizer
(what Pyro's ``HorovodOptimizer`` does for Horovod): :class:`DataParallelSVI` is
:meth:`pyro.infer.SVI.step` with that reduction, so a step on W ranks is the step on one.

The mini-batches
----------------
Step t draws a global mini-batch of B indices (the run's ``batch_size``; all N points without
one) from a generator seeded by (seed, t), the same on every rank, and rank r takes the r-th of
W consecutive shards (sizes differing by at most one). Its data plate subsamples exactly that
shard (:class:`~zoo.subsample.BatchShard`), so the plate scales the shard's log densities by
N / n_r, and the rank's gradient is weighted by n_r / B before the gradients are summed::

    sum_r (n_r / B) grad[(N / n_r) sum_{i in shard r} l_i + g]
        = grad[(N / B) sum_{i in batch} l_i + g]

(l_i the terms of point i, g those outside the plate): the gradient of the global mini-batch,
with the global batch's scale, for any B >= W. The loss is reduced alike. The latent noise of
step t on rank r comes from torch's generator seeded by (seed, t, r), after every rank has
created the same initial parameters from the run's seed (and taken rank 0's, to be sure). A
step is then a function of (seed, t): a resumed run continues exactly as an uninterrupted one
with the same number of ranks, and the mini-batches do not depend on the number of ranks.

Which models
------------
Every model with a data plate whose guide's parameters are global (amortized encoders, guides
that are the exact posterior given theta): ``vae``, ``linear-vae``, ``scvi``, ``diffusion``,
``gmm`` (with SVI), ``eight-schools``/``baseball`` with the ``exact`` guide. On more than one
process :func:`data_parallel` refuses, with a one-line :class:`~zoo.errors.ZooError`, a model
without a data plate (nothing to shard), a guide with per-data-point parameters (a parameter
the guide alone reads with a dimension of size N: every rank would hold and reduce all of it at
every step), the closed-form updates and the closed-form local step (they run on one process),
and the ``iwae`` estimator (its bound is joint over the mini-batch and does not split into
shards). Refusals are about cost or meaning, never about correctness: the reduction is exact
for every parameter. The diffusion objective's low-discrepancy sampler spreads each rank's
shard over [0, 1) with an offset of its own: the same unbiased estimator, not the same draws;
``graph``'s decaying-average baselines are kept per rank.

Outputs, checkpoints, diagnostics
---------------------------------
Rank 0 alone writes the run directory (config, checkpoints, history, figures, report) and the
command line's summary; the other ranks write nothing and print nothing but tracebacks
(:func:`silenced_unless_main`). A failure that every rank meets (a refused model, a run
directory rank 0 cannot use: :func:`main_first`) is raised on every rank. A resume reads the
run directory on every rank (on several machines it must be on a shared file system).

The diagnostics, the history records and the held-out evaluation split a pass over the data
into pieces (:func:`evaluation_pieces`: the model's blocks, or up to :data:`EVAL_PIECES`
pieces of at least :data:`PIECE_PAIRS` (particle, point) pairs of a model that gives one
block), each piece's particles seeded by a seed rank 0 draws and the piece's index; rank r
scores pieces r, r + W, ..., and every rank gathers all of them and combines them as one
process combines blocks (:func:`map_blocks`): totals and per-point IWAE are sums over pieces,
standard errors combine as variances, k-hat is a maximum. The numbers are the same for every
number of ranks up to :data:`EVAL_PIECES` (not the draws of a run without ``torchrun``, which
takes its blocks from one stream). Where the log ratios do not factorise over the data plate
(a global latent), every rank evaluates the data whole instead, with the same draws.

An evaluation subsample (``eval_subsample``: n of the N points) is shared alike
(:func:`map_points`): its points in pieces as above, each rank its share, all gathered and
combined as one process combines them; piece i's particles come from a stream seeded by (the
run's seed, the pass, its step, i), not by rank 0, so the training's stream is untouched (as
without ``torchrun``) and the numbers are the same on 1 to :data:`EVAL_PIECES` ranks.

A GPU job sets each rank's device from ``LOCAL_RANK`` and reduces GPU tensors with NCCL; the
object gathers of the diagnostics go through gloo on the CPU. The step's status (its loss,
whether a rank failed) rides in the gradients' buffer: one all-reduce per step where every
parameter has one dtype.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from zoo.errors import ZooError, first_line

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import torch.distributed as dist

    from zoo.model import ZooModel
    from zoo.results import RunConfig

__all__ = [
    "EVAL_PIECES",
    "PIECE_PAIRS",
    "DataParallelSVI",
    "active",
    "data_parallel",
    "derive_seed",
    "evaluation_pieces",
    "is_main",
    "launched",
    "launched_rank",
    "launched_world",
    "main_first",
    "map_blocks",
    "map_points",
    "per_point_parameters",
    "rank",
    "settle",
    "setup",
    "silenced_unless_main",
    "use_group",
    "world_size",
]

T = TypeVar("T")

#: a pass over the data of a model that gives one block is split into at most this many pieces
#: (or a multiple of it, on more ranks than this): its numbers are the same on 1 to 16 ranks
EVAL_PIECES = 16
#: the fewest (particle, point) pairs worth a piece of their own: a piece costs a trace of the
#: model and guide besides its arithmetic (a history record of a few particles of a small data
#: set stays whole, on rank 0)
PIECE_PAIRS = 1 << 16

#: how long a failing rank waits for the others before it exits (:func:`settle`)
SETTLE_SECONDS = 30

#: the process group the zoo's collectives use (None: the default group), :func:`use_group`
_GROUP: list[Any] = [None]


# -- the launch ---------------------------------------------------------------------------------
def launched() -> bool:
    """Whether this process was started by ``torchrun`` (``WORLD_SIZE`` and ``RANK`` set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 without ``torchrun``); reads only the
    environment, so the command line can ask before anything is imported."""
    return _env_int("RANK", 0) if launched() else 0


def launched_world() -> int:
    """The number of processes ``torchrun`` started (1 without ``torchrun``)."""
    return _env_int("WORLD_SIZE", 1) if launched() else 1


def is_main() -> bool:
    """Rank 0 of the job, or a process that is not part of one."""
    return rank() == 0 if active() else launched_rank() == 0


def _dist() -> Any:
    import torch.distributed

    return torch.distributed


def active() -> bool:
    """Whether a process group is up: the zoo's collectives (training steps, diagnostics) then
    run on every rank of it."""
    d = _dist()
    return d.is_available() and d.is_initialized()


def rank() -> int:
    """This process's rank in the zoo's process group (0 outside one)."""
    return _dist().get_rank(_GROUP[0]) if active() else 0


def world_size() -> int:
    """The number of processes in the zoo's process group (1 outside one)."""
    return _dist().get_world_size(_GROUP[0]) if active() else 1


@contextlib.contextmanager
def use_group(group: dist.ProcessGroup | None) -> Iterator[None]:
    """Run the zoo's collectives on ``group`` (a subgroup of the job, made with
    ``torch.distributed.new_group``) inside the block: a job can train several runs side by
    side, each on its own ranks. Only the group's members may enter the block."""
    previous = _GROUP[0]
    _GROUP[0] = group
    try:
        yield
    finally:
        _GROUP[0] = previous


def setup() -> None:
    """Under ``torchrun``, join the job's process group (once): gloo on CPU, and
    ``cpu:gloo,cuda:nccl`` with this rank's GPU (``LOCAL_RANK``) made the current device
    where the machine has one for it. Without ``torchrun``, or with a group already up (the
    caller's own), nothing."""
    if not launched():
        return
    import torch

    d = _dist()
    if not d.is_available():
        raise ZooError("torchrun started this process but this torch has no torch.distributed")
    if d.is_initialized():
        return
    local = _env_int("LOCAL_RANK", 0)
    backend = "gloo"
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"
    try:
        d.init_process_group(backend)
    except (ValueError, RuntimeError) as exc:  # torchrun's variables without its rendezvous
        raise ZooError(f"cannot join the torchrun job's process group: {first_line(exc)}") from None
    atexit.register(_teardown)


def _teardown() -> None:
    d = _dist()
    if d.is_initialized():
        d.destroy_process_group()


@contextlib.contextmanager
def silenced_unless_main() -> Iterator[None]:
    """Inside the block, a rank other than 0 of a ``torchrun`` job prints nothing (summaries,
    one-line errors, warnings, progress bars): rank 0 speaks for the job. Tracebacks of
    unexpected errors still reach the terminal (they are printed after the block)."""
    if launched_rank() == 0:
        yield
        return
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        yield


def settle(code: int) -> None:
    """Before a rank of a ``torchrun`` job exits with a failure (``code`` not 0), wait (up to
    :data:`SETTLE_SECONDS`) until every rank has met it: ``torchrun`` stops the other ranks as
    soon as one exits with a failure, so rank 0 would otherwise be stopped before it prints the
    job's one-line error. Nothing on success, or without a process group."""
    if code == 0 or not launched() or not active() or world_size() == 1:
        return
    from datetime import timedelta

    with contextlib.suppress(Exception):  # a rank that never comes: exit all the same
        _dist().monitored_barrier(_GROUP[0], timeout=timedelta(seconds=SETTLE_SECONDS))


def main_first(action: Callable[[], T]) -> T | None:
    """``action()`` on rank 0 alone (opening the run directory), its outcome told to every
    rank: rank 0 gets the result, the others None; where it failed, every rank raises (rank 0
    its own error, the others a :class:`ZooError` with its message). Without a process group,
    just ``action()``."""
    if not active():
        return action()
    result: T | None = None
    error: BaseException | None = None
    if rank() == 0:
        try:
            result = action()
        except BaseException as exc:  # told to every rank, then raised here too
            error = exc
    message = [None if error is None else _message(error)]
    _dist().broadcast_object_list(message, group=_GROUP[0], group_src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise ZooError(message[0])
    return result


def _message(error: BaseException) -> str:
    if isinstance(error, ZooError):
        return str(error)
    return f"rank 0 failed: {first_line(error, 200)}"


# -- seeds --------------------------------------------------------------------------------------
def derive_seed(*words: int) -> int:
    """A seed in [0, 2**63) from integers (NumPy's SeedSequence: well mixed, reproducible)."""
    import numpy as np

    state = np.random.SeedSequence([int(w) % 2**64 for w in words]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def _shared_seed() -> int:
    """A seed drawn from rank 0's random stream and given to every rank."""
    import torch

    value = torch.randint(0, 2**62, (1,), dtype=torch.int64)
    _dist().broadcast(value, group=_GROUP[0], group_src=0)
    return int(value.item())


def _seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's CPU generator and, for a GPU ``device``, the current GPU's (what
    ``torch.manual_seed`` does for every device, in a microsecond instead of a tenth of a
    millisecond: it runs at every step)."""
    import torch

    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's generators seeded with ``seed`` inside the block, restored after it."""
    import torch

    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        _seed_torch(seed, device)
        yield


# -- training -----------------------------------------------------------------------------------
def _refusal(zoo_model: ZooModel, config: RunConfig, world: int) -> str | None:
    """Why ``config`` cannot train ``zoo_model`` on ``world`` > 1 ranks (None: it can)."""
    import torch

    if zoo_model.data_plate is None:
        return "it has no data plate to shard (every latent is global)"
    if config.method != "svi":
        return "its closed-form updates (--method closed-form) run on one process"
    if config.local_steps:
        return "its closed-form local step updates per-point factors on one process"
    if config.elbo == "iwae":
        return "the iwae bound is joint over the mini-batch and does not split into shards"
    batch = zoo_model.num_data if config.batch_size is None else config.batch_size
    if batch < world:
        return f"a batch of {batch} points gives some of the {world} ranks none"
    device = torch.device(config.device)
    if device.type == "cuda":
        if device.index is not None:
            return f"each rank uses cuda:LOCAL_RANK; pass --device cuda, not {config.device}"
        if not torch.cuda.is_available() or _env_int("LOCAL_RANK", 0) >= torch.cuda.device_count():
            return f"rank {rank()} (LOCAL_RANK {_env_int('LOCAL_RANK', 0)}) has no GPU of its own"
    return None


def per_point_parameters(zoo_model: ZooModel, guide: Callable[..., Any]) -> list[str]:
    """Parameters only the guide reads with a dimension of the data plate's size (per-point
    variational parameters), from one traced block of the data; networks are never counted."""
    import pyro
    import torch
    from pyro import poutine

    from zoo.data_blocks import data_blocks, on_block

    block = data_blocks(zoo_model)[0]
    with _seeded(0, zoo_model.device), torch.no_grad():
        guide_trace = poutine.trace(on_block(guide, zoo_model, block)).get_trace()
        model = poutine.replay(on_block(zoo_model.model, zoo_model, block), trace=guide_trace)
        model_trace = poutine.trace(model).get_trace()

    def params(trace: Any) -> set[str]:
        return {name for name, site in trace.nodes.items() if site["type"] == "param"}

    store = pyro.get_param_store()
    only_guide = params(guide_trace) - params(model_trace)
    return sorted(
        name
        for name in only_guide
        if "$$$" not in name and name in store and zoo_model.num_data in store[name].shape
    )


def _broadcast_parameters() -> None:
    """Every parameter of the param store set to rank 0's values."""
    import pyro
    import torch

    with torch.no_grad():
        for _, value in sorted(pyro.get_param_store().named_parameters()):
            _dist().broadcast(value.detach(), group=_GROUP[0], group_src=0)


def data_parallel(
    svi: Any, zoo_model: ZooModel, guide: Callable[..., Any], config: RunConfig
) -> Any:
    """The run's SVI, data-parallel where a process group is up: a :class:`DataParallelSVI`
    around ``svi`` once every rank holds rank 0's parameters. Refuses (a one-line
    :class:`ZooError` on every rank) what cannot run on more than one rank (see the module's
    docstring). Without a process group, ``svi`` as it is."""
    if not active():
        return svi
    world = world_size()
    if world > 1:
        reason = _refusal(zoo_model, config, world)
        if reason is None and svi is not None:
            local = per_point_parameters(zoo_model, guide)
            if local:
                reason = (
                    f"its {config.guide!r} guide holds per-data-point parameters "
                    f"({', '.join(local[:3])}{', ...' if len(local) > 3 else ''})"
                )
        if reason is not None:
            raise ZooError(
                f"model {zoo_model.name!r} cannot train data-parallel on {world} processes: "
                f"{reason}; run it without torchrun"
            )
    if svi is None or zoo_model.data_plate is None:
        return svi
    _broadcast_parameters()
    return DataParallelSVI(svi, zoo_model, config)


class DataParallelSVI:
    """:meth:`pyro.infer.SVI.step` on this rank's shard of the step's global mini-batch, with
    the weighted gradients summed over the ranks before the optimizer's step (see the module's
    docstring). ``begin_step(t)`` sets step t's mini-batch and noise; :meth:`step` takes the
    model's keywords as SVI does (``subsample_size`` is set to the shard's size)."""

    def __init__(self, svi: Any, zoo_model: ZooModel, config: RunConfig) -> None:
        import torch

        from zoo.subsample import BatchShard

        self.shard = BatchShard(zoo_model.data_plate.name)
        self.model = self.shard(svi.model)
        self.guide = self.shard(svi.guide)
        self.optim = svi.optim
        self.loss_and_grads = svi.loss_and_grads
        self.num_data = zoo_model.num_data
        self.batch_size = config.batch_size
        self.seed = config.seed
        self.device = zoo_model.device
        self.rank, self.world = rank(), world_size()
        self.generator = torch.Generator()
        self.weight = 1.0
        self.current = 0
        self._ready = False

    def batch(self, step: int) -> torch.Tensor:
        """Step ``step``'s global mini-batch (all the points, in order, without a batch size)."""
        import torch

        from zoo.subsample import sample_without_replacement

        if self.batch_size is None:
            return torch.arange(self.num_data)
        self.generator.manual_seed(derive_seed(self.seed, step, 0))
        return sample_without_replacement(self.num_data, self.batch_size, generator=self.generator)

    def begin_step(self, step: int) -> None:
        """Set step ``step``'s shard and seed this rank's latent noise for it."""
        import torch

        batch = self.batch(step)
        shard = torch.tensor_split(batch, self.world)[self.rank]
        self.shard.indices = shard.to(self.device)
        self.weight = len(shard) / len(batch)
        _seed_torch(derive_seed(self.seed, step, 1 + self.rank), self.device)
        self.current, self._ready = step, True

    def step(self, *args: Any, **kwargs: Any) -> float:
        """Step's loss (the global batch's, reduced) after the optimizer's step on every rank.

        A step that fails on one rank (an invalid distribution) fails on every rank, before any
        parameter moves; so does one where the ranks traced different parameters."""
        import pyro.infer.util
        from pyro import poutine

        if not self._ready:
            self.begin_step(self.current + 1)
        self._ready = False
        kwargs["subsample_size"] = len(self.shard.indices)
        failure: Exception | None = None
        loss = math.nan
        with poutine.trace(param_only=True) as capture:
            try:
                loss = float(self.loss_and_grads(self.model, self.guide, *args, **kwargs))
            except (ValueError, RuntimeError) as exc:  # told to every rank below
                failure = exc
        params = [
            site["value"].unconstrained()
            for site in capture.trace.nodes.values()
            if site["type"] == "param"
        ]
        total, failed, same = self._reduce(self.weight * loss, failure is not None, len(params))
        if failed:
            if failure is not None:
                raise failure
            raise RuntimeError("the step failed on another rank")
        if not same:
            raise ZooError("the ranks traced different parameters in one step")
        self.optim(params)
        pyro.infer.util.zero_grads(params)
        return total

    def _reduce(self, loss: float, failed: bool, count: int) -> tuple[float, bool, bool]:
        """Every parameter's gradient times this rank's weight, summed over the ranks, and
        with it (in the same buffer: one all-reduce per dtype and device, usually one in all)
        the step's status: the weighted loss (as two numbers of the buffer's dtype, exact to
        its round-off), whether a rank failed, and whether every rank traced ``count``
        parameters. Returns (the global loss, whether any rank failed, whether the counts
        agree). The parameters are those of the param store, in order of name, whether the
        step traced them or not, so every rank's buffer has the same layout (a rank that
        failed sends zeros)."""
        import pyro
        import torch

        if self.world == 1:  # nothing to add up
            return loss, failed, True
        groups: dict[tuple[Any, Any], list[torch.Tensor]] = {}
        for _, p in sorted(pyro.get_param_store().named_parameters()):
            groups.setdefault((p.dtype, p.device), []).append(p)
        if not groups:
            groups[(torch.float64, torch.device("cpu"))] = []
        status = None
        for k, ((dtype, device), group) in enumerate(groups.items()):
            parts = [
                p.grad if p.grad is not None and not failed else torch.zeros_like(p) for p in group
            ]
            flat = torch.cat(
                [g.reshape(-1) for g in parts] or [torch.zeros(0, dtype=dtype, device=device)]
            )
            if self.weight != 1.0:
                flat.mul_(self.weight)
            if k == 0:  # the status rides in the first buffer
                high = float(torch.tensor(loss, dtype=dtype))
                row = [high, loss - high, float(failed), float(count), float(count) ** 2]
                flat = torch.cat([flat, torch.tensor(row, dtype=dtype, device=device)])
            _dist().all_reduce(flat, group=_GROUP[0])
            if k == 0:
                status = flat[-5:].double().cpu()
                flat = flat[:-5]
            offset = 0
            for p in group:
                value = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is not None:
                    p.grad.copy_(value)
        assert status is not None
        total = float(status[0]) + float(status[1])
        same = bool(self.world * status[4] == status[3] ** 2)
        return total, bool(status[2] > 0), same


# -- passes over the data -----------------------------------------------------------------------
def evaluation_pieces(
    zoo_model: ZooModel, particles: int = 1, index: Any = None
) -> list[torch.Tensor | None]:
    """The pieces a distributed pass over the data with ``particles`` particles splits into:
    the model's own blocks where it has several; else consecutive pieces of at least
    :data:`PIECE_PAIRS` (particle, point) pairs each, at most :data:`EVAL_PIECES` of them (a
    multiple, on more ranks); ``[None]``, the data whole, where one piece holds it all.

    With ``index`` (the sorted indices of a subset of the data points: an evaluation
    subsample) the pieces of a pass over those points alike, as index tensors: consecutive
    blocks of the data plate's ``block_size`` where the points fill several, else pieces of at
    least :data:`PIECE_PAIRS` pairs, at most :data:`EVAL_PIECES` of them (one: all of
    ``index``)."""
    from zoo.data_blocks import data_blocks, index_blocks

    if index is not None:
        return _point_pieces(zoo_model, index, particles)
    blocks = data_blocks(zoo_model)
    if len(blocks) > 1 or zoo_model.data_plate is None:
        return blocks
    n = zoo_model.num_data
    count = _piece_count(n, particles)
    if count <= 1:
        return [None]
    return list(index_blocks(n, math.ceil(n / count), zoo_model.device))


def _piece_count(n: int, particles: int) -> int:
    """How many pieces a pass of ``particles`` particles over ``n`` points (of a model that
    gives them one block) splits into."""
    most = EVAL_PIECES * math.ceil(world_size() / EVAL_PIECES)
    return min(most, n, n * max(1, particles) // PIECE_PAIRS)


def _point_pieces(zoo_model: ZooModel, index: Any, particles: int) -> list[torch.Tensor]:
    """:func:`evaluation_pieces` of the data points ``index``."""
    import torch

    index = torch.as_tensor(index, dtype=torch.long, device=zoo_model.device).reshape(-1)
    n = len(index)
    size = None if zoo_model.data_plate is None else zoo_model.data_plate.block_size
    if size is None or n <= size:
        count = _piece_count(n, particles)
        size = n if count <= 1 else math.ceil(n / count)
    return list(torch.split(index, max(size, 1)))


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (in dataclasses, dicts, lists) detached on the CPU."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _on_cpu(getattr(obj, f.name)) for f in fields(obj)})
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def map_blocks(
    zoo_model: ZooModel,
    fn: Callable[[torch.Tensor | None], T],
    factorises: Callable[[T], bool] | None = None,
    *,
    particles: int = 1,
) -> list[T]:
    """``fn(block)`` for every block of a pass over ``zoo_model``'s data, in order.

    Without a process group: the model's blocks (:func:`zoo.data_blocks.data_blocks`), one
    after the other, from torch's stream as it is. With one: the :func:`evaluation_pieces` of
    ``particles`` particles, each rank its share, each piece's draws seeded by a seed from rank
    0 and the piece's index,
    gathered on every rank (tensors on the CPU). Where ``factorises`` says a result does not
    (a latent outside the data plate), the pieces cannot be added up: every rank then
    evaluates the model's blocks itself, with the same seeds."""
    from zoo.data_blocks import data_blocks

    if not active():
        return [fn(block) for block in data_blocks(zoo_model)]
    pieces = evaluation_pieces(zoo_model, particles)
    base = _shared_seed()
    results = _share(zoo_model, pieces, fn, lambda i: derive_seed(base, i))
    own = data_blocks(zoo_model)
    if factorises is None or len(own) == len(pieces) or all(factorises(r) for r in results):
        return results
    out = []
    for j, block in enumerate(own):
        with _seeded(derive_seed(base, len(pieces) + j), zoo_model.device):
            out.append(fn(block))
    return out


def map_points(
    zoo_model: ZooModel,
    fn: Callable[[torch.Tensor], T],
    index: Any,
    seed: tuple[int, ...],
    *,
    particles: int = 1,
) -> list[T]:
    """``fn(piece)`` for every piece of a pass over the data points ``index`` (the sorted
    indices of an evaluation subsample), in order: the :func:`evaluation_pieces` of ``index``
    with ``particles`` particles, each rank its share, piece i's draws from torch's generators
    seeded by ``derive_seed(*seed, i)`` (and restored after it: the caller's stream is not
    touched), gathered on every rank (tensors on the CPU). The same pieces and seeds on any
    number of ranks up to :data:`EVAL_PIECES`; without a process group, every piece in this
    process, with the same seeds."""
    pieces = evaluation_pieces(zoo_model, particles, index)
    return _share(zoo_model, pieces, fn, lambda i: derive_seed(*seed, i))


def _share(
    zoo_model: ZooModel,
    pieces: list[Any],
    fn: Callable[[Any], T],
    seed_of: Callable[[int], int],
) -> list[T]:
    """``fn(piece)`` for every piece, in order: this rank scores pieces rank, rank + W, ...,
    piece i from torch's generators seeded by ``seed_of(i)``, and every rank gathers all of
    them (tensors on the CPU). Without a process group, every piece here."""
    me, world = (rank(), world_size()) if active() else (0, 1)
    mine = {}
    for i in range(me, len(pieces), world):
        with _seeded(seed_of(i), zoo_model.device):
            mine[i] = _on_cpu(fn(pieces[i]))
    if world == 1 and not active():
        return [mine[i] for i in range(len(pieces))]
    gathered: list[dict[int, T]] = [{} for _ in range(world)]
    _dist().all_gather_object(gathered, mine, group=_GROUP[0])
    return [part[i] for i in range(len(pieces)) for part in gathered if i in part]
