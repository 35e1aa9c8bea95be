"""Tests of `cse`."""

from __future__ import annotations

import numpy as np
from lossless_testutil import assert_same_outputs, ops, parse, run_pass

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def test_duplicate_nodes_and_equal_constants_merge_in_one_walk() -> None:
    m = parse(H17 + """
    g (float[2,3] x) => (float[2,3] y) <float[3] k1 = {1, 2, 3}, float[3] k2 = {1, 2, 3}> {
      a = Add(x, k1)
      b = Add(x, k2)
      ra = Relu(a)
      rb = Relu(b)
      y = Mul(ra, rb)
    }""")
    out, res = run_pass(m, "cse")
    assert res.modified and res.stats == {"nodes_merged": 2, "constants_merged": 1}
    assert ops(out) == {"Add": 1, "Relu": 1, "Mul": 1}
    assert list(out.graph.node[-1].input)[0] == list(out.graph.node[-1].input)[1]
    assert len(out.graph.initializer) == 1
    assert_same_outputs(m, out)


def test_different_attributes_or_constants_do_not_merge() -> None:
    m = parse(H17 + """
    g (float[2,3] x) => (float[3,2] y, float[2,3] z, float[2,3] w) <float[3] k1 = {1, 2, 3}, float[3] k2 = {1, 2, 4}> {
      y = Transpose<perm = [1, 0]>(x)
      s1 = Softmax<axis = 0>(x)
      s2 = Softmax<axis = 1>(x)
      z = Add(s1, s2)
      a = Add(x, k1)
      b = Add(x, k2)
      w = Sub(a, b)
    }""")
    out, res = run_pass(m, "cse")
    assert not res.modified and ops(out) == ops(m)


def test_random_ops_are_never_merged() -> None:
    m = parse(H17 + """
    g (float[2,3] x) => (float[2,3] y) {
      r1 = RandomUniformLike(x)
      r2 = RandomUniformLike(x)
      y = Sub(r1, r2)
    }""")
    out, res = run_pass(m, "cse")
    assert not res.modified and ops(out)["RandomUniformLike"] == 2


def test_graph_outputs_keep_distinct_names() -> None:
    both = parse(H17 + """
    g (float[2] x) => (float[2] a, float[2] b) {
      a = Relu(x)
      b = Relu(x)
    }""")
    out, res = run_pass(both, "cse")
    assert not res.modified and [o.name for o in out.graph.output] == ["a", "b"]

    later_is_output = parse(H17 + """
    g (float[2] x) => (float[2] y, float[2] b) {
      a = Relu(x)
      b = Relu(x)
      y = Neg(a)
    }""")
    out2, res2 = run_pass(later_is_output, "cse")
    assert res2.modified and ops(out2) == {"Relu": 1, "Neg": 1}
    assert [o.name for o in out2.graph.output] == ["y", "b"]
    assert list(out2.graph.node[1].input) == ["b"]
    assert_same_outputs(later_is_output, out2)


def test_if_bodies_are_left_alone() -> None:
    m = parse(H17 + """
    g (bool c, float[2] x) => (float[2] y) {
      y = If(c) <
        then_branch = t () => (float[2] a) { r1 = Relu(x)
                                             r2 = Relu(x)
                                             a = Add(r1, r2) },
        else_branch = e () => (float[2] b) { b = Neg(x) }
      >
    }""")
    out, res = run_pass(m, "cse")
    assert not res.modified
    assert [n.op_type for n in out.graph.node[0].attribute[0].g.node] == ["Relu", "Relu", "Add"]
    for c in (True, False):
        assert_same_outputs(m, out, feeds={"c": np.array(c), "x": np.array([-1.0, 2.0], np.float32)})
