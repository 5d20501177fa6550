"""What the docs take from the model registry: the gallery's order and the table of models.

Both follow :data:`zoo.applications.APPLICATIONS`, so a new model's page and row take their
place from the model's own declaration; nothing here lists models.
"""

from __future__ import annotations

import re
from pathlib import Path

from zoo.applications import APPLICATIONS, application_rank
from zoo.registry import get_model, model_names

_QUOTED = re.compile(r"""["']([a-z0-9]+(?:-[a-z0-9]+)*)["']""")


def page_model(path: Path) -> str | None:
    """The model of a gallery script: ``plot_<name>.py`` (dashes as underscores), else the
    first registered model it names in quotes (``zoo.fit("gmm", ...)``)."""
    names = set(model_names())
    own = path.stem.removeprefix("plot_").replace("_", "-")
    if own in names:
        return own
    for match in _QUOTED.finditer(path.read_text()):
        if match.group(1) in names:
            return match.group(1)
    return None


class ApplicationOrder:
    """sphinx-gallery's ``within_subsection_order``: pages in the order of the applications,
    then by model name; pages that run no model last, by file name."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = Path(src_dir)

    def __call__(self, filename: str) -> tuple[int, str, str]:
        name = page_model(self.src_dir / filename)
        if name is None:
            return (len(APPLICATIONS) + 1, "", filename)
        return (application_rank(get_model(name).application), name, filename)

    def __repr__(self) -> str:  # a stable repr: sphinx compares configs across builds
        return "ApplicationOrder"


def models_table(gallery: Path) -> str:
    """The reStructuredText table of every registered model, in application order, each
    linked to its gallery page where it has one."""
    pages = {}
    scripts = sorted(gallery.glob("plot_*.py"))
    for script in scripts:  # a model's own page first, then a page that runs it
        pages[script.stem.removeprefix("plot_").replace("_", "-")] = script.stem
    for script in scripts:
        for match in _QUOTED.finditer(script.read_text()):
            pages.setdefault(match.group(1), script.stem)
    rows = []
    for name in sorted(
        model_names(), key=lambda n: (application_rank(get_model(n).application), n)
    ):
        cls = get_model(name)
        link = f":ref:`{name} <sphx_glr_auto_examples_{pages[name]}.py>`" if name in pages else name
        exact = "yes" if cls.has_exact_evidence() else "no"
        guides = ", ".join(f"``{g}``" for g in cls.guides)
        cells = [cls.application, link, cls.title, exact, guides, cls.reference]
        rows.append("   * - " + "\n     - ".join(c.replace("\n", " ") for c in cells))
    header = (
        ".. list-table:: The models, from the registry\n"
        "   :name: models-table\n"
        "   :header-rows: 1\n"
        "   :widths: 14 12 20 8 18 28\n"
        "   :class: applications\n\n"
        "   * - application\n     - model\n     - title\n     - exact log p(x)\n"
        "     - guides\n     - follows\n"
    )
    return header + "\n".join(rows) + "\n"
