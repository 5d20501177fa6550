"""The compiled step (zoo.compiled): Pyro's loss and gradient, from one graph.

The graph is recorded from the eager step and must give Pyro's own ``loss_and_grads`` for the
same draws: the same random numbers (the graph calls torch's generator in the eager order), the
same mini-batch and the same KL warm-up weight. Recorded graphs are checked here without
TorchInductor (``build(compile=False)``: seconds); the compiled runs are in the slow tier.
"""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import zoo
from zoo.annealing import LatentScale
from zoo.compiled import Batch, CompiledELBO, NotCompilable
from zoo.errors import ZooError
from zoo.registry import get_model
from zoo.results import RunConfig
from zoo.subsample import BatchShard

PYRO_ELBO = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}


def _pyro_and_graph(name, guide_name, estimator, particles, batch_size, weight, **options):
    """Pyro's loss and gradient and the graph's, for the same seed, batch and weight."""
    model = get_model(name)(**options)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = model.build_guide(guide_name)
    kwargs = {"subsample_size": batch_size} if model.data_plate is not None else {}
    scale = LatentScale(weight)
    shard = BatchShard(model.data_plate.name) if batch_size else None
    p_model, p_guide = scale(model.model), scale(guide)
    if shard is not None:
        p_model, p_guide = shard(p_model), shard(p_guide)
    elbo = PYRO_ELBO[estimator](
        num_particles=particles, vectorize_particles=True, max_plate_nesting=model.max_plate_nesting
    )
    elbo.loss(p_model, p_guide, **kwargs)  # creates the parameters
    batch = (
        Batch(model.data_plate.name, model.num_data, batch_size, model.device)
        if batch_size
        else None
    )
    compiled = CompiledELBO(
        model.model,
        guide,
        estimator=estimator,
        particles=particles,
        max_plate_nesting=model.max_plate_nesting,
        batch=batch,
        latent_scale=scale,
        kwargs=kwargs,
    ).build(compile=False)
    indices = batch.draw() if batch else torch.zeros(0, dtype=torch.long)
    if shard is not None:
        shard.indices = indices
    torch.manual_seed(7)
    loss = elbo.loss_and_grads(p_model, p_guide, **kwargs)
    grads = [p.grad.clone() for p in compiled.params]
    torch.manual_seed(7)
    out = compiled.graph(indices, torch.tensor(weight, dtype=torch.float64))
    return (loss, grads), (out[0].item(), list(out[1:])), compiled


@pytest.mark.parametrize(
    ("name", "guide", "estimator", "particles", "batch", "weight", "options"),
    [
        ("bayes-linreg", "mean-field", "trace", 8, None, 1.0, {}),
        ("bayes-linreg", "full-rank", "trace", 1, None, 0.3, {}),
        ("normal-gamma", "full-rank", "trace", 4, None, 1.0, {}),
        ("vae", "mean-field", "meanfield", 1, 32, 0.25, {}),
        ("linear-vae", "mean-field", "trace", 2, 16, 1.0, {}),
    ],
)
def test_the_graph_gives_pyros_loss_and_gradient(
    name, guide, estimator, particles, batch, weight, options
):
    (loss, grads), (g_loss, g_grads), compiled = _pyro_and_graph(
        name, guide, estimator, particles, batch, weight, **options
    )
    eps = torch.finfo(grads[0].dtype).eps
    assert abs(loss - g_loss) <= 64 * eps * abs(loss), (loss, g_loss)
    for a, b in zip(grads, g_grads, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=64 * eps * float(a.abs().max()) + 1e-30)
    assert len(compiled.params) == len(grads) >= 2


def test_a_step_whose_shapes_follow_the_data_is_not_compiled():
    """scVI evaluates only the non-zero counts of a mini-batch: the recorded step's shapes are
    those of its first batch, and replaying another is refused (the run trains eagerly)."""
    with pytest.raises(NotCompilable, match="does not compile or replay"):
        _pyro_and_graph("scvi", "mean-field", "meanfield", 1, 64, 1.0, num_cells=300, num_genes=40)


def test_a_guide_that_is_not_reparameterised_is_not_compiled():
    model = get_model("gmm")(num_points=50, n_init=1)
    pyro.clear_param_store()
    guide = model.build_guide("exact")
    Trace_ELBO(max_plate_nesting=1).loss(model.model, guide, subsample_size=None)
    with pytest.raises(NotCompilable, match="not reparameterised"):
        CompiledELBO(
            model.model,
            guide,
            estimator="trace",
            particles=1,
            max_plate_nesting=1,
            kwargs={"subsample_size": None},
        ).build(compile=False)
    with pytest.raises(NotCompilable, match="'graph' estimator"):
        CompiledELBO(model.model, guide, estimator="graph", particles=1, max_plate_nesting=1)


@pytest.mark.parametrize(
    ("name", "settings", "why"),
    [
        ("ising", {}, "'graph' estimator is not compiled"),
        ("normal-gamma", {"method": "closed-form"}, "closed-form training"),
        ("eight-schools", {}, "local steps"),
        ("gmm", {"method": "svi"}, "changes with the step"),
        ("lda", {"method": "svi", "elbo": "trace", "local_steps": False, "n_init": 1}, None),
    ],
)
def test_compile_is_refused_in_one_line_where_it_cannot_apply(name, settings, why):
    if why is None:  # lda: settled, then found not to qualify at the first step: eager
        result = zoo.fit(name, compile=True, steps=3, eval_particles=30, progress=False, **settings)
        assert result.compiled["compiled"] is False
        assert "not reparameterised" in result.compiled["why"]
        assert result.report()["compiled"] == result.compiled
        return
    with pytest.raises(ZooError, match=f"^compile: .*{why}") as info:
        zoo.fit(name, compile=True, steps=3, progress=False, **settings)
    assert "\n" not in str(info.value)


def test_compile_is_on_by_default_only_for_long_runs_that_qualify():
    from zoo.settings import COMPILE_MIN_STEPS, resolve

    linreg = get_model("bayes-linreg")
    assert resolve(linreg, {"steps": COMPILE_MIN_STEPS})["compile"] is True
    assert resolve(linreg, {"steps": COMPILE_MIN_STEPS - 1})["compile"] is False
    assert resolve(get_model("ising"), {"steps": 10 * COMPILE_MIN_STEPS})["compile"] is False
    assert resolve(linreg, {"steps": 10, "compile": True})["compile"] is True


def test_a_config_written_before_compile_existed_still_loads():
    config = RunConfig.from_json(
        json.dumps({k: v for k, v in _a_config().items() if k != "compile"})
    )
    assert config.compile is False  # such runs trained eagerly


def _a_config():
    result = zoo.fit("normal-gamma", steps=2, eval_particles=30, progress=False)
    from dataclasses import asdict

    return asdict(result.config)


@pytest.mark.slow
def test_a_compiled_run_follows_the_eager_one():
    """Through TorchInductor: the same draws, the same parameters after 30 steps (to float64
    rounding), a status that says it compiled."""
    runs = [
        zoo.fit(
            "bayes-linreg",
            compile=flag,
            particles=1,
            steps=30,
            eval_particles=100,
            seed=3,
            progress=False,
        )
        for flag in (False, True)
    ]
    assert runs[0].compiled is None and runs[1].compiled["compiled"] is True
    assert 0 < runs[1].compiled["build_seconds"] < runs[1].seconds
    for key, value in runs[0].param_state["params"].items():
        assert torch.allclose(value, runs[1].param_state["params"][key], rtol=1e-12, atol=1e-12)
    assert runs[0].history["elbo"].tolist() == pytest.approx(
        runs[1].history["elbo"].tolist(), rel=1e-12
    )


@pytest.mark.slow
def test_a_compiled_vae_run_with_warmup_and_mini_batches_trains():
    result = zoo.fit("vae", compile=True, steps=60, kl_warmup=20, eval_particles=50, progress=False)
    assert result.compiled["compiled"] is True
    d = result.diagnostics
    assert d.elbo > result.history["elbo"].iloc[0]


@pytest.mark.slow
def test_a_compiled_run_resumes_compiled(tmp_path):
    """The graph is built after the checkpoint's parameters are loaded: a resumed compiled run
    ends where the uninterrupted one does."""
    settings = dict(
        compile=True, particles=1, eval_particles=50, seed=5, progress=False, lr_final_factor=1.0
    )
    whole = zoo.fit("bayes-linreg", steps=40, **settings)
    zoo.fit("bayes-linreg", steps=20, checkpoint_every=10, run_dir=tmp_path / "run", **settings)
    resumed = zoo.resume(tmp_path / "run", steps=40, progress=False)
    assert resumed.compiled["compiled"] is True
    for key, value in whole.param_state["params"].items():
        assert torch.allclose(value, resumed.param_state["params"][key], rtol=1e-10, atol=1e-10)
