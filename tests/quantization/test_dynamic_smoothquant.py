"""Transformer path: dynamic MatMul quantization, SmoothQuant exactness and benefit."""

from __future__ import annotations

import numpy as np

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.quantization.collect import collect_stats
from onnxcomp.quantization.rules import DYNAMIC_RULES, RuleOptions, build_plan
from onnxcomp.quantization.smoothquant import find_sites, smooth

from quant_testutil import calib, encoder_model, ops, optimized_ops, outputs, run_pass


def test_auto_mode_picks_dynamic_and_keeps_softmax_layernorm_float():
    model = encoder_model()
    q, res = run_pass(model, calib(model, n=4), target_cosine=None, min_weight_size=0)
    assert res.modified and res.stats["mode"] == "dynamic"
    c = ops(q)
    assert c["MatMulInteger"] == 4  # q, k, v, o projections
    assert c["MatMul"] == 2  # attention products stay float
    assert c["DynamicQuantizeLinear"] == 2  # one shared by q/k/v (same input), one for o
    assert c["LayerNormalization"] == 1 and c["Softmax"] == 1 and "QuantizeLinear" not in c
    fused = optimized_ops(q)
    assert fused["MatMulInteger"] == 0  # onnxruntime fused every integer MatMul
    assert fused["DynamicQuantizeMatMul"] + fused["MatMulIntegerToFloat"] == 4


def test_min_weight_size_declines_small_layers():
    model = encoder_model(hidden=16)
    q, res = run_pass(model, calib(model, n=4), target_cosine=None, min_weight_size=1000)
    assert not res.modified and "MatMulInteger" not in ops(q)


def _smoothed(model, alpha=0.5):
    graph, meta = to_graph(model)
    plan = build_plan(graph, DYNAMIC_RULES, RuleOptions(min_weight_size=0), opset=17)
    sites = find_sites(plan.dynamic)
    data = CalibrationData.from_source(calib(model, n=4), model)
    names = [s.tensor.name for s in sites]
    st = collect_stats(model, data, names, channel_stats=names)
    n = smooth(graph, sites, st, alpha)
    graph.cleanup().toposort()
    return to_model(graph, meta), n


def test_smoothing_is_exact_in_float():
    model = encoder_model(outliers=50.0)
    sm, n = _smoothed(model)
    assert n >= 1
    feeds = {"x": calib(model, n=2, seed=5)["x"]}
    np.testing.assert_allclose(outputs(sm, feeds)[0], outputs(model, feeds)[0], rtol=1e-4, atol=1e-4)
    # Folded into the LayerNorm (its output feeds only the smoothed projections): no Mul.
    assert ops(sm) == ops(model)


def test_smoothing_skips_activations_without_outliers():
    model = encoder_model(outliers=0.0)
    _, n = _smoothed(model)
    assert n == 0


def test_smoothquant_reduces_error_with_outlier_channels():
    model = encoder_model(outliers=60.0)
    data = calib(model, n=8)
    feeds = {"x": calib(model, n=2, seed=9)["x"]}
    ref = outputs(model, feeds)[0]
    errs = {}
    for alpha in (0.0, 0.5):
        q, res = run_pass(model, data, target_cosine=None, min_weight_size=0, smoothquant_alpha=alpha)
        errs[alpha] = float(np.mean((outputs(q, feeds)[0] - ref) ** 2))
    assert res.stats["smoothed_norms"] >= 1
    assert errs[0.5] < 0.5 * errs[0.0]


def test_static_mode_on_encoder_quantizes_only_weight_matmuls():
    model = encoder_model()
    q, res = run_pass(model, calib(model, n=4), mode="static", target_cosine=None, per_channel=False)
    # 4 projections; the residual Add reads the encoder input, which nothing else quantizes,
    # so it stays float (an integer Add would need a Q of its own there).
    assert res.stats["mode"] == "static" and res.stats["layers_quantized"] == 4
    fused = optimized_ops(q)
    # Projections run as QLinearMatMul; scores/context (activation x activation) stay float.
    assert fused["QLinearMatMul"] == 4
    assert fused["Softmax"] == 1 and fused["QLinearSoftmax"] == 0
