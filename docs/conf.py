"""Sphinx configuration of the ELBO Zoo docs: the gallery, the leaderboard, the API reference.

``make -C docs html`` builds the site with every gallery script run at the models' own
settings (as ``python -m zoo.run`` trains them); ``make -C docs html-quick`` sets
``ZOO_DOCS_QUICK=1``, which the scripts read to train for the models' quick step counts and
evaluate with fewer particles (a couple of minutes on two cores). The site lands in
``docs/_build/html``; nothing generated is committed.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
if (ROOT / "zoo").is_dir():  # a checkout: document (and run) the zoo next to these docs
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))  # zoo_registry_docs: the gallery order and the models table

# The gallery scripts train small models inside this process: one thread is fastest, and the
# builder must not fight the other work on a two-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

QUICK = os.environ.get("ZOO_DOCS_QUICK") == "1"
MODE = "quick" if QUICK else "full"


# -- project ---------------------------------------------------------------------------------------
def _zoo_version() -> str:
    """The installed distribution's version, else the one in the checkout's setup.cfg."""
    try:
        return importlib.metadata.version("elbo-zoo")
    except importlib.metadata.PackageNotFoundError:
        import zoo

        setup_cfg = configparser.ConfigParser()
        setup_cfg.read(Path(zoo.__file__).resolve().parents[1] / "setup.cfg")
        return setup_cfg.get("metadata", "version", fallback="")


project = "ELBO Zoo"
author = "the ELBO Zoo developers"
copyright = "the ELBO Zoo developers, MIT licence"
release = version = _zoo_version()

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    # MathJax from the installed package instead of a CDN: the site reads offline too
    "sphinx-mathjax-offline",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "gallery/**", "_generated"]
templates_path: list[str] = []
pygments_style = "sphinx"

# -- autodoc: the API reference is generated from the docstrings -----------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
add_module_names = False


# -- the gallery -----------------------------------------------------------------------------------
def _mode_changed() -> bool:
    """True when the last build ran in the other mode (quick vs full).

    sphinx-gallery re-runs only the scripts whose text changed; a quick page must not be kept
    for a full build or the reverse, so a change of mode re-runs them all.
    """
    stamp = DOCS / "auto_examples" / ".zoo-docs-mode"
    return stamp.exists() and stamp.read_text().strip() != MODE


def _write_mode_stamp(app, exception) -> None:
    if exception is None:
        stamp = DOCS / "auto_examples" / ".zoo-docs-mode"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(MODE + "\n")


sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",  # run every plot_*.py
    # pages in the order of the applications (zoo.applications), from each page's model
    "within_subsection_order": "zoo_registry_docs.ApplicationOrder",
    "run_stale_examples": _mode_changed(),
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_memory": False,
    "write_computation_times": False,  # no sg_execution_times.rst pages in the source tree
    "min_reported_time": 1,
    "capture_repr": ("_repr_html_", "__repr__"),
    # a cell ending in ax.legend(), fig.suptitle() or a Figure shows the figure, not a repr
    "ignore_repr_types": r"matplotlib[.](text|legend|figure|axes|lines|patches|collections|image)",
    "reset_modules": ("matplotlib",),
    "thumbnail_size": (320, 224),
    "matplotlib_animations": False,
}

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"ELBO Zoo {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
# no left sidebar: the header links the sections, and the pages need the width
html_sidebars = {"**": []}
html_static_path = ["_static"]
html_css_files = ["zoo.css"]
html_show_sourcelink = False


def _write_models_table(app) -> None:
    """docs/_generated/models.rst, the registry's table of models (included by index.rst)."""
    from zoo_registry_docs import models_table

    target = DOCS / "_generated" / "models.rst"
    text = models_table(DOCS / "gallery")
    if not target.exists() or target.read_text() != text:
        target.parent.mkdir(exist_ok=True)
        target.write_text(text)


def setup(app) -> None:
    app.connect("builder-inited", _write_models_table)
    app.connect("build-finished", _write_mode_stamp)
