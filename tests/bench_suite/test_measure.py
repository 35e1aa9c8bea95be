"""Cost, fidelity and interleaved timing of the suite on two tiny ONNX models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from suite_config import ModelSetting, make_config
from suite_measure import cost_of, fidelity_of, time_interleaved


def _matmul_model(path, w: np.ndarray) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, w.shape[1]])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_cost_fidelity_and_timing(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    _matmul_model(ref, w)
    _matmul_model(cand, w + 0.5 * rng.standard_normal(w.shape).astype(np.float32))
    data = tmp_path / "eval.npz"
    x = rng.standard_normal((8, 4)).astype(np.float32)
    labels = (x @ w).argmax(1)
    np.savez(data, x=x, label=labels)

    cost = cost_of(ref)
    assert (cost.params, cost.flops, cost.nodes) == (12, 2 * 2 * 4 * 3, 1)
    assert not cost.flops_partial and cost.size_bytes == ref.stat().st_size

    cfg = replace(make_config(quick=True), warmup=1, duration_s=0.05, min_rounds=3)
    st = ModelSetting("tiny", batch=2, eval_samples=8)
    same = fidelity_of(ref, ref, st, data, cfg)
    assert same.cosine == 1.0 and same.samples == 8 and same.accuracy == 1.0 == same.accuracy_reference
    diff = fidelity_of(ref, cand, st, data, cfg)
    assert 0.0 < diff.cosine < 0.9999 and diff.max_abs_diff > 0

    timings, cond = time_interleaved([ref, cand], st, data, cfg)
    assert len(timings) == 2 and timings[0].latency_ratio == 1.0
    assert timings[1].latency_ratio > 0 and timings[1].rounds >= 3
    assert cond["threads"] == 2 and cond["input_shapes"] == {"x": [2, 4]}


def test_a_candidate_with_different_output_shapes_is_an_error(tmp_path):
    rng = np.random.default_rng(1)
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    _matmul_model(ref, rng.standard_normal((4, 3)).astype(np.float32))
    _matmul_model(cand, rng.standard_normal((4, 2)).astype(np.float32))  # e.g. a pruned classifier
    data = tmp_path / "eval.npz"
    np.savez(data, x=rng.standard_normal((4, 4)).astype(np.float32))
    cfg = make_config(quick=True)
    with pytest.raises(ValueError, match="shape"):
        fidelity_of(ref, cand, ModelSetting("tiny", batch=2, eval_samples=4), data, cfg)
