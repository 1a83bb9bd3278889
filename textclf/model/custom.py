"""Custom model classes in a model folder: how ``textclf.json`` names one, and loading it only when asked to.

A subclass of :class:`~textclf.model.classifier.TextClassifier` (a custom head through ``build_head``, a custom
pooling...) is saved in the usual folder, and ``textclf.json`` records where the class lives in ``model_class``:

* ``"package.module:QualName"`` for a class in a module importable by name (installed, or on ``sys.path``);
* ``"/abs/path/file.py:QualName"`` for a class in a script run as ``__main__`` (``python examples/custom_head.py``)
  or in a module loaded from a file under another name.

Loading such a folder runs the user's code, so it is never done silently: ``load_model(folder, model_class=...)``,
``Predictor.from_pretrained(..., model_class=...)``, ``Trainer.from_pretrained(..., model_class=...)`` and the CLI's
``--model-class MODULE:CLASS`` / ``--model-class FILE.py:CLASS`` are the opt-in. Without it,
:func:`opt_in_error` says exactly what to pass. This module knows nothing of ``TextClassifier`` itself (the
classifier module uses it), so the class to check against comes in as ``base``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
from pathlib import Path

from ..errors import ModelLoadError

FLAG = "--model-class"
META_KEY = "model_class"
# Modules imported from a file by path live in sys.modules under this prefix plus a hash of the path: unique, so two
# files both called model.py never replace each other, and stable, so loading one file twice gives the same class.
MODULE_PREFIX = "_textclf_model_class_"


def class_spec(cls: type) -> str:
    """Where ``cls`` lives, as ``textclf.json`` records it: ``"module:QualName"``, or ``"/abs/file.py:QualName"``
    when the module cannot be imported by its name elsewhere (a script run as ``__main__``, a file loaded by path)."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if file and (cls.__module__ == "__main__" or not _importable_by_name(cls.__module__, file)):
        return f"{Path(file).resolve()}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def _importable_by_name(name: str, file: str) -> bool:
    """True when importing ``name`` afresh (not from ``sys.modules``) finds this very ``file``."""
    parent, _, _ = name.rpartition(".")
    search = None
    if parent:
        package = sys.modules.get(parent)
        search = getattr(package, "__path__", None)
        if search is None or not _importable_by_name_package(parent):
            return False
    try:
        spec = importlib.machinery.PathFinder.find_spec(name, search)
    except (ImportError, ValueError):
        return False
    origin = getattr(spec, "origin", None)
    return bool(origin) and os.path.realpath(origin) == os.path.realpath(file)


def _importable_by_name_package(name: str) -> bool:
    package = sys.modules.get(name)
    file = getattr(package, "__file__", None)
    if file is None:  # a namespace package: importable wherever its portions are
        return not name.startswith(MODULE_PREFIX)
    return _importable_by_name(name, file)


def is_file_spec(spec: str) -> bool:
    """True for ``"path/file.py:Class"``; False for ``"package.module:Class"``."""
    where = spec.rpartition(":")[0]
    return where.endswith(".py") or "/" in where or os.sep in where


def spec_file(spec: str) -> str | None:
    """The file of a ``"file.py:Class"`` spec (what the command reads, for its output checks); None otherwise."""
    return spec.rpartition(":")[0] if isinstance(spec, str) and ":" in spec and is_file_spec(spec) else None


def resolve_class(value: type | str, base: type) -> type:
    """The class ``value`` names: a class itself, ``"module:Class"`` or ``"file.py:Class"``; it must subclass ``base``.

    Raises:
        ModelLoadError: a malformed spec, a module that does not import, a missing file or attribute, or a class that
            does not subclass ``base``; each message names the value and the fix.
    """
    if isinstance(value, str):
        cls = _import_spec(value.strip(), base)
        shown = value
    elif isinstance(value, type):
        cls, shown = value, f"{value.__module__}.{value.__qualname__}"
    else:
        raise ModelLoadError(f"model_class must be a class or a 'module:Class' / 'file.py:Class' string, got "
                             f"{type(value).__name__} {value!r}")
    if not isinstance(cls, type) or not issubclass(cls, base):
        kind = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}, not a class"
        raise ModelLoadError(f"{FLAG} {shown}: that is {kind} that does not subclass {base.__module__}."
                             f"{base.__qualname__}; name the {base.__name__} subclass the model was trained with")
    return cls


def _import_spec(spec: str, base: type) -> object:
    where, colon, qualname = spec.rpartition(":")
    if not colon or not where or not qualname:
        raise ModelLoadError(f"{FLAG} {spec!r}: expected MODULE:CLASS (e.g. mypackage.models:MLPClassifier) or "
                             "FILE.py:CLASS (e.g. examples/custom_head.py:MLPClassifier)")
    module = _import_file(where, spec) if is_file_spec(spec) else _import_module(where, spec)
    found: object = module
    for part in qualname.split("."):
        if part == "<locals>" or not hasattr(found, part):
            candidates = sorted(name for name, item in vars(module).items()
                                if isinstance(item, type) and issubclass(item, base) and item is not base)
            hint = (f"; the {base.__name__} subclasses there: {', '.join(candidates)}" if candidates
                    else f"; it defines no {base.__name__} subclass at module level")
            local = " (a class defined inside a function cannot be found by name: move it to module level)" \
                if part == "<locals>" else ""
            raise ModelLoadError(f"{FLAG} {spec}: {where} has no class {qualname}{local}{hint}")
        found = getattr(found, part)
    return found


def _import_module(name: str, spec: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ModelLoadError(f"{FLAG} {spec}: module {name!r} cannot be imported: it is not installed and "
                                 f"not on PYTHONPATH; install its package, run with PYTHONPATH=FOLDER (the folder "
                                 f"holding {name.split('.')[0]}), or give its file: {FLAG} path/to/file.py:CLASS"
                                 ) from None
        raise ModelLoadError(f"{FLAG} {spec}: importing module {name!r} failed: {_describe(exc)}") from None
    except Exception as exc:  # the user's module raised while importing: say where, not a traceback
        raise ModelLoadError(f"{FLAG} {spec}: importing module {name!r} failed: {_describe(exc)}") from None


def _import_file(where: str, given: str):
    path = Path(where).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{FLAG} {given}: the file {path} does not exist; give the path of the .py file that "
                             "defines the model class (as FILE.py:CLASS)")
    path = path.resolve()
    name = MODULE_PREFIX + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + \
        "".join(c if c.isalnum() else "_" for c in path.stem)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{FLAG} {given}: {path} cannot be imported as Python code; give a .py file")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses and typing look their module up in sys.modules while the class is built.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit too: a script that parses its own argv when imported
        del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _line_in(exc, path)
        raise ModelLoadError(f"{FLAG} {given}: importing {path}{line} failed: {_describe(exc)}; fix the file, move "
                             "the model class into a module that imports without side effects, or (a file in a "
                             "package, with relative imports) name it by module: MODULE:CLASS") from None
    return module


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _line_in(exc: BaseException, path: Path) -> str:
    """`` (line N)``: the last line of ``path`` the error passed through, when it did."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__)
             if os.path.realpath(frame.filename) == str(path)]
    return f" (line {lines[-1]})" if lines else ""


def opt_in_error(folder: str | Path, recorded: str) -> ModelLoadError:
    """The error for loading a folder whose ``textclf.json`` names ``recorded`` without the user's opt-in."""
    class_name = recorded.rpartition(":")[2].rpartition(".")[2] or recorded
    where = recorded.rpartition(":")[0]
    if where == "__main__":  # saved from a notebook or an interactive session: there is no file to name
        how = (f"the class was defined interactively, so pass it from Python: model_class={class_name} (or "
               f"{class_name}.from_pretrained(folder)); for the command line, move it into a .py file and use "
               f"{FLAG} FILE.py:{class_name}")
    else:
        gone = (f" ({where} no longer exists: give where the class lives now)"
                if is_file_spec(recorded) and not Path(where).is_file() else "")
        importable = "" if is_file_spec(recorded) else " (its module must be importable: installed, or on PYTHONPATH)"
        how = (f"load it with {FLAG} {recorded}{importable}{gone} (Python: model_class={class_name}, or "
               f"{class_name}.from_pretrained(folder))")
    return ModelLoadError(f"{folder} was trained with the custom model class {recorded}; {how}; this imports and runs "
                          "that code, so do it only for code you trust")
