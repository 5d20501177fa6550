"""Run settings declared once (:mod:`zoo.settings`): :func:`zoo.fit`'s keywords, the command
line's flags, :class:`~zoo.RunConfig`'s fields and the checks of ``config.json`` all come from
the one table."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

import zoo
from zoo.declarations import training_for
from zoo.registry import get_model, model_names
from zoo.results import RunConfig
from zoo.run import build_parser
from zoo.settings import BY_NAME, SETTINGS, iter_flags, resolve


def test_fit_names_every_setting_and_its_docstring_lists_them():
    params = inspect.signature(zoo.fit).parameters
    for s in SETTINGS:
        assert params[s.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[s.name].default == s.default
        assert f"``{s.name}``" in zoo.fit.__doc__


def test_run_config_fields_are_the_settings():
    names = [f.name for f in dataclasses.fields(RunConfig)]
    assert names == ["model", "options", *(s.name for s in SETTINGS), "data"]


@pytest.mark.parametrize("name", model_names())
def test_every_applicable_setting_is_a_flag_of_every_model(name):
    cls = get_model(name)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    dests = {a.dest: a for a in sub._actions}
    for group in ("running", "training", "diagnostics"):
        for s in iter_flags(cls, group):
            assert s.name in dests, s.name
            if s.choices is not None:
                assert list(dests[s.name].choices) == list(s.choices(cls))
    for s in SETTINGS:
        if not s.applies(cls):
            assert s.name not in dests


def test_resolve_fills_defaults_from_the_model():
    model = get_model("normal-gamma")()
    values = resolve(model, {})
    t = training_for(model, model.default_guide)
    assert values["guide"] == model.default_guide
    assert values["steps"] == t.steps and values["lr"] == t.lr
    assert values["checkpoint_every"] == max(1, t.steps // 10)
    assert resolve(model, {"quick": True})["steps"] == t.quick_steps
    assert set(values) == set(BY_NAME)


def test_resolve_refuses_unknown_settings_and_bad_values():
    model = get_model("normal-gamma")()
    with pytest.raises(zoo.ZooError, match="unknown run setting 'stepz'"):
        resolve(model, {"stepz": 3})
    with pytest.raises(zoo.ZooError, match="particles: True is not an integer >= 1"):
        resolve(model, {"particles": True})
    with pytest.raises(zoo.ZooError, match="iwae estimator needs --particles of at least 2"):
        resolve(model, {"elbo": "iwae", "particles": 1})


def test_a_stored_config_round_trips_and_is_checked_by_the_same_converters():
    config = zoo.fit("normal-gamma", steps=3, eval_particles=30, progress=False).config
    config.data = {"source": "default"}
    again = RunConfig.from_json(config.to_json())
    assert again == config
    values = json.loads(config.to_json())
    values["lr_final_factor"] = 2.0
    with pytest.raises(zoo.ZooError, match=r"field 'lr_final_factor' is invalid: 2.0 is not"):
        RunConfig.from_json(json.dumps(values))
    values["lr_final_factor"] = True
    with pytest.raises(zoo.ZooError, match="field 'lr_final_factor' must be a number"):
        RunConfig.from_json(json.dumps(values))


def test_the_kl_warmup_default_is_the_models_fraction_of_the_steps():
    vae = get_model("vae")
    model = vae(**vae.smoke_options)
    fraction = vae.training.kl_warmup_fraction
    assert fraction > 0
    values = resolve(model, {"steps": 600})
    assert values["kl_warmup"] == round(fraction * 600)
    assert resolve(model, {"steps": 600, "kl_warmup": 0})["kl_warmup"] == 0
    normal_gamma = get_model("normal-gamma")()
    assert resolve(normal_gamma, {})["kl_warmup"] == 0
    assert resolve(normal_gamma, {"method": "closed-form"})["kl_warmup"] == 0
