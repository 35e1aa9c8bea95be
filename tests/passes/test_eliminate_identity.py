"""Tests of `eliminate-identity`."""

from __future__ import annotations

import numpy as np
import onnx
from lossless_testutil import assert_same_outputs, ops, parse, run_pass

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def test_identity_chain_removed_and_output_name_kept() -> None:
    m = parse(H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      b = Identity(a)
      y = Identity(b)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert res.modified and res.stats["nodes_removed"] == 2
    assert ops(out) == {"Relu": 1}
    assert out.graph.node[0].output[0] == "y" and out.graph.output[0].name == "y"
    assert_same_outputs(m, out)


def test_identity_from_graph_input_to_output_stays() -> None:
    m = parse(H17 + """
    g (float[2] x) => (float[2] y) { y = Identity(x) }""")
    out, res = run_pass(m, "eliminate-identity")
    assert not res.modified and ops(out) == {"Identity": 1}


def test_identity_between_two_graph_outputs_stays() -> None:
    m = parse(H17 + """
    g (float[2] x) => (float[2] a, float[2] y) {
      a = Relu(x)
      y = Identity(a)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert not res.modified and [o.name for o in out.graph.output] == ["a", "y"]


def test_inference_dropout_removed_but_training_dropout_and_used_mask_kept() -> None:
    m = parse(H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Dropout(x)
      y = Relu(a)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert res.modified and ops(out) == {"Relu": 1}
    assert_same_outputs(m, out)
    training = parse(H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      r = Constant<value = float {0.5}>()
      t = Constant<value = bool {1}>()
      a = Dropout(x, r, t)
      y = Relu(a)
    }""")
    assert not run_pass(training, "eliminate-identity")[1].modified
    mask_used = parse(H17 + """
    g (float[2,3] x) => (float[2,3] y, bool[2,3] m) {
      a, m = Dropout(x)
      y = Relu(a)
    }""")
    assert not run_pass(mask_used, "eliminate-identity")[1].modified


def test_noop_reshape_transpose_cast_expand_slice_pad_removed() -> None:
    m = parse(H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      s = Constant<value = int64[2] {0, -1}>()
      a = Reshape(x, s)
      b = Transpose<perm = [0, 1]>(a)
      c = Cast<to = 1>(b)
      es = Constant<value = int64[2] {1, 3}>()
      d = Expand(c, es)
      st = Constant<value = int64[2] {0, -9}>()
      en = Constant<value = int64[2] {100, 9223372036854775807}>()
      e = Slice(d, st, en)
      p = Constant<value = int64[4] {0, 0, 0, 0}>()
      f = Pad(e, p)
      z = Constant<value = float {0}>()
      g1 = Add(f, z)
      o = Constant<value = float[1,1] {1}>()
      y = Mul(o, g1)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert res.modified
    # Everything but the last no-op goes; that one writes the graph output straight from the
    # graph input, so it must stay (the output needs a producer of its own name).
    assert res.stats["nodes_removed"] == 7
    assert ops(out) == {"Constant": 1, "Mul": 1}
    assert list(out.graph.node[-1].input) == ["o", "x"]
    assert_same_outputs(m, out)


def test_real_reshape_transpose_slice_expand_and_broadcasting_add_stay() -> None:
    m = parse(H17 + """
    g (float[2,3] x) => (float[3,2] y, float[3,2] y2, float[1,3] y3, float[2,2,3] y4, float[2,3] y5) {
      s = Constant<value = int64[2] {3, 2}>()
      y = Reshape(x, s)
      y2 = Transpose<perm = [1, 0]>(x)
      st = Constant<value = int64[1] {1}>()
      en = Constant<value = int64[1] {2}>()
      y3 = Slice(x, st, en)
      es = Constant<value = int64[3] {2, 2, 3}>()
      y4 = Expand(x, es)
      z = Constant<value = float[2,3] {0, 0, 0, 0, 0, 1}>()
      y5 = Add(x, z)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert not res.modified


def test_cast_to_other_type_and_zero_with_bigger_shape_stay() -> None:
    m = parse(H17 + """
    g (float[3] x) => (double[3] y, float[2,3] y2) {
      y = Cast<to = 11>(x)
      z = Constant<value = float[2,1] {0, 0}>()
      y2 = Add(x, z)
    }""")
    assert not run_pass(m, "eliminate-identity")[1].modified


def test_works_inside_if_branches_and_keeps_branch_outputs() -> None:
    m = parse(H17 + """
    g (bool c, float[2] x) => (float[2] y) {
      y = If(c) <
        then_branch = t () => (float[2] a) { r = Relu(x)
                                             i = Identity(r)
                                             a = Identity(i) },
        else_branch = e () => (float[2] b) { b = Identity(x) }
      >
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert res.modified and res.stats["nodes_removed"] == 2
    then_g, else_g = (a.g for a in out.graph.node[0].attribute)
    assert [n.op_type for n in then_g.node] == ["Relu"] and then_g.output[0].name == "a"
    assert [n.op_type for n in else_g.node] == ["Identity"]  # outer value -> branch output: kept
    for c in (True, False):
        assert_same_outputs(m, out, feeds={"c": np.array(c), "x": np.array([-1.0, 2.0], np.float32)})


def test_old_opset_dropout_is_test() -> None:
    m = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Dropout", ["x"], ["a"], is_test=0), onnx.helper.make_node("Relu", ["a"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 6)],
    )
    m.ir_version = 3
    assert not run_pass(m, "eliminate-identity")[1].modified  # is_test=0: training dropout


def test_reduce_over_unit_axes_removed_but_real_reduction_kept() -> None:
    m = parse(H17 + """
    g (float[2,3,1,1] x, float[2,3,2,1] x2) => (float[2,3,1,1] y, float[2,3,1,1] y2) {
      a = ReduceMean<axes = [2, 3], keepdims = 1>(x)
      y = Relu(a)
      y2 = ReduceMean<axes = [2, 3], keepdims = 1>(x2)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert res.stats["nodes_removed"] == 1
    assert ops(out) == {"Relu": 1, "ReduceMean": 1}
    assert_same_outputs(m, out)


def test_reshape_chain_collapses_but_not_into_graph_output_or_zero_target() -> None:
    m = parse(H17 + """
    g (float[2,3,4] x) => (float[4,6] y, float[6,4] z, float[24] w) {
      s1 = Constant<value = int64[2] {6, 4}>()
      z = Reshape(x, s1)
      s2 = Constant<value = int64[2] {4, 6}>()
      y = Reshape(z, s2)
      f = Flatten<axis = 1>(x)
      s3 = Constant<value = int64[1] {24}>()
      w = Reshape(f, s3)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    # The Flatten goes (read only by a Reshape); the Reshape writing graph output z stays.
    assert res.stats["nodes_removed"] == 1 and ops(out) == {"Constant": 3, "Reshape": 3}
    assert_same_outputs(m, out)
    zero = parse(H17 + """
    g (float[2,3,4] x) => (float[6,4] y) {
      s1 = Constant<value = int64[2] {6, 4}>()
      a = Reshape(x, s1)
      s2 = Constant<value = int64[2] {0, -1}>()
      y = Reshape(a, s2)
    }""")
    out2, res2 = run_pass(zero, "eliminate-identity")
    assert res2.stats.get("nodes_removed") == 1 and ops(out2)["Reshape"] == 1  # the 2nd is a no-op on [6,4]
    assert_same_outputs(zero, out2)


def test_transpose_chains_compose_and_cancel() -> None:
    m = parse(H17 + """
    g (float[2,3,4,5] x) => (float[2,4,5,3] y, float[2,3,4,5] z) {
      a = Transpose<perm = [0, 2, 1, 3]>(x)
      y = Transpose<perm = [0, 1, 3, 2]>(a)
      b = Transpose<perm = [0, 3, 1, 2]>(x)
      c = Transpose<perm = [0, 2, 3, 1]>(b)
      z = Relu(c)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert ops(out) == {"Transpose": 1, "Relu": 1}
    assert list(out.graph.node[0].attribute[0].ints) == [0, 2, 3, 1]  # [0,2,1,3] then [0,1,3,2]
    assert_same_outputs(m, out)


def test_reduce_over_unit_axes_with_symbolic_batch() -> None:
    m = parse(H17 + """
    g (float[N,3,1,1] x) => (float[N,3,1,1] y) {
      a = ReduceMean<axes = [-2, -1], keepdims = 1>(x)
      y = Relu(a)
    }""")
    out, res = run_pass(m, "eliminate-identity")
    assert res.stats["nodes_removed"] == 1 and ops(out) == {"Relu": 1}
    assert_same_outputs(m, out, feeds={"x": np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)})
