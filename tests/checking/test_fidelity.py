"""Fidelity per output and per channel, near-zero channels, top-1 where it applies, NaN."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.checking.metrics import (
    ChannelSplit,
    FidelityAccumulator,
    below_floor,
    default_channel_axis,
    fidelity_problem,
    parse_channel_spec,
    summarize,
)
from onnxcomp.errors import UsageError


def _detector_output(rng: np.random.Generator, n: int = 2, anchors: int = 50) -> np.ndarray:
    """[n, 8, anchors]: 4 box channels in 0..320, 4 probability channels in 0..1."""
    boxes = rng.uniform(0, 320, (n, 4, anchors))
    probs = rng.uniform(0, 1, (n, 4, anchors))
    return np.concatenate([boxes, probs], axis=1).astype(np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_small_range_part_of_a_concat_is_the_headline() -> None:
    rng = np.random.default_rng(0)
    ref = _detector_output(rng)
    cand = ref.copy()
    cand[:, 4:] = np.round(cand[:, 4:] / 1.25) * 1.25  # one uint8 scale for 0..320: probs become 0 or 1.25
    acc = FidelityAccumulator(name="output0")
    acc.add(ref, cand)
    f = acc.result()
    assert f.output_cosine > 0.999  # the whole tensor hides the damage ...
    assert f.output_cosine == pytest.approx(_cos(ref, cand), abs=1e-9)
    worst = min(_cos(ref[:, i], cand[:, i]) for i in range(8))
    assert f.cosine == pytest.approx(worst, abs=1e-9) and f.cosine < 0.9  # ... the channels do not
    assert f.channel_axis == 1 and f.channels_judged == 8 and int(f.worst_channel) >= 4
    assert f.where("output0") == f"output0 channel {f.worst_channel} (axis 1)"
    s = summarize({"output0": f, "other": FidelityAccumulator().result()})
    assert s["cosine"] == f.cosine and s["worst"]["where"].startswith("output0 channel")
    assert below_floor({"output0": f}, 0.9) == [f"output0 channel {f.worst_channel} (axis 1): cosine {f.cosine:.4f} is below 0.9"]


def test_named_channel_groups() -> None:
    rng = np.random.default_rng(1)
    ref = _detector_output(rng)
    cand = ref.copy()
    cand[:, 4:] = 0.5  # probabilities replaced by a constant
    acc = FidelityAccumulator(ChannelSplit(1, (4, 4)), "output0")
    acc.add(ref, cand)
    f = acc.result()
    assert set(f.groups or {}) == {"0-3", "4-7"}
    assert f.groups["0-3"] == pytest.approx(1.0) and f.groups["4-7"] == pytest.approx(_cos(ref[:, 4:], cand[:, 4:]))
    assert f.worst_channel == "4-7" and f.where("output0") == "output0 channels 4-7 (axis 1)"
    bad = FidelityAccumulator(ChannelSplit(1, (4, 5)), "output0")
    bad.add(ref, cand)
    with pytest.raises(UsageError, match="add up to 9"):
        bad.result()


def test_streamed_equals_all_at_once() -> None:
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((6, 5, 4, 4)).astype(np.float32)
    cand = ref + rng.standard_normal(ref.shape).astype(np.float32) * np.arange(1, 6, dtype=np.float32)[None, :, None, None] * 0.2
    whole, parts = FidelityAccumulator(), FidelityAccumulator()
    whole.add(ref, cand)
    parts.add(ref[:2], cand[:2])
    parts.add(ref[2:], cand[2:])
    a, b = whole.result(), parts.result()
    assert a.cosine == pytest.approx(b.cosine) and a.worst_channel == b.worst_channel == "4"
    assert a.output_cosine == pytest.approx(b.output_cosine) and a.max_abs_diff == pytest.approx(b.max_abs_diff)


def test_near_zero_channel_is_not_judged() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    ref[:, 2] = 0.0  # a ReLU-dead channel
    cand = ref.copy()
    cand[:, 2] = rng.standard_normal((2, 8, 8)).astype(np.float32) * 1e-6  # residue there
    acc = FidelityAccumulator()
    acc.add(ref, cand)
    f = acc.result()
    assert f.near_zero_channels == 1 and f.channels_judged == 3
    assert f.cosine > 0.999 and f.worst_channel != "2"


def test_tiny_but_real_channel_is_judged() -> None:
    """Class probabilities of ~1e-5 beside box values of ~100 are still judged (ratio 1e-7)."""
    rng = np.random.default_rng(4)
    ref = np.concatenate([rng.uniform(0, 320, (1, 4, 100)), rng.uniform(0, 2e-5, (1, 4, 100))], axis=1)
    cand = ref.copy()
    cand[:, 4:] = 0.0
    acc = FidelityAccumulator()
    acc.add(ref, cand)
    f = acc.result()
    assert f.near_zero_channels == 0 and f.cosine == 0.0


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((1, 22, 2100), 1), ((1, 2100, 22), 2), ((2, 16, 8, 8), 1), ((2, 1, 8, 8), None), ((8, 10), 1), ((8, 1000), None),
     ((8,), None), ((), None), ((2, 7, 384), 1), ((1, 84, 8400), 1),
     ((8, 256, 49152), None), ((8, 128, 4096), None)],
)
def test_default_channel_axis(shape: tuple[int, ...], axis: int | None) -> None:
    assert default_channel_axis(shape) == axis


def test_top1_only_for_class_scores() -> None:
    rng = np.random.default_rng(5)
    n, c = 64, 100
    # A confident classifier: one clear winner per row.
    logits = rng.standard_normal((n, c))
    logits[np.arange(n), rng.integers(0, c, n)] += 8.0
    noisy = logits + rng.standard_normal((n, c)) * 0.1
    acc = FidelityAccumulator(name="logits")
    acc.add(logits, noisy)
    f = acc.result()
    assert f.top1_agreement == 1.0 and f.top1_samples == n
    # Random-weight logits: near ties everywhere, top-1 agreement means nothing.
    flat = rng.standard_normal((n, c))
    acc = FidelityAccumulator(name="logits")
    acc.add(flat, flat + rng.standard_normal((n, c)) * 0.5)
    assert acc.result().top1_agreement is None
    # An L2-normalised embedding, even with a clear top dimension.
    emb = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    acc = FidelityAccumulator(name="out")
    acc.add(emb, emb)
    assert acc.result().top1_agreement is None
    # A name that says embedding.
    acc = FidelityAccumulator(name="sentence_embedding")
    acc.add(logits, noisy)
    assert acc.result().top1_agreement is None
    # Labels make it a classifier and bring accuracy.
    acc = FidelityAccumulator(name="logits")
    acc.add(flat, flat, labels=flat.argmax(1))
    f = acc.result()
    assert f.accuracy_reference == 1.0 and f.accuracy_candidate == 1.0


def test_nonfinite_differences_never_pass() -> None:
    ref = np.ones((2, 4), np.float32)
    cand = ref.copy()
    cand[0, 1] = np.nan
    acc = FidelityAccumulator()
    acc.add(ref, cand)
    f = acc.result()
    assert f.mismatched_nan == 1 and f.max_abs_diff == np.inf and f.problem
    assert "output 'y'" in (fidelity_problem({"y": f}) or "")
    # The same NaN in both is equal, but a reference with nothing finite cannot verify anything.
    nan = np.full((2, 4), np.nan, np.float32)
    acc = FidelityAccumulator()
    acc.add(nan, nan)
    assert acc.result().mismatched_nan == 0 and "no finite values" in (acc.result().problem or "")
    same = FidelityAccumulator()
    same.add(ref, ref)
    assert same.result().problem is None


@pytest.mark.parametrize(
    ("text", "name", "split"),
    [("output0:1=4,18", "output0", ChannelSplit(1, (4, 18))), ("onnx::Shape_422:-1", "onnx::Shape_422", ChannelSplit(-1)),
     ("y:none", "y", ChannelSplit(None))],
)
def test_parse_channel_spec(text: str, name: str, split: ChannelSplit) -> None:
    assert parse_channel_spec(text) == (name, split)


@pytest.mark.parametrize("text", ["output0", "output0:x", ":1", "output0:1=4,0", "output0:1=a"])
def test_parse_channel_spec_errors(text: str) -> None:
    with pytest.raises(ValueError, match="--channels"):
        parse_channel_spec(text)


def test_chunked_sums_equal_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sums over a few values at a time (no float64 copy of a whole batch) give the same figures."""
    from onnxcomp.checking import metrics

    rng = np.random.default_rng(5)
    ref = _detector_output(rng, n=3, anchors=40)
    cand = ref + rng.standard_normal(ref.shape).astype(np.float32)
    cand[1, 2, 7], ref[2, 5, 3], cand[2, 5, 3] = np.nan, np.inf, np.inf  # one mismatch, one shared Inf

    def measure() -> object:
        acc = FidelityAccumulator()
        acc.add(ref, cand)
        return acc.result()

    whole = measure()
    monkeypatch.setattr(metrics, "CHUNK", 7)  # chunks cut rows, channels and the non-finite values
    chunked = measure()
    assert whole.mismatched_nan == chunked.mismatched_nan == 1 and whole.compared == chunked.compared == ref.size - 2
    for key in ("cosine", "output_cosine", "mean_abs_diff", "snr_db", "worst_channel_cosine"):
        assert getattr(chunked, key) == pytest.approx(getattr(whole, key), rel=1e-12), key
    assert chunked.worst_channel == whole.worst_channel and chunked.max_abs_diff == whole.max_abs_diff == np.inf
