"""Start-up: ``python -m zoo.run --help`` and ``--list`` import no torch and no model, a model's
command imports that model's package alone, ``import zoo`` is light and its public names still
resolve, and the registry's source catalogue (:func:`zoo.registry.source_catalogue`) says what
importing every model registers. How long start-up takes is measured by
``benchmarks/bench_startup.py``, not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zoo
from zoo import registry, run
from zoo.errors import ZooError
from zoo.registry import ModelEntry, get_model, model_names, scan_sources

REPO = Path(__file__).resolve().parents[1]

#: heavy packages the command line's start must not import
HEAVY = ("torch", "pyro", "matplotlib", "arviz", "pandas", "scipy")

#: run the command line (or plain code) in a fresh interpreter; print the modules it imported
_WRAPPER = textwrap.dedent(
    """
    import contextlib, io, json, runpy, sys
    argv = json.loads(sys.argv[1])
    out, code = io.StringIO(), 0
    with contextlib.redirect_stdout(out):
        try:
            if argv and argv[0] == "-c":
                exec(argv[1])
            else:
                sys.argv = ["zoo.run", *argv]
                runpy.run_module("zoo.run", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code or 0
    print(json.dumps({"code": code, "stdout": out.getvalue(), "modules": sorted(sys.modules)}))
    """
)


def _fresh(*argv: str) -> dict:
    """``python -m zoo.run ARGV`` (or ``-c CODE``) in a new interpreter: its exit status, its
    output and every module it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps(argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _packages(modules: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def _model_packages(modules: list[str]) -> set[str]:
    """The packages (or single modules) under zoo.models that were imported."""
    return {".".join(m.split(".")[:3]) for m in modules if m.startswith("zoo.models.")}


@pytest.mark.parametrize("flag", ["--help", "--list"])
def test_help_and_list_import_no_torch_and_no_model(flag):
    done = _fresh(flag)
    assert done["code"] == 0
    assert not _packages(done["modules"]) & set(HEAVY)
    assert not _model_packages(done["modules"])
    for name in model_names():  # every model is still listed, with its title
        assert name in done["stdout"]
        assert get_model(name).title.split()[0] in done["stdout"]


def test_list_matches_the_imported_classes():
    """--list's rows (name, exact evidence, title), read without importing a model, are what
    the classes say."""
    rows = _fresh("--list")["stdout"].splitlines()
    assert rows[0].split() == ["model", "exact", "evidence", "title"]
    listed = {row.split()[0]: row for row in rows[1:]}
    assert sorted(listed) == model_names()
    for name, row in listed.items():
        cls = get_model(name)
        _, exact, title = row.split(maxsplit=2)
        assert exact == ("yes" if cls.has_exact_evidence() else "no")
        assert title == cls.title


def test_a_model_command_imports_that_model_alone():
    done = _fresh("gmm", "--help")
    assert done["code"] == 0
    assert "gmm options" in done["stdout"]
    assert _model_packages(done["modules"]) == {"zoo.models.gmm"}
    assert "zoo.leaderboard" not in done["modules"]


def test_import_zoo_is_light_and_its_names_resolve():
    done = _fresh("-c", "import json, zoo; print(json.dumps(dir(zoo)))")
    assert not _packages(done["modules"]) & set(HEAVY)
    assert set(zoo.__all__) <= set(json.loads(done["stdout"]))
    from zoo.diagnostics import Diagnostics, evaluate
    from zoo.inference_data import SavedRun, load
    from zoo.model import ZooModel
    from zoo.results import FitResult, RunConfig
    from zoo.runner import fit, resume

    expected = {
        "fit": fit,
        "resume": resume,
        "load": load,
        "SavedRun": SavedRun,
        "FitResult": FitResult,
        "RunConfig": RunConfig,
        "Diagnostics": Diagnostics,
        "evaluate": evaluate,
        "ZooModel": ZooModel,
        "ZooError": ZooError,
        "get_model": get_model,
        "model_names": model_names,
        "register": registry.register,
    }
    for name, value in expected.items():
        assert getattr(zoo, name) is value
    for name in zoo.__all__:
        assert getattr(zoo, name) is not None
    assert set(zoo.__all__) <= set(dir(zoo))
    assert zoo.outputs.save_run is not None  # the package's modules, as attributes
    with pytest.raises(AttributeError):
        zoo.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from zoo import no_such_name  # noqa: F401


def test_the_source_catalogue_is_what_importing_every_model_registers():
    found = registry.source_catalogue()
    assert found.complete
    registry._load()
    models = {n: c for n, c in registry._MODELS.items() if c.__module__.startswith("zoo.models.")}
    assert set(found.entries) == set(models)
    for name, entry in found.entries.items():
        cls = models[name]
        assert entry.known, name
        assert entry == ModelEntry(name, cls.title, cls.__module__, cls.has_exact_evidence())
    assert registry.catalogue() == {
        n: ModelEntry(n, c.title, c.__module__, c.has_exact_evidence())
        for n, c in sorted(registry._MODELS.items())
    }


def test_the_one_model_parser_is_the_full_one():
    """``build_parser(only=...)``, what main() builds, gives the named model the same
    sub-parser as ``build_parser()`` and the same top-level help."""
    full, one = run.build_parser(), run.build_parser(only=["lda"])
    assert one.format_help() == full.format_help()
    lda = run._model_parser(one, "lda")
    assert lda.format_help() == run._model_parser(full, "lda").format_help()
    assert run._named_models(["--resume", "x", "lda", "--steps", "5"]) == {"lda"}


def test_unknown_models_are_looked_for_everywhere():
    with pytest.raises(ZooError, match="unknown model 'no-such-model'; choose from bayes-linreg"):
        get_model("no-such-model")


# -- the scan of model sources, on planted modules ----------------------------------------------
_BASE = """
from zoo.model import ZooModel

class Exact(ZooModel):
    title = "inherited title"

    def log_evidence(self):
        return 0.0
"""


def _scan(tmp_path: Path, **sources: str) -> registry.SourceCatalogue:
    files = {}
    for stem, text in sources.items():
        path = tmp_path / f"{stem}.py"
        path.write_text(textwrap.dedent(text))
        files[f"zoo.models.planted.{stem}"] = path
    return scan_sources(files)


def test_scan_reads_names_titles_and_exact_evidence_through_base_classes(tmp_path):
    found = _scan(
        tmp_path,
        base=_BASE,
        a="""
        from zoo.model import ZooModel
        from zoo.registry import register
        from .base import Exact

        @register
        class Plain(ZooModel):
            name = "plain"
            title = "a plain " "model"

        @register
        class Inherits(Exact):
            \"\"\"The word register in a docstring.\"\"\"
            name = "inherits"
        """,
    )
    assert found.complete
    module = "zoo.models.planted.a"
    assert found.entries == {
        "plain": ModelEntry("plain", "a plain model", module, False),
        "inherits": ModelEntry("inherits", "inherited title", module, True),
    }


def test_scan_leaves_to_the_import_what_the_source_does_not_say_plainly(tmp_path):
    found = _scan(
        tmp_path,
        a="""
        import torch
        from zoo.model import ZooModel
        from zoo.registry import register

        @register
        class TwoBases(ZooModel, torch.nn.Module):
            name = "two-bases"
            title = "two bases"

        @register
        class Foreign(torch.nn.Module):
            name = "foreign"
            title = "a base from elsewhere"
        """,
    )
    assert found.complete  # every name is known, so listing them imports nothing...
    assert found.entries["two-bases"].exact_evidence is None  # ...but these come from the class
    assert found.entries["foreign"].exact_evidence is None
    assert not found.entries["foreign"].known


@pytest.mark.parametrize(
    "source",
    [
        "from zoo.registry import register\n\n@register\nclass A(ZooModel):\n    name = NAME\n",
        "from zoo.registry import register\n\nclass A(ZooModel):\n    name = 'a'\n\nregister(A)\n",
        "from zoo.registry import register as add\n\n@add\nclass A(ZooModel):\n    name = 'a'\n",
        "from zoo.registry import register\n\ndef make():\n    @register\n    class A(ZooModel):\n"
        "        name = 'a'\n",
        "from zoo.registry import register\n\n@register\nclass A(ZooModel):\n    name = 'a'\n\n"
        "@register\nclass B(ZooModel):\n    name = 'a'\n",
        "from zoo.registry import register\n\n@register\nclass A(ZooModel)\n",
    ],
    ids=["name-not-literal", "register-call", "renamed", "in-a-function", "twice", "syntax"],
)
def test_scan_says_when_it_is_not_complete(tmp_path, source):
    """Then model_names() imports every module, as the registry did before the catalogue."""
    assert not _scan(tmp_path, a="from zoo.model import ZooModel\n" + source).complete


def test_scan_of_a_module_without_source_is_not_complete(tmp_path):
    assert not scan_sources({"zoo.models.planted.compiled": None}).complete
