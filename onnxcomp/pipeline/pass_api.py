"""The pass API: `Pass`, `PassResult`, `PassOptions`, `PassContext` and the pass registry.

A pass is a class with a kebab-case name, a one-line summary, a frozen keyword-only
options dataclass and ``run(graph, ctx) -> PassResult``. Built-in and third-party passes
register the same way::

    @register_pass("fold-my-pattern")
    class FoldMyPattern(Pass):
        "Fold my pattern into a single node."
        lossless = True

        def run(self, graph, ctx):
            ...
            return PassResult(modified=changed, stats={"nodes_removed": n})

The manager, not each pass, enforces the contract (checks after every pass, rollback of
lossless passes that change outputs, errors that name the pass).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import re
import threading
import types
import typing
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.errors import UsageError

if typing.TYPE_CHECKING:
    from onnxcomp.checking.calibration import CalibrationData
    from onnxcomp.ir.convert import ModelMeta

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True, kw_only=True)
class PassOptions:
    """Base class of pass options: subclass as a frozen, keyword-only dataclass.

    Give each field a default and (optionally) ``metadata={"help": "..."}``; validate in
    ``__post_init__`` by raising `UsageError`.
    """


@dataclass(frozen=True, kw_only=True)
class NoOptions(PassOptions):
    """Options of a pass that has none."""


@dataclass
class PassResult:
    """What a pass reports.

    Attributes:
        modified: True if and only if the graph changed. Required and must be truthful:
            the manager skips verification (and stops fixed-point loops) on False.
        stats: Small dict of counts, e.g. ``{"nodes_removed": 3}``.
    """

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


R = TypeVar("R")


class Records:
    """Typed facts that passes leave for later passes of the same run, one per type.

    A record is any object (best a frozen dataclass, e.g. `onnxcomp.pruning.PruneRecord`);
    it is stored and looked up by its class, so a reader gets a typed value::

        ctx.records.put(PruneRecord(...))          # prune-channels
        record = ctx.records.get(PruneRecord)      # reconstruct: PruneRecord | None
    """

    def __init__(self) -> None:
        self._by_type: dict[type, object] = {}

    def put(self, record: object) -> None:
        """Store ``record`` (replacing an earlier one of the same class)."""
        self._by_type[type(record)] = record

    def get(self, kind: type[R]) -> R | None:
        """The record of class ``kind``, or None if no pass left one."""
        found = self._by_type.get(kind)
        return found if isinstance(found, kind) else None


class PassContext:
    """What a pass may use besides the graph (one context per pipeline run).

    Attributes:
        calibration: Calibration data (`CalibrationData`) or None when none was given.
        train_data: Training data for recovery passes (``distill``), or None.
        original_model: The model the pipeline started from (read-only).
        rng: A seeded ``numpy.random.Generator``.
        seed: The seed behind ``rng``.
        logger: Logger for this pass run.
        records: Typed facts passes leave for later passes (see `Records`).
        meta: Model-level metadata carried outside the graph (see `onnxcomp.ir.ModelMeta`).
        shapes_seen: Tensors shape inference was asked about (see `onnxcomp.ir.annotate_shapes`).
    """

    def __init__(
        self,
        *,
        original_model: onnx.ModelProto,
        meta: "ModelMeta",
        calibration: "CalibrationData | None" = None,
        seed: int = 0,
        logger: logging.Logger | None = None,
        progress: Callable[[str], None] | None = None,
        train_data: "CalibrationData | None" = None,
    ) -> None:
        self.original_model = original_model
        self.meta = meta
        self.calibration = calibration
        self.train_data = train_data
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.logger = logger or logging.getLogger("onnxcomp")
        self.artifacts: dict[str, Any] = {}
        self.records = Records()
        self.shapes_seen: weakref.WeakValueDictionary[int, gs.Tensor] = weakref.WeakValueDictionary()
        self._progress = progress
        self._analyses: dict[str, Any] = {}

    def to_model(self, graph: gs.Graph) -> onnx.ModelProto:
        """Export the current graph (e.g. to run it in onnxruntime for statistics)."""
        from onnxcomp.ir.convert import to_model

        return to_model(graph.copy(), self.meta)

    def analysis(self, key: str, compute: Callable[[], Any]) -> Any:
        """Return a cached analysis, computing it on first use.

        The manager drops every cached analysis after a pass reports ``modified``.
        """
        if key not in self._analyses:
            self._analyses[key] = compute()
        return self._analyses[key]

    def invalidate_analyses(self) -> None:
        """Forget cached analyses (called by the manager after a graph change)."""
        self._analyses.clear()

    def progress(self, message: str) -> None:
        """Report user-facing progress (a status line; silent when quiet)."""
        if self._progress is not None:
            self._progress(message)
        self.logger.debug(message)


OptionsT = TypeVar("OptionsT", bound=PassOptions)


class Pass(Generic[OptionsT]):
    """Base class of every pass (built-in or third-party), generic in its options type.

    ``class PruneChannels(Pass[PruneOptions])`` makes ``self.options`` a ``PruneOptions``
    for the type checker and sets ``Options = PruneOptions`` (a pass without options
    subclasses plain ``Pass``).

    Class attributes:
        name: Registered name (set by `register_pass`).
        summary: One-line summary; defaults to the first line of the docstring.
        lossless: True if the pass must not change outputs (the manager verifies this
            and rolls the pass back if it does).
        Options: The options dataclass (a `PassOptions` subclass).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    lossless: ClassVar[bool] = False
    Options: ClassVar[type[PassOptions]] = NoOptions
    options: OptionsT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            args = get_args(base) if get_origin(base) is Pass else ()
            if args and isinstance(args[0], type):
                cls.Options = args[0]

    def __init__(self, options: OptionsT | None = None) -> None:
        opts = options if options is not None else self.Options()
        if not isinstance(opts, self.Options):
            raise UsageError(f"pass '{self.name}' expects {self.Options.__name__}, got {type(opts).__name__}")
        self.options = opts  # type: ignore[assignment]  # checked against Options above

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        """Transform ``graph`` in place and report whether it changed."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


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


# --------------------------------------------------------------------------- options


def option_fields(options_cls: type[PassOptions]) -> list[dataclasses.Field]:
    """The public fields of an options dataclass."""
    return [f for f in dataclasses.fields(options_cls) if not f.name.startswith("_")]


def _type_hints(options_cls: type[PassOptions]) -> dict[str, Any]:
    return typing.get_type_hints(options_cls)


def type_name(tp: Any) -> str:
    """Human-readable type for ``onnxcomp passes``."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        return f"list[{type_name(args[0])}]" if args else "list"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: str, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and value.lower() in ("none", "null", ""):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == value:
                return c
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin is tuple:
        inner = get_args(tp)[0] if get_args(tp) else str
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = [v.strip() for v in text.split(",") if v.strip()] if text else []
        return tuple(_coerce(v, inner, where) for v in items)
    if tp is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        return value
    raise UsageError(f"{where}: options of type {type_name(tp)} cannot be set from text")


def make_options(pass_cls: type[Pass], values: dict[str, Any]) -> PassOptions:
    """Build ``pass_cls.Options`` from strings (CLI) or typed values (API).

    Raises:
        UsageError: Unknown option names (listing the known ones) or bad values.
    """
    hints = _type_hints(pass_cls.Options)
    known = {f.name for f in option_fields(pass_cls.Options)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        k = key.replace("-", "_")
        if k not in known:
            listing = ", ".join(sorted(known)) or "(none)"
            raise UsageError(f"pass '{pass_cls.name}' has no option {key!r}; its options: {listing}")
        where = f"{pass_cls.name}:{key}"
        kwargs[k] = _coerce(raw, hints[k], where) if isinstance(raw, str) else _tuple_if_list(raw)
    try:
        return pass_cls.Options(**kwargs)
    except UsageError as e:
        raise UsageError(f"pass '{pass_cls.name}': {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"pass '{pass_cls.name}': {e}") from None


def _tuple_if_list(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Parse ``name:key=value,key=[a,b]`` into a name and raw option strings.

    Commas inside ``[...]`` belong to list values, so node names with dots or slashes
    (``/layer1/conv/Conv``) need no quoting beyond the shell's.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    opts: dict[str, str] = {}
    if rest.strip():
        parts, depth, cur = [], 0, []
        for ch in rest:
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        parts.append("".join(cur))
        for part in parts:
            if not part.strip():
                continue
            if "=" not in part:
                raise UsageError(f"bad pass option {part!r} in {spec!r}: expected key=value")
            k, _, v = part.partition("=")
            opts[k.strip()] = v.strip()
    return name, opts


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
    hints = _type_hints(cls.Options)
    opts = []
    for f in option_fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        if isinstance(default, tuple):
            default = list(default)
        opts.append({"name": f.name, "type": type_name(hints[f.name]), "default": default, "help": f.metadata.get("help", "")})
    return {"name": cls.name, "summary": cls.summary, "lossless": cls.lossless, "options": opts, "module": cls.__module__}
