"""Tests of the shared helpers behind the lossless passes' speed: when shape inference
runs (and when its cached facts must not be reused), the tensor map, the sorted-graph
fast path of `toposort`, detached-node removal, read-only constant access and the node
export used for shape inference, and the linear dead-node cleanup (same result as
graphsurgeon's)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from lossless_testutil import parse
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxcomp.ir.convert import to_graph
from onnxcomp.ir.graph import (
    cleanup_after_rewrite,
    peek_values,
    remove_dead_nodes,
    tensor_map,
    toposort,
)
from onnxcomp.ir.shapes import annotate_shapes, export_node
from onnxcomp.pipeline.pass_api import PassContext

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


@pytest.fixture
def inferences(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ONNX shape inference (one entry per call)."""
    calls: list[int] = []
    real = onnx.shape_inference.infer_shapes

    def counting(*args: object, **kwargs: object) -> onnx.ModelProto:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counting)
    return calls


def _graph_and_ctx(text: str) -> tuple[gs.Graph, PassContext]:
    model = parse(H17 + text)
    graph, meta = to_graph(model)
    return graph, PassContext(original_model=model, meta=meta)


def test_inference_runs_only_while_some_variable_lacks_facts(inferences: list[int]) -> None:
    graph, ctx = _graph_and_ctx("""
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      y = Neg(a)
    }""")
    a = tensor_map(graph)["a"]
    assert a.dtype is None and a.shape is None  # no value_info for it in the model
    annotate_shapes(graph, ctx)
    assert len(inferences) == 1 and a.dtype == np.float32 and list(a.shape) == [2, 3]
    # Everything is known now: even after an invalidation there is nothing to infer.
    ctx.invalidate_analyses()
    annotate_shapes(graph, ctx)
    assert len(inferences) == 1


def test_facts_are_reused_until_invalidated_and_recomputed_after(inferences: list[int]) -> None:
    graph, ctx = _graph_and_ctx("""
    g (float[2,3] x) => (float[3,2] y) {
      a = Relu(x)
      y = Transpose<perm = [1, 0]>(a)
    }""")
    annotate_shapes(graph, ctx)
    assert len(inferences) == 1
    # A pass rewires the graph and creates a tensor without dtype or shape...
    relu, transpose = graph.nodes
    b = gs.Variable("b")
    graph.nodes.insert(1, gs.Node("Sigmoid", inputs=[relu.outputs[0]], outputs=[b]))
    transpose.inputs[0] = b
    # ...but has not reported it yet: the cached facts (which do not know "b") are used.
    annotate_shapes(graph, ctx)
    assert len(inferences) == 1 and b.shape is None
    # After the manager's invalidation, stale facts would leave "b" unknown: they are not used.
    ctx.invalidate_analyses()
    annotate_shapes(graph, ctx)
    assert len(inferences) == 2 and b.dtype == np.float32 and list(b.shape) == [2, 3]


def test_unsettled_tensors_rerun_inference_only_when_a_constant_appears(inferences: list[int]) -> None:
    graph, ctx = _graph_and_ctx("""
    g (float[N,3] x) => (float[N,3] y) {
      a = Relu(x)
      y = Neg(a)
    }""")
    annotate_shapes(graph, ctx)
    a = tensor_map(graph)["a"]
    assert list(a.shape) == ["N", 3] and len(inferences) == 1
    # A change that brings no new constant: inference already said all it can about "a".
    ctx.invalidate_analyses()
    annotate_shapes(graph, ctx)
    assert len(inferences) == 1
    # A new constant (e.g. a folded shape computation) may let inference settle more.
    neg = graph.nodes[1]
    neg.op, neg.inputs = "Add", [a, gs.Constant("zero", np.zeros(3, np.float32))]
    ctx.invalidate_analyses()
    annotate_shapes(graph, ctx)
    assert len(inferences) == 2


def test_tensor_map_matches_graphsurgeon() -> None:
    graph, _ = _graph_and_ctx("""
    g (float[2,3] x, float[3] unused) => (float[2,3] y, float[2,3] z) <float[3] k = {1, 2, 3}> {
      a = Add(x, k)
      y = Relu(a)
      z = Neg(a)
    }""")
    mine, theirs = tensor_map(graph), graph.tensors()
    assert list(mine) == list(theirs)
    assert all(mine[name] is theirs[name] for name in theirs)


def test_toposort_leaves_a_sorted_graph_untouched_and_sorts_an_unsorted_one() -> None:
    graph, _ = _graph_and_ctx("""
    g (float[2] x) => (float[2] y) {
      a = Relu(x)
      b = Neg(a)
      y = Abs(b)
    }""")
    nodes = graph.nodes
    toposort(graph)
    assert graph.nodes is nodes  # nothing to do: not even a new list
    graph.nodes = [nodes[2], nodes[0], nodes[1]]
    toposort(graph)
    assert [n.op for n in graph.nodes] == ["Relu", "Neg", "Abs"]


def test_cleanup_after_rewrite_drops_detached_nodes_and_leaves_dead_ones_to_the_manager() -> None:
    graph, _ = _graph_and_ctx("""
    g (float[2] x) => (float[2] y) {
      a = Relu(x)
      dead = Sigmoid(x)
      y = Neg(a)
    }""")
    relu, sigmoid, neg = graph.nodes
    neg.inputs[0] = graph.inputs[0]
    relu.inputs.clear()
    relu.outputs.clear()
    cleanup_after_rewrite(graph)
    assert graph.nodes == [sigmoid, neg]


def test_cleanup_after_rewrite_cleans_fully_when_there_are_subgraphs() -> None:
    # Dead nodes inside bodies still read outer tensors, which would constrain sorting.
    graph, _ = _graph_and_ctx("""
    g (bool c, float[2] x) => (float[2] y) {
      a = Relu(x)
      dead = Sigmoid(x)
      y = If(c) <
        then_branch = t () => (float[2] p) { unused = Exp(a)
                                             p = Neg(x) },
        else_branch = e () => (float[2] q) { q = Abs(x) }
      >
    }""")
    relu = graph.nodes[0]
    relu.inputs.clear()
    relu.outputs.clear()
    cleanup_after_rewrite(graph)
    assert [n.op for n in graph.nodes] == ["If"]
    assert [n.op for n in graph.nodes[0].attrs["then_branch"].nodes] == ["Neg"]


def test_readonly_peek_gives_the_same_values_without_caching_them() -> None:
    model = parse(H17 + """
    g (float[3,4] x) => (float[3,4] y) <float[3,4] w = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}> {
      y = Add(x, w)
    }""")
    # Store the weight the way exporters do (raw bytes), which is what a read-only view can share.
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w"))
    graph, _ = to_graph(model)
    w = tensor_map(graph)["w"]
    ro, rw = peek_values(w, readonly=True), peek_values(w)
    np.testing.assert_array_equal(ro, rw)
    assert ro.dtype == rw.dtype and ro.shape == rw.shape and rw.flags.writeable
    assert type(w._values).__name__ == "LazyValues"  # still lazy: nothing was cached


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"axis": 1, "alpha": 0.5, "mode": "constant"},
        {"perm": [1, 0, 2], "scales": [1.0, 2.5], "names": ["a", "b"]},
        {"flag": True},  # bool: graphsurgeon's path (an INT attribute)
        {"mixed": [1, 2.5]},  # mixed list: FLOATS, via graphsurgeon
        {"value": gs.Constant("c", np.arange(3, dtype=np.int64))},
        {"big": 2**40, "neg": -7, "tiny": 1e-30},
    ],
)
def test_export_node_builds_what_graphsurgeon_builds(attrs: dict) -> None:
    x, y = gs.Variable("x", dtype=np.float32), gs.Variable("y", dtype=np.float32)
    for name, domain in (("n", None), ("", ""), ("m", "com.example")):
        node = gs.Node("Op", name=name, domain=domain, attrs=dict(attrs), inputs=[x, gs.Variable.empty()], outputs=[y])
        expected = OnnxExporter.export_node(node).SerializeToString()
        assert export_node(node).SerializeToString() == expected


def _wiring(graph: gs.Graph) -> tuple:
    """Nodes (op, name, tensor names) and every tensor's producer/consumer names."""
    nodes = [(n.op, n.name, [t.name for t in n.inputs], [t.name for t in n.outputs]) for n in graph.nodes]
    tensors = {
        name: ([n.name for n in t.inputs], sorted(n.name for n in t.outputs)) for name, t in tensor_map(graph).items()
    }
    return nodes, tensors, [t.name for t in graph.inputs], [t.name for t in graph.outputs]


def _cut(graph: gs.Graph, rng: np.random.Generator) -> None:
    """Make part of ``graph`` dead: drop some outputs, add an unused node, feed an input."""
    if len(graph.outputs) > 1:
        graph.outputs = [t for t in graph.outputs if rng.random() < 0.5] or graph.outputs[:1]
    if graph.nodes:
        victim = graph.nodes[int(rng.integers(len(graph.nodes)))]
        graph.nodes.append(gs.Node("Relu", name="dead_relu", inputs=[victim.outputs[0]], outputs=[gs.Variable("dead_out")]))
    if graph.inputs and graph.nodes:
        # A node that writes a graph input is not a producer the graph can keep.
        graph.nodes.append(gs.Node("Identity", name="writes_input", inputs=[graph.outputs[0]], outputs=[graph.inputs[0]]))


@pytest.mark.parametrize("seed", range(3))
def test_remove_dead_nodes_matches_graphsurgeon_cleanup(seed: int) -> None:
    from pathlib import Path

    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    paths = sorted(root.glob("pytorch-converted/*/model.onnx")) + sorted(root.glob("simple/*/model.onnx"))
    assert len(paths) > 50
    compared = 0
    for path in paths:
        model = onnx.load(str(path))
        ours, _ = to_graph(model)
        theirs, _ = to_graph(model)
        _cut(ours, np.random.default_rng(seed))
        _cut(theirs, np.random.default_rng(seed))
        before = len(ours.nodes)
        remove_dead_nodes(ours)
        theirs.cleanup(remove_unused_graph_inputs=False)
        assert _wiring(ours) == _wiring(theirs), path.parent.name
        compared += len(ours.nodes) < before
    assert compared > 50  # the cuts did leave dead nodes to remove


def test_remove_dead_nodes_leaves_a_live_graph_alone() -> None:
    graph, _ = _graph_and_ctx("""
    g (float[2] x) => (float[2] y) {
      a = Relu(x)
      y = Neg(a)
    }""")
    nodes = list(graph.nodes)
    remove_dead_nodes(graph)
    assert graph.nodes == nodes
