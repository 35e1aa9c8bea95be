"""``fold-constants``: evaluate nodes whose inputs are all known at compile time.

A node is folded when every input is a constant (initializer or ``Constant`` node) and the
node is deterministic: its outputs become initializers and the node disappears. Shape
facts count as constants: ``Shape``/``Size`` of a tensor whose shape is fully static
(from the model's value_info or ONNX shape inference) fold to int64 tensors, so
``Shape → Gather → Unsqueeze → Concat → Reshape`` chains of static-shape exports vanish.

How values are computed — two evaluators, chosen per node:

* **numpy rules** for cheap ops that dominate shape arithmetic (Shape, Gather, Concat,
  Unsqueeze, Slice, Cast, integer/float Add/Sub/Mul, ConstantOfShape, Expand, Range, …).
  They run in-process with no session overhead, and the "expanding" ones compute their
  output size *before* allocating, so a ``ConstantOfShape([1e5, 1e5])`` is declined
  without ever being materialised. The rules live in `onnxcomp.ir.constant_eval`.
* **onnxruntime** for everything else (MatMul of two weights, Sqrt, Pow, …): all such nodes
  of one sweep are put into ONE small model (their constant inputs as initializers, all
  their outputs as graph outputs) and run by one session. Chains of such nodes evaluate
  in that single run. Before running, ONNX shape inference on the small model drops nodes
  whose output would exceed the size limit.

Never folded: random ops (RandomNormal*, RandomUniform*, Bernoulli, Multinomial), ops with
subgraphs (If/Loop/Scan), sequence/optional ops, custom-domain ops, and nodes producing a
graph output (the output would become an initializer, which some runtimes reject).
An ``If`` whose condition has become a constant is replaced by its taken branch
(`onnxcomp.ir.inline_if`): both branches compute the same kind of result, and which one
runs is known.

Size limit: an output is materialised only if it is at most ``max_size_bytes`` or no
larger than the node's constant inputs together — folding must not make the model much
bigger (an Expand/Tile of a small constant to a huge tensor stays a node). An output read
only as a layer's weight (Conv/Gemm/MatMul weights, normalization and RNN parameters,
embedding tables; e.g. a ``ConstantOfShape`` that builds a Conv kernel) gets the larger
``max_weight_bytes``: a normal export stores it as an initializer, onnxruntime builds it
at session start anyway, and only as a constant can later passes (BatchNorm folding,
quantization, pruning) work on it. Neither limit lets an output over ``max_size_bytes``
be made from a large constant that other nodes still read: the model would hold the
constant twice in two layouts (``Transpose`` of the embedding table a tied LM head shares
with the embedding Gather: +113 MB on a 135M decoder).

Models with IR version < 4 fold like any other: `onnxcomp.ir.to_graph` imports their
initializers (which such models must also list as graph inputs) as constants.

Subgraphs: If/Loop/Scan bodies are folded like the main graph. A body node whose inputs
are all constants (its own, or constants of an enclosing graph) computes the same value on
every iteration and in every run, so it folds; anything reading a body input (a loop
counter, a carried or scanned value) or an outer-scope variable is not constant and stays.
Nodes producing a body's outputs stay, as in the main graph. New constants become
initializers of the body that reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxcomp import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.checking import make_session
from onnxcomp.errors import UsageError
from onnxcomp.ir import (
    RANDOM_OPS,
    EvalContext,
    EvalDeclined,
    EvalTooLarge,
    annotate_shapes,
    cleanup_after_rewrite,
    constant_nbytes,
    default_opset,
    dims_of,
    find_eval_rule,
    has_subgraph,
    inline_if,
    is_numeric_dtype,
    is_standard,
    iter_graphs,
    np_dtype,
    onnx_elem_type,
    own_dims_target,
    partial_shape_value,
    peek_values,
    shape_op_value,
    static_shape,
    taken_branch,
    toposort,
)

#: Ops that are never evaluated at compile time (besides random ops and subgraph ops).
_NEVER = frozenset(
    {
        "If", "Loop", "Scan",
        "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
        "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence",
        "Optional", "OptionalGetElement", "OptionalHasElement",
    }
) | RANDOM_OPS

_MAX_SWEEPS = 16


@dataclass(frozen=True, kw_only=True)
class FoldConstantsOptions(PassOptions):
    """Options of `fold-constants`."""

    max_size_bytes: int = field(
        default=1 << 20,
        metadata={"help": "never materialise an output larger than this unless it is no larger than the node's constant inputs"},
    )
    max_weight_bytes: int = field(
        default=1 << 30,
        metadata={"help": "an output read only as a layer weight (Conv/Gemm/MatMul/normalization/RNN parameters, embedding tables) is materialised up to this size"},
    )
    shapes: bool = field(default=True, metadata={"help": "fold Shape/Size of tensors with fully static shapes"})
    onnxruntime: bool = field(default=True, metadata={"help": "evaluate ops without a numpy rule in one onnxruntime session per sweep"})

    def __post_init__(self) -> None:
        if self.max_size_bytes < 0 or self.max_weight_bytes < 0:
            raise UsageError("max_size_bytes and max_weight_bytes must be >= 0")


#: Ops whose numpy rule reads only the *shape* of its input.
_SHAPE_ONLY = frozenset({"Shape", "Size"})


def _value_of(t: gs.Tensor, op: str) -> np.ndarray | None:
    """The value a numpy rule of ``op`` gets for input ``t`` (None if not a constant).

    Lazily loaded weights come as read-only views (one copy instead of two): rules never
    write into their inputs, and `FoldConstants._apply` copies a result that is still such
    a view (Identity, Reshape, ...). For ``Shape``/``Size`` of a weight the payload is not
    loaded at all: they get a zero-strided stand-in of the right shape and dtype.
    """
    if not isinstance(t, gs.Constant):
        return None
    if op in _SHAPE_ONLY:
        return np.broadcast_to(np.zeros((), dtype=np_dtype(t.dtype)), tuple(int(d) for d in t.shape))
    return peek_values(t, readonly=True)


#: Input slots that ops read as parameters: ``op -> input indices``. Exporters store such
#: tensors as initializers, and onnxruntime materialises a constant expression in one of
#: them when the session starts anyway; folding it costs file size, not run-time memory.
_WEIGHT_SLOTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}),
    "ConvTranspose": frozenset({1, 2}),
    "Gemm": frozenset({1, 2}),
    "MatMul": frozenset({1}),
    "BatchNormalization": frozenset({1, 2, 3, 4}),
    "InstanceNormalization": frozenset({1, 2}),
    "LayerNormalization": frozenset({1, 2}),
    "PRelu": frozenset({1}),
    "LSTM": frozenset({1, 2, 3}),
    "GRU": frozenset({1, 2, 3}),
    "RNN": frozenset({1, 2, 3}),
    "Gather": frozenset({0}),
}


#: Ops that only rearrange or retype their first input: a weight read through them (e.g.
#: ``ConstantOfShape → Reshape → Gemm``) is still a weight.
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def _only_weights(node: gs.Node, depth: int = 0) -> bool:
    """True if every output of ``node`` is read, and read only in weight slots of standard
    ops (directly or through at most 4 layout ops)."""
    for t in node.outputs:
        if not t.name:
            continue
        if not t.outputs:
            return False
        for reader in t.outputs:
            if not is_standard(reader):
                return False
            for i, inp in enumerate(reader.inputs):
                if inp is not t or i in _WEIGHT_SLOTS.get(reader.op, ()):
                    continue
                if not (i == 0 and reader.op in _LAYOUT_OPS and depth < 4 and _only_weights(reader, depth + 1)):
                    return False
    return True


def _limit(node: gs.Node, opts: FoldConstantsOptions) -> int:
    """The size limit for ``node``'s outputs (see `FoldConstantsOptions`)."""
    if opts.max_weight_bytes > opts.max_size_bytes and _only_weights(node):
        return opts.max_weight_bytes
    return opts.max_size_bytes


def _keeps_large_input(node: gs.Node, max_bytes: int) -> bool:
    """True if a constant input of ``node`` larger than ``max_bytes`` is also read by another
    node: folding would keep it *and* a large output derived from it (``Transpose(table)``
    of an LM's tied output projection is a 113 MB second copy of the embedding table
    the Gather still reads). Such a node stays; onnxruntime computes it when a session
    starts, and passes that need it as a weight read through it (see `quantize-int8`)."""
    return any(
        isinstance(t, gs.Constant) and any(r is not node for r in t.outputs) and constant_nbytes(t) > max_bytes
        for t in node.inputs
    )


def _foldable_op(node: gs.Node) -> bool:
    return is_standard(node) and node.op not in _NEVER and not has_subgraph(node)


@register_pass("fold-constants")
class FoldConstants(Pass[FoldConstantsOptions]):
    """Evaluate constant subexpressions (incl. static shape arithmetic) at compile time."""

    lossless = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        if opts.shapes:
            annotate_shapes(graph, ctx)
        stats: dict = {"nodes_folded": 0, "shape_nodes_folded": 0, "ifs_inlined": 0, "onnxruntime_runs": 0, "_declined": set()}
        toposort(graph)
        for _ in range(_MAX_SWEEPS):
            folded = self._sweep(graph, ctx, opts, stats)
            inlined = self._inline_constant_ifs(graph, stats)
            if not folded and not inlined:
                break
        # A node declined in several sweeps is counted once.
        stats["declined_too_large"] = len(stats.pop("_declined"))
        modified = stats["nodes_folded"] > 0 or stats["ifs_inlined"] > 0
        if modified:
            # Folded nodes go now; producers left dead go in the manager's cleanup.
            cleanup_after_rewrite(graph)
        return PassResult(modified=modified, stats=stats)

    @staticmethod
    def _inline_constant_ifs(graph: gs.Graph, stats: dict) -> bool:
        """Replace each If whose condition is now a constant by its taken branch."""
        inlined = 0
        for g in list(iter_graphs(graph)):
            for node in list(g.nodes):
                branch = taken_branch(node)
                if branch is not None:
                    inline_if(g, node, branch)
                    inlined += 1
            if inlined:
                toposort(g)
        stats["ifs_inlined"] += inlined
        return inlined > 0

    # ------------------------------------------------------------------ one sweep
    def _sweep(self, graph: gs.Graph, ctx: PassContext, opts: FoldConstantsOptions, stats: dict) -> bool:
        """Fold what can be folded in ``graph`` and its bodies; True if anything was."""
        opset = default_opset(graph)
        folded_before = stats["nodes_folded"]
        batch: list[gs.Node] = []
        pending: set[int] = set()  # ids of tensors the onnxruntime batch will produce
        for g in list(iter_graphs(graph)):
            self._sweep_graph(g, ctx, opts, stats, opset, batch, pending)
        if batch:
            self._fold_with_onnxruntime(graph, batch, ctx, opts, stats)
        return stats["nodes_folded"] > folded_before

    def _sweep_graph(
        self, graph: gs.Graph, ctx: PassContext, opts: FoldConstantsOptions, stats: dict, opset: int, batch: list[gs.Node], pending: set[int]
    ) -> None:
        """One walk over ``graph``'s nodes (not its bodies): numpy folds now, onnxruntime's
        candidates into ``batch``."""
        graph_outputs = {id(t) for t in graph.outputs}
        for node in list(graph.nodes):
            if not node.outputs or not _foldable_op(node):
                continue
            if opts.shapes and node.op == "Reshape" and len(node.inputs) == 2 and not isinstance(node.inputs[1], gs.Constant):
                # Only the target is replaced (the Reshape stays): fine for a graph output too.
                target = own_dims_target(node)
                if target is not None:
                    node.inputs[1] = gs.Constant(f"{node.inputs[1].name}__own_dims", target)
                    stats["nodes_folded"] += 1
                    stats["shape_nodes_folded"] += 1
                continue
            if any(id(t) in graph_outputs for t in node.outputs):
                continue
            if opts.shapes and node.op in ("Shape", "Size") and node.inputs and not isinstance(node.inputs[0], gs.Constant):
                shape = static_shape(node.inputs[0])
                if shape is not None:
                    value = shape_op_value(node, shape) if node.op == "Shape" else np.array(math.prod(shape), dtype=np.int64)
                    self._apply(node, [value], stats)
                    stats["shape_nodes_folded"] += 1
                continue
            if opts.shapes and node.op in ("Gather", "Slice") and not isinstance(node.inputs[0], gs.Constant):
                value = partial_shape_value(node, opset)
                if value is not None:
                    self._apply(node, [value], stats)
                    stats["shape_nodes_folded"] += 1
                continue
            if node.op == "CastLike" and len(node.inputs) == 2 and isinstance(node.inputs[0], gs.Constant):
                # Only the *dtype* of the second input matters: known dtype = constant result.
                like = np_dtype(node.inputs[1].dtype)
                if like is not None and not isinstance(node.inputs[1], gs.Constant):
                    src = peek_values(node.inputs[0])
                    if is_numeric_dtype(src.dtype) and is_numeric_dtype(like) and np.float16 not in (src.dtype, like):
                        self._apply(node, [src.astype(like)], stats)
                        continue
            present = [t for t in node.inputs if t.name or isinstance(t, gs.Constant)]
            if not node.inputs and node.op != "Constant":
                continue  # an op with no inputs that is not Constant: nothing to gain, maybe stateful
            # Decide from types first: loading a weight's payload is only worth it when the
            # node is actually foldable.
            if not all(isinstance(t, gs.Constant) for t in present):
                if all(isinstance(t, gs.Constant) or id(t) in pending for t in present) and opts.onnxruntime:
                    batch.append(node)
                    pending.update(id(t) for t in node.outputs)
                continue
            input_bytes = sum(constant_nbytes(t) for t in present)
            rule = find_eval_rule(node, opset)
            if any(np_dtype(t.dtype) is None for t in present):
                rule = None  # bfloat16/float8 constants load as float32 in numpy: onnxruntime only
            if rule is not None:
                values = [_value_of(t, node.op) if (t.name or isinstance(t, gs.Constant)) else None for t in node.inputs]
                limit = _limit(node, opts)
                try:
                    outs = rule(node, values, EvalContext(opset, limit, input_bytes))
                except EvalTooLarge:
                    stats["_declined"].add(id(node))
                    continue
                except (EvalDeclined, ValueError, IndexError, TypeError, KeyError) as e:
                    ctx.logger.debug("fold-constants: numpy rule declined %s (%s): %s", node.name, node.op, e)
                    outs = None
                if outs is not None:
                    if self._fits(node, outs, input_bytes, limit, opts):
                        self._apply(node, outs, stats)
                    else:
                        stats["_declined"].add(id(node))
                    continue
            if opts.onnxruntime:
                batch.append(node)
                pending.update(id(t) for t in node.outputs)

    @staticmethod
    def _fits(node: gs.Node, outs: list[np.ndarray], input_bytes: int, limit: int, opts: FoldConstantsOptions) -> bool:
        total = sum(o.nbytes for o in outs if o is not None)
        if total > opts.max_size_bytes and _keeps_large_input(node, opts.max_size_bytes):
            return False
        return total <= limit or total <= input_bytes

    @staticmethod
    def _apply(node: gs.Node, outs: list[np.ndarray], stats: dict) -> None:
        """Turn the node's outputs into constants and detach the node.

        Outputs declared with an ONNX-only dtype (bfloat16, float8) have no numpy value type
        to store: such nodes are left as they are.
        """
        if any(t.name and t.dtype is not None and np_dtype(t.dtype) is None for t in node.outputs):
            return
        for t, v in zip(list(node.outputs), outs):
            if not t.name:
                continue
            v = np.asarray(v)
            declared = np_dtype(t.dtype)
            if declared is not None and declared != v.dtype:
                v = v.astype(declared)
            elif not v.flags.writeable:
                v = v.copy()  # a view of the input model's bytes: the new constant owns its payload
            t.to_constant(v)
        for t in list(node.outputs):
            t.inputs.clear()
        node.inputs.clear()
        node.outputs.clear()
        stats["nodes_folded"] += 1

    # ---------------------------------------------------------- onnxruntime batch
    def _fold_with_onnxruntime(
        self, graph: gs.Graph, batch: list[gs.Node], ctx: PassContext, opts: FoldConstantsOptions, stats: dict
    ) -> None:
        """Evaluate ``batch`` (topologically ordered) in one onnxruntime session."""
        batch = self._drop_oversized(graph, batch, ctx, opts, stats)
        if not batch:
            return
        model = self._batch_model(graph, batch, ctx)
        try:
            # One thread: a batch of small constant nodes, run once.
            sess = make_session(model.SerializeToString(), threads=1)
            names = [o.name for o in sess.get_outputs()]
            results = dict(zip(names, sess.run(names, {})))
        except Exception as e:  # an op or dtype onnxruntime lacks: fold nothing from this batch
            ctx.logger.debug("fold-constants: onnxruntime could not evaluate %d nodes: %s", len(batch), e)
            stats["onnxruntime_failures"] = stats.get("onnxruntime_failures", 0) + 1
            return
        stats["onnxruntime_runs"] += 1
        for node in batch:
            outs = [results.get(t.name) if t.name else None for t in node.outputs]
            if any(o is None and t.name for o, t in zip(outs, node.outputs)):
                continue
            arrays = [np.asarray(o) for o in outs if o is not None]
            input_bytes = sum(constant_nbytes(t) for t in node.inputs if isinstance(t, gs.Constant))
            if not self._fits(node, arrays, input_bytes, _limit(node, opts), opts):
                stats["_declined"].add(id(node))
                continue
            self._apply(node, [np.asarray(o) if o is not None else None for o in outs], stats)

    @staticmethod
    def _batch_model(graph: gs.Graph, batch: list[gs.Node], ctx: PassContext) -> onnx.ModelProto:
        nodes = [OnnxExporter.export_node(n) for n in batch]
        inits: dict[str, onnx.TensorProto] = {}
        outputs: list[onnx.ValueInfoProto] = []
        for n in batch:
            for t in n.inputs:
                if isinstance(t, gs.Constant) and t.name not in inits:
                    inits[t.name] = OnnxExporter.export_tensor_proto(t)
            for t in n.outputs:
                if t.name:
                    elem = onnx_elem_type(t.dtype)
                    outputs.append(onnx.helper.make_tensor_value_info(t.name, elem, None) if elem else onnx.ValueInfoProto(name=t.name))
        g = onnx.helper.make_graph(nodes, "fold_constants_batch", [], outputs, list(inits.values()))
        opsets = list(graph.import_domains) if graph.import_domains else [onnx.helper.make_opsetid("", default_opset(graph))]
        model = onnx.helper.make_model(g, opset_imports=opsets)
        # Batch constants are initializers only, which IR < 4 would also require as inputs.
        model.ir_version = max(ctx.original_model.ir_version, 4)
        return model

    def _drop_oversized(
        self, graph: gs.Graph, batch: list[gs.Node], ctx: PassContext, opts: FoldConstantsOptions, stats: dict
    ) -> list[gs.Node]:
        """Remove batch nodes whose inferred output is too large (and nodes depending on them)."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self._batch_model(graph, batch, ctx), data_prop=True)
        except Exception:
            return batch
        sizes: dict[str, int] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            elem = vi.type.tensor_type.elem_type
            dims = dims_of(vi)
            if elem and dims is not None and all(isinstance(d, int) for d in dims):
                try:
                    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize
                except (TypeError, KeyError, ValueError):
                    itemsize = 8  # strings and exotic types: a conservative guess
                sizes[vi.name] = math.prod(dims) * itemsize
        dropped: set[int] = set()
        keep: list[gs.Node] = []
        for n in batch:
            if any(id(t) in dropped for t in n.inputs):
                dropped.update(id(t) for t in n.outputs)
                continue
            input_bytes = sum(constant_nbytes(t) for t in n.inputs if isinstance(t, gs.Constant))
            out_bytes = sum(sizes.get(t.name, 0) for t in n.outputs)
            if out_bytes > _limit(n, opts) and out_bytes > max(input_bytes, 1):
                stats["_declined"].add(id(n))
                dropped.update(id(t) for t in n.outputs)
                continue
            keep.append(n)
        return keep
