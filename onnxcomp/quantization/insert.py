"""The one place that materialises a `QuantPlan` as QuantizeLinear/DequantizeLinear nodes.

Static (QDQ) form, for a marked activation ``x`` with parameters ``(s, z)``::

    x -> QuantizeLinear(s, z) -> x_q -> DequantizeLinear(s, z) -> x_dq -> consumers

where ``q = clip(round(x / s) + z, qmin, qmax)`` and ``x_dq = (q - z) * s``. Weights are
stored as int8 initializers behind a DequantizeLinear (per-channel ``axis`` when set); a
bias becomes int32 with ``s_b = s_x * s_w`` so that ``b_q`` adds straight into the int32
accumulator ``sum((x_q - z_x) * w_q)``.

Dynamic form, for ``Y = MatMul(X, W)``::

    X_q, s_x, z_x = DynamicQuantizeLinear(X)           # uint8, per tensor, at run time
    Y = Cast(MatMulInteger(X_q, W_q, z_x, 0), float) * (s_x * s_w)

with ``W_q`` int8 per output column (``s_w`` of shape [N]).

A Relu/Clip the rules placed a Q behind (``QuantPlan.folded``) is removed when the Q's
representable range ``[s * (qmin - z), s * (qmax - z)]`` lies inside the activation's
bounds (half a step of slack for float rounding): the Q then clamps exactly as the
activation did, and onnxruntime sees ``op -> Q`` and fuses it into an integer kernel
whatever its own Clip/Relu elimination would have decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.ir import consumer_map, remove_dead_nodes, toposort
from onnxcomp.quantization.calibrators import (
    QParams,
    quantize_bias,
    quantize_weight,
    weight_qparams,
)
from onnxcomp.quantization.rules import QuantPlan
from onnxcomp.quantization.weightexpr import weight_value


@dataclass
class InsertStats:
    """Counts of what `materialize` added."""

    activations: int = 0
    weights: int = 0
    biases: int = 0
    dynamic: int = 0
    folded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "activations_quantized": self.activations,
            "weights_quantized": self.weights,
            "biases_quantized": self.biases,
            "dynamic_matmuls": self.dynamic,
            "activations_folded": self.folded,
        }


class _Namer:
    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name


def _rewire(readers: list[tuple[gs.Node, int]], old: gs.Tensor, new: gs.Tensor, only: set[int] | None) -> None:
    """Make ``readers`` (from `consumer_map`) that still read ``old`` read ``new``; with
    ``only``, just the nodes with those ids."""
    for node, i in readers:
        if only is not None and id(node) not in only:
            continue
        if node.inputs[i] is old:
            node.inputs[i] = new


def absorbs(qp: QParams, low: float, high: float) -> bool:
    """True when quantizing with ``qp`` clamps at least as tightly as ``[low, high]``."""
    info = np.iinfo(qp.zero_point.dtype)
    scale, zp = float(qp.scale), int(qp.zero_point)
    slack = 0.5 * scale
    return scale * (info.min - zp) >= low - slack and scale * (info.max - zp) <= high + slack


def weight_params(plan: QuantPlan, tensors: dict[str, gs.Tensor]) -> dict[str, QParams]:
    """Quantization parameters of every planned weight (pure function of the values)."""
    return {name: weight_qparams(np.asarray(tensors[name].values), axis) for name, (axis, _) in plan.weights.items()}


def materialize(
    graph: gs.Graph,
    plan: QuantPlan,
    act_params: dict[str, QParams],
    w_params: dict[str, QParams],
) -> InsertStats:
    """Insert the Q/DQ (and dynamic-MatMul) nodes ``plan`` asks for, in place.

    Args:
        graph: The graph the plan was built on.
        plan: Marks from the rules.
        act_params: Parameters per marked activation (shared groups already resolved).
        w_params: Parameters per planned weight (see `weight_params`).
    """
    stats = InsertStats()
    name = _Namer(graph)
    tensors = graph.tensors()
    consumers = consumer_map(graph)
    new_nodes: list[gs.Node] = []

    # Weights: int8 initializer -> DequantizeLinear -> the consumers that asked for it.
    w_dq: dict[str, gs.Variable] = {}
    for wname, (axis, ids) in plan.weights.items():
        w = tensors[wname]
        qp = w_params[wname]
        values = np.asarray(w.values, dtype=np.float32)
        q = gs.Constant(name(f"{wname}_quantized"), quantize_weight(values, qp))
        s = gs.Constant(name(f"{wname}_scale"), qp.scale)
        z = gs.Constant(name(f"{wname}_zero_point"), qp.zero_point)
        out = gs.Variable(name(f"{wname}_dequantized"), dtype=np.float32, shape=list(values.shape))
        attrs = {"axis": int(axis)} if axis is not None else {}
        new_nodes.append(gs.Node("DequantizeLinear", name(f"{wname}_DequantizeLinear"), attrs, [q, s, z], [out]))
        _rewire(consumers.get(wname, []), w, out, ids)
        w_dq[wname] = out
        stats.weights += 1

    # Biases: int32 with scale s_x * s_w, placed before activations are rewired so the
    # lookups below see the original input names.
    node_by_id = {id(n): n for n in graph.nodes}
    for (nid, idx), (bname, xname, wname) in plan.biases.items():
        node = node_by_id[nid]
        b = tensors[bname]
        xs = act_params[xname].scale
        wq = w_params[wname]
        bq, bs = quantize_bias(np.asarray(b.values), xs, wq.scale)
        qc = gs.Constant(name(f"{bname}_quantized"), bq)
        sc = gs.Constant(name(f"{bname}_scale"), bs.reshape(wq.scale.shape))
        zc = gs.Constant(name(f"{bname}_zero_point"), np.zeros(wq.scale.shape, dtype=np.int32))
        out = gs.Variable(name(f"{bname}_dequantized"), dtype=np.float32, shape=list(np.shape(b.values)))
        attrs = {"axis": 0} if wq.scale.ndim == 1 else {}
        new_nodes.append(gs.Node("DequantizeLinear", name(f"{bname}_DequantizeLinear"), attrs, [qc, sc, zc], [out]))
        node.inputs[idx] = out
        stats.biases += 1

    # Activations: one Q -> DQ pair per tensor; consumers that asked for it read the DQ.
    out_index = {t.name: i for i, t in enumerate(graph.outputs)}
    for tname, ids in plan.activations.items():
        t = tensors[tname]
        qp = act_params[tname]
        s = gs.Constant(name(f"{tname}_scale"), qp.scale)
        z = gs.Constant(name(f"{tname}_zero_point"), qp.zero_point)
        qt = gs.Variable(name(f"{tname}_quantized"), dtype=qp.zero_point.dtype, shape=t.shape)
        dq = gs.Variable(name(f"{tname}_dequantized"), dtype=np.float32, shape=t.shape)
        only = None if tname in plan.rewire_all else ids
        _rewire(consumers.get(tname, []), t, dq, only)
        if only is None and tname in out_index:
            # A graph output that must be quantized (e.g. a final Conv or Add): the output
            # becomes the dequantized value under the original name, so the Q is not dead
            # and onnxruntime can fuse the producer into an integer kernel.
            t.name = name(f"{tname}_float")
            dq.name = tname
            graph.outputs[out_index[tname]] = dq
        source = t
        act = plan.folded.get(tname)
        if act is not None and only is None and qp.scale.ndim == 0 and absorbs(qp, act.low, act.high):
            # Every reader now reads the DQ, so the Relu/Clip is dead once the Q reads its input.
            source = act.node.inputs[0]
            stats.folded += 1
        new_nodes.append(gs.Node("QuantizeLinear", name(f"{tname}_QuantizeLinear"), {}, [source, s, z], [qt]))
        new_nodes.append(gs.Node("DequantizeLinear", name(f"{tname}_DequantizeLinear"), {}, [qt, s, z], [dq]))
        stats.activations += 1

    # Embedding tables: Gather int8 rows, then dequantize only the gathered rows.
    tables: dict[str, tuple[gs.Constant, gs.Constant, gs.Constant]] = {}
    for node in plan.gathers:
        table = node.inputs[0]
        if table.name not in tables:
            values = np.asarray(table.values, dtype=np.float32)
            qp = weight_qparams(values, None)
            tables[table.name] = (
                gs.Constant(name(f"{table.name}_quantized"), quantize_weight(values, qp)),
                gs.Constant(name(f"{table.name}_scale"), qp.scale),
                gs.Constant(name(f"{table.name}_zero_point"), qp.zero_point),
            )
        tq, ts, tz = tables[table.name]
        y = node.outputs[0]
        yq = gs.Variable(name(f"{y.name}_quantized"), dtype=np.int8, shape=y.shape)
        node.inputs[0] = tq
        node.outputs[0] = yq
        new_nodes.append(gs.Node("DequantizeLinear", name(f"{y.name}_DequantizeLinear"), {}, [yq, ts, tz], [y]))
        stats.weights += 1

    # One DynamicQuantizeLinear per activation, shared by every layer reading it (Q/K/V).
    dql: dict[str, tuple[gs.Variable, gs.Variable, gs.Variable]] = {}
    for node in plan.dynamic:
        new_nodes.extend(_dynamic_matmul(node, name, dql, plan.per_channel))
        stats.dynamic += 1

    graph.nodes.extend(new_nodes)
    remove_dead_nodes(graph)
    toposort(graph)
    return stats


def _dynamic_matmul(
    node: gs.Node, name: _Namer, dql: dict[str, tuple[gs.Variable, gs.Variable, gs.Variable]], per_channel: bool
) -> list[gs.Node]:
    """Replace ``node`` (MatMul X·W or Gemm X·W + C) by the dynamic integer pattern.

    Returns the new nodes; ``dql`` caches the quantized form of each activation.
    """
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
    y = node.outputs[0]
    values = weight_value(w)  # computed if w is an expression (Transpose(table), SmoothQuant's Mul)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        values = np.ascontiguousarray(values.T)
    qp = weight_qparams(values, 1 if per_channel else None)  # per output column
    base = node.name or y.name
    wq = gs.Constant(name(f"{w.name}_quantized"), quantize_weight(values, qp))
    # Symmetric weights: one scalar zero point keeps MatMulInteger on onnxruntime's
    # per-tensor-offset kernel; the per-column scales live only in the float Mul.
    wz = gs.Constant(name(f"{w.name}_zero_point"), np.zeros((), dtype=np.int8))
    ws = gs.Constant(name(f"{w.name}_scale"), qp.scale)
    nodes: list[gs.Node] = []
    if x.name not in dql:
        xq = gs.Variable(name(f"{x.name}_quantized"), dtype=np.uint8, shape=x.shape)
        xs = gs.Variable(name(f"{x.name}_scale"), dtype=np.float32, shape=[])
        xz = gs.Variable(name(f"{x.name}_zero_point"), dtype=np.uint8, shape=[])
        nodes.append(gs.Node("DynamicQuantizeLinear", name(f"{x.name}_DynamicQuantizeLinear"), {}, [x], [xq, xs, xz]))
        dql[x.name] = (xq, xs, xz)
    xq, xs, xz = dql[x.name]
    acc = gs.Variable(name(f"{base}_int32"), dtype=np.int32)
    accf = gs.Variable(name(f"{base}_float"), dtype=np.float32)
    scale = gs.Variable(name(f"{base}_scale"), dtype=np.float32)
    node.outputs.clear()  # detach Y first: the float layer becomes dead, cleanup drops it
    scaled = gs.Variable(name(f"{base}_scaled"), dtype=np.float32) if bias is not None else y
    nodes += [
        gs.Node("MatMulInteger", name(f"{base}_MatMulInteger"), {}, [xq, wq, xz, wz], [acc]),
        gs.Node("Mul", name(f"{base}_scale_Mul"), {}, [xs, ws], [scale]),
        gs.Node("Cast", name(f"{base}_Cast"), {"to": onnx.TensorProto.FLOAT}, [acc], [accf]),
        gs.Node("Mul", name(f"{base}_output_Mul"), {}, [accf, scale], [scaled]),
    ]
    if bias is not None:
        nodes.append(gs.Node("Add", name(f"{base}_bias_Add"), {}, [scaled, bias], [y]))
    return nodes
