"""Generated inputs run the model: declared or implied sizes first, candidates tried in one
session, a clear error naming what was tried; -1, '?' and unnamed dims never become shapes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from data_testutil import image_model, relu_model, silero_like, string_model

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.checking.generated import (
    candidate_plans,
    generate_inputs,
    implied_values,
    runnable_inputs,
)
from onnxcomp.errors import CalibrationDataError
from onnxcomp.perf.feeds import make_feeds


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> bool:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        sess.run(None, feeds)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("batch", [-1, "batch", None])
def test_image_model_gets_a_size_it_runs_on(batch) -> None:
    model = image_model(320, batch)
    feeds = runnable_inputs(model)
    assert [f["x"].shape for f in feeds] == [(1, 3, 320, 320), (2, 3, 320, 320)]  # batch varied, not the size
    assert all(_runs(model, f) for f in feeds)


def test_declared_image_size_is_tried_first() -> None:
    model = image_model(640)
    model.metadata_props.add(key="imgsz", value="[640, 640]")
    assert candidate_plans(model)[0].feeds(model, 0)["x"].shape == (1, 3, 640, 640)


def test_no_size_runs_says_what_was_tried_and_asks_for_data() -> None:
    with pytest.raises(CalibrationDataError) as e:
        runnable_inputs(image_model(32 * 17))
    msg = str(e.value)
    assert msg.startswith("generated inputs could not run the model (tried x 1x3x224x224; x 1x3x320x320;")
    assert "pass --calibration-data" in msg and "\n" not in msg and "cannot run the input model" not in msg


def test_silero_like_sample_rate_and_state() -> None:
    model = silero_like()
    assert {k: int(v) for k, v in implied_values(model).items()} == {"sr": 16000}
    feeds = runnable_inputs(model)
    assert feeds[0]["sr"].shape == () and feeds[0]["sr"] == 16000 and feeds[0]["sr"].dtype == np.int64
    assert feeds[0]["state"].shape == (2, 1, 128) and feeds[0]["input"].shape[0] == 1
    assert feeds[1]["state"].shape[1] == feeds[1]["input"].shape[0] == 2  # the batch on axis 1 of state
    assert all(_runs(model, f) for f in feeds)


def test_string_inputs_get_strings() -> None:
    feeds = generate_inputs(string_model())
    assert feeds["x"].dtype == object and all(isinstance(s, str) for s in feeds["x"])
    assert _runs(string_model(), runnable_inputs(string_model())[0])


def test_minus_one_never_becomes_a_shape() -> None:
    model = relu_model([-1, 3, None, "?"])
    for f in runnable_inputs(model) + [generate_inputs(model, dim_value=2)]:
        assert all(d > 0 for d in f["x"].shape)


def test_random_calibration_uses_runnable_sizes() -> None:
    model = silero_like()
    data = CalibrationData.from_source("random", model, random_samples=3)
    batches = list(data)
    assert len(batches) == 3 and all(_runs(model, b) for b in batches)
    assert batches[0]["input"][0, 0] != batches[1]["input"][0, 0]  # other seeds


def test_bench_feeds_respect_shape_and_batch() -> None:
    model = image_model(320, "batch")
    assert make_feeds(model, batch=4)["x"].shape == (4, 3, 320, 320)
    assert make_feeds(image_model(320, -1), shapes={"x": (2, 3, 320, 320)})["x"].shape == (2, 3, 320, 320)
    feeds = make_feeds(silero_like())
    assert feeds["sr"] == 16000 and _runs(silero_like(), feeds)


def test_kv_cache_dims_start_empty(tmp_path) -> None:
    """A causal LM's past key/values get length 0 (a prefill), not random cache contents."""
    import models
    from onnxcomp.checking.generated import runnable_inputs

    path = models.export("decoder_kv", tmp_path / "kv.onnx", small=True, seq_len=4)
    model = onnx.load(str(path))
    plan = candidate_plans(model)[0]
    assert plan.sizes["past"] == 0 and plan.roles["past"] == "cache"
    feeds = runnable_inputs(model, count=2)
    pasts = [k for k in feeds[0] if k.startswith("past_key_values")]
    assert pasts and all(f[k].shape[2] == 0 for f in feeds for k in pasts)
    assert all(f["input_ids"].shape[1] > 0 for f in feeds)
