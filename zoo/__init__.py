"""ELBO Zoo: every application of the evidence lower bound as a Pyro model and guide.

>>> import zoo
>>> result = zoo.fit("gmm", steps=200)          # doctest: +SKIP
>>> result.diagnostics.gap                       # doctest: +SKIP

See :func:`zoo.fit`, :func:`zoo.resume`, :func:`zoo.load` (a saved run's ArviZ data and
report), :func:`zoo.get_model` and :func:`zoo.model_names`.

``import zoo`` imports neither torch nor Pyro: each public name below is imported from its
module the first time it is used (PEP 562), so the command line's ``--help`` and ``--list``
start at once. ``from zoo import fit`` works as usual, and so does ``zoo.<module>`` for the
package's modules.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover  (the names as type checkers and editors see them)
    from zoo.data_plate import DataPlate
    from zoo.diagnostics import Diagnostics, evaluate
    from zoo.errors import DataError, NonFiniteLossError, ZooError
    from zoo.inference_data import SavedRun, load
    from zoo.model import Option, Training, ZooModel
    from zoo.registry import get_model, model_names, register
    from zoo.results import FitResult, RunConfig
    from zoo.runner import fit, resume

#: each public name's module
_SOURCES = {
    "DataError": "zoo.errors",
    "DataPlate": "zoo.data_plate",
    "Diagnostics": "zoo.diagnostics",
    "FitResult": "zoo.results",
    "NonFiniteLossError": "zoo.errors",
    "Option": "zoo.model",
    "RunConfig": "zoo.results",
    "SavedRun": "zoo.inference_data",
    "Training": "zoo.model",
    "ZooError": "zoo.errors",
    "ZooModel": "zoo.model",
    "evaluate": "zoo.diagnostics",
    "fit": "zoo.runner",
    "get_model": "zoo.registry",
    "load": "zoo.inference_data",
    "model_names": "zoo.registry",
    "register": "zoo.registry",
    "resume": "zoo.runner",
}

__all__ = [
    "DataError",
    "DataPlate",
    "Diagnostics",
    "FitResult",
    "NonFiniteLossError",
    "Option",
    "RunConfig",
    "SavedRun",
    "Training",
    "ZooError",
    "ZooModel",
    "evaluate",
    "fit",
    "get_model",
    "load",
    "model_names",
    "register",
    "resume",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use; or a module of the package."""
    source = _SOURCES.get(name)
    if source is not None:
        value = getattr(importlib.import_module(source), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
