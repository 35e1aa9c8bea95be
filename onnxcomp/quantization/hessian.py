"""Streamed second-moment statistics of layer inputs: ``H = XᵀX`` and mean ``|x|`` per channel.

GPTQ needs the Hessian of each layer's squared output error, ``H = XᵀX`` over the rows of
the layer input ``X [tokens, K]``; AWQ needs the mean magnitude of every input channel and
uses ``H`` to score candidate scales exactly (the output error of a weight change ``ΔW`` is
``tr(ΔWᵀ H ΔW)``). Both come from one onnxruntime session over the calibration batches,
with every wanted tensor exposed as an output; each batch only updates the sums, so the
result does not depend on how the samples are batched (feed one sample at a time to hold
one sample's activations).

The sums are float32: one ``[K, K]`` matrix per distinct layer input is the largest thing
the statistics hold (30 decoder layers of a 135M LM: 400 MB in float32, 800 MB in float64).
Each update's product is float32 already; adding a few dozen of them in float32 changes
``H`` by about 1e-7 relative, far below GPTQ's damping (1 % of the mean diagonal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.quantization.collect import stream_tensors


@dataclass
class InputMoments:
    """Sums over the rows seen so far of one layer input with ``K`` channels."""

    xtx: np.ndarray  #: float32 [K, K], sum of x xᵀ over rows
    abs_sum: np.ndarray  #: float64 [K], sum of |x|
    rows: int = 0

    @classmethod
    def empty(cls, k: int) -> InputMoments:
        """Zero sums for ``k`` channels."""
        return cls(np.zeros((k, k), np.float32), np.zeros(k, np.float64))

    def update(self, x: np.ndarray) -> None:
        """Add the rows of ``x [..., K]``."""
        x2 = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        self.xtx += x2.T @ x2  # float32 product and running sum (see the module docstring)
        self.abs_sum += np.abs(x2).sum(axis=0, dtype=np.float64)
        self.rows += x2.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        """``XᵀX / rows`` (a new float64 array)."""
        return self.xtx.astype(np.float64) / max(self.rows, 1)

    @property
    def abs_mean(self) -> np.ndarray:
        """Mean ``|x|`` per channel."""
        return self.abs_sum / max(self.rows, 1)


def collect_moments(
    model: onnx.ModelProto,
    batches: Iterable[dict[str, np.ndarray]],
    widths: dict[str, int],
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, InputMoments]:
    """Stream ``XᵀX`` and mean ``|x|`` of the tensors ``widths`` (name -> channels K).

    Raises:
        CalibrationDataError: No batch could be fed.
    """
    stats = {n: InputMoments.empty(k) for n, k in widths.items()}
    for _, values in stream_tensors(model, batches, widths, progress=progress, what="layer inputs"):
        for n, arr in values.items():
            stats[n].update(arr)
    return stats
