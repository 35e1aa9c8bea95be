"""The pass API: `Pass`, `PassResult`, `PassOptions`, `PassContext` (with its typed `Records`).

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
lossless passes that change outputs, errors that name the pass). Registration lives in
`onnxcomp.pipeline.registry`, option parsing in `onnxcomp.pipeline.options`.
"""

from __future__ import annotations

import logging
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.errors import UsageError
from onnxcomp.ir.candidate import Candidate
from onnxcomp.ir.convert import ModelMeta, to_model

if typing.TYPE_CHECKING:
    from onnxcomp.checking.calibration import CalibrationData

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
        meta: ModelMeta,
        calibration: CalibrationData | None = None,
        seed: int = 0,
        logger: logging.Logger | None = None,
        progress: Callable[[str], None] | None = None,
        train_data: CalibrationData | None = None,
    ) -> None:
        self.original_model = original_model
        self.meta = meta
        self.calibration = calibration
        self.train_data = train_data
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.logger = logger or logging.getLogger("onnxcomp")
        self.records = Records()
        self.shapes_seen: weakref.WeakValueDictionary[int, gs.Tensor] = weakref.WeakValueDictionary()
        self._progress = progress
        self._analyses: dict[str, Any] = {}

    def to_model(self, graph: gs.Graph) -> onnx.ModelProto:
        """Export the current graph (e.g. to run it in onnxruntime for statistics).

        Every weight held in memory is written into the new ModelProto (weights still in
        the input's file stay references to it): for a graph whose weights a pass rewrote,
        that is a second copy of them. To run a graph, `export` lends them instead.
        """
        return to_model(graph.copy(), self.meta)

    def export(self, graph: gs.Graph) -> Candidate:
        """Export the current graph for onnxruntime without copying its large weights: a
        `Candidate` whose weights are lent (``make_session(c.header_model,
        lent=c.lent_arrays())``; ``c.finish()`` writes them, once, if the model is kept)."""
        return Candidate.export(graph.copy(), self.meta)

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
