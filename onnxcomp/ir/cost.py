"""Cost model shared by the whole tool: nodes, parameters, bytes and FLOPs.

FLOPs count multiply-adds twice (2·MACs) for Conv, ConvTranspose, Gemm and MatMul — the
ops that dominate inference cost; element-wise work is not counted. Symbolic dims count
as 1, so FLOPs are per sample for a dynamic batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs


@dataclass
class GraphCost:
    """Size and compute of a graph (top level; subgraphs are counted for params)."""

    nodes: int
    params: int
    bytes: int
    flops: int


def _iter_constants(graph: gs.Graph):
    seen: set[int] = set()
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant) and id(t) not in seen:
                    seen.add(id(t))
                    yield t
            for attr in node.attrs.values():
                if isinstance(attr, gs.Graph):
                    stack.append(attr)
                elif isinstance(attr, gs.Constant) and id(attr) not in seen:
                    seen.add(id(attr))
                    yield attr
        for t in g.outputs:
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t


#: Declared dims of variables by name (see `onnxcomp.ir.shapes.tensor_dims`).
DimsByName = Mapping[str, Sequence[object]]


def _dims(t: gs.Tensor, declared: DimsByName | None) -> list[int] | None:
    """Static dims of ``t`` (symbolic or unknown dims count as 1), or None if unknown.

    With ``declared``, a variable's dims come from there (a model's inferred shapes),
    not from the tensor's own, possibly older, shape; constants always know theirs.
    """
    shape = t.shape if declared is None or isinstance(t, gs.Constant) else declared.get(t.name)
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else 1 for d in shape]


def _node_flops(node: gs.Node, declared: DimsByName | None = None) -> int:
    op = node.op
    try:
        if op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
            w = node.inputs[1] if op != "QLinearConv" else node.inputs[3]
            ws = _dims(w, declared)
            if ws is None:
                return 0
            if op == "ConvTranspose":
                x = _dims(node.inputs[0], declared)
                if not x:
                    return 0
                return 2 * int(np.prod(x)) * int(np.prod(ws[1:])) * int(node.attrs.get("group", 1))
            y = _dims(node.outputs[0], declared)
            if not y:
                return 0
            # Each output element needs (Cin/group)·k multiply-adds = prod(weight[1:]).
            return 2 * int(np.prod(y)) * int(np.prod(ws[1:]))
        if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            a = node.inputs[0]
            y = _dims(node.outputs[0], declared)
            ad = _dims(a, declared)
            if not y or not ad:
                return 0
            if op == "Gemm":
                k = ad[0] if node.attrs.get("transA", 0) else ad[-1]
            else:
                k = ad[-1]
            return 2 * int(np.prod(y)) * int(k)
    except (IndexError, TypeError):
        return 0
    return 0


def graph_cost(graph: gs.Graph, *, flops: bool = True, declared: DimsByName | None = None) -> GraphCost:
    """Count nodes, constant parameters and bytes, and FLOPs.

    FLOPs need shapes: the tensors' own, or with ``declared`` the dims a model of this
    graph declares (e.g. `onnxcomp.ir.shapes.tensor_dims` of `infer_shapes` of its export).
    """
    params = 0
    nbytes = 0
    for c in _iter_constants(graph):
        shape = c.shape
        if shape is None:
            continue
        n = math.prod(int(d) for d in shape)  # math.prod: np.prod costs ~10 µs per call
        params += n
        try:
            nbytes += n * np.dtype(c.dtype).itemsize
        except TypeError:
            pass
    total_flops = sum(_node_flops(n, declared) for n in graph.nodes) if flops else 0
    return GraphCost(nodes=len(graph.nodes), params=params, bytes=nbytes, flops=total_flops)


def model_cost(model: onnx.ModelProto, graph: gs.Graph | None = None) -> GraphCost:
    """`graph_cost` of a ModelProto, FLOPs with the shapes inference finds on it.

    Shape inference runs on the weightless model (`onnxcomp.ir.shapes.infer_shapes`).
    ``graph``: the model's graph when it is already in hand (it is imported otherwise).
    """
    from onnxcomp.ir.convert import to_graph
    from onnxcomp.ir.shapes import infer_shapes, tensor_dims

    if graph is None:
        graph, _ = to_graph(model)
    return graph_cost(graph, declared=tensor_dims(infer_shapes(model)))
