"""Exactness harness: pruning channels whose readers are zeroed must not change outputs.

For the chosen removals, every weight that *reads* a removed channel (Conv input axis,
MatMul/Gemm K axis, depthwise Conv) gets those slices zeroed in a reference copy, so the
removed channels contribute nothing downstream; slicing them away must then give the
reference outputs exactly (up to float summation order).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxcomp.pruning.allocate import allocate
from onnxcomp.pruning.apply import apply_kept, kept_positions
from onnxcomp.pruning.deps import analyze, infer_shapes


def _reader_axis(n: gs.Node, i: int) -> int | None:
    if i != 1:
        return None
    if n.op == "Conv":
        return 0 if int(n.attrs.get("group", 1)) > 1 else 1
    if n.op == "MatMul":
        return 0
    if n.op == "Gemm":
        return 1 if int(n.attrs.get("transB", 0)) else 0
    if n.op == "ConvTranspose":
        return 0
    return None


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def zeroed_and_pruned(model: onnx.ModelProto, ratio: float = 0.5, seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """(reference with readers of removed channels zeroed, pruned model, kept map)."""
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup()
    shapes = infer_shapes(gs.export_onnx(graph.copy()))
    groups = analyze(graph, shapes)
    rng = np.random.default_rng(seed)
    scores = {g.id: rng.random(g.size) for g in groups if g.prunable}
    removed = allocate([g for g in groups if g.prunable], scores, ratio=ratio)
    kept, tensors = kept_positions(groups, removed, shapes)
    cons: dict[str, list[tuple[gs.Node, int]]] = {}
    for n in graph.nodes:
        for i, t in enumerate(n.inputs):
            cons.setdefault(t.name, []).append((n, i))
    for g in groups:
        rem = removed.get(g.id)
        if rem is None:
            continue
        for (name, axis), m in g.members.items():
            if not m.is_param:
                continue
            if not any(_reader_axis(n, i) == axis for n, i in cons.get(name, ())):
                continue
            pos = np.unique(m.pos[np.isin(m.src, rem)])
            v = np.array(m.tensor.values, copy=True)
            idx = [slice(None)] * v.ndim
            idx[axis] = pos
            v[tuple(idx)] = 0
            m.tensor.values = v
    reference = gs.export_onnx(graph.copy())
    apply_kept(graph, kept, tensors, shapes)
    graph.cleanup().toposort()
    pruned = gs.export_onnx(graph)
    return reference, pruned, kept
