"""The docs: every registered model has a gallery page, and the site builds without a warning.

The build runs ``sphinx-build -W --keep-going`` in quick mode (``ZOO_DOCS_QUICK=1``) from a
fresh copy of ``docs/`` into a temporary directory: sphinx-gallery skips scripts it ran before,
so a fresh copy is the only way every script really runs, and the checkout's ``docs/`` is left
as it was. Any Sphinx warning or error in a gallery script fails it. ``tests/test_browser.py``
opens the same build (one per session) in headless Chromium.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import zoo

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
GALLERY = DOCS / "gallery"
#: a quick build takes 1.5-2 minutes on two busy cores; past this something hangs
BUILD_TIMEOUT_S = 900


def gallery_script(model: str) -> Path | None:
    """The model's gallery page: ``docs/gallery/plot_<name>.py`` (dashes as underscores), or
    else the script that trains it with ``zoo.fit("<name>", ...)`` (one page may cover several
    related models). None when there is neither."""
    own = GALLERY / f"plot_{model.replace('-', '_')}.py"
    if own.is_file():
        return own
    call = re.compile(r'zoo\.fit\(\s*"' + re.escape(model) + '"')
    for script in sorted(GALLERY.glob("plot_*.py")):
        if call.search(script.read_text()):
            return script
    return None


def page_stem(model: str) -> str:
    script = gallery_script(model)
    assert script is not None, f"{model} has no gallery page"
    return script.stem


# -- without building ------------------------------------------------------------------------------
def test_every_registered_model_has_a_gallery_script():
    missing = [
        f"{name}: docs/gallery/plot_{name.replace('-', '_')}.py"
        for name in zoo.model_names()
        if gallery_script(name) is None
    ]
    assert not missing, (
        "registered models without a gallery page (copy docs/gallery/plot_gmm.py; see "
        "docs/contributing.rst): " + "; ".join(missing)
    )


@pytest.mark.parametrize(
    "script", sorted(GALLERY.rglob("plot_*.py")), ids=lambda p: str(p.relative_to(GALLERY))
)
def test_gallery_script_follows_the_pattern(script: Path):
    """A titled docstring with a paragraph under it, the quick setting, no progress bars."""
    text = script.read_text()
    docstring = ast.get_docstring(ast.parse(text), clean=True)
    assert docstring, f"{script.name}: no module docstring (it becomes the page's title)"
    lines = docstring.splitlines()
    assert len(lines) >= 4 and lines[1] == "=" * len(lines[0]), (
        f"{script.name}: the docstring must open with a title underlined with '=' of its length"
    )
    assert lines[2] == "" and " ".join(lines[3:]).strip(), (
        f"{script.name}: the title needs a paragraph under it (what the page shows, its source)"
    )
    assert 'os.environ.get("ZOO_DOCS_QUICK") == "1"' in text, (
        f"{script.name}: read the quick setting as the other scripts do"
    )
    if "zoo.fit(" in text:
        assert "progress=False" in text and "quick=QUICK" in text, (
            f"{script.name}: call zoo.fit with quick=QUICK and progress=False"
        )


# -- the build (slow: every gallery page trains its model; CI runs it with -m slow) ---------------
@dataclass
class DocsBuild:
    html: Path
    returncode: int
    log: str
    seconds: float

    def page(self, relative: str) -> str:
        return (self.html / relative).read_text()


_BUILDS: dict[str, DocsBuild] = {}


def build_docs_quick(tmp_path_factory: pytest.TempPathFactory) -> DocsBuild:
    """Build the docs once per test session, in quick mode, from a fresh copy of ``docs/``."""
    if "quick" in _BUILDS:
        return _BUILDS["quick"]
    for module in ("sphinx", "sphinx_gallery", "pydata_sphinx_theme"):
        pytest.importorskip(module, reason='the docs extra is not installed: pip install ".[docs]"')
    work = tmp_path_factory.mktemp("docs")
    source = work / "docs"
    shutil.copytree(
        DOCS,
        source,
        ignore=shutil.ignore_patterns("_build", "auto_examples", "gen_modules", "__pycache__"),
    )
    html = work / "html"
    env = {
        **os.environ,
        "ZOO_DOCS_QUICK": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    tic = time.perf_counter()
    try:
        proc = subprocess.run(
            [*command, str(source), str(html)],
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        returncode, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = -1
        log = f"sphinx-build ran past {BUILD_TIMEOUT_S} s\n{exc.stdout or ''}{exc.stderr or ''}"
    _BUILDS["quick"] = DocsBuild(html, returncode, log, time.perf_counter() - tic)
    return _BUILDS["quick"]


@pytest.fixture(scope="session")
def docs_build(tmp_path_factory) -> DocsBuild:
    return build_docs_quick(tmp_path_factory)


def _problems(log: str) -> str:
    """The lines of the build log worth reading when it failed."""
    keep = re.compile(r"WARNING|ERROR|Error|Traceback|failed|ran past", re.IGNORECASE)
    lines = [line for line in log.splitlines() if keep.search(line)]
    return "\n".join(lines[-40:]) or log[-4000:]


def test_the_pages_and_the_api_reference_build_without_running_the_gallery(tmp_path):
    """The rst of every page, every gallery script's text and every docstring the API page
    pulls in, under ``-W`` (seconds: ``plot_gallery=0`` runs no model). The slow test below
    builds the whole site, running the gallery."""
    for module in ("sphinx", "sphinx_gallery", "pydata_sphinx_theme"):
        pytest.importorskip(module, reason='the docs extra is not installed: pip install ".[docs]"')
    source = tmp_path / "docs"
    shutil.copytree(
        DOCS,
        source,
        ignore=shutil.ignore_patterns("_build", "auto_examples", "gen_modules", "__pycache__"),
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-D",
            "plot_gallery=0",
            "-b",
            "html",
            str(source),
            str(tmp_path / "html"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, _problems(proc.stdout + proc.stderr)


@pytest.mark.slow
def test_docs_build_without_warnings_in_quick_mode(docs_build: DocsBuild):
    assert docs_build.returncode == 0, (
        f"sphinx-build -W failed (exit {docs_build.returncode}) after {docs_build.seconds:.0f} s:"
        f"\n{_problems(docs_build.log)}"
    )
    for page in ("index.html", "api.html", "auto_examples/index.html"):
        assert (docs_build.html / page).is_file(), f"{page} was not built"


@pytest.mark.slow
def test_index_has_the_applications_table(docs_build: DocsBuild):
    if docs_build.returncode != 0:
        pytest.fail("the docs did not build: see test_docs_build_without_warnings_in_quick_mode")
    index = docs_build.page("index.html")
    assert 'id="applications-table"' in index
    for header in ("what is exact", "θ (model)", "φ (guide)"):
        assert header in index
    assert 'id="models-table"' in index  # from the registry: every model, linked
    for model in zoo.model_names():
        assert f"auto_examples/{page_stem(model)}.html" in index, model
    assert "Evidence = ELBO + gap." in index
    assert "ELBO = expected log-likelihood − KL to the prior." in index


@pytest.mark.slow
@pytest.mark.parametrize("model", zoo.model_names())
def test_model_page_shows_its_numbers_and_figures(docs_build: DocsBuild, model: str):
    """Each model page printed the gap and shows at least the trace, the terms and its own."""
    if docs_build.returncode != 0:
        pytest.fail("the docs did not build: see test_docs_build_without_warnings_in_quick_mode")
    stem = page_stem(model)
    page = docs_build.page(f"auto_examples/{stem}.html")
    images = set(re.findall(rf'src="\.\./_images/(sphx_glr_{stem}_\d+\.png)"', page))
    assert len(images) >= 3, f"{model}: {len(images)} figures on its page, want at least 3"
    for image in images:
        assert (docs_build.html / "_images" / image).stat().st_size > 0
    assert "ELBO" in page
    if zoo.get_model(model).has_exact_evidence():  # format_result's rows
        assert "exact log evidence" in page and "gap log p(x) - ELBO" in page
    # no object reprs in the output (a cell ending in ax.legend() or a Figure shows the figure)
    for leak in ("&lt;matplotlib.", "&lt;Figure size", "Text(0.", "&lt;Axes:"):
        assert leak not in page, f"{model}: an object repr ({leak}) in its page's output"


@pytest.mark.slow
def test_leaderboard_page_has_every_model(docs_build: DocsBuild):
    if docs_build.returncode != 0:
        pytest.fail("the docs did not build: see test_docs_build_without_warnings_in_quick_mode")
    page = docs_build.page("auto_examples/leaderboard/plot_leaderboard.html")
    for model in zoo.model_names():
        assert f">{model}</td>" in page, f"{model} is missing from the leaderboard table"
