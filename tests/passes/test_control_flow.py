"""Lossless passes on models with control flow: If with a constant condition is inlined,
bodies fold their constants, and nothing reading a body input or an outer variable folds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from lossless_testutil import assert_same_outputs, ops, parse, run_pass

import onnxcomp

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _body_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of every body nested in ``model`` (depth first)."""
    found, stack = [], [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    found.extend(m.op_type for m in a.g.node)
                    stack.append(a.g)
    return found


@pytest.mark.parametrize("cond", [True, False])
def test_if_on_a_constant_condition_becomes_its_branch(cond: bool) -> None:
    # The If writes the graph output y: the branch's last node must write y itself.
    m = parse(HEADER + f"""
    g (float[2] x) => (float[2] y) {{
      c = Constant<value = bool {{{int(cond)}}}>()
      y = If(c) <
        then_branch = t () => (float[2] a) {{ k = Constant<value = float[2] {{3, 4}}>()
                                              a = Add(x, k) }},
        else_branch = e () => (float[2] b) {{ b = Neg(x) }}
      >
    }}""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified and res.stats["ifs_inlined"] == 1
    assert ops(out) == ({"Add": 1} if cond else {"Neg": 1})
    assert out.graph.node[0].output[0] == "y"
    assert_same_outputs(m, out, feeds={"x": np.array([1.0, -2.0], np.float32)})


def test_if_condition_computed_from_constants_and_static_shapes_is_inlined() -> None:
    # cond = Shape(state)[0] == 2 with state [2, N, 4]: dim 0 is static though N is not
    # (silero VAD's decoder asks exactly this); the else branch needs N to run at all.
    m = parse(HEADER + """
    g (float[2, N, 4] state) => (float[N, 4] y) {
      s = Shape(state)
      i = Constant<value = int64 {0}>()
      d = Gather(s, i)
      two = Constant<value = int64 {2}>()
      c = Equal(d, two)
      i1 = Constant<value = int64[1] {0}>()
      y = If(c) <
        then_branch = t () => (float[N, 4] a) { a = ReduceSum<keepdims = 0>(state, i1) },
        else_branch = e () => (float[N, 4] b) { b = ReduceMax<keepdims = 0, axes = [0]>(state) }
      >
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.stats["ifs_inlined"] == 1
    assert ops(out) == {"ReduceSum": 1}
    assert_same_outputs(m, out, feeds={"state": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})


def test_if_on_an_input_stays_and_its_bodies_fold_constants_only() -> None:
    # Loop-free bodies reading outer values: constants fold, the rest stays; both branches
    # keep their outputs.
    m = parse(HEADER + """
    g (bool c, float[2] x) => (float[2] y) {
      y = If(c) <
        then_branch = t () => (float[2] a) { k = Constant<value = float[2] {3, 4}>()
                                             k2 = Mul(k, k)
                                             a = Add(x, k2) },
        else_branch = e () => (float[2] b) { b = Neg(x) }
      >
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified and res.stats["ifs_inlined"] == 0
    assert ops(out) == {"If": 1}
    assert sorted(_body_ops(out)) == ["Add", "Neg"]
    for c in (True, False):
        assert_same_outputs(m, out, feeds={"c": np.array(c), "x": np.array([1.0, -2.0], np.float32)})


def test_loop_body_folds_only_what_does_not_depend_on_the_iteration() -> None:
    m = parse(HEADER + """
    g (int64 n, float[2] x0) => (float[2] y) {
      t = Constant<value = bool {1}>()
      y = Loop(n, t, x0) <
        body = b (int64 i, bool cin, float[2] xin) => (bool cout, float[2] xout) {
          k = Constant<value = float[2] {1, 2}>()
          kk = Add(k, k)
          fi = Cast<to = 1>(i)
          step = Mul(kk, fi)
          xout = Add(xin, step)
          cout = Identity(cin)
        }
      >
    }""")
    out, res = run_pass(m, "fold-constants")
    assert res.modified
    body = sorted(_body_ops(out))
    # k and k + k fold; the Cast of the counter and everything after it stay.
    assert body == ["Add", "Cast", "Identity", "Mul"]
    assert_same_outputs(m, out, feeds={"n": np.array(3, np.int64), "x0": np.array([0.5, 1.0], np.float32)})


def test_preset_on_an_if_model_keeps_outer_names_read_by_bodies() -> None:
    # The outer value `h` is read inside both branches: no pass may rename or drop it.
    m = parse(HEADER + """
    g (bool c, float[2] x) => (float[2] y) {
      h0 = Identity(x)
      h = Relu(h0)
      y = If(c) <
        then_branch = t () => (float[2] a) { a = Identity(h) },
        else_branch = e () => (float[2] b) { one = Constant<value = float[2] {1, 1}>()
                                             b = Add(h, one) }
      >
    }""")
    before = m.SerializeToString()
    out, _ = onnxcomp.optimize(m, preset="lossless", calibration_data={"c": np.array(True), "x": np.ones(2, np.float32)},
                                    verify="final", allow_unverified=True)
    # Constant-node tensors have no name: exporting them must not write one into the input.
    assert m.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    assert "h" in {o for n in out.graph.node for o in n.output}
    for c in (True, False):
        assert_same_outputs(m, out, feeds={"c": np.array(c), "x": np.array([1.0, -2.0], np.float32)})


def test_the_input_model_is_not_written_into() -> None:
    # A Constant node's tensor carries no name; graphsurgeon's exporter (run for shape
    # inference and for the result) would set one on the input model's own proto.
    k = onnx.helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(np.array([1, 6], np.int64)))
    g = onnx.helper.make_graph(
        [k, onnx.helper.make_node("Reshape", ["x", "k"], ["r"]), onnx.helper.make_node("Relu", ["r"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6])],
    )
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    assert not m.graph.node[0].attribute[0].t.HasField("name")
    before = m.SerializeToString()
    out, _ = onnxcomp.optimize(m, preset="lossless")
    assert m.SerializeToString() == before
    assert ops(out) == {"Reshape": 1, "Relu": 1}


def test_a_scale_inside_a_body_is_not_folded_into_an_outer_conv() -> None:
    # The Conv's only reader is a Mul in a branch that writes the branch output: folding it
    # would leave the branch output without a producer.
    m = parse(HEADER + """
    g (bool c, float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y) {
      w = Constant<value = float[2, 2, 1, 1] {1, 2, 3, 4}>()
      xx = Mul(x, x)
      v = Conv(xx, w)
      y = If(c) <
        then_branch = t () => (float[1, 2, 3, 3] a) { s = Constant<value = float[2, 1, 1] {2, 3}>()
                                                     a = Mul(v, s) },
        else_branch = e () => (float[1, 2, 3, 3] b) { b = Neg(x) }
      >
    }""")
    out, _ = run_pass(m, "fold-batchnorm")
    assert sorted(_body_ops(out)) == ["Constant", "Mul", "Neg"]
    for c in (True, False):
        assert_same_outputs(m, out, feeds={"c": np.array(c), "x": np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)})
