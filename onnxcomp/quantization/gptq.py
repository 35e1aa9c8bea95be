"""GPTQ: quantize a weight column by column, compensating each rounding error in the rest.

For one layer ``y = x W`` with input Hessian ``H = XᵀX`` (see `hessian`), GPTQ quantizes
input channel after input channel and spreads the error of each onto the channels not yet
quantized, weighted by the inverse Hessian (Frantar et al., 2022). Here with:

* damping ``damp * mean(diag H)`` on the diagonal (and dead channels, never active, zeroed);
* ``act_order``: channels in order of decreasing ``diag H``; block parameters then come from
  the unmodified weight ("static groups"), since the blocks of MatMulNBits are contiguous
  in K and have no per-column group index;
* lazy batch updates: the error of a run of columns reaches the rest in one matrix product.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.quantization.blockwise import (
    BlockQuant,
    block_params,
    padded,
    quantize_values,
)


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of ``H⁻¹`` (what the column updates read)."""
    hinv = np.linalg.inv(h)
    hinv = (hinv + hinv.T) / 2
    return np.linalg.cholesky(hinv).T


def gptq(
    w: np.ndarray, h: np.ndarray, *, bits: int, block_size: int, symmetric: bool, damp: float = 0.01, act_order: bool = True
) -> BlockQuant:
    """GPTQ-quantize ``w [N, K]`` (rows = output channels) with input Hessian ``h [K, K]``."""
    n, k = w.shape
    w = padded(np.asarray(w, dtype=np.float64), block_size)
    kp = w.shape[1]
    hp = np.zeros((kp, kp))
    hp[:k, :k] = h
    dead = np.diag(hp) == 0
    hp[dead, dead] = 1.0
    w[:, dead] = 0.0
    nb = kp // block_size
    perm = np.argsort(-np.diag(hp), kind="stable") if act_order else np.arange(kp)
    scales = np.zeros((n, nb), np.float32)
    zps = np.zeros((n, nb), np.uint8)
    if act_order:  # static groups: parameters of the original blocks
        scales[:], zps[:] = block_params(w.reshape(n, nb, block_size), bits, symmetric)
    w = w[:, perm]
    hp = hp[np.ix_(perm, perm)]
    hp[np.diag_indices(kp)] += damp * float(np.mean(np.diag(hp)))
    hinv = _inverse_cholesky_upper(hp)
    codes = np.zeros((n, kp), np.uint8)
    lazy = block_size * max(1, 128 // block_size)
    for i1 in range(0, kp, lazy):
        i2 = min(i1 + lazy, kp)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            blk = perm[col] // block_size
            if not act_order and col % block_size == 0:  # entering a block: its parameters now
                scales[:, blk], zps[:, blk] = block_params(w1[:, i : i + block_size], bits, symmetric)
            s, z = scales[:, blk], zps[:, blk]
            q = quantize_values(w1[:, i : i + 1], s, z, bits)[:, 0]
            codes[:, col] = q
            dq = (q.astype(np.float64) - z) * s
            e = (w1[:, i] - dq) / h1[i, i]
            w1[:, i:] -= np.outer(e, h1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    out = np.empty_like(codes)
    out[:, perm] = codes
    return BlockQuant(out, scales, zps, k, bits, block_size, symmetric)


#: Rows of ``ΔW`` per product in `layer_error`: float64 temporaries of a few MB, not five
#: copies of the whole weight (1.1 GB for a 49,152 x 576 output projection).
ERROR_ROWS = 4096


def layer_error(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    """Mean squared output error ``tr(ΔW H ΔWᵀ) / N`` of using ``wq`` for ``w`` (both ``[N, K]``)."""
    n = w.shape[0]
    total = 0.0
    for i in range(0, n, ERROR_ROWS):
        d = np.asarray(w[i : i + ERROR_ROWS], np.float64) - np.asarray(wq[i : i + ERROR_ROWS], np.float64)
        total += float(np.sum((d @ h) * d))  # a BLAS product, not einsum's loops
    return total / n
