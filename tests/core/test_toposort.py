"""The linear toposort used after every pass."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from onnxcomp.ir.graph import toposort


def _chain(n: int) -> tuple[gs.Graph, list[gs.Node]]:
    x = gs.Variable("x", dtype=np.float32, shape=[2])
    cur, nodes = x, []
    for i in range(n):
        out = gs.Variable(f"t{i}", dtype=np.float32, shape=[2])
        nodes.append(gs.Node("Relu", name=f"n{i}", inputs=[cur], outputs=[out]))
        cur = out
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[cur], opset=17), nodes


def test_sorts_reversed_chain_and_keeps_sorted_graph_stable() -> None:
    graph, nodes = _chain(50)
    graph.nodes = list(reversed(nodes))
    toposort(graph)
    assert [n.name for n in graph.nodes] == [f"n{i}" for i in range(50)]
    # Independent nodes keep their original relative order.
    x = graph.inputs[0]
    a = gs.Node("Neg", name="b_first", inputs=[x], outputs=[gs.Variable("a", dtype=np.float32)])
    b = gs.Node("Abs", name="a_second", inputs=[x], outputs=[gs.Variable("b", dtype=np.float32)])
    graph.nodes = [a, b] + graph.nodes
    toposort(graph)
    assert [n.name for n in graph.nodes[:2]] == ["b_first", "a_second"]


def test_node_with_subgraph_waits_for_outer_tensors_it_reads() -> None:
    x = gs.Variable("x", dtype=np.float32, shape=[2])
    cond = gs.Variable("cond", dtype=np.bool_, shape=[])
    outer = gs.Variable("outer", dtype=np.float32, shape=[2])
    producer = gs.Node("Relu", name="producer", inputs=[x], outputs=[outer])
    then_out = gs.Variable("then_out", dtype=np.float32, shape=[2])
    body = gs.Graph(nodes=[gs.Node("Neg", inputs=[outer], outputs=[then_out])], outputs=[then_out])
    y = gs.Variable("y", dtype=np.float32, shape=[2])
    if_node = gs.Node("If", name="if", inputs=[cond], outputs=[y], attrs={"then_branch": body, "else_branch": body})
    graph = gs.Graph(nodes=[if_node, producer], inputs=[x, cond], outputs=[y], opset=17)
    toposort(graph)
    assert [n.name for n in graph.nodes] == ["producer", "if"]


def test_cycle_is_an_error() -> None:
    graph, nodes = _chain(3)
    nodes[0].inputs = [nodes[2].outputs[0]]
    with pytest.raises(ValueError, match="cycle"):
        toposort(graph)
