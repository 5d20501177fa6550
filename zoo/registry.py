"""The registry of zoo models: name -> :class:`~zoo.model.ZooModel` subclass.

Model modules register themselves with the :func:`register` decorator; importing
:mod:`zoo.models` imports them all.
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


def _load() -> None:
    import zoo.models  # noqa: F401  (registers every model)


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
