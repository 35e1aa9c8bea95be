"""Streamed activation statistics and the calibrators that turn them into ranges.

Statistics are *streamed*: every batch updates a fixed-size record per tensor (running
min/max, optionally per-channel |max| over the last axis, optionally a histogram), so
memory is bounded by the number of observed tensors, never by the dataset size.

The histogram is signed and symmetric, ``bins`` equal bins over ``[-R, R)``. When a batch
exceeds ``R`` the range doubles and adjacent bin pairs merge (``bins`` divisible by 4 keeps
the old range exactly on the central half), so no sample is ever re-read.

Calibrators map statistics to a clipping range ``[lo, hi]``:

* ``minmax``: ``[min, max]``.
* ``percentile``: the ``(100-p)``-th and ``p``-th percentiles of the histogram.
* ``entropy``: the symmetric threshold ``t`` minimising KL(P || Q), where P is the
  |x| histogram clipped at ``t`` (outliers added to the last bin) and Q is P re-binned to
  the 128 levels one side of int8 has (TensorRT's method); never clipping more than
  ``ENTROPY_MAX_CLIPPED`` of the samples.
* ``mse``: the range ``alpha * [min, max]``, ``alpha`` on a grid, minimising the expected
  squared error: ``step^2 / 12`` for samples inside (uniform rounding error) plus
  ``(|x| - clip)^2`` for clipped samples.

Quantization parameters from a range ``[lo, hi]`` (range widened to contain 0 so that 0 is
exact, which padding and ReLU need):

* asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, ``zp = round(qmin - lo / scale)``;
* symmetric: ``scale = max(|lo|, |hi|) / 127`` (int8, zp 0) or ``2 max / 255`` (uint8,
  zp 128);
* weights, per output channel c: ``scale_c = max|W_c| / 127``, zp 0 (int8);
* bias: int32, ``scale = s_x * s_w`` (per channel), zp 0, so that ``sum(x_q w_q) + b_q``
  is exactly the integer accumulator the kernel computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

CalibratorName = Literal["minmax", "percentile", "entropy", "mse"]
CALIBRATORS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")

_TINY = 1e-12


class TensorStats:
    """Running statistics of one tensor, updated batch by batch.

    Args:
        histogram: Keep a histogram (needed by percentile, entropy and mse).
        bins: Number of histogram bins (multiple of 4).
        channel_axis_last: Also keep per-channel |max| over the last axis (SmoothQuant).
    """

    def __init__(self, *, histogram: bool = False, bins: int = 2048, channel_axis_last: bool = False) -> None:
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.bins = bins
        self.want_hist = histogram
        self.hist: np.ndarray | None = None
        self.radius = 0.0
        self._zeros = 0  # samples seen before the histogram had a non-zero range
        self.want_channels = channel_axis_last
        self.channel_absmax: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        """Fold one batch into the statistics."""
        x = np.asarray(x)
        if x.size == 0 or x.dtype.kind != "f":
            return
        flat = x.reshape(-1)
        finite = flat if np.isfinite(flat).all() else flat[np.isfinite(flat)]
        if finite.size == 0:
            return
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        self.count += int(finite.size)
        if self.want_channels and x.ndim >= 1:
            cm = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0).astype(np.float64)
            self.channel_absmax = cm if self.channel_absmax is None else np.maximum(self.channel_absmax, cm)
        if self.want_hist:
            self._update_hist(finite)

    def _update_hist(self, flat: np.ndarray) -> None:
        amax = float(np.abs(flat).max())
        if self.hist is None:
            if amax == 0.0:
                self._zeros += flat.size
                return
            self.radius = amax
            self.hist = np.zeros(self.bins, dtype=np.int64)
            self.hist[self.bins // 2] += self._zeros
        while amax > self.radius:
            # Double the range: bin pairs merge onto the central half of the new range.
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros(self.bins, dtype=np.int64)
            q = self.bins // 4
            self.hist[q : q + merged.size] = merged
            self.radius *= 2.0
        # Same bins as np.histogram(range=(-R, R)) (x == R goes to the last bin), but
        # floor + bincount is several times faster than np.histogram on large tensors.
        idx = ((flat.astype(np.float32) + np.float32(self.radius)) * np.float32(self.bins / (2.0 * self.radius))).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.hist += np.bincount(idx, minlength=self.bins)

    @property
    def bin_width(self) -> float:
        return 2.0 * self.radius / self.bins

    def centers(self) -> np.ndarray:
        """Bin centers of the histogram."""
        w = self.bin_width
        return -self.radius + w * (np.arange(self.bins) + 0.5)


# --------------------------------------------------------------------------- calibrators


def _minmax(s: TensorStats) -> tuple[float, float]:
    return s.min, s.max


def _percentile(s: TensorStats, p: float) -> tuple[float, float]:
    if s.hist is None or s.hist.sum() == 0:
        return _minmax(s)
    cdf = np.cumsum(s.hist) / s.hist.sum()
    edges = -s.radius + s.bin_width * np.arange(1, s.bins + 1)  # right edges
    hi = float(edges[min(int(np.searchsorted(cdf, p / 100.0)), s.bins - 1)])
    lo_idx = int(np.searchsorted(cdf, 1.0 - p / 100.0))
    lo = float(edges[lo_idx] - s.bin_width)
    return max(lo, s.min), min(hi, s.max)


def _abs_hist(s: TensorStats) -> np.ndarray:
    assert s.hist is not None
    half = s.bins // 2
    return s.hist[half:] + s.hist[:half][::-1]


def entropy_threshold(abs_hist: np.ndarray, bin_width: float, levels: int = 128, candidates: int = 96) -> float:
    """KL-optimal symmetric threshold over a |x| histogram (see the module docstring)."""
    n = abs_hist.size
    hist = abs_hist.astype(np.float64)
    if n <= levels:
        return n * bin_width
    best_t, best_kl = n * bin_width, math.inf
    for i in np.unique(np.linspace(levels, n, candidates).astype(int)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nz = p > 0
        # Q: merge the i bins into `levels` groups, spread each group's mass evenly over
        # its non-empty bins.
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        nonempty = np.bincount(group, weights=(hist[:i] > 0).astype(np.float64), minlength=levels)
        q = np.where(nz, mass[group] / np.maximum(nonempty[group], 1.0), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        pn, qn = p[nz] / ps, q[nz] / qs
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-30))))
        if kl < best_kl:
            best_kl, best_t = kl, i * bin_width
    return best_t


#: The entropy calibrator never clips more than this fraction of the samples. A saturated
#: spike (ReLU6 outputs piled up at 6) is signal, not an outlier, but the KL search over 128
#: levels happily clips it (MobileNetV2: threshold 1.4 for a [0, 6] tensor, cosine 0.73).
ENTROPY_MAX_CLIPPED = 1e-4


def _entropy(s: TensorStats) -> tuple[float, float]:
    if s.hist is None or s.hist.sum() == 0:
        return _minmax(s)
    ah = _abs_hist(s)
    t = entropy_threshold(ah, s.bin_width)
    cdf = np.cumsum(ah) / ah.sum()
    t_floor = (int(np.searchsorted(cdf, 1.0 - ENTROPY_MAX_CLIPPED)) + 1) * s.bin_width
    t = max(t, t_floor)
    return max(s.min, -t), min(s.max, t)


def mse_range(
    centers: np.ndarray, counts: np.ndarray, lo: float, hi: float, levels: int = 256, grid: int = 64
) -> tuple[float, float]:
    """The range ``alpha * [lo, hi]`` minimising expected squared quantization error."""
    alphas = np.linspace(1.0 / grid, 1.0, grid)
    los = np.minimum(lo, 0.0) * alphas
    his = np.maximum(hi, 0.0) * alphas
    steps = np.maximum((his - los) / (levels - 1), _TINY)
    c = centers[None, :]
    below = np.clip(los[:, None] - c, 0.0, None)
    above = np.clip(c - his[:, None], 0.0, None)
    inside = (below == 0) & (above == 0)
    err = (below**2 + above**2 + inside * (steps[:, None] ** 2) / 12.0) @ counts.astype(np.float64)
    k = int(np.argmin(err))
    return float(los[k]), float(his[k])


def _mse(s: TensorStats) -> tuple[float, float]:
    if s.hist is None or s.hist.sum() == 0:
        return _minmax(s)
    return mse_range(s.centers(), s.hist, s.min, s.max)


def calibrate_range(stats: TensorStats, calibrator: str, *, percentile: float = 99.999) -> tuple[float, float]:
    """The clipping range ``[lo, hi]`` chosen by ``calibrator`` for one tensor.

    Raises:
        ValueError: Unknown calibrator name.
    """
    if stats.count == 0:
        return 0.0, 0.0
    if calibrator == "minmax":
        return _minmax(stats)
    if calibrator == "percentile":
        return _percentile(stats, percentile)
    if calibrator == "entropy":
        return _entropy(stats)
    if calibrator == "mse":
        return _mse(stats)
    raise ValueError(f"unknown calibrator {calibrator!r}; known: {', '.join(CALIBRATORS)}")


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one quantized tensor (per-tensor when scalars)."""

    scale: np.ndarray  # float32, scalar or [C]
    zero_point: np.ndarray  # uint8/int8/int32, same shape as scale
    axis: int | None = None


def activation_qparams(lo: float, hi: float, *, dtype: Literal["uint8", "int8"], symmetric: bool) -> QParams:
    """Per-tensor activation parameters for the range ``[lo, hi]`` (widened to hold 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    npd = np.uint8 if dtype == "uint8" else np.int8
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    if symmetric:
        amax = max(-lo, hi)
        if dtype == "int8":
            scale, zp = amax / 127.0, 0
        else:
            scale, zp = 2.0 * amax / 255.0, 128
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = round(qmin - lo / scale) if scale > 0 else 0
    if not scale > 0 or not math.isfinite(scale):
        scale, zp = 1.0, 0
    zp = int(np.clip(zp, qmin, qmax))
    return QParams(np.array(scale, dtype=np.float32), np.array(zp, dtype=npd))


def weight_qparams(w: np.ndarray, axis: int | None) -> QParams:
    """Symmetric int8 parameters for a weight, per channel along ``axis`` (or per tensor)."""
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        amax = np.array(float(np.abs(w).max()) if w.size else 0.0)
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, dtype=np.int8), axis)


def quantize_weight(w: np.ndarray, qp: QParams) -> np.ndarray:
    """``round(w / scale)`` clipped to int8, scale broadcast along the channel axis."""
    scale = qp.scale
    if qp.axis is not None:
        shape = [1] * w.ndim
        shape[qp.axis] = -1
        scale = scale.reshape(shape)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8)


def quantize_bias(b: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Int32 bias and its scale ``s_x * s_w`` (per channel when ``weight_scale`` is)."""
    scale = (np.float32(input_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(b.astype(np.float64) / scale), -(2**31), 2**31 - 1).astype(np.int32)
    return q, scale
