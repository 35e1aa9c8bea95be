"""``fold-batchnorm``: fold inference BatchNormalization, and constant per-channel
``Mul``/``Add``, into the op that produces the channels.

Inference BatchNormalization on channel ``c`` (axis 1) is an affine map::

    y = (x − μ) · γ / σ + β,   σ = sqrt(var + ε)
      = x · s + t,             s = γ / σ,   t = β − μ · s

and so are a ``Mul`` by a per-channel constant (t = 0) and an ``Add`` of one (s = 1). If
``x`` comes from an op linear in constant weights, the map folds into those weights:
W' = W·s, b' = b·s + t (for a BN: W' = W·γ/σ, b' = (b − μ)·γ/σ + β). The per-producer
algebra lives in `onnxcomp.ir.affine` (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``
with a 2-D weight, and inference ``BatchNormalization`` itself: a BN absorbs the
Caffe-style ``Scale`` Mul/Add after it, γ' = γ·s, β' = β·s + t).

What fires, and why it may not:

* a BN folds into its producer when the producer's output is read by the BN alone and is
  not a graph output (changing the producer would change its other readers). BN's channel
  is axis 1 while MatMul's is the last axis: they coincide only for a 2-D MatMul, which
  becomes ``Gemm(A, W·s, t)``; higher ranks decline.
* a constant ``Mul``/``Add`` folds when the constant is a per-channel vector of the
  producer's channel axis ([C], [C,1,…] or [1,C,1,…] for Conv/BN; [N] for Gemm/MatMul) or
  a single value, so it cannot broadcast the output to a larger shape. A shift after an
  N-D ``MatMul`` needs a ``Gemm``, which is 2-D: ``MatMul(x, W) + t`` with x = [*lead, K]
  of static shape becomes ``Reshape(x, [M, K]) → Gemm → Reshape([*lead, N])``, only where
  that *saves* nodes after `eliminate-identity` collapses reshape chains — the input
  Reshape is shared by all MatMuls of x (e.g. Q/K/V projections) and an output Reshape
  read only by Reshapes disappears (``Linear → view`` in attention).
* a BN with nothing to fold into stays a BN (one node, one kernel), unless option
  ``decompose`` turns it into ``Mul`` + ``Add`` with constants shaped [C, 1, …].
* training-mode BN (``training_mode=1`` or its running-stat outputs in use) never folds.

Math is done in float64 and cast back to the weight dtype; weights are never modified in
place (a weight may be shared by other nodes): new constants are created.

Subgraphs: only the main graph is rewritten (BN inside If/Loop bodies is left alone: the
producer may live in the outer scope, and exporters do not put BN there in practice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.ir import (
    annotate_shapes,
    batchnorm_affine,
    bypass,
    cleanup_after_rewrite,
    constant_value,
    float_weight_meta,
    fold_channel_affine,
    is_graph_output,
    is_standard,
    np_dtype,
    output_channels,
    static_shape,
    toposort,
    unique_namer,
)


@dataclass(frozen=True, kw_only=True)
class FoldBatchNormOptions(PassOptions):
    """Options of `fold-batchnorm`."""

    decompose: bool = field(default=False, metadata={"help": "turn a BN with no foldable producer into Mul + Add"})
    bias: bool = field(
        default=True, metadata={"help": "also fold constant per-channel Mul/Add into Conv/ConvTranspose/Gemm/MatMul/BatchNormalization"}
    )


def _const(t: gs.Tensor) -> np.ndarray | None:
    """The value of ``t`` if it is a constant, as a possibly read-only view: this pass only
    reads constants (and builds new arrays from them), so a weight is loaded with one copy."""
    return constant_value(t, readonly=True)


# --------------------------------------------------------------- per-channel Mul / Add

_RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})


def _affine_operand(node: gs.Node, x: gs.Tensor) -> np.ndarray | None:
    """The float constant that ``node`` (a Mul or Add) combines ``x`` with, else None."""
    if node.op not in ("Mul", "Add") or not is_standard(node) or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is x else node.inputs[0]
    if other is x:
        return None
    v = _const(other)
    return v if v is not None and v.dtype in (np.float16, np.float32, np.float64) else None


def _channel_vector(c: np.ndarray, n: int, out_rank: int, channel_axis: int) -> np.ndarray | None:
    """``c`` as an [n] vector if combining it is per-channel and cannot enlarge the output."""
    if c.ndim > out_rank:
        return None
    if c.size == 1:
        return np.full(n, float(c.reshape(-1)[0]))
    if c.size != n:
        return None
    shape = (1,) * (out_rank - c.ndim) + c.shape
    expect = [1] * out_rank
    expect[channel_axis] = n
    return c.reshape(-1).astype(np.float64) if list(shape) == expect else None


def _out_layout(node: gs.Node) -> tuple[int, int] | None:
    """(rank, channel axis) of ``node``'s output, or None if unknown."""
    if node.op in ("Conv", "ConvTranspose"):
        meta = float_weight_meta(node.inputs[1])
        return None if meta is None else (len(meta[1]), 1)
    if node.op == "Gemm":
        return 2, 1
    shape = node.inputs[0].shape
    if shape is None:
        return None
    if node.op == "MatMul":
        return max(len(shape), 2), max(len(shape), 2) - 1
    return (len(shape), 1) if len(shape) >= 2 else None  # BatchNormalization


def _single_reader(graph: gs.Graph, t: gs.Tensor) -> gs.Node | None:
    if len(t.outputs) != 1 or is_graph_output(graph, t):
        return None
    return t.outputs[0]


def _reshape_reader_safe(node: gs.Node, t: gs.Tensor) -> bool:
    """``node`` is a Reshape of ``t`` whose target has no 0 (copy-dim) entry: it does not
    care about ``t``'s own shape, so ``t`` may be replaced by any tensor with the same data."""
    if node.op != "Reshape" or not is_standard(node) or node.inputs[0] is not t:
        return False
    target = _const(node.inputs[1])
    return target is not None and (node.attrs.get("allowzero", 0) or not np.any(target == 0))


def fold_channel_ops(graph: gs.Graph, fresh) -> int:
    """Fold constant per-channel Mul/Add into the producer of their input; return the count.

    A producer absorbs a whole chain (``Conv → Mul → Add``) in one walk.
    """
    folded = 0
    matmul_groups: dict[int, list[tuple[gs.Node, gs.Node, np.ndarray]]] = {}
    # A reader inside an If/Loop body may write that body's output, which `bypass` cannot
    # rename from here: only main-graph readers fold.
    main = {id(n) for n in graph.nodes}
    for node in list(graph.nodes):
        if node.op not in _PRODUCERS or not is_standard(node) or len(node.outputs) != 1 or not node.inputs:
            continue
        while True:
            # Recomputed after each fold: a 2-D MatMul that took a bias is a Gemm now.
            n, layout = output_channels(node), _out_layout(node)
            y = node.outputs[0]
            reader = _single_reader(graph, y)
            c = _affine_operand(reader, y) if reader is not None and id(reader) in main else None
            v = _channel_vector(c, n, *layout) if c is not None and n is not None and layout is not None else None
            if v is None or reader is None:
                break
            if reader.op == "Add" and node.op == "MatMul" and layout[0] > 2:
                if static_shape(node.inputs[0]) is not None and static_shape(y) is not None:
                    matmul_groups.setdefault(id(node.inputs[0]), []).append((node, reader, v))
                break
            s, t = (v, np.zeros(n)) if reader.op == "Mul" else (np.ones(n), v)
            if not fold_channel_affine(node, s, t, fresh):
                break
            bypass(graph, reader, y, reader.outputs[0])
            folded += 1
    for members in matmul_groups.values():
        folded += _fold_matmul_group(graph, members, fresh)
    return folded


def _fold_matmul_group(graph: gs.Graph, members: list[tuple[gs.Node, gs.Node, np.ndarray]], fresh) -> int:
    """Turn N-D ``MatMul(x, W_i) + t_i`` (all on one x) into Gemms if that saves nodes."""
    x = members[0][0].inputs[0]
    shape_x = static_shape(x)
    assert shape_x is not None
    m = int(np.prod(shape_x[:-1]))
    group_ids = {id(mm) for mm, _, _ in members}
    # Input side: a new Reshape, unless x comes from a reshape-like op read only by this
    # group (then eliminate-identity collapses the two reshapes into one).
    x_from_reshape = len(x.inputs) == 1 and x.inputs[0].op in _RESHAPE_OPS and not is_graph_output(graph, x) and all(
        id(r) in group_ids for r in x.outputs
    )
    cost = 0 if x_from_reshape else 1
    out_free = []
    for mm, add, _ in members:
        y = add.outputs[0]
        free = bool(y.outputs) and not is_graph_output(graph, y) and all(_reshape_reader_safe(r, y) for r in y.outputs)
        out_free.append(free)
        cost += 0 if free else 1
    if cost >= len(members):  # each member saves one node (the Add); the reshapes must cost less
        return 0
    k = shape_x[-1]
    x2d = gs.Variable(fresh("gemm_in"), dtype=x.dtype, shape=[m, k])
    graph.nodes.append(
        gs.Node("Reshape", name=fresh("gemm_in_reshape"), inputs=[x, gs.Constant(fresh("gemm_in_shape"), np.array([m, k], np.int64))], outputs=[x2d])
    )
    for (mm, add, t), free in zip(members, out_free):
        meta = float_weight_meta(mm.inputs[1])
        assert meta is not None
        w_dtype, (_, n) = meta
        y = add.outputs[0]
        y2d = gs.Variable(fresh("gemm_out"), dtype=y.dtype, shape=[m, n])
        add.inputs.clear()
        add.outputs.clear()
        mm.op = "Gemm"
        mm.attrs = {"alpha": 1.0, "beta": 1.0}
        mm.inputs[0] = x2d
        mm.inputs.append(gs.Constant(fresh(mm.name or "gemm_c"), t.astype(w_dtype)))
        old_out = mm.outputs[0]
        mm.outputs[0] = y2d
        old_out.inputs.clear()
        if free:
            for r in list(y.outputs):
                r.inputs[0] = y2d
        else:
            back = gs.Constant(fresh("gemm_out_shape"), np.array(list(shape_x[:-1]) + [n], np.int64))
            graph.nodes.append(gs.Node("Reshape", name=fresh("gemm_out_reshape"), inputs=[y2d, back], outputs=[y]))
    return len(members)


@register_pass("fold-batchnorm")
class FoldBatchNorm(Pass[FoldBatchNormOptions]):
    """Fold inference BatchNormalization and per-channel Mul/Add into Conv/Gemm/MatMul weights."""

    lossless = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        has_bn = any(n.op == "BatchNormalization" for n in graph.nodes)
        if not has_bn and not (opts.bias and any(n.op in ("Add", "Mul") for n in graph.nodes)):
            return PassResult(modified=False, stats={"folded": 0, "decomposed": 0, "bias_folded": 0})
        annotate_shapes(graph, ctx)
        fresh = unique_namer(graph, "bnfold")
        folded = decomposed = 0
        # Main-graph nodes, for the "producer is not an outer-scope node" test. Nodes the
        # loop below adds (Mul/Add of decomposed BNs) are never foldable producers.
        main_nodes = {id(n) for n in graph.nodes}
        for bn in list(graph.nodes):
            if bn.op != "BatchNormalization" or not is_standard(bn) or not bn.inputs:
                continue
            if any(t.outputs or is_graph_output(graph, t) for t in bn.outputs[1:]):
                continue  # running mean/var outputs in use: a training graph
            affine = batchnorm_affine(bn)
            if affine is None:
                continue
            s, t = affine
            x, y = bn.inputs[0], bn.outputs[0]
            if self._fold_into_producer(graph, main_nodes, x, s, t, fresh):
                bypass(graph, bn, x, y)
                folded += 1
            elif opts.decompose and self._decompose(graph, bn, x, y, s, t, fresh):
                decomposed += 1
        bias_folded = fold_channel_ops(graph, fresh) if opts.bias else 0
        modified = bool(folded or decomposed or bias_folded)
        if modified:
            # Replaced nodes go now; the manager's cleanup removes any left dead.
            cleanup_after_rewrite(graph)
            toposort(graph)
        return PassResult(modified=modified, stats={"folded": folded, "decomposed": decomposed, "bias_folded": bias_folded})

    @staticmethod
    def _fold_into_producer(graph: gs.Graph, main_nodes: set[int], x: gs.Tensor, s: np.ndarray, t: np.ndarray, fresh) -> bool:
        if len(x.inputs) != 1 or len(x.outputs) != 1 or is_graph_output(graph, x):
            return False  # x is read elsewhere: changing its producer would change them too
        producer = x.inputs[0]
        if not is_standard(producer) or len(producer.outputs) != 1 or id(producer) not in main_nodes:
            return False
        if producer.op == "MatMul" and (producer.inputs[0].shape is None or len(producer.inputs[0].shape) != 2):
            return False  # BN's channel is axis 1, MatMul's the last: the same only in 2-D
        if producer.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"):
            return False
        return fold_channel_affine(producer, s, t, fresh)

    @staticmethod
    def _decompose(graph: gs.Graph, bn: gs.Node, x: gs.Tensor, y: gs.Tensor, s: np.ndarray, t: np.ndarray, fresh) -> bool:
        rank = len(x.shape) if x.shape is not None else None
        dtype = np_dtype(x.dtype) if x.dtype is not None else _const(bn.inputs[1]).dtype  # type: ignore[union-attr]
        if rank is None or rank < 2 or dtype not in (np.float16, np.float32, np.float64):
            return False
        shape = (s.size,) + (1,) * (rank - 2)
        scale = gs.Constant(fresh("bn_scale"), s.reshape(shape).astype(dtype))
        shift = gs.Constant(fresh("bn_shift"), t.reshape(shape).astype(dtype))
        mid = gs.Variable(fresh("bn_scaled"), dtype=dtype, shape=x.shape)
        bn.inputs.clear()
        outs = list(bn.outputs)
        bn.outputs.clear()
        graph.nodes.append(gs.Node("Mul", name=fresh("bn_mul"), inputs=[x, scale], outputs=[mid]))
        graph.nodes.append(gs.Node("Add", name=fresh("bn_add"), inputs=[mid, shift], outputs=[outs[0]]))
        return True
