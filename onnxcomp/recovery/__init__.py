"""Accuracy recovery after lossy compression (pruning): the building blocks.

* `refit` -- the closed-form layer refit (`reconstruct`, `RefitSettings`, `teacher_for`)
  behind the ``reconstruct`` pass and the start of ``distill``; `refit_job` holds one
  layer's streamed fit and the held-out output error.
* `lstsq` -- streamed ridge least squares (normal equations) and im2col patches.
* `activations` -- run a model in onnxruntime with chosen intermediate tensors exposed
  (`TensorTap`).
* `layers` -- which layers (Conv / Gemm / MatMul with constant weights) can be refit and
  how to turn their inputs into regression features.
* `torch_graph` -- a small ONNX -> PyTorch interpreter whose parameters are the graph's
  initializers (`OnnxModule`; needs the ``torch`` extra); `torch_ops` holds the torch
  implementations of ONNX ops it runs.
* `distill_loop` -- the knowledge-distillation training loop (`distill`, `DistillConfig`;
  ``torch`` extra).

Passes import these names from ``onnxcomp.recovery`` itself. The ``torch`` ones load on
first use, so this namespace imports without PyTorch.
"""

from typing import TYPE_CHECKING, Any

from onnxcomp.recovery.activations import TensorTap
from onnxcomp.recovery.refit import (
    RefitContext,
    RefitSettings,
    reconstruct,
    teacher_for,
)

if TYPE_CHECKING:
    from onnxcomp.recovery.distill_loop import DistillConfig, DistillResult, distill
    from onnxcomp.recovery.torch_graph import OnnxModule

__all__ = [
    "DistillConfig",
    "DistillResult",
    "OnnxModule",
    "RefitContext",
    "RefitSettings",
    "TensorTap",
    "distill",
    "reconstruct",
    "teacher_for",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: they need PyTorch (the ``torch`` extra).
    if name in ("DistillConfig", "DistillResult", "distill"):
        from onnxcomp.recovery import distill_loop

        return getattr(distill_loop, name)
    if name == "OnnxModule":
        from onnxcomp.recovery.torch_graph import OnnxModule

        return OnnxModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
