"""Block-wise low-bit weight quantization: parameters, round-to-nearest, packing, dequantization.

Layout conventions (one place for them):

* A weight is handled as ``w [N, K]``: one row per output channel, blocks of
  ``block_size`` consecutive input channels along K. A MatMul weight ``[K, N]`` is
  transposed first. K is padded with zeros to a whole number of blocks.
* Codes are unsigned, ``0 .. 2**bits - 1``, dequantized as ``(code - zero_point) * scale``.
  Symmetric quantization fixes ``zero_point = 2**(bits-1)`` (8 for 4 bits).
* onnxruntime's ``com.microsoft.MatMulNBits`` packing (written from its operator spec):
  ``B uint8 [N, n_blocks, block_size * bits / 8]``, codes packed low nibble first along K;
  ``scales [N, n_blocks]``; ``zero_points uint8 [N, ceil(n_blocks * bits / 8)]``, packed the
  same way (absent for symmetric: the kernel then assumes ``2**(bits-1)``).
* ``DequantizeLinear`` (opset 21, block-wise): ``x [K, N]`` int4/uint4/int8/uint8,
  ``axis=0``, ``block_size``, ``scale [n_blocks, N]`` (K not padded).

Written here rather than borrowed from ``onnxruntime.quantization`` because the GPTQ and
AWQ algorithms need the same parameter and rounding functions column by column, and the
packing is a few lines of numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues


@dataclass
class BlockQuant:
    """A quantized weight ``[N, K]``: codes, per-block scales and zero points."""

    codes: np.ndarray  #: uint8 [N, K_pad], values in [0, 2**bits)
    scales: np.ndarray  #: float32 [N, n_blocks]
    zero_points: np.ndarray  #: uint8 [N, n_blocks]
    k: int  #: K before padding
    bits: int
    block_size: int
    symmetric: bool

    @property
    def n_blocks(self) -> int:
        """Blocks per output channel."""
        return self.scales.shape[1]

    def dequantize(self) -> np.ndarray:
        """The float weight ``[N, K]`` the codes stand for."""
        n = self.codes.shape[0]
        blocks = self.codes.reshape(n, self.n_blocks, self.block_size).astype(np.float32)
        w = (blocks - self.zero_points[..., None].astype(np.float32)) * self.scales[..., None]
        return w.reshape(n, -1)[:, : self.k]


def padded(w: np.ndarray, block_size: int) -> np.ndarray:
    """``w [N, K]`` padded with zero columns to a multiple of ``block_size``."""
    pad = -w.shape[1] % block_size
    return np.pad(w, ((0, 0), (0, pad))) if pad else w


def block_params(w: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each row of ``w [..., block]`` (the last axis is one block).

    Symmetric: the value of largest magnitude maps exactly to the most negative code
    (``-2**(bits-1)`` relative to the zero point), so all ``2**bits`` levels are usable.
    Asymmetric: the range ``[min(w, 0), max(w, 0)]`` spans the codes.
    """
    qmax = (1 << bits) - 1
    if symmetric:
        idx = np.abs(w).argmax(axis=-1)[..., None]
        extreme = np.take_along_axis(w, idx, axis=-1)[..., 0]
        scale = extreme / -float(1 << (bits - 1))
        zp = np.full(scale.shape, 1 << (bits - 1), dtype=np.uint8)
    else:
        lo = np.minimum(w.min(axis=-1), 0.0)
        hi = np.maximum(w.max(axis=-1), 0.0)
        scale = (hi - lo) / qmax
        safe = np.where(scale == 0, 1.0, scale)
        zp = np.clip(np.round(-lo / safe), 0, qmax).astype(np.uint8)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)  # all-zero block: any scale
    return scale, zp


def quantize_values(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int) -> np.ndarray:
    """Codes of ``w [..., m]`` for per-row ``scale``/``zp`` broadcast over the last axis."""
    q = np.round(w / scale[..., None]) + zp[..., None].astype(np.float32)
    return np.clip(q, 0, (1 << bits) - 1).astype(np.uint8)


#: `rtn` works on this many weights at a time, so its float temporaries stay a few MB
#: whatever the size of the weight (an embedding table can be hundreds of MB).
RTN_CHUNK = 1 << 21


def rtn(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> BlockQuant:
    """Round-to-nearest block quantization of ``w [N, K]``."""
    n, k = w.shape
    rows = max(1, RTN_CHUNK // max(k, 1))
    codes, scales, zps = [], [], []
    for i in range(0, n, rows):
        wp = padded(np.asarray(w[i:i + rows], dtype=np.float32), block_size)
        blocks = wp.reshape(wp.shape[0], -1, block_size)
        scale, zp = block_params(blocks, bits, symmetric)
        codes.append(quantize_values(blocks, scale, zp, bits).reshape(wp.shape[0], -1))
        scales.append(scale)
        zps.append(zp)
    if len(codes) == 1:
        return BlockQuant(codes[0], scales[0], zps[0], k, bits, block_size, symmetric)
    return BlockQuant(np.concatenate(codes), np.concatenate(scales), np.concatenate(zps), k, bits, block_size, symmetric)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes along the last axis, low bits first (2 per byte for 4 bits)."""
    if bits == 8:
        return codes.astype(np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes` (the first ``count`` codes of the last axis)."""
    if bits == 8:
        return packed[..., :count]
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :count]


def matmulnbits_arrays(bq: BlockQuant) -> dict[str, np.ndarray]:
    """The ``B``, ``scales`` (and, when asymmetric, ``zero_points``) inputs of MatMulNBits."""
    n = bq.codes.shape[0]
    blob = bq.block_size * bq.bits // 8
    out = {
        "B": pack_codes(bq.codes, bq.bits).reshape(n, bq.n_blocks, blob),
        "scales": bq.scales.astype(np.float32),
    }
    if not bq.symmetric:
        out["zero_points"] = pack_codes(bq.zero_points, bq.bits)
    return out


def dequantize_linear_arrays(bq: BlockQuant) -> dict[str, np.ndarray]:
    """``x``, ``scale`` (and ``zero_point``) of a block-wise DequantizeLinear, ``[K, N]`` layout.

    Symmetric weights become signed codes (int4/int8) without a zero point, the form
    execution providers fuse most readily; asymmetric ones unsigned codes with zero points.
    """
    codes = bq.codes[:, : bq.k].T
    if bq.symmetric:
        signed = codes.astype(np.int16) - (1 << (bq.bits - 1))
        dtype = ml_dtypes.int4 if bq.bits == 4 else np.int8
        return {"x": np.ascontiguousarray(signed.astype(dtype)), "scale": np.ascontiguousarray(bq.scales.T)}
    dtype = ml_dtypes.uint4 if bq.bits == 4 else np.uint8
    return {
        "x": np.ascontiguousarray(codes.astype(dtype)),
        "scale": np.ascontiguousarray(bq.scales.T),
        "zero_point": np.ascontiguousarray(bq.zero_points.T.astype(dtype)),
    }


def packed_constant(name: str, values: np.ndarray) -> gs.Constant:
    """A constant of ``values`` that exports with onnx's own (sub-byte aware) serialization.

    4-bit numpy arrays (``ml_dtypes.int4``) must be written packed two per byte; giving the
    constant a ready TensorProto makes every exporter write exactly those bytes.
    """
    return gs.Constant(name, LazyValues(numpy_helper.from_array(values, name)))
