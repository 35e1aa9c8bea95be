"""The pass registry: `register_pass`, lookup by name, and pass specs to instances.

Built-in and third-party passes register the same way (`register_pass`); the built-in
passes are loaded by name, like a plugin, the first time the registry is asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import re
import threading
import typing
from collections.abc import Callable, Iterator
from typing import Any

from onnxcomp.errors import UsageError
from onnxcomp.pipeline.options import make_options, option_fields, split_spec, type_name
from onnxcomp.pipeline.pass_api import Pass, PassOptions

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator registering a pass under ``name`` (kebab-case, unique).

    Raises:
        UsageError: The name is malformed, already registered, or the class is not a
            `Pass` with a summary and a `PassOptions` dataclass.
    """
    if not _NAME_RE.match(name):
        raise UsageError(f"pass name {name!r} must be kebab-case (e.g. 'fold-batchnorm')")

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise UsageError(f"@register_pass({name!r}) must decorate a subclass of onnxcomp.Pass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            other = _REGISTRY[name]
            raise UsageError(f"pass {name!r} is already registered by {other.__module__}.{other.__qualname__}")
        if not (dataclasses.is_dataclass(cls.Options) and issubclass(cls.Options, PassOptions)):
            raise UsageError(f"pass {name!r}: Options must be a PassOptions dataclass")
        if not cls.Options.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise UsageError(f"pass {name!r}: Options must be frozen")
        summary = cls.__dict__.get("summary") or (cls.__doc__ or "").strip().splitlines()[0:1]
        if isinstance(summary, list):
            summary = summary[0].strip() if summary else ""
        if not summary:
            raise UsageError(f"pass {name!r} needs a one-line summary (class docstring or `summary`)")
        cls.name = name
        cls.summary = summary
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_pass(name: str) -> type[Pass]:
    """Look up a registered pass class, with the known names in the error."""
    load_builtin_passes()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UsageError(f"unknown pass {name!r}; known passes: {known}") from None


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes by name (built-ins loaded first)."""
    load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


@contextlib.contextmanager
def isolated_registry() -> Iterator[None]:
    """Context manager restoring the registry afterwards (for tests and plugin probing)."""
    load_builtin_passes()
    saved = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


#: The package of built-in passes. It is loaded by name, like a plugin: the built-in
#: passes build on the pass API (and on ir/pruning/quantization/recovery), never the
#: other way round.
BUILTIN_PASSES = "onnxcomp.passes"

_BUILTINS_LOADED = False
# Two runs started at once in two threads must not see a half-registered set of passes.
_BUILTINS_LOCK = threading.RLock()


def load_builtin_passes() -> None:
    """Import the built-in passes once, which registers them (thread-safe)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    with _BUILTINS_LOCK:
        if not _BUILTINS_LOADED:
            importlib.import_module(BUILTIN_PASSES)
            _BUILTINS_LOADED = True




def instantiate(spec: "str | Pass | tuple[str, dict[str, Any]]") -> Pass:
    """Turn a pass spec (``"name:k=v"``, ``(name, {k: v})`` or an instance) into a Pass."""
    if isinstance(spec, Pass):
        return spec
    if isinstance(spec, tuple):
        name, values = spec
    elif isinstance(spec, str):
        name, values = split_spec(spec)
    else:
        raise UsageError(f"cannot make a pass from {spec!r}")
    cls = get_pass(name)
    return cls(make_options(cls, values))


def describe_pass(cls: type[Pass]) -> dict[str, Any]:
    """JSON-friendly description (name, summary, lossless, options with types/defaults)."""
    hints = typing.get_type_hints(cls.Options)
    opts = []
    for f in option_fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        if isinstance(default, tuple):
            default = list(default)
        opts.append({"name": f.name, "type": type_name(hints[f.name]), "default": default, "help": f.metadata.get("help", "")})
    return {"name": cls.name, "summary": cls.summary, "lossless": cls.lossless, "options": opts, "module": cls.__module__}
