"""Tests of `fold-constants`."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from lossless_testutil import assert_same_outputs, ops, parse, run_pass

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def test_folds_constant_chain_with_one_onnxruntime_run() -> None:
    m = parse(HEADER + """
    g (float[2,3] x) => (float[2,3] y) {
      c = Constant<value = float[3] {1, 4, 9}>()
      d = Sqrt(c)
      e = Exp(d)
      y = Add(x, e)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified
    assert ops(out) == {"Add": 1}
    assert res.stats["onnxruntime_runs"] == 1  # Sqrt and Exp evaluated in ONE session
    assert res.stats["nodes_folded"] == 3
    assert_same_outputs(m, out)


def test_static_shape_chain_folds_to_constant_reshape() -> None:
    m = parse(HEADER + """
    g (float[2,3,4] x) => (float[6,4] y) {
      s = Shape(x)
      i0 = Constant<value = int64 {0}>()
      i1 = Constant<value = int64 {1}>()
      a = Gather<axis = 0>(s, i0)
      b = Gather<axis = 0>(s, i1)
      ab = Mul(a, b)
      z = Constant<value = int64[1] {0}>()
      u = Unsqueeze(ab, z)
      m1 = Constant<value = int64[1] {-1}>()
      shp = Concat<axis = 0>(u, m1)
      y = Reshape(x, shp)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified and res.stats["shape_nodes_folded"] == 1
    assert ops(out) == {"Reshape": 1}
    shape_init = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    assert [list(v) for v in shape_init.values()] == [[6, -1]]
    assert_same_outputs(m, out)


def test_symbolic_shape_is_not_folded() -> None:
    m = parse(HEADER + """
    g (float[N,3] x) => (int64[2] y) {
      s = Shape(x)
      y = Identity(s)
    }""")
    m2 = parse(HEADER + """
    g (float[N,3] x) => (float[N,3] y) {
      s = Shape(x)
      y = Reshape(x, s)
    }""")
    _, res = run_pass(m, "fold-constants")
    out2, res2 = run_pass(m2, "fold-constants")
    assert not res.modified and not res2.modified
    assert ops(out2) == {"Shape": 1, "Reshape": 1}


def test_constant_node_becomes_initializer() -> None:
    m = parse(HEADER + """
    g (float[3] x) => (float[3] y) {
      c = Constant<value_floats = [1.0, 2.0, 3.0]>()
      y = Mul(x, c)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified and ops(out) == {"Mul": 1}
    assert len(out.graph.initializer) == 1
    assert_same_outputs(m, out)


def test_size_limit_blocks_huge_constant_of_shape_and_expand() -> None:
    m = parse(HEADER + """
    g (float[4] x) => (float[4] y, float[1000,1000] big, float[1000,1000] big2) {
      s = Constant<value = int64[2] {1000, 1000}>()
      big = ConstantOfShape<value = float[1] {1.0}>(s)
      one = Constant<value = float[1] {2.0}>()
      big2 = Expand(one, s)
      y = Relu(x)
    }""")
    # Graph outputs are never folded, so route them through a consumer to test the limit.
    m.graph.node[1].output[0] = "bigc"
    m.graph.node[3].output[0] = "big2c"
    m.graph.node.extend([
        onnx.helper.make_node("Identity", ["bigc"], ["big"]),
        onnx.helper.make_node("Identity", ["big2c"], ["big2"]),
    ])
    onnx.checker.check_model(m, full_check=True)
    out, res = run_pass(m, "fold-constants")
    assert res.stats["declined_too_large"] == 2
    assert ops(out)["ConstantOfShape"] == 1 and ops(out)["Expand"] == 1
    assert sum(int(np.prod(t.dims)) for t in out.graph.initializer) < 1000  # nothing big materialised
    out_big, res_big = run_pass(m, "fold-constants", max_size_bytes=8 << 20)
    assert "ConstantOfShape" not in ops(out_big) and "Expand" not in ops(out_big)


def test_size_limit_blocks_an_oversized_onnxruntime_node_before_it_runs() -> None:
    """MatMul has no numpy rule: its output size comes from shape inference on the batch."""
    m = parse(HEADER + """
    g (float[1000,1000] x) => (float[1000,1000] y) {
      sa = Constant<value = int64[2] {1000, 1}>()
      a = ConstantOfShape<value = float[1] {0.5}>(sa)
      sb = Constant<value = int64[2] {1, 1000}>()
      b = ConstantOfShape<value = float[1] {2.0}>(sb)
      mm = MatMul(a, b)
      y = Add(x, mm)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.stats["declined_too_large"] == 1
    assert res.stats["onnxruntime_runs"] == 0  # dropped from the batch, never evaluated
    assert ops(out) == {"MatMul": 1, "Add": 1}
    out_big, res_big = run_pass(m, "fold-constants", max_size_bytes=8 << 20)
    assert res_big.stats["onnxruntime_runs"] == 1 and ops(out_big) == {"Add": 1}
    assert_same_outputs(m, out_big)


def test_random_ops_are_never_folded() -> None:
    m = parse(HEADER + """
    g (float[2,3] x) => (float[2,3] y) {
      r = RandomNormal<shape = [2, 3], seed = 1.0>()
      y = Add(x, r)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert not res.modified
    assert ops(out) == {"RandomNormal": 1, "Add": 1}


def test_custom_domain_is_left_alone() -> None:
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>
    g (float[3] x) => (float[3] y) {
      c = Constant<value = float[3] {1, 2, 3}>()
      d = my.domain.Thing(c)
      y = Add(x, d)
    }""")
    out, res = run_pass_nocheck(m)
    assert any(n.op_type == "Thing" for n in out.graph.node)
    assert res.stats["nodes_folded"] == 1  # only the Constant node


def run_pass_nocheck(model: onnx.ModelProto):
    from onnxcomp.ir.convert import to_graph, to_model
    from onnxcomp.pipeline.pass_api import PassContext
    from onnxcomp.pipeline.registry import instantiate

    graph, meta = to_graph(model)
    res = instantiate("fold-constants").run(graph, PassContext(original_model=model, meta=meta))
    return to_model(graph, meta), res


def test_graph_output_produced_by_constant_subgraph_is_kept() -> None:
    m = parse(HEADER + """
    g (float[2] x) => (float[2] y, float[2] k) {
      c = Constant<value = float[2] {1, 2}>()
      k = Neg(c)
      y = Relu(x)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert [o.name for o in out.graph.output] == ["y", "k"]
    assert "Neg" in ops(out)  # a graph output stays computed by a node
    assert_same_outputs(m, out)


def test_integer_div_and_slice_semantics_match_onnxruntime() -> None:
    m = parse(HEADER + """
    g (int64[4] x) => (int64[4] y) {
      a = Constant<value = int64[4] {-7, 7, -8, 9}>()
      b = Constant<value = int64[4] {2, -2, 3, 4}>()
      q = Div(a, b)
      st = Constant<value = int64[1] {-1}>()
      en = Constant<value = int64[1] {-100}>()
      ax = Constant<value = int64[1] {0}>()
      sp = Constant<value = int64[1] {-1}>()
      r = Slice(q, st, en, ax, sp)
      y = Add(x, r)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert ops(out) == {"Add": 1}
    assert_same_outputs(m, out, feeds={"x": np.zeros(4, np.int64)})


def test_if_bodies_fold_but_keep_their_outputs() -> None:
    m = parse(HEADER + """
    g (bool c, float[2] x) => (float[2] y) {
      k = Constant<value = float[2] {1, 2}>()
      kk = Mul(k, k)
      y = If(c) <
        then_branch = t () => (float[2] a) { inner = Constant<value = float[2] {3, 4}>()
                                             a = Add(kk, inner) },
        else_branch = e () => (float[2] b) { b = Sub(x, kk) }
      >
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified
    assert ops(out) == {"If": 1}
    then = out.graph.node[0].attribute[0].g
    # The body's Constant became a body initializer; the Add writes the body's output and
    # stays (though its inputs are constants now), like a node writing a graph output.
    assert [n.op_type for n in then.node] == ["Add"]
    assert "inner" in {t.name for t in then.initializer}
    for c in (True, False):
        assert_same_outputs(m, out, feeds={"c": np.array(c), "x": np.ones(2, np.float32)})


def test_nothing_to_fold_reports_unmodified() -> None:
    m = parse(HEADER + """
    g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    out, res = run_pass(m, "fold-constants")
    assert not res.modified and ops(out) == {"Relu": 1}


def test_negative_max_size_is_a_usage_error() -> None:
    from onnxcomp.errors import UsageError
    from onnxcomp.pipeline.registry import instantiate

    with pytest.raises(UsageError):
        instantiate("fold-constants:max_size_bytes=-1")


def test_ir3_model_folds_and_is_exported_at_ir4() -> None:
    # IR < 4 used to be left alone; its constants fold now (tests/passes/test_old_ir.py
    # covers the initializer-as-input side).
    c = onnx.helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones(2, np.float32)))
    g = onnx.helper.make_graph(
        [c, onnx.helper.make_node("Neg", ["c"], ["n"]), onnx.helper.make_node("Add", ["x", "n"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 8)])
    m.ir_version = 3
    out, res = run_pass(m, "fold-constants")
    assert res.modified and ops(out) == {"Add": 1} and out.ir_version == 4
    assert_same_outputs(m, out)


def _with_raw_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """Store initializer ``name`` as raw bytes, as exporters do (then it loads lazily as a view)."""
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(onnx.numpy_helper.from_array(value, name))
    return model


def test_shape_of_a_weight_folds_without_loading_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxcomp.ir.convert import to_graph
    from onnxcomp.pipeline.pass_api import PassContext
    from onnxcomp.pipeline.registry import instantiate

    m = _with_raw_weight(parse(HEADER + """
    g (int64[6] x) => (int64[2,3] y) <float[2,3] w = {1, 2, 3, 4, 5, 6}> {
      s = Shape(w)
      n = Size(w)
      r = Reshape(x, s)
      y = Add(r, n)
    }"""), "w", np.arange(6, dtype=np.float32).reshape(2, 3))
    graph, meta = to_graph(m)
    real = onnx.numpy_helper.to_array

    def guarded(tensor: onnx.TensorProto, *args: object) -> np.ndarray:
        assert tensor.name != "w", "the weight's payload was loaded"
        return real(tensor, *args)

    monkeypatch.setattr(onnx.numpy_helper, "to_array", guarded)
    res = instantiate("fold-constants").run(graph, PassContext(original_model=m, meta=meta))
    assert res.stats["nodes_folded"] == 2
    values = {t.name: t.values.tolist() for n in graph.nodes for t in n.inputs if isinstance(t, gs.Constant) and t.name != "w"}
    assert values == {"s": [2, 3], "n": 6}


def test_folded_view_of_a_weight_owns_its_payload() -> None:
    from onnxcomp.ir.convert import to_graph
    from onnxcomp.pipeline.pass_api import PassContext
    from onnxcomp.pipeline.registry import instantiate

    m = _with_raw_weight(parse(HEADER + """
    g (float[3,2] x) => (float[3,2] y) <float[2,3] w = {1, 2, 3, 4, 5, 6}, int64[2] s = {3, 2}> {
      r = Reshape(w, s)
      y = Add(x, r)
    }"""), "w", np.arange(6, dtype=np.float32).reshape(2, 3))
    graph, meta = to_graph(m)
    res = instantiate("fold-constants").run(graph, PassContext(original_model=m, meta=meta))
    assert res.stats["nodes_folded"] == 1
    r = graph.nodes[-1].inputs[1]
    assert isinstance(r, gs.Constant) and r.name == "r"
    # A writable array, not a read-only view of the input model's bytes.
    assert r.values.flags.writeable
    np.testing.assert_array_equal(r.values, np.arange(6, dtype=np.float32).reshape(3, 2))


def test_reshape_target_built_from_its_own_dims_becomes_a_constant() -> None:
    # Reshape(x, [Shape(x)[0], 6]) with a dynamic batch: the computed entry is x's own dim 0,
    # which Reshape copies when told 0 (the flatten idiom of Paddle and torch exports).
    m = parse(HEADER + """
    g (float[N, 2, 3] x) => (float[N, 6] y) {
      s = Shape(x)
      s32 = Cast<to = 6>(s)
      st = Constant<value = int64[1] {0}>()
      en = Constant<value = int64[1] {1}>()
      b = Slice(s32, st, en)
      b64 = Cast<to = 7>(b)
      six = Constant<value = int64[1] {6}>()
      t = Concat<axis = 0>(b64, six)
      y = Reshape(x, t)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified and ops(out) == {"Reshape": 1}
    target = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [0, 6]
    for n in (1, 3):
        assert_same_outputs(m, out, feeds={"x": np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)})


def test_reshape_target_with_another_tensors_dim_is_left() -> None:
    # The dim comes from z, not from the reshaped x: no rewrite (z's dim 0 may differ).
    m = parse(HEADER + """
    g (float[N, 6] x, float[M, 1] z) => (float[M, 6] y) {
      s = Shape(z)
      i = Constant<value = int64[1] {0}>()
      b = Gather(s, i)
      six = Constant<value = int64[1] {6}>()
      t = Concat<axis = 0>(b, six)
      y = Reshape(x, t)
    }""")
    out, res = run_pass(m, "fold-constants")
    assert ops(out)["Shape"] == 1 and ops(out)["Concat"] == 1


def _tied_head_model(vocab: int, hidden: int, *, tied: bool = True) -> onnx.ModelProto:
    """MatMul(h, Transpose(table)), and with ``tied`` h = Gather(table, ids): an LM's tied
    output projection reads the embedding table the Gather reads."""
    table = np.random.default_rng(0).standard_normal((vocab, hidden)).astype(np.float32)
    nodes = [
        onnx.helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        onnx.helper.make_node("MatMul", ["h", "table_t"], ["logits"]),
    ]
    if tied:
        nodes.insert(0, onnx.helper.make_node("Gather", ["table", "ids"], ["h"]))
        inputs = [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 4])]
    else:
        inputs = [onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [1, 4, hidden])]
    graph = onnx.helper.make_graph(
        nodes, "tied", inputs, [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4, vocab])],
        [onnx.numpy_helper.from_array(table, "table")],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_a_large_shared_weight_is_not_folded_into_a_second_layout() -> None:
    m = _tied_head_model(vocab=512, hidden=64)  # a 128 KB table
    # Over max_size_bytes: the table stays once, the Transpose stays a node.
    out, res = run_pass(m, "fold-constants", max_size_bytes=64 << 10)
    assert ops(out)["Transpose"] == 1 and len(out.graph.initializer) == 1
    assert res.stats["declined_too_large"] == 1 and not res.modified
    # Small enough (the default 1 MB): folded as before.
    out, res = run_pass(m, "fold-constants")
    assert "Transpose" not in ops(out) and len(out.graph.initializer) == 2
    # A large weight that only the Transpose reads is still folded (nothing is held twice).
    out, res = run_pass(_tied_head_model(vocab=512, hidden=64, tied=False), "fold-constants", max_size_bytes=64 << 10)
    assert "Transpose" not in ops(out) and res.stats["declined_too_large"] == 0
