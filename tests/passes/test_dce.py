"""Tests of `dce`."""

from __future__ import annotations

import onnx
from lossless_testutil import assert_same_outputs, ops, parse, run_pass


def test_dead_nodes_and_unused_initializers_removed() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <float[2] unused = {1, 2}, float[2] k = {3, 4}> {
      d1 = Sigmoid(x)
      d2 = Add(d1, unused)
      y = Mul(x, k)
    }""")
    out, res = run_pass(m, "dce")
    assert res.modified and res.stats["nodes_removed"] == 2
    assert ops(out) == {"Mul": 1}
    assert [t.name for t in out.graph.initializer] == ["k"]
    assert_same_outputs(m, out)


def test_unused_opset_import_dropped_and_live_graph_untouched() -> None:
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "com.unused" : 1]>
    g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    out, res = run_pass(m, "dce")
    assert res.modified and res.stats["opsets_removed"] == 1
    assert [o.domain for o in out.opset_import] == [""]
    out2, res2 = run_pass(out, "dce")
    assert not res2.modified and ops(out2) == {"Relu": 1}


def test_graph_inputs_kept_even_if_unused() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] unused_in) => (float[2] y) { y = Relu(x) }""")
    out, res = run_pass(m, "dce")
    assert not res.modified and [i.name for i in out.graph.input] == ["x", "unused_in"]


def test_dead_nodes_inside_if_branches_removed() -> None:
    import numpy as np

    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[2] x) => (float[2] y) {
      y = If(c) <
        then_branch = t () => (float[2] a) { dead = Sigmoid(x)
                                             a = Relu(x) },
        else_branch = e () => (float[2] b) { b = Neg(x) }
      >
    }""")
    out, res = run_pass(m, "dce")
    assert res.modified and res.stats["nodes_removed"] == 1
    assert [n.op_type for n in out.graph.node[0].attribute[0].g.node] == ["Relu"]
    for c in (True, False):
        assert_same_outputs(m, out, feeds={"c": np.array(c), "x": np.array([-1.0, 2.0], np.float32)})
