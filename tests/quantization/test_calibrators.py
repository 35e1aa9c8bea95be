"""Calibrators and streamed statistics against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcomp.quantization.calibrators import (
    TensorStats,
    activation_qparams,
    calibrate_range,
    entropy_threshold,
    quantize_bias,
    quantize_weight,
    weight_qparams,
)


def _batches(seed: int = 0, n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Growing spread forces the histogram range to double several times.
    return [(rng.standard_normal(4000) * (1 + 2 * i)).astype(np.float32) for i in range(n)]


def _stats(batches, hist: bool = True) -> TensorStats:
    s = TensorStats(histogram=hist, bins=1024)
    for b in batches:
        s.update(b)
    return s


def test_streamed_histogram_equals_numpy_histogram_after_range_doubling():
    batches = _batches()
    s = _stats(batches)
    data = np.concatenate(batches)
    assert s.radius > float(np.abs(batches[0]).max())  # the range did grow
    ref, _ = np.histogram(data, bins=s.bins, range=(-s.radius, s.radius))
    np.testing.assert_array_equal(s.hist, ref)
    assert s.count == data.size


def test_minmax_is_exact_and_memory_bounded():
    batches = _batches()
    s = _stats(batches, hist=False)
    data = np.concatenate(batches)
    assert calibrate_range(s, "minmax") == (float(data.min()), float(data.max()))
    assert s.hist is None  # minmax keeps no histogram


def test_percentile_matches_numpy_within_a_bin():
    batches = _batches()
    s = _stats(batches)
    data = np.concatenate(batches)
    lo, hi = calibrate_range(s, "percentile", percentile=99.0)
    assert abs(hi - np.percentile(data, 99.0)) <= 1.01 * s.bin_width
    assert abs(lo - np.percentile(data, 1.0)) <= 1.01 * s.bin_width


def _mse_on_data(data: np.ndarray, lo: float, hi: float) -> float:
    scale = (hi - lo) / 255.0
    zp = np.round(-lo / scale)
    q = np.clip(np.round(data / scale) + zp, 0, 255)
    return float(np.mean(((q - zp) * scale - data) ** 2))


def test_mse_range_is_near_the_brute_force_optimum_on_raw_data():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.standard_normal(20000), rng.standard_normal(20) * 30]).astype(np.float32)
    s = _stats([data])
    lo, hi = calibrate_range(s, "mse")
    grid = np.linspace(1 / 64, 1.0, 64)
    best = min(_mse_on_data(data, a * data.min(), a * data.max()) for a in grid)
    assert _mse_on_data(data, lo, hi) <= 1.1 * best


def _kl_reference(hist: np.ndarray, levels: int = 128) -> int:
    """Straightforward loop version of the TensorRT KL search (every threshold)."""
    best_i, best = len(hist), math.inf
    for i in range(levels, len(hist) + 1):
        p = hist[:i].astype(np.float64).copy()
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        for j in range(levels):
            idx = [k for k in range(i) if (k * levels) // i == j]
            nz = [k for k in idx if hist[k] > 0]
            for k in nz:
                q[k] = hist[idx].sum() / len(nz)
        m = p > 0
        if q.sum() == 0:
            continue
        pn, qn = p[m] / p.sum(), q[m] / q.sum()
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-30))))
        if kl < best:
            best, best_i = kl, i
    return best_i


def test_entropy_threshold_matches_loop_reference():
    rng = np.random.default_rng(2)
    data = np.abs(np.concatenate([rng.standard_normal(5000), rng.standard_normal(10) * 12]))
    hist, _ = np.histogram(data, bins=192, range=(0, data.max()))
    width = data.max() / 192
    t = entropy_threshold(hist, width, levels=128, candidates=10_000)  # every threshold
    assert t == pytest.approx(_kl_reference(hist) * width)


def test_entropy_clips_outliers():
    rng = np.random.default_rng(3)
    data = np.concatenate([rng.standard_normal(20000), [60.0, -55.0]]).astype(np.float32)
    lo, hi = calibrate_range(_stats([data]), "entropy")
    assert 2.0 < hi < 30.0 and -30.0 < lo < -2.0


def test_unknown_calibrator_raises():
    with pytest.raises(ValueError):
        calibrate_range(_stats(_batches(n=1)), "nope")


@pytest.mark.parametrize("dtype,symmetric", [("uint8", False), ("int8", False), ("int8", True), ("uint8", True)])
def test_activation_qparams_represent_zero_and_cover_range(dtype, symmetric):
    qp = activation_qparams(-1.5, 4.0, dtype=dtype, symmetric=symmetric)
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    s, z = float(qp.scale), int(qp.zero_point)
    assert qmin <= z <= qmax
    assert (qmin - z) * s <= -1.5 + s and (qmax - z) * s >= 4.0 - s
    if symmetric:
        assert z in (0, 128)


def test_relu_range_gives_zero_point_at_qmin():
    # onnxruntime drops a Relu before a Q only when the Q's zero point is qmin.
    assert int(activation_qparams(0.0, 3.0, dtype="uint8", symmetric=False).zero_point) == 0
    assert int(activation_qparams(0.0, 3.0, dtype="int8", symmetric=False).zero_point) == -128


def test_weight_per_channel_symmetric_int8():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    w[2] *= 10
    qp = weight_qparams(w, 0)
    np.testing.assert_allclose(qp.scale, np.abs(w).reshape(5, -1).max(1) / 127, rtol=1e-6)
    assert qp.zero_point.dtype == np.int8 and not qp.zero_point.any()
    q = quantize_weight(w, qp)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    np.testing.assert_allclose(q * qp.scale[:, None, None, None], w, atol=float(qp.scale.max()) / 2 + 1e-7)


def test_bias_int32_uses_input_times_weight_scale():
    b = np.array([0.5, -1.25, 3.0], np.float32)
    sx = np.float32(0.02)
    sw = np.array([0.01, 0.002, 0.05], np.float32)
    q, scale = quantize_bias(b, sx, sw)
    assert q.dtype == np.int32
    np.testing.assert_allclose(scale, sx * sw, rtol=1e-7)
    np.testing.assert_array_equal(q, np.rint(b / (sx * sw)).astype(np.int32))


def test_entropy_keeps_a_saturation_spike():
    # ReLU6-like: most values small, 5% piled up at exactly 6. Clipping them is not
    # "removing outliers"; the calibrator must keep the full range.
    rng = np.random.default_rng(5)
    x = np.clip(np.abs(rng.standard_normal(20000)) * 0.8, 0, 6).astype(np.float32)
    x[:1000] = 6.0
    lo, hi = calibrate_range(_stats([x]), "entropy")
    assert lo == float(x.min()) and hi == pytest.approx(6.0)
