"""Tests of `cse`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
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


def _model_reading(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x + w for every weight, summed: y = (x + w0) + (x + w1) + ..."""
    names = list(weights)
    nodes = [onnx.helper.make_node("Add", ["x", n], [f"a{i}"]) for i, n in enumerate(names)]
    acc = "a0"
    for i in range(1, len(names)):
        nodes.append(onnx.helper.make_node("Add", [acc, f"a{i}"], [f"s{i}"]))
        acc = f"s{i}"
    nodes.append(onnx.helper.make_node("Identity", [acc], ["y"]))
    shape = list(next(iter(weights.values())).shape)
    graph = onnx.helper.make_graph(
        nodes, "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
        [onnx.numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_large_constants_equal_at_both_ends_are_compared_in_full() -> None:
    # Same dtype, shape, first and last bytes: only the middle tells w_mid apart.
    base = np.zeros((64, 64), np.float32)
    mid = base.copy()
    mid[32, 32] = 1.0
    m = _model_reading({"w_first": base, "w_mid": mid, "w_same": base.copy()})
    out, res = run_pass(m, "cse")
    assert res.stats["constants_merged"] == 1  # w_same into w_first; w_mid stays
    assert sorted(t.name for t in out.graph.initializer) == ["w_first", "w_mid"]
    assert_same_outputs(m, out)


def test_weights_are_sampled_once_per_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fixed-point loop runs cse every sweep over the same (never changing) weights of the
    # input model: the second run must not load them again, yet still merge equal ones.
    from onnxcomp.ir.convert import to_graph
    from onnxcomp.pipeline.pass_api import PassContext
    from onnxcomp.pipeline.registry import instantiate

    rng = np.random.default_rng(1)
    w0, w1 = rng.standard_normal((2, 64, 64)).astype(np.float32)
    m = _model_reading({"w0": w0, "w1": w1, "w2": w0.copy()})
    graph, meta = to_graph(m)
    cse = instantiate("cse")
    first = cse.run(graph, PassContext(original_model=m, meta=meta))
    assert first.stats["constants_merged"] == 1  # w2 into w0

    loaded: list[str] = []
    real = onnx.numpy_helper.to_array

    def counting(tensor: onnx.TensorProto, *args: object) -> np.ndarray:
        loaded.append(tensor.name)
        return real(tensor, *args)

    monkeypatch.setattr(onnx.numpy_helper, "to_array", counting)
    # A new graph of the same model shares nothing with the first: everything is sampled anew.
    graph2, meta2 = to_graph(m)
    assert cse.run(graph2, PassContext(original_model=m, meta=meta2)).stats["constants_merged"] == 1
    assert sorted(set(loaded)) == ["w0", "w1", "w2"]
    # The same graph again: no weight is loaded just to be told apart from the others.
    loaded.clear()
    graph2.cleanup()
    assert not cse.run(graph2, PassContext(original_model=m, meta=meta2)).modified
    assert loaded == []
