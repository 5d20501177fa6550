"""The registry of zoo models: name -> :class:`~zoo.model.ZooModel` subclass.

Model modules register themselves with the :func:`register` decorator. Every module under
:mod:`zoo.models` (packages included) is imported on first use, so a new model is found by
being there: there is no list to add it to.
"""

from __future__ import annotations

from zoo.errors import ZooError
from zoo.model import ZooModel

_MODELS: dict[str, type[ZooModel]] = {}


def register(cls: type[ZooModel]) -> type[ZooModel]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    if cls.name in _MODELS and _MODELS[cls.name] is not cls:
        raise ValueError(f"two models registered as {cls.name!r}")
    if cls.default_guide not in cls.guides:
        raise ValueError(f"{cls.name}: default guide {cls.default_guide!r} not in its guides")
    _MODELS[cls.name] = cls
    return cls


_LOADED = False


def _load() -> None:
    """Import every module under :mod:`zoo.models` once (each registers its models)."""
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil

    import zoo.models

    for info in pkgutil.walk_packages(zoo.models.__path__, "zoo.models."):
        importlib.import_module(info.name)
    _LOADED = True


def get_model(name: str) -> type[ZooModel]:
    """The model class registered as ``name``; a :class:`ZooError` naming the choices if none."""
    _load()
    try:
        return _MODELS[name]
    except KeyError:
        choices = ", ".join(sorted(_MODELS))
        raise ZooError(f"unknown model {name!r}; choose from {choices}") from None


def model_names() -> list[str]:
    """Names of all registered models, sorted."""
    _load()
    return sorted(_MODELS)
