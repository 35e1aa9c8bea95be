"""quantize-int8 on what real exports look like: old opsets, Clip bounds from Constant
nodes, BatchNormalization left in, Concats of very different ranges (a detector head)."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from quant_testutil import (
    _w,
    calib,
    cosine,
    make_model,
    ops,
    optimized_ops,
    outputs,
    run_pass,
)

from onnxcomp.errors import UsageError


def _cli(tmp_path, model: onnx.ModelProto, *args: str):
    from onnxcomp.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    np.savez(tmp_path / "cal.npz", **calib(model))
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    r = CliRunner().invoke(
        main, ["optimize", str(src), *args, "--calibration-data", str(tmp_path / "cal.npz"), "-o", str(out), "--report", str(rep)]
    )
    assert r.exit_code == 0, r.output
    stats = next(p for p in json.loads(rep.read_text())["passes"] if p["name"] == "quantize-int8")["stats"]
    return onnx.load(out), stats, r.output


def relu6_model(opset: int = 17, constant_nodes: bool = True, batchnorm: bool = False) -> onnx.ModelProto:
    """x -> Conv [-> BatchNormalization] -> Clip(0, 6) -> Conv -> Clip(0, 6) -> y, the way a raw
    torchscript export writes ReLU6 (bounds from Constant nodes) when ``constant_nodes``."""
    rng = np.random.default_rng(0)
    inits = {"w1": _w(rng, 8, 3, 3, 3), "b1": _w(rng, 8), "w2": _w(rng, 8, 8, 1, 1), "b2": _w(rng, 8)}
    nodes, clip_in = [], "c1"
    if constant_nodes:
        nodes += [
            helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
            helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.array(6.0, np.float32))),
        ]
    else:
        inits.update(lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))
    nodes.append(helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    if batchnorm:
        inits.update(
            g=rng.uniform(0.5, 2, 8).astype(np.float32), be=_w(rng, 8), mu=_w(rng, 8), var=rng.uniform(0.5, 2, 8).astype(np.float32)
        )
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"], name="bn1"))
        clip_in = "n1"
    nodes += [
        helper.make_node("Clip", [clip_in, "lo", "hi"], ["r1"], name="relu6_1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["y"], name="relu6_2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        inits,
        opset=opset,
    )


@pytest.mark.parametrize("batchnorm", [False, True])
def test_clip_with_constant_node_bounds_folds_into_q_and_fuses(tmp_path, batchnorm):
    model = relu6_model(batchnorm=batchnorm)
    q, stats, _ = _cli(tmp_path, model, "-p", "quantize-int8:target_cosine=none")
    # The pass cleaned up itself: bounds became initializers, BN folded, Clips absorbed by Qs.
    assert ops(q)["Clip"] == 0 and ops(q)["Constant"] == 0 and ops(q)["BatchNormalization"] == 0
    assert stats["activations_folded"] == 2 and "fold-constants" in stats["cleanup_passes"]
    fused = optimized_ops(q)  # SessionOptions.optimized_model_filepath
    assert fused["QLinearConv"] == 2 and fused["Clip"] == 0 and fused["Conv"] == 0
    x = calib(model, n=4, seed=1)["x"][:1]
    assert cosine(outputs(model, {"x": x})[0], outputs(q, {"x": x})[0]) > 0.99


def test_clip_wider_than_the_calibrated_range_of_a_signed_q_is_kept():
    # int8 symmetric activations represent negatives: the Q cannot stand in for Clip(0, 6).
    model = relu6_model(constant_nodes=False)
    q, res = run_pass(model, calib(model), target_cosine=None, activation_type="int8", symmetric=True)
    assert ops(q)["Clip"] == 2 and res.stats["activations_folded"] == 0


def test_opset_11_model_is_converted_then_quantized(tmp_path, caplog):
    model = relu6_model(opset=11, constant_nodes=False)
    q, stats, _ = _cli(tmp_path, model, "-p", "quantize-int8:target_cosine=none")
    assert stats["opset_converted"] == "11 -> 13"
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert optimized_ops(q)["QLinearConv"] == 2
    # The conversion is said, not only recorded (the CLI shows the pass's warnings).
    logger = logging.getLogger("onnxcomp")
    caplog.set_level(logging.WARNING, logger="onnxcomp")
    logger.addHandler(caplog.handler)
    try:
        run_pass(model, calib(model), target_cosine=None)
    finally:
        logger.removeHandler(caplog.handler)
    assert "converted opset 11 → 13 for QDQ" in caplog.text


def test_failed_opset_conversion_is_one_clear_refusal(monkeypatch):
    def broken(model, target):
        raise RuntimeError("no adapter for op Foo\nmore detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", broken)
    model = relu6_model(opset=11, constant_nodes=False)
    with pytest.raises(UsageError, match=r"converting this model from opset 11 with onnx.version_converter failed: .*no adapter"):
        run_pass(model, calib(model))


def two_branch_concat_model(gain: float) -> onnx.ModelProto:
    """x -> Conv(w) -> a, x -> Conv(w * gain) -> b, Concat(a, b) -> y: ranges ``gain`` apart
    (a detector's box coordinates next to its class scores)."""
    rng = np.random.default_rng(0)
    w = _w(rng, 4, 3, 1, 1)
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="small"),
            helper.make_node("Conv", ["x", "w2"], ["b"], name="large"),
            helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        {"w1": w, "w2": w * np.float32(gain)},
    )


def _scale_of(model: onnx.ModelProto, tensor: str) -> float:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(inits[q.input[1]])


def test_concat_of_disparate_ranges_does_not_share_a_scale(tmp_path):
    model = two_branch_concat_model(300.0)
    q, stats, _ = _cli(tmp_path, model, "-p", "quantize-int8:target_cosine=none")
    assert stats["concats_float"] == 1
    assert _scale_of(q, "b") > 100 * _scale_of(q, "a")
    x = calib(model, n=4, seed=1)["x"][:1]
    ref, got = outputs(model, {"x": x})[0], outputs(q, {"x": x})[0]
    # The small half keeps its resolution (one shared scale would round it to a few levels).
    assert cosine(ref[:, :4], got[:, :4]) > 0.999


def test_concat_of_similar_ranges_still_shares_one_scale():
    model = two_branch_concat_model(2.0)
    q, res = run_pass(model, calib(model), target_cosine=None)
    assert res.stats["concats_float"] == 0
    assert _scale_of(q, "a") == _scale_of(q, "b")


def depthwise_model(gate: bool) -> onnx.ModelProto:
    """x -> Conv 3x3 -> Relu -> depthwise Conv 3x3 -> Relu [-> x * Sigmoid(x)] -> pointwise Conv -> y."""
    rng = np.random.default_rng(0)
    tail = [helper.make_node("Conv", ["r2", "wp"], ["y"], name="pointwise")]
    if gate:
        tail = [
            helper.make_node("Sigmoid", ["r2"], ["s"]),
            helper.make_node("Mul", ["r2", "s"], ["m"]),
            helper.make_node("Conv", ["m", "wp"], ["y"], name="pointwise"),
        ]
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="dense", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "wd"], ["c2"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["r2"]),
            *tail,
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        {"w1": _w(rng, 8, 3, 3, 3), "wd": _w(rng, 8, 1, 3, 3), "wp": _w(rng, 8, 8, 1, 1)},
    )


def _quantized_convs(model: onnx.ModelProto) -> set[str]:
    produced = {o for n in model.graph.node for o in n.output}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in produced}


def test_depthwise_conv_before_float_ops_stays_float_unless_asked():
    # onnxruntime's int8 depthwise kernel is slower than its float one on CPU; before a
    # float gate it would not even save a DQ/Q pair.
    model = depthwise_model(gate=True)
    q, res = run_pass(model, calib(model), target_cosine=None)
    assert _quantized_convs(q) == {"dense", "pointwise"} and res.stats["layers_quantized"] == 2
    q, res = run_pass(model, calib(model), target_cosine=None, quantize_depthwise=True)
    assert _quantized_convs(q) == {"dense", "depthwise", "pointwise"}


def test_depthwise_conv_inside_an_8bit_chain_is_quantized():
    model = depthwise_model(gate=False)
    q, _ = run_pass(model, calib(model), target_cosine=None)
    assert _quantized_convs(q) == {"dense", "depthwise", "pointwise"}
    fused = optimized_ops(q)
    assert fused["QLinearConv"] == 3 and fused["Conv"] == 0
