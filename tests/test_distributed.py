"""Data-parallel SVI (:mod:`zoo.distributed`) on two CPU processes (gloo) against one process.

One ``torchrun --nproc-per-node 2`` job (this file run as a script, :func:`_worker`) goes
through every scenario once and saves what each rank saw; the tests compare it with the same
computations in this process (one process, no ``torchrun``) or, where the draws differ, with
the same job's rank 0 alone (a one-rank subgroup: the data-parallel algorithm on one process).

- a step's gradient summed over 2 ranks equals the gradient of the same global mini-batch in
  one process (to float64 round-off: the ``enum`` estimator of the mixture is deterministic
  given the batch), also for a batch that does not split evenly;
- training: the mixture with ``enum`` (no noise at all) follows exactly the one-process run,
  with all the data and with mini-batches; a run interrupted and resumed under ``torchrun``
  ends exactly where the uninterrupted one does; the VAE (noise on every step) ends within a
  stated tolerance of the one-process run (slow: a job of its own);
- the diagnostics, the history records and the held-out evaluation on 2 ranks equal those of
  the one-rank run of the algorithm (same draws) and, where the estimate has no Monte Carlo
  error, those of one process; so do they on an evaluation subsample (``eval_subsample``),
  each rank scoring half of its points;
- the command line: a refused model is one line from rank 0 and exit status 2 on every rank;
  only rank 0 writes the run directory and prints; ``torchrun -m zoo.run vae --quick`` (slow).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: the VAE runs compared across 1 and 2 processes
VAE = dict(hidden=32, test_particles=30, steps=200, eval_particles=100, progress=False)
#: the mixture runs with the deterministic ``enum`` estimator
GMM = dict(elbo="enum", steps=25, record_every=5, eval_particles=50, n_init=1, progress=False)
#: the interrupted and resumed mixture runs (noisy ``trace`` estimator, random mini-batches)
RESUMED = dict(elbo="trace", steps=40, batch_size=100, seed=1, checkpoint_every=20, n_init=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc ARGS`` on 127.0.0.1 and a free port, one thread each."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# -- the job: every scenario, on each rank ------------------------------------------------------
class _Capture:
    """An optimizer that only keeps the gradients it is given."""

    grads: dict[str, Any]

    def __call__(self, params: Any) -> None:
        import pyro

        store = pyro.get_param_store()
        self.grads = {store.param_name(p): p.grad.detach().clone() for p in params}


def _gradients(rank: int) -> dict[Any, Any]:
    """Step 1's reduced gradient and, on rank 0, the one-process gradient of its global batch."""
    import pyro
    import torch
    from pyro import poutine

    from zoo.distributed import DataParallelSVI
    from zoo.estimators import make_estimator, prepare_guide
    from zoo.registry import get_model
    from zoo.subsample import BatchShard

    model = get_model("gmm")(None, n_init=1)
    out = {}
    for batch in (100, 101, None):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = prepare_guide("enum", model.build_guide("exact"))
        with torch.no_grad():  # the parameters, before the step seeds its noise (as the runner)
            poutine.replay(model.model, trace=poutine.trace(guide).get_trace())()
        estimator = make_estimator("enum", particles=1, max_plate_nesting=1)
        capture = _Capture()
        svi = SimpleNamespace(
            model=model.model, guide=guide, optim=capture, loss_and_grads=estimator.loss_and_grads
        )
        dp = DataParallelSVI(svi, model, SimpleNamespace(batch_size=batch, seed=0))
        dp.begin_step(1)
        loss = dp.step(subsample_size=batch)
        if rank != 0:
            continue
        indices = dp.batch(1)
        whole = BatchShard("data")
        whole.indices = indices
        with poutine.trace(param_only=True) as capture_ref:
            ref_loss = estimator.loss_and_grads(
                whole(model.model), whole(guide), subsample_size=len(indices)
            )
        ref = {
            name: site["value"].unconstrained().grad.detach().clone()
            for name, site in capture_ref.trace.nodes.items()
        }
        out[batch] = {"loss": loss, "ref_loss": ref_loss, "grads": capture.grads, "ref": ref}
    return out


def _fit_state(result: Any) -> dict[str, Any]:
    d = result.diagnostics
    return {
        "params": {k: v.detach().clone() for k, v in result.param_state["params"].items()},
        "history": result.history.to_dict("list"),
        "elbo": d.elbo,
        "elbo_se": d.elbo_se,
        "num_data": d.num_data,
        "log_evidence": d.log_evidence,
        "test": result.summary.get("test"),
    }


def _fits(rank: int, solo: Any) -> dict[str, Any]:
    import torch.distributed as dist

    import zoo
    from zoo.distributed import use_group

    out = {
        "gmm_full": _fit_state(zoo.fit("gmm", **GMM)),
        "gmm_batch": _fit_state(zoo.fit("gmm", batch_size=100, **GMM)),
    }
    if rank == 0:
        with use_group(solo):
            out["gmm_batch_solo"] = _fit_state(zoo.fit("gmm", batch_size=100, **GMM))
    dist.barrier()
    return out


def _resumed(out_dir: Path) -> dict[str, Any]:
    """An uninterrupted run, and the same run stopped after its step-20 checkpoint, resumed."""
    import zoo
    from zoo import runner

    whole = zoo.fit("gmm", eval_particles=50, progress=False, **RESUMED)
    save = runner._Trainer._save_checkpoint

    def save_then_stop(self: Any, step: int, optim: Any) -> None:
        save(self, step, optim)
        if step == 20:
            raise KeyboardInterrupt  # every rank, right after rank 0's checkpoint

    runner._Trainer._save_checkpoint = save_then_stop
    try:
        with contextlib.suppress(KeyboardInterrupt):
            zoo.fit("gmm", eval_particles=50, progress=False, run_dir=out_dir, **RESUMED)
    finally:
        runner._Trainer._save_checkpoint = save
    resumed = zoo.resume(out_dir, progress=False)
    return {"whole": _fit_state(whole), "resumed": _fit_state(resumed)}


@contextlib.contextmanager
def _points_scored(name: str) -> Any:
    """Inside the block, ``zoo.diagnostics.<name>`` (``_evaluate_block`` or ``_evaluate_chunk``)
    counts the data points it scores on this rank (``count[0]``)."""
    from zoo import diagnostics

    original = getattr(diagnostics, name)
    count = [0]

    def counting(zoo_model: Any, guide: Any, num: int, block: Any = None, *a: Any, **k: Any) -> Any:
        count[0] += zoo_model.num_data if block is None else len(block)
        return original(zoo_model, guide, num, block, *a, **k)

    setattr(diagnostics, name, counting)
    try:
        yield count
    finally:
        setattr(diagnostics, name, original)


def _subsample_diagnostics(vae: Any, guide: Any) -> dict[str, Any]:
    """The diagnostics, a history record's terms and the held-out evaluation of an evaluation
    subsample (4, 4 and 2 pieces), the diagnostics again with blocks of 256 points (3 blocks),
    the points each scored on this rank, and whether torch's stream was left as it was."""
    import torch

    from zoo.diagnostics import evaluate, evaluation_subsample, quick_terms

    state = torch.get_rng_state()
    out: dict[str, Any] = {"work": {}}
    with _points_scored("_evaluate_block") as count:
        out["evaluate"] = evaluate(vae, guide, num_particles=400, points=700, seed=3).as_dict()
    out["work"]["evaluate"] = count[0]
    with _points_scored("_evaluate_chunk") as count:
        out["quick"] = quick_terms(vae, guide, 300, points=900, seed=3, step=7)
    out["work"]["quick"] = count[0]
    with _points_scored("_evaluate_block") as count, evaluation_subsample(340, seed=3):
        out["test"] = vae.test_diagnostics(guide, 400)
    out["work"]["test"] = count[0]
    vae.data_plate = vae.data_plate.with_sizes(block_size=256)
    try:
        with _points_scored("_evaluate_block") as count:
            blocked = evaluate(vae, guide, num_particles=400, points=700, seed=3)
    finally:
        del vae.data_plate  # the class's plate again
    out["blocked"], out["work"]["blocked"] = blocked.as_dict(), count[0]
    out["untouched"] = torch.equal(torch.get_rng_state(), state)
    return out


def _diagnostics(rank: int, solo: Any) -> dict[str, Any]:
    """The diagnostics of fixed parameters on 2 ranks, and on rank 0 alone."""
    import pyro
    import torch
    import torch.distributed as dist
    from pyro import poutine

    from zoo.diagnostics import evaluate, quick_terms
    from zoo.distributed import evaluation_pieces, use_group
    from zoo.registry import get_model

    vae = get_model("vae")(None, hidden=32, test_particles=30)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = vae.build_guide("mean-field")
    with torch.no_grad():
        poutine.replay(vae.model, trace=poutine.trace(guide).get_trace())()

    def measure() -> dict[str, Any]:  # 8, 2 and 2 pieces (evaluation_pieces)
        torch.manual_seed(5)
        d = evaluate(vae, guide, num_particles=400, guide_name="mean-field").as_dict()
        torch.manual_seed(6)
        quick = quick_terms(vae, guide, 100)
        torch.manual_seed(7)
        test = vae.test_diagnostics(guide, 400)
        return {"evaluate": d, "quick": quick, "test": test}

    test_split = vae.on_test_split()
    pieces = [len(evaluation_pieces(m, k)) for m, k in ((vae, 400), (vae, 100), (test_split, 400))]
    out = {"vae": measure(), "pieces": pieces, "subsample": _subsample_diagnostics(vae, guide)}
    if rank == 0:
        with use_group(solo):
            out["vae_solo"] = measure()
            out["subsample_solo"] = _subsample_diagnostics(vae, guide)
    dist.barrier()
    gmm = get_model("gmm")(None)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    exact = gmm.build_guide("exact")
    with torch.no_grad():
        poutine.replay(gmm.model, trace=poutine.trace(exact).get_trace())()
    torch.manual_seed(3)
    out["gmm"] = evaluate(gmm, exact, num_particles=100, guide_name="exact").as_dict()
    return out


def _command_line(rank: int, out_dir: Path) -> dict[str, Any]:
    """``zoo.run.main`` on every rank: a refused model, and a run (each rank its own --out)."""
    from zoo.run import main

    out = {}
    for name, argv in (
        ("refused", ["normal-gamma", "--quick", "--out", str(out_dir / f"refused{rank}")]),
        (
            "run",
            [
                "gmm",
                "--steps",
                "8",
                "--eval-particles",
                "50",
                "--n-init",
                "1",
                "--out",
                str(out_dir / f"cli{rank}"),
            ],
        ),
    ):
        err, std = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            code = main(argv)
        out[name] = {"code": code, "stderr": err.getvalue(), "stdout": std.getvalue()}
    return out


def _worker(out_dir: Path, scenarios: str) -> None:
    """The scenarios (``default`` or ``slow``) on this rank of the job; results to
    ``out_dir/rank<r>.pkl``."""
    import torch
    import torch.distributed as dist

    import zoo
    from zoo import distributed

    torch.set_num_threads(1)
    distributed.setup()
    rank = distributed.rank()
    results: dict[str, Any] = {"world": distributed.world_size()}
    if scenarios == "slow":
        results["vae"] = _fit_state(zoo.fit("vae", **VAE))
    else:
        solo = dist.new_group([0])  # the algorithm on one process: rank 0 alone
        results["gradients"] = _gradients(rank)
        results["fits"] = _fits(rank, solo)
        results["diagnostics"] = _diagnostics(rank, solo)
        results["resumed"] = _resumed(out_dir / "resumed")
        results["cli"] = _command_line(rank, out_dir)
    (out_dir / f"rank{rank}.pkl").write_bytes(pickle.dumps(results))


# -- the tests ------------------------------------------------------------------------------------
def _run_job(out: Path, scenarios: str) -> dict[Any, Any]:
    """A 2-rank job of the ``scenarios``: its results by rank, and its directory (``"dir"``)."""
    done = torchrun(2, str(Path(__file__).resolve()), str(out), scenarios, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[Any, Any] = {r: pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in (0, 1)}
    results["dir"] = out
    return results


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict[Any, Any]:
    """The default scenarios' 2-rank job."""
    return _run_job(tmp_path_factory.mktemp("job"), "default")


def _close(a: Any, b: Any, rtol: float, atol: float = 0.0) -> None:
    import torch

    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_a_step_on_two_ranks_has_the_gradient_of_the_global_batch(job):
    """(N / n_r) on each shard weighted by n_r / B and summed is (N / B) on the batch: equal to
    float64 round-off, for batches of 100 (50 + 50), 101 (51 + 50) and all 500 points."""
    assert job[0]["world"] == 2
    for batch, got in job[0]["gradients"].items():
        assert got["grads"].keys() == got["ref"].keys() and got["grads"], batch
        for name, grad in got["grads"].items():
            _close(grad, got["ref"][name], rtol=1e-12, atol=1e-12)
        assert math.isclose(got["loss"], got["ref_loss"], rel_tol=1e-12)


def test_the_mixture_trains_on_two_ranks_exactly_as_on_one(job):
    """The ``enum`` estimator has no noise: 25 steps on all the data follow the one-process
    run to round-off (parameters and the ELBO of every history record); with mini-batches of
    100, the same batches on one rank of the algorithm."""
    import zoo

    one = _fit_state(zoo.fit("gmm", **GMM))
    for rank in (0, 1):
        two = job[rank]["fits"]["gmm_full"]
        for name, value in one["params"].items():
            _close(two["params"][name], value, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(two["history"]["elbo"], one["history"]["elbo"], rtol=1e-10)
        assert math.isclose(two["log_evidence"], one["log_evidence"], rel_tol=1e-10)
    solo = job[0]["fits"]["gmm_batch_solo"]
    for rank in (0, 1):
        two = job[rank]["fits"]["gmm_batch"]
        for name, value in solo["params"].items():
            _close(two["params"][name], value, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_the_vae_on_two_ranks_ends_where_one_process_does(tmp_path):
    """The VAE's noise differs between the runs (each rank draws its own), so the two final
    ELBOs per point are two draws of the same random quantity: over seeds 0-7 the one-process
    run (200 steps, ``hidden=32``) ends at -26.66 nats per point with a standard deviation of
    0.234, and the tolerance 1.35 is 4 standard deviations of the difference of two independent
    runs (4 x sqrt(2) x 0.234 = 1.32). Both runs gain more than 10 nats per point from the
    start (about 17); the gradient itself is checked exactly by the first test. The two ranks
    end with the same parameters (the same optimizer steps on the same gradients)."""
    import zoo

    job = _run_job(tmp_path, "slow")
    one = _fit_state(zoo.fit("vae", **VAE))
    two = job[0]["vae"]
    per_point = [s["elbo"] / s["num_data"] for s in (one, two)]
    assert abs(per_point[0] - per_point[1]) < 1.35, per_point
    held_out = [s["test"]["per_point"]["elbo"] for s in (one, two)]
    assert abs(held_out[0] - held_out[1]) < 1.35, held_out
    for state, end in zip((one, two), per_point, strict=True):
        assert end - state["history"]["elbo"][0] / state["num_data"] > 10.0
    for name, value in two["params"].items():
        _close(job[1]["vae"]["params"][name], value, rtol=0, atol=0)


def test_a_run_resumed_under_torchrun_ends_where_the_uninterrupted_run_ends(job):
    """Steps are functions of (seed, step): stopped after step 20 and resumed, the run ends with
    the parameters, history and diagnostics of the run that was never stopped."""
    for rank in (0, 1):
        whole, resumed = job[rank]["resumed"]["whole"], job[rank]["resumed"]["resumed"]
        for name, value in whole["params"].items():
            _close(resumed["params"][name], value, rtol=0, atol=0)
        np.testing.assert_array_equal(resumed["history"]["elbo"], whole["history"]["elbo"])
        assert resumed["elbo"] == whole["elbo"]
    assert (job["dir"] / "resumed" / "report.json").is_file()


def test_the_diagnostics_on_two_ranks_equal_those_on_one(job):
    """Each rank scores its share of the pieces, every rank combines all of them: the totals,
    standard errors, per-point IWAE and k-hat of 2 ranks are those of 1 (same seeds per piece),
    on every rank; so are the history's quick terms and the held-out evaluation."""
    assert job[0]["diagnostics"]["pieces"] == [8, 2, 2]  # each pass is split between the ranks
    solo = job[0]["diagnostics"]["vae_solo"]
    for rank in (0, 1):
        two = job[rank]["diagnostics"]["vae"]
        for key in ("elbo", "elbo_se", "iwae", "iwae_se", "khat", "kl", "expected_log_likelihood"):
            assert math.isclose(two["evaluate"][key], solo["evaluate"][key], rel_tol=1e-12), key
        assert two["evaluate"]["kl_by_site"] == pytest.approx(solo["evaluate"]["kl_by_site"])
        assert two["quick"] == pytest.approx(solo["quick"], rel=1e-12)
        assert two["test"]["per_point"] == pytest.approx(solo["test"]["per_point"], rel=1e-12)


def test_an_evaluation_subsample_is_shared_between_the_ranks(job):
    """``eval_subsample`` under ``torchrun``: each rank scores half of the subsample's points
    (its pieces, seeded by the subsample's seed, the pass and the piece, not by rank 0), and
    every rank combines all of them as one process does: the totals, standard errors, IWAE and
    k-hat of 2 ranks are those of 1 (same seeds per piece), on every rank; so are a history
    record's terms and the held-out evaluation, and with the model's blocks as pieces (256,
    256 and 188 of the 700 points). Torch's stream is left as it was, as without ``torchrun``."""
    keys = ("elbo", "elbo_se", "iwae", "iwae_se", "khat", "kl", "expected_log_likelihood")
    solo = job[0]["diagnostics"]["subsample_solo"]
    assert solo["work"] == {"evaluate": 700, "quick": 900, "test": 340, "blocked": 700}
    assert solo["untouched"]
    for rank, blocked in ((0, 256 + 188), (1, 256)):
        two = job[rank]["diagnostics"]["subsample"]
        assert two["work"] == {"evaluate": 350, "quick": 450, "test": 170, "blocked": blocked}
        assert two["untouched"]
        for which in ("evaluate", "blocked"):
            assert two[which]["eval_points"] == solo[which]["eval_points"] == 700
            for key in keys:
                assert math.isclose(two[which][key], solo[which][key], rel_tol=1e-12), (which, key)
            assert two[which]["kl_by_site"] == pytest.approx(solo[which]["kl_by_site"], rel=1e-12)
        assert two["quick"] == pytest.approx(solo["quick"], rel=1e-12, nan_ok=True)
        assert two["test"]["per_point"] == pytest.approx(solo["test"]["per_point"], rel=1e-12)


def test_the_exact_guides_diagnostics_equal_one_process(job):
    """With the exact posterior as guide every particle's log ratio is log p(x): the ELBO and
    IWAE of 2 ranks equal those of one process (no ``torchrun``) to round-off."""
    import pyro
    import torch
    from pyro import poutine

    from zoo.diagnostics import evaluate
    from zoo.registry import get_model

    gmm = get_model("gmm")(None)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    exact = gmm.build_guide("exact")
    with torch.no_grad():
        poutine.replay(gmm.model, trace=poutine.trace(exact).get_trace())()
    one = evaluate(gmm, exact, num_particles=100, guide_name="exact").as_dict()
    two = job[0]["diagnostics"]["gmm"]
    for key in ("elbo", "iwae", "log_evidence", "exact_elbo"):
        if one[key] is not None:
            assert math.isclose(two[key], one[key], rel_tol=1e-10), key
    assert two["khat"] == one["khat"] == "-inf"


def test_a_refused_model_is_one_line_and_exit_status_2_on_every_rank(job):
    zero, one = job[0]["cli"]["refused"], job[1]["cli"]["refused"]
    assert zero["code"] == one["code"] == 2
    lines = zero["stderr"].splitlines()
    assert len(lines) == 1 and "cannot train data-parallel on 2 processes" in lines[0]
    assert "no data plate" in lines[0]
    assert one["stderr"] == one["stdout"] == ""
    assert not (job["dir"] / "refused0").exists() and not (job["dir"] / "refused1").exists()


def test_only_rank_0_writes_the_run_directory_and_prints(job):
    zero, one = job[0]["cli"]["run"], job[1]["cli"]["run"]
    assert zero["code"] == one["code"] == 0
    assert "EM for Gaussian mixtures" in zero["stdout"] and one["stdout"] == one["stderr"] == ""
    runs = list((job["dir"] / "cli0" / "gmm").iterdir())
    assert len(runs) == 1 and (runs[0] / "report.json").is_file()
    assert (runs[0] / "checkpoint.pt").is_file() and (runs[0] / "history.csv").is_file()
    assert not (job["dir"] / "cli1").exists()


@pytest.mark.slow
def test_torchrun_runs_the_command_line(tmp_path):
    """``torchrun --nproc-per-node 2 -m zoo.run vae --quick``: one summary, one run directory;
    a refused model: the zoo's one line once (torchrun adds its own failure report)."""
    done = torchrun(2, "-m", "zoo.run", "vae", "--quick", "--out", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Variational autoencoder") == 1
    assert len(list((tmp_path / "runs" / "vae").iterdir())) == 1
    refused = torchrun(2, "-m", "zoo.run", "normal-gamma", "--quick", cwd=tmp_path)
    assert refused.returncode != 0
    assert refused.stderr.count("python -m zoo.run: error:") == 1


if __name__ == "__main__":  # one rank of the job (see the ``job`` fixture)
    _worker(Path(sys.argv[1]), sys.argv[2])
