"""ELBO Zoo: every application of the evidence lower bound as a Pyro model and guide.

>>> import zoo
>>> result = zoo.fit("gmm", steps=200)          # doctest: +SKIP
>>> result.diagnostics.gap                       # doctest: +SKIP

See :func:`zoo.fit`, :func:`zoo.resume`, :func:`zoo.load` (a saved run's ArviZ data and
report), :func:`zoo.get_model` and :func:`zoo.model_names`.
"""

from zoo.diagnostics import Diagnostics, evaluate
from zoo.errors import DataError, NonFiniteLossError, ZooError
from zoo.inference_data import SavedRun, load
from zoo.model import Option, Training, ZooModel
from zoo.registry import get_model, model_names, register
from zoo.results import FitResult, RunConfig
from zoo.runner import fit, resume

__all__ = [
    "DataError",
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
