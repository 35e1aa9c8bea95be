"""``reconstruct``: training-free accuracy recovery by layer-wise least squares.

After pruning, each Conv / Gemm / MatMul whose input changed is refit in closed form
(ridge least squares) so that, fed the pruned model's own activations, it reproduces the
original model's activation on the channels pruning kept. The algorithm, its cost and
its limits are documented in `onnxcomp.recovery.refit`; this pass supplies its inputs:
the calibration data, the teacher (the model ``prune-channels`` started from, else the
run's input, or ``teacher=PATH``) and the pruning record of an earlier ``prune-channels``
in the same run (`onnxcomp.pruning.PruneRecord`), when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import onnx_graphsurgeon as gs

from onnxcomp import (
    Pass,
    PassContext,
    PassOptions,
    PassResult,
    load_model,
    register_pass,
)
from onnxcomp.errors import UsageError
from onnxcomp.pruning import PruneRecord
from onnxcomp.recovery import RefitSettings, reconstruct, teacher_for


@dataclass(frozen=True, kw_only=True)
class ReconstructOptions(PassOptions):
    """Options of ``reconstruct`` (defaults: `onnxcomp.recovery.RefitSettings`'s)."""

    ridge: float | None = field(
        default=None,
        metadata={"help": "ridge strength relative to mean(diag(XᵀX)) (default: chosen per layer on held-out samples)"},
    )
    scope: Literal["downstream", "pruned", "all"] = field(
        default="downstream",
        metadata={"help": "layers to refit: touched by pruning and everything after them / only touched / every layer"},
    )
    blocks: int = field(default=4, metadata={"help": "depth-ordered blocks refit on the student's own inputs (0: teacher inputs only)"})
    max_samples: int | None = field(default=None, metadata={"help": "calibration samples used (default: all)"})
    max_rows: int = field(default=2048, metadata={"help": "regression rows per layer over all samples (spread evenly over them; at least 2 per feature)"})
    teacher: str | None = field(default=None, metadata={"help": "teacher ONNX path (default: the model before prune-channels, else the run's input)"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "node names never refit"})

    def __post_init__(self) -> None:
        if self.ridge is not None and not self.ridge >= 0.0:
            raise UsageError(f"ridge must be >= 0, got {self.ridge}")
        if self.max_samples is not None and self.max_samples < 1:
            raise UsageError(f"max_samples must be >= 1, got {self.max_samples}")
        if self.blocks < 0:
            raise UsageError(f"blocks must be >= 0, got {self.blocks}")
        if self.max_rows < 1:
            raise UsageError(f"max_rows must be >= 1, got {self.max_rows}")

    def settings(self) -> RefitSettings:
        """The refit settings these options ask for (all but ``teacher``)."""
        return RefitSettings(
            ridge=self.ridge, scope=self.scope, blocks=self.blocks, max_samples=self.max_samples, max_rows=self.max_rows, exclude=self.exclude
        )


@register_pass("reconstruct")
class Reconstruct(Pass[ReconstructOptions]):
    """Refit pruned layers by least squares to the original model's activations (no training)."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        if ctx.calibration is None:
            raise UsageError("reconstruct needs calibration data (--calibration-data PATH)")
        record = ctx.records.get(PruneRecord)
        teacher = load_model(opts.teacher) if opts.teacher is not None else teacher_for(record, ctx.original_model)
        stats = reconstruct(graph, ctx.calibration, teacher, record=record, settings=opts.settings(), ctx=ctx)
        return PassResult(modified=stats["layers_refit"] > 0, stats=stats)
