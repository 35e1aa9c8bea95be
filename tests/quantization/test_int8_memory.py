"""quantize-int8's memory on large LMs: no second layout of a tied table, SmoothQuant's
weights computed when quantized, reference outputs in files."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from onnx_graphsurgeon.ir.tensor import LazyValues
from quant_testutil import calib, encoder_model, make_model, ops, outputs, run_pass

import onnxcomp.checking.verify as verify_mod
from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.checking.verify import OutputStore
from onnxcomp.cli import main
from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.quantization import fold_weights, materialize, weight_params
from onnxcomp.quantization.collect import collect_stats
from onnxcomp.quantization.rules import DYNAMIC_RULES, RuleOptions, build_plan
from onnxcomp.quantization.sensitivity import Evaluator
from onnxcomp.quantization.smoothquant import (
    apply_smoothing,
    find_sites,
    smoothing_scales,
)


def _smoothing(model: onnx.ModelProto, defer: bool) -> tuple[gs.Graph, object, list[str]]:
    graph, meta = to_graph(model)
    plan = build_plan(graph, DYNAMIC_RULES, RuleOptions(min_weight_size=0), opset=17)
    sites = find_sites(plan.dynamic)
    names = [s.tensor.name for s in sites]
    data = CalibrationData.from_source(calib(model, n=4), model)
    scales = smoothing_scales(sites, collect_stats(model, data, names, channel_stats=names), 0.5)
    assert apply_smoothing(graph, sites, scales, defer=defer) == len(scales) >= 1
    return graph, meta, [n.name for n in plan.dynamic]


def _quantized_weights(graph: gs.Graph) -> dict[str, np.ndarray]:
    plan = build_plan(graph, DYNAMIC_RULES, RuleOptions(min_weight_size=0), opset=17)
    materialize(graph, plan, {}, weight_params(plan, graph.tensors()))
    return {t.name: np.asarray(t.values) for t in graph.tensors().values()
            if isinstance(t, gs.Constant) and np.dtype(t.dtype) == np.int8 and t.values.ndim == 2}


def test_deferred_smoothing_reads_no_weight_and_quantizes_identically():
    model = encoder_model(outliers=50.0)
    eager, meta, layers = _smoothing(model, defer=False)
    lazy, _, _ = _smoothing(model, defer=True)
    # q/k/v read the LayerNorm with outliers: their weights stay the input's (lazy)
    # constants, behind one Mul(w, s) per layer.
    weights = [n.inputs[1] for n in lazy.nodes if n.name in layers and not isinstance(n.inputs[1], gs.Constant)]
    assert len(weights) == 3 == sum("_smoothed_" in n.inputs[1].name for n in eager.nodes if n.name in layers)
    assert all(w.inputs[0].op == "Mul" and isinstance(w.inputs[0].inputs[0]._values, LazyValues) for w in weights)
    # Exact in float, and the same int8 weights as rescaled arrays give.
    feeds = {"x": calib(model, n=2, seed=5)["x"]}
    np.testing.assert_array_equal(outputs(to_model(lazy.copy(), meta), feeds)[0], outputs(to_model(eager.copy(), meta), feeds)[0])
    want, got = _quantized_weights(eager), _quantized_weights(lazy)
    assert len(want) == 4 and want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_fold_weights_makes_a_float_layers_computed_weight_a_constant():
    model = encoder_model(outliers=50.0)
    eager, _, layers = _smoothing(model, defer=False)
    lazy, _, _ = _smoothing(model, defer=True)
    layer = layers[0]
    assert fold_weights(lazy, [layer]) == 1
    node = next(n for n in lazy.nodes if n.name == layer)
    want = next(n for n in eager.nodes if n.name == layer).inputs[1]
    assert isinstance(node.inputs[1], gs.Constant) and node.inputs[1].name == want.name
    np.testing.assert_array_equal(node.inputs[1].values, want.values)


def test_float_fallback_leaves_no_computed_weight_in_the_result():
    model = encoder_model(outliers=50.0)
    q, res = run_pass(model, calib(model, n=8), target_cosine=0.99999, min_weight_size=0, smoothquant_alpha=0.5)
    assert res.stats["layers_float"] >= 1 and res.stats["smoothed_norms"] >= 1
    inits = {t.name for t in q.graph.initializer}
    float_layers = [n for n in q.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(float_layers) == res.stats["layers_float"]
    assert ops(q)["Mul"] == 2 * ops(q)["MatMulInteger"]  # only the dynamic pattern's scale Muls


def _tied_lm(vocab: int = 4096, hidden: int = 96) -> onnx.ModelProto:
    """ids -> Gather(table) -> LayerNorm -> MLP -> LayerNorm -> MatMul(., Transpose(table)):
    a 1.5 MB table (over fold-constants' 1 MB) shared by the embedding and the output projection."""
    rng = np.random.default_rng(0)
    inits = {
        "table": (rng.standard_normal((vocab, hidden)) * 0.5).astype(np.float32),
        "g": np.ones(hidden, np.float32), "b": np.zeros(hidden, np.float32),
        "w1": (rng.standard_normal((hidden, 4 * hidden)) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((4 * hidden, hidden)) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("LayerNormalization", ["e", "g", "b"], ["n1"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["n1", "w1"], ["h1"], name="up"),
        helper.make_node("Relu", ["h1"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "w2"], ["h2"], name="down"),
        helper.make_node("Add", ["h2", "e"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "g", "b"], ["n2"], name="ln2", axis=-1),
        helper.make_node("Transpose", ["table"], ["table_t"], name="tie", perm=[1, 0]),
        helper.make_node("MatMul", ["n2", "table_t"], ["logits"], name="head"),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 16, vocab])], inits,
    )


def test_presets_keep_a_tied_table_once_and_int8_quantizes_its_output_projection(tmp_path):
    model = _tied_lm()
    src = tmp_path / "lm.onnx"
    onnx.save(model, src)
    ids = np.random.default_rng(1).integers(0, 4096, size=(8, 16), dtype=np.int64)
    np.savez(tmp_path / "cal.npz", ids=ids)
    table_bytes = 4096 * 96 * 4

    lossless = tmp_path / "lossless.onnx"
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(lossless)])
    assert r.exit_code == 0, r.output
    out = onnx.load(str(lossless))
    assert ops(out)["Transpose"] == 1 and lossless.stat().st_size < 1.5 * table_bytes  # one copy of the table

    int8 = tmp_path / "int8.onnx"
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(int8), "--preset", "int8",
                                  "-p", "quantize-int8:target_cosine=none", "--calibration-data", str(tmp_path / "cal.npz")])
    assert r.exit_code == 0, r.output
    q = onnx.load(str(int8))
    assert ops(q)["MatMulInteger"] == 3  # up, down, and the tied head
    head = next(n for n in q.graph.node if n.op_type == "MatMulInteger" and n.output[0].startswith("head"))
    w = next(t for t in q.graph.initializer if t.name == head.input[1])
    assert w.data_type == TensorProto.INT8 and list(w.dims) == [96, 4096]
    assert not [t.name for t in q.graph.initializer if t.data_type == TensorProto.FLOAT and np.prod(t.dims) >= 4096 * 96]
    assert "Transpose" not in ops(q)


def test_reference_outputs_spill_to_files_and_score_the_same(monkeypatch: pytest.MonkeyPatch, tmp_path):
    model = encoder_model(outliers=50.0)
    data = CalibrationData.from_source(calib(model, n=6), model, batch_size=1)
    kept: list = []
    collect_stats(model, data, [], keep_outputs=4, kept=kept)
    monkeypatch.setattr(verify_mod, "SPILL_BYTES", 1)  # every batch's outputs go to a file
    store = OutputStore(tmp_path)
    spilled: list = []
    collect_stats(model, data, [], keep_outputs=4, kept=spilled, outputs_to=store)
    assert len(store) == len(spilled) == 4 and all(set(k) == {"feeds"} for k in spilled)
    assert len(list(tmp_path.rglob("*.npy"))) == 4
    for a, b in zip(store, kept):
        np.testing.assert_array_equal(a["y"], b["outputs"]["y"])
    # A budget still stops keeping (the first batch is always kept).
    store2 = OutputStore(tmp_path)
    collect_stats(model, data, [], keep_outputs=4, kept=[], outputs_to=store2, keep_bytes=1)
    assert len(store2) == 1
    # The fallback scores against the files exactly as against arrays in memory.
    q, _ = run_pass(model, calib(model, n=8), target_cosine=None, min_weight_size=0)
    feeds = [k["feeds"] for k in kept]
    in_memory = Evaluator(None, feeds, [k["outputs"] for k in kept]).score(q)
    assert Evaluator(None, feeds, store).score(q) == in_memory and in_memory.cosine < 1.0
