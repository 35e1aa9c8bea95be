"""AWQ: activation-aware per-input-channel scales searched on calibration statistics.

Scaling input channel ``k`` of a layer's weights by ``s_k`` and its input by ``1/s_k`` is
exact in float; after quantization it moves precision to the channels whose activations are
large (Lin et al., 2023). The scales are ``s = mean|x|^α`` (normalized), with ``α`` searched on
a grid to minimize the quantized output error of all the layers reading the same input. The
error is computed exactly from the streamed ``H = XᵀX`` (``tr(ΔW H ΔWᵀ)``), so no activation
is stored. Where the scale goes (folded into the producer or an inserted ``Mul``) is the
pass's business; this module only chooses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxcomp.quantization.blockwise import rtn
from onnxcomp.quantization.gptq import ERROR_ROWS, layer_error


def search_scales(
    weights: Sequence[np.ndarray], h: np.ndarray, abs_mean: np.ndarray, *, bits: int, block_size: int, symmetric: bool, grid: int = 20
) -> tuple[np.ndarray, float, float]:
    """Best input-channel scales for layers ``weights`` (each ``[N_i, K]``) sharing input stats.

    Returns:
        ``(s [K], alpha, error)``; ``alpha = 0`` (no scaling) is always a candidate, so the
        result is never worse than plain round-to-nearest on these statistics.
    """
    x = np.maximum(np.asarray(abs_mean, np.float64), 1e-8)
    best: tuple[np.ndarray, float, float] | None = None
    for i in range(grid):
        alpha = i / grid
        s = x**alpha
        s = s / np.sqrt(s.max() * s.min())  # keep the scales centred around 1
        err = 0.0
        for w in weights:
            # A few thousand rows at a time (blocks lie within rows): a 49,152-row output
            # projection would otherwise take five float copies of itself per grid point.
            for r in range(0, w.shape[0], ERROR_ROWS):
                wr = np.asarray(w[r : r + ERROR_ROWS], np.float64)
                dq = rtn((wr * s[None, :]).astype(np.float32), bits, block_size, symmetric).dequantize() / s[None, :]
                err += layer_error(wr, dq, h) * wr.shape[0] / w.shape[0]
        if best is None or err < best[2]:
            best = (s.astype(np.float32), alpha, err)
    assert best is not None
    return best
