"""The registry of zoo models: name -> :class:`~zoo.model.ZooModel` subclass.

Model modules register themselves with the :func:`register` decorator. A new model is found by
being under :mod:`zoo.models` (a module or a package): there is no list to add it to.

Finding the models imports none of them. :func:`source_catalogue` reads the source of every
module under :mod:`zoo.models` (with :mod:`ast`) for the classes decorated ``@register`` and the
literal class attributes the command line shows (``name``, ``title``, and whether the class or a
base class under :mod:`zoo.models` defines ``log_evidence``: :meth:`ZooModel.has_exact_evidence
<zoo.model.ZooModel.has_exact_evidence>`). :func:`model_names` and :func:`catalogue` answer from
it, so ``python -m zoo.run --list`` imports neither torch nor any model; :func:`get_model` imports
the one module that defines the model. Whatever the source does not say plainly (a name that is
not a string literal, a base class from elsewhere, two bases) is read from the imported class
instead, and a model the catalogue does not know is looked for by importing every module under
:mod:`zoo.models`, as the registry did before it had a catalogue: nothing is silently left out.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError

if TYPE_CHECKING:  # pragma: no cover
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
    import zoo.models

    for info in pkgutil.walk_packages(zoo.models.__path__, "zoo.models."):
        importlib.import_module(info.name)
    _LOADED = True


def get_model(name: str) -> type[ZooModel]:
    """The model class registered as ``name``; a :class:`ZooError` naming the choices if none.

    Imports the module that defines it (found through :func:`source_catalogue`), or every
    module under :mod:`zoo.models` where the catalogue does not know the name."""
    if name not in _MODELS:
        entry = source_catalogue().entries.get(name)
        if entry is not None:
            importlib.import_module(entry.module)
        if name not in _MODELS:
            _load()
    try:
        return _MODELS[name]
    except KeyError:
        choices = ", ".join(sorted(_MODELS))
        raise ZooError(f"unknown model {name!r}; choose from {choices}") from None


def model_names() -> list[str]:
    """Names of all registered models, sorted."""
    found = source_catalogue()
    if not found.complete:
        _load()
    return sorted(set(found.entries) | set(_MODELS))


# -- the catalogue ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    """A registered model as the command line lists it: its ``name``, ``title``, the module
    that defines it and whether it has an exact log evidence. In :func:`source_catalogue` a
    field the source does not state plainly is None."""

    name: str
    title: str | None
    module: str
    exact_evidence: bool | None

    @property
    def known(self) -> bool:
        """Every field read from the source (no import needed to list the model)."""
        return self.title is not None and self.exact_evidence is not None


@dataclass(frozen=True)
class SourceCatalogue:
    """:func:`source_catalogue`'s answer: the models by name, and whether that is all of them
    (False where a module's source could not be read or does not say plainly which models it
    registers: :func:`model_names` then imports every module)."""

    entries: dict[str, ModelEntry]
    complete: bool


def catalogue() -> dict[str, ModelEntry]:
    """Every registered model's :class:`ModelEntry`, by name, every field filled in: from the
    source where it says them plainly, else from the imported class."""
    found = source_catalogue().entries
    out = {}
    for name in model_names():
        entry = found.get(name)
        cls = _MODELS.get(name)
        if cls is None and (entry is None or not entry.known):
            cls = get_model(name)
        if cls is not None:
            entry = ModelEntry(name, cls.title, cls.__module__, cls.has_exact_evidence())
        out[name] = entry
    return out


def _module_files() -> dict[str, Path | None]:
    """Every module under :mod:`zoo.models`, in :func:`pkgutil.walk_packages`'s order, and its
    source file (None where it has no readable ``.py`` source); imports no model."""
    import zoo.models

    files: dict[str, Path | None] = {}

    def walk(paths: list[str], prefix: str) -> None:
        for info in pkgutil.iter_modules(paths, prefix):
            folder = getattr(info.module_finder, "path", None)
            leaf = info.name.rpartition(".")[2]
            if folder is None:
                files[info.name] = None
                continue
            if info.ispkg:
                files[info.name] = _source(Path(folder) / leaf / "__init__.py")
                walk([str(Path(folder) / leaf)], info.name + ".")
            else:
                files[info.name] = _source(Path(folder) / f"{leaf}.py")

    walk(list(zoo.models.__path__), "zoo.models.")
    return files


def _source(path: Path) -> Path | None:
    return path if path.is_file() else None


#: a base class resolved to :class:`~zoo.model.ZooModel` itself
_ZOO_MODEL = "zoo.model.ZooModel"


class _Sources:
    """The parsed modules under :mod:`zoo.models` and the classes their names stand for."""

    def __init__(self, files: dict[str, Path | None]) -> None:
        self.files = files
        self._texts: dict[str, bytes | None] = {}
        self._trees: dict[str, ast.Module | None] = {}

    def text(self, module: str) -> bytes | None:
        """The module's source; None where it has none or it cannot be read."""
        if module not in self._texts:
            path = self.files.get(module)
            try:
                self._texts[module] = None if path is None else path.read_bytes()
            except OSError:
                self._texts[module] = None
        return self._texts[module]

    def tree(self, module: str) -> ast.Module | None:
        """The module's syntax tree; None where its source cannot be read or parsed."""
        if module not in self._trees:
            text = self.text(module)
            try:
                self._trees[module] = None if text is None else ast.parse(text)
            except (SyntaxError, ValueError):
                self._trees[module] = None
        return self._trees[module]

    def _package(self, module: str) -> str:
        path = self.files.get(module)
        is_package = path is not None and path.name == "__init__.py"
        return module if is_package else module.rpartition(".")[0]

    def _from_module(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self._package(module).split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, node.module] if node.module else base)

    def _is_module(self, name: str) -> bool:
        return name in self.files or name in ("zoo", "zoo.model", "zoo.models")

    def lookup(self, module: str, name: str, seen: frozenset[tuple[str, str]] = frozenset()) -> Any:
        """What ``name`` is at the top level of ``module``: ``(module, ClassDef)``,
        :data:`_ZOO_MODEL`, a module's name (``"module:<name>"``) or None (not known)."""
        if (module, name) in seen:
            return None
        seen = seen | {(module, name)}
        if (module, name) in (("zoo.model", "ZooModel"), ("zoo", "ZooModel")):
            return _ZOO_MODEL
        tree = self.tree(module)
        if tree is None:
            return None
        found: Any = None
        for node in tree.body:  # the last binding at the top level wins, as when run
            if isinstance(node, ast.ClassDef) and node.name == name:
                found = (module, node)
            elif isinstance(node, ast.ImportFrom):
                source = self._from_module(module, node)
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        submodule = f"{source}.{alias.name}"
                        if self._is_module(submodule):
                            found = f"module:{submodule}"
                        else:
                            found = self.lookup(source, alias.name, seen)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname == name:
                        found = f"module:{alias.name}"
                    elif alias.asname is None and alias.name.partition(".")[0] == name:
                        found = f"module:{name}"
            elif _binds(node, name):
                found = None
        return found

    def resolve(self, module: str, expr: ast.expr) -> Any:
        """What the expression ``expr`` (a base class) in ``module`` stands for (see
        :meth:`lookup`)."""
        if isinstance(expr, ast.Name):
            return self.lookup(module, expr.id)
        if isinstance(expr, ast.Attribute):
            owner = self.resolve(module, expr.value)
            if isinstance(owner, str) and owner.startswith("module:"):
                target = owner.removeprefix("module:")
                submodule = f"{target}.{expr.attr}"
                if self._is_module(submodule):
                    return f"module:{submodule}"
                return self.lookup(target, expr.attr)
        return None

    def attribute(self, module: str, cls: ast.ClassDef, attr: str) -> Any:
        """The class attribute ``attr`` as the class or its base classes state it: the node
        that binds it, :data:`_ZOO_MODEL` where none does before ZooModel, None where unknown
        (two bases, or a base whose source is not under :mod:`zoo.models`)."""
        seen = set()
        while True:
            if id(cls) in seen:
                return None
            seen.add(id(cls))
            for node in cls.body:
                if _binds(node, attr):
                    return node
            if len(cls.bases) != 1 or cls.keywords:
                return None
            base = self.resolve(module, cls.bases[0])
            if base == _ZOO_MODEL:
                return _ZOO_MODEL
            if not isinstance(base, tuple):
                return None
            module, cls = base


def _binds(node: ast.stmt, name: str) -> bool:
    """Whether the statement ``node`` binds ``name`` (a def, a class or an assignment)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(name in _target_names(t) for t in node.targets)
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        bound = not isinstance(node, ast.AnnAssign) or node.value is not None
        return bound and name in _target_names(node.target)
    return False


def _target_names(target: ast.expr) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(t) for t in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()


def _literal_string(binding: Any) -> str | None:
    """The string an ``attr = "literal"`` statement assigns; None for anything else."""
    if isinstance(binding, (ast.Assign, ast.AnnAssign)) and isinstance(binding.value, ast.Constant):
        value = binding.value.value
        return value if isinstance(value, str) else None
    return None


def _is_register(decorator: ast.expr) -> bool:
    return (isinstance(decorator, ast.Name) and decorator.id == "register") or (
        isinstance(decorator, ast.Attribute) and decorator.attr == "register"
    )


#: the word ``register`` in a module's text (code, strings or comments)
_REGISTER_WORD = re.compile(rb"\bregister\b")


def _registers_plainly(tree: ast.Module, text: bytes, decorated: int) -> bool:
    """Whether the module uses ``register`` only to decorate its ``decorated`` top-level
    classes (and imports it under that name): no ``register(cls)`` call, no decorated class
    inside a function, no other name for it. The word counted in the text settles most modules
    without walking the syntax tree (every use in the code is the word in the text)."""
    imports = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "register" and alias.asname not in (None, "register"):
                    return False  # another name: its decorations are not seen
                imports += alias.name == "register"
    if len(_REGISTER_WORD.findall(text)) == decorated + imports:
        return True
    uses = decorations = 0
    for node in ast.walk(tree):
        uses += (isinstance(node, ast.Name) and node.id == "register") or (
            isinstance(node, ast.Attribute) and node.attr == "register"
        )
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            decorations += sum(map(_is_register, node.decorator_list))
    return uses == decorations == decorated


@functools.cache
def source_catalogue() -> SourceCatalogue:
    """The models registered under :mod:`zoo.models`, read from their source without importing
    them: every class decorated ``@register`` at a module's top level, with its literal ``name``
    and ``title`` (from the class or its base classes) and whether it has an exact log evidence
    (the class or a base class under :mod:`zoo.models` defines ``log_evidence``, which is what
    :meth:`ZooModel.has_exact_evidence <zoo.model.ZooModel.has_exact_evidence>` asks). Not
    ``complete`` where a module cannot be read or registers a model in any other way (a
    ``register(cls)`` call, a class inside a function, a name that is not a string literal),
    or where two classes claim one name."""
    return scan_sources(_module_files())


def scan_sources(files: dict[str, Path | None]) -> SourceCatalogue:
    """:func:`source_catalogue` of the modules ``files`` (module name -> its ``.py`` file, None
    where it has none), in that order."""
    sources = _Sources(files)
    entries: dict[str, ModelEntry] = {}
    complete = True
    for module in files:
        text = sources.text(module)
        if text is None:
            complete = False
            continue
        if not _REGISTER_WORD.search(text):
            continue
        tree = sources.tree(module)
        if tree is None:
            complete = False
            continue
        decorated = [
            node
            for node in tree.body
            if isinstance(node, ast.ClassDef) and any(map(_is_register, node.decorator_list))
        ]
        if not _registers_plainly(tree, text, len(decorated)):
            complete = False  # register used other than as a top-level class decorator
        for cls in decorated:
            name = _literal_string(sources.attribute(module, cls, "name"))
            if name is None or name in entries:
                complete = False
                continue
            title = _literal_string(sources.attribute(module, cls, "title"))
            evidence = sources.attribute(module, cls, "log_evidence")
            exact = None if evidence is None else evidence != _ZOO_MODEL
            entries[name] = ModelEntry(name, title, module, exact)
    return SourceCatalogue(entries, complete)
