"""quantize-int8 on large models: planning reads no weight, one sample at a time, a ranked
fallback instead of a scan of every layer group, reference outputs within a byte budget."""

from __future__ import annotations

import numpy as np
from onnx_graphsurgeon.ir.tensor import LazyValues
from quant_testutil import calib, encoder_model, run_pass

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.ir.convert import to_graph
from onnxcomp.quantization.collect import collect_stats
from onnxcomp.quantization.proxy import (
    ActivationSamples,
    dynamic_dequantized,
    layer_error_energy,
)
from onnxcomp.quantization.rules import DYNAMIC_RULES, RuleOptions, build_plan
from onnxcomp.quantization.sensitivity import Score, ranked_fallback
from onnxcomp.quantization.smoothquant import (
    apply_smoothing,
    find_sites,
    smoothing_scales,
)


def _lazy_constants(graph):
    return {t.name: type(t._values) for t in graph.tensors().values() if hasattr(t, "_values") and t.shape and len(t.shape) == 2}


def test_planning_and_smoothing_scales_leave_weights_unloaded():
    model = encoder_model(outliers=50.0)
    graph, _ = to_graph(model)
    before = _lazy_constants(graph)
    assert before and all(issubclass(v, LazyValues) for v in before.values())
    plan = build_plan(graph, DYNAMIC_RULES, RuleOptions(min_weight_size=0), opset=17)
    sites = find_sites(plan.dynamic)
    data = CalibrationData.from_source(calib(model, n=4), model)
    names = [s.tensor.name for s in sites]
    scales = smoothing_scales(sites, collect_stats(model, data, names, channel_stats=names), 0.5)
    assert plan.dynamic and scales
    assert _lazy_constants(graph) == before  # rules and the scale search only peeked
    assert apply_smoothing(graph, sites, scales) == len(scales)


def test_dynamic_dequantized_replays_dynamicquantizelinear():
    x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    scale = 3.0 / 255
    zero = round(1.0 / scale)
    want = (np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale
    np.testing.assert_allclose(dynamic_dequantized(x, -1.0, 2.0), want, rtol=0, atol=1e-7)
    # A range that excludes 0 is widened to include it, as the operator does.
    assert dynamic_dequantized(np.array([1.0, 2.0], np.float32), 1.0, 2.0)[1] == np.float32(2.0)


def test_error_energy_ranks_the_layer_reading_outliers_first():
    model = encoder_model(outliers=50.0)
    graph, _ = to_graph(model)
    plan = build_plan(graph, DYNAMIC_RULES, RuleOptions(min_weight_size=0), opset=17)
    sites = find_sites(plan.dynamic)
    names = [s.tensor.name for s in sites]
    samples = ActivationSamples(rows=8)
    data = CalibrationData.from_source(calib(model, n=4), model, batch_size=1)
    kept: list = []
    collect_stats(model, data, names, keep_outputs=2, kept=kept, samples=samples)
    assert len(samples.runs) == len(kept) == 2
    inputs = {n.name: s.tensor.name for s in sites for n in s.layers}
    energy = layer_error_energy(plan.dynamic, inputs, samples)
    assert set(energy) == {n.name for n in plan.dynamic} and all(e >= 0 for e in energy.values())
    # q/k/v read the LayerNorm output with outlier channels; o reads the attention output.
    outlier_site = next(s for s in sites if len(s.layers) == 3)
    worst = max(energy, key=energy.get)
    assert worst in {n.name for n in outlier_site.layers}
    # SmoothQuant moves the outliers into the weights: the same layers then add less error.
    st = collect_stats(model, data, names, channel_stats=names)
    scales = smoothing_scales(sites, st, 0.5)
    apply_smoothing(graph, sites, scales)
    smoothed = layer_error_energy(plan.dynamic, inputs, samples, scales=scales)
    assert sum(smoothed[n.name] for n in outlier_site.layers) < sum(energy[n.name] for n in outlier_site.layers)


class _FakeEvaluator:
    """Cosine drops by 0.01 for every harmful layer left 8-bit."""

    def __init__(self, harmful: set[str]) -> None:
        self.harmful = harmful
        self.calls = 0

    def score(self, excluded: frozenset[str]) -> Score:
        self.calls += 1
        return Score(1.0 - 0.01 * len(self.harmful - excluded), 0.0)


def test_ranked_fallback_finds_the_fewest_leading_layers_in_log_candidates():
    order = [f"l{i}" for i in range(100)]
    for need in (1, 5, 13, 40):
        ev = _FakeEvaluator(set(order[:need]))
        fb = ranked_fallback(order, frozenset, ev, target_cosine=0.995, target_max_abs=None, max_layers=80)
        assert fb.met and order[:need] == sorted(fb.excluded, key=order.index)[:need]
        assert need <= len(fb.excluded) <= need + max(1, need // 8)  # bisection to within an eighth
        assert fb.candidates == ev.calls <= 2 * int(np.log2(need)) + 3
    ev = _FakeEvaluator(set(order[:90]))
    fb = ranked_fallback(order, frozenset, ev, target_cosine=0.995, target_max_abs=None, max_layers=80)
    assert not fb.met and len(fb.excluded) == 80


def test_collect_stats_keeps_reference_outputs_within_a_byte_budget():
    model = encoder_model()
    data = CalibrationData.from_source(calib(model, n=8), model, batch_size=1)
    kept: list = []
    collect_stats(model, data, [], keep_outputs=6, kept=kept, keep_bytes=1)
    assert len(kept) == 1  # the first is always kept
    kept = []
    collect_stats(model, data, [], keep_outputs=6, kept=kept)
    assert len(kept) == 6 and all(k["outputs"][next(iter(k["outputs"]))].flags.owndata for k in kept)


def test_rebatched_keeps_the_samples_and_a_fixed_batch():
    model = encoder_model()
    data = CalibrationData.from_source(calib(model, n=8), model)
    one = data.rebatched(1)
    assert one.batch_size == 1 and one.num_samples == data.num_samples == 8
    assert sum(data.samples_in(f) for f in one) == 8 and len(list(one)) == 8


def test_dynamic_fallback_is_ranked_and_meets_the_target():
    model = encoder_model(outliers=50.0)
    _, res = run_pass(model, calib(model, n=8), target_cosine=0.99999, min_weight_size=0, smoothquant_alpha=0.5)
    st = res.stats
    assert st["mode"] == "dynamic" and st["layers_float"] >= 1
    # Ranked: doubling (1, 2, 4) and bisection (3) after the all-8-bit candidate; a scan
    # of the 4 layers one by one would cost 4 candidates before the first fallback.
    assert st["candidates"] <= 5
    assert st["target_met"] and st["estimated_cosine"] >= 0.99999
