"""The quantize-int8 pass end to end: errors, options, fallback loop, pipeline, CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import onnxcomp
from onnxcomp.errors import UsageError
from onnxcomp.pipeline.registry import instantiate
from onnxcomp.passes.quantize_int8 import NEEDS_DATA, QuantizeInt8Options
from onnxcomp.quantization.calibrators import TensorStats
from onnxcomp.quantization.collect import collect_stats
from onnxcomp.quantization.sensitivity import group_layers

from quant_testutil import calib, conv_relu_concat_model, cosine, make_model, ops, outputs, run_pass


def test_needs_calibration_data():
    with pytest.raises(UsageError, match="needs --calibration-data"):
        run_pass(conv_relu_concat_model(), None)
    assert "'random'" in NEEDS_DATA


@pytest.mark.parametrize(
    "spec", ["quantize-int8:calibrator=kl", "quantize-int8:target_cosine=2", "quantize-int8:smoothquant_alpha=1.5", "quantize-int8:eval_batches=0"]
)
def test_bad_options_are_usage_errors(spec):
    with pytest.raises(UsageError):
        instantiate(spec)


def test_options_parse_from_text():
    p = instantiate("quantize-int8:calibrator=entropy,exclude=[conv1,Gemm],target_cosine=none,activation_type=int8,symmetric=true")
    o = p.options
    assert isinstance(o, QuantizeInt8Options)
    assert o.calibrator == "entropy" and o.exclude == ("conv1", "Gemm") and o.target_cosine is None
    assert o.activation_type == "int8" and o.symmetric


@pytest.mark.parametrize("calibrator", ["minmax", "percentile", "entropy", "mse"])
def test_every_calibrator_gives_a_valid_faithful_model(calibrator):
    model = conv_relu_concat_model()
    q, res = run_pass(model, calib(model), calibrator=calibrator, target_cosine=None)
    feeds = {"x": calib(model, n=1, seed=3)["x"]}
    assert cosine(outputs(model, feeds)[0], outputs(q, feeds)[0]) > 0.98


def test_int8_symmetric_activations():
    model = conv_relu_concat_model()
    q, _ = run_pass(model, calib(model), activation_type="int8", symmetric=True, target_cosine=None)
    zps = [t for t in q.graph.initializer if t.name.endswith("_zero_point") and t.data_type == TensorProto.INT8]
    assert zps and all(not onnx.numpy_helper.to_array(t).any() for t in zps)


def _sensitive_model() -> onnx.ModelProto:
    """Three Conv layers; the middle one sees a tensor with a huge, rare outlier channel,
    so quantizing its input wrecks the output while the others quantize well."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 2, 1, 1)) * 0.5).astype(np.float32)
    w1[0] *= 400.0  # one channel 400x larger
    w2 = (rng.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32)
    w2[:, 0] /= 400.0  # ... compensated by the next layer, so the float output is tame
    w3 = (rng.standard_normal((3, 4, 1, 1)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Conv", ["a", "w2"], ["b"], name="c2"),
        helper.make_node("Conv", ["b", "w3"], ["y"], name="c3"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        {"w1": w1, "w2": w2, "w3": w3},
    )


def test_fallback_loop_meets_target_by_keeping_sensitive_layers_float():
    model = _sensitive_model()
    data = calib(model, n=8)
    _, res_all = run_pass(model, data, target_cosine=None)
    q, res = run_pass(model, data, target_cosine=0.999, eval_batches=8)
    assert res_all.stats["layers_quantized"] == 3
    assert res.stats["target_met"] is True
    assert 1 <= res.stats["layers_float"] < 3
    assert res.stats["estimated_cosine"] >= 0.999
    feeds = {k: v[:8] for k, v in data.items()}
    ref = np.concatenate([outputs(model, {"x": feeds["x"][i : i + 1]})[0] for i in range(8)])
    got = np.concatenate([outputs(q, {"x": feeds["x"][i : i + 1]})[0] for i in range(8)])
    assert cosine(ref, got) >= 0.999


def test_max_error_target():
    model = _sensitive_model()
    _, res = run_pass(model, calib(model, n=8), target_cosine=None, target_max_abs=1e-6, max_fallback=1)
    # Unreachable within one fallback group: reported, not hidden.
    assert res.stats["target_met"] is False and res.stats["layers_float"] == 1
    _, res = run_pass(model, calib(model, n=8), target_cosine=None, target_max_abs=1e-6)
    assert res.stats["target_met"] is True and res.stats["layers_quantized"] == 0
    assert not res.modified  # everything fell back: the graph is unchanged


def test_group_layers_is_bounded_and_ordered():
    layers = [f"l{i}" for i in range(10)]
    groups = group_layers(layers, 4)
    assert len(groups) == 4 and [x for g in groups for x in g] == layers
    assert group_layers(layers[:2], 4) == [("l0",), ("l1",)]


def test_collector_streams_many_batches_into_bounded_stats():
    model = conv_relu_concat_model()
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(40)]
    st = collect_stats(model, iter(batches), ["x", "r1"], histogram=True)
    allx = np.concatenate([b["x"] for b in batches])
    assert st["x"].min == float(allx.min()) and st["x"].max == float(allx.max())
    assert isinstance(st["r1"], TensorStats) and st["r1"].hist.sum() == st["r1"].count == 40 * 8 * 64
    assert st["r1"].min >= 0.0


def test_pipeline_preset_int8_verifies_and_writes(tmp_path):
    model = conv_relu_concat_model()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    np.savez(tmp_path / "cal.npz", **calib(model))
    out, report = onnxcomp.optimize(str(src), preset="int8", calibration_data=str(tmp_path / "cal.npz"), output=str(tmp_path / "q.onnx"))
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"), full_check=True)
    row = next(p for p in report.passes if p.name == "quantize-int8")
    assert row.modified and row.fidelity["cosine"] > 0.99
    assert ops(out)["QuantizeLinear"] >= 4


def test_cli_without_calibration_data_is_one_line_exit_2(tmp_path):
    from onnxcomp.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(conv_relu_concat_model(), src)
    r = CliRunner().invoke(main, ["optimize", str(src), "-p", "quantize-int8"])
    assert r.exit_code == 2
    assert "needs --calibration-data" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m.opt.onnx").exists()


def _outlier_model_and_data() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv -> Relu -> Conv whose input, in one calibration sample (not a scoring one),
    has a single value 100x the rest: min/max spends most of the 8-bit range on it."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="c2"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        {"w1": w1, "w2": w2},
    )
    data = calib(model, n=16)
    data["x"][-1, 0, 5, 5] = 100.0
    return model, data


def test_missed_target_tries_other_calibrators_before_float_fallback():
    model, data = _outlier_model_and_data()
    _, res_mm = run_pass(model, data, target_cosine=0.0, target_margin=0.0)
    _, res = run_pass(model, data, target_cosine=0.99)
    # min/max alone misses the target ...
    assert res_mm.stats["estimated_cosine"] < 0.99 and res_mm.stats["calibrator"] == "minmax"
    # ... a clipping calibrator meets it with every layer 8-bit: no float island.
    assert res.stats["calibrator"] != "minmax" and res.stats["target_met"] is True
    assert res.stats["layers_float"] == 0 and res.stats["layers_quantized"] == res_mm.stats["layers_quantized"]
    assert res.stats["estimated_cosine"] >= 0.992


def test_missing_only_the_margin_keeps_every_layer_8bit():
    model = _sensitive_model()
    data = calib(model, n=8)
    _, probe = run_pass(model, data, target_cosine=0.0, eval_batches=8, calibrator="mse")
    c = probe.stats["estimated_cosine"]
    assert c < 0.999  # the middle layer is sensitive: a float fallback would gain cosine
    # Target met on the scoring batches, margin missed: no float layer is bought for it.
    _, res = run_pass(model, data, target_cosine=c - 1e-4, target_margin=0.99, eval_batches=8, calibrator="mse")
    assert res.stats["layers_float"] == 0 and res.stats["target_met"] is True
    # The target itself missed: the fallback runs as before.
    _, res = run_pass(model, data, target_cosine=0.999, eval_batches=8, calibrator="mse")
    assert res.stats["layers_float"] >= 1 and res.stats["target_met"] is True


def test_layer_costs_count_multiply_accumulates():
    from onnxcomp.ir import to_graph
    from onnxcomp.quantization import layer_costs

    model = onnx.shape_inference.infer_shapes(conv_relu_concat_model())
    graph, _ = to_graph(model)
    costs = layer_costs(graph, ["conv1", "conv2", "conv3", "fc"])
    assert costs["conv1"] == 8 * 8 * 8 * (3 * 3 * 3)  # output elements x weights per output channel
    assert costs["conv2"] == 4 * 8 * 8 * (8 * 3 * 3)
    assert costs["conv3"] == 4 * 8 * 8 * 8
    assert costs["fc"] == 10 * 512


def test_fallback_reports_the_float_compute_share():
    model = _sensitive_model()
    _, res = run_pass(model, calib(model, n=8), target_cosine=0.999, eval_batches=8)
    assert res.stats["layers_float"] >= 1
    # Three 1x1 convs on the same spatial size: a float layer counts its share of their MACs.
    assert 0.0 < res.stats["float_compute_share"] < 1.0
