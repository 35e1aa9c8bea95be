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
  without ever being materialised. Rules are a registry keyed by (domain, op_type, opset
  range) of stateless functions.
* **onnxruntime** for everything else (MatMul of two weights, Sqrt, Pow, …): all such nodes
  of one sweep are put into ONE small model (their constant inputs as initializers, all
  their outputs as graph outputs) and run by one session. Chains of such nodes evaluate
  in that single run. Before running, ONNX shape inference on the small model drops nodes
  whose output would exceed the size limit.

Never folded: random ops (RandomNormal*, RandomUniform*, Bernoulli, Multinomial), ops with
subgraphs (If/Loop/Scan), sequence/optional ops, custom-domain ops, and nodes producing a
graph output (the output would become an initializer, which some runtimes reject).

Size limit: an output is materialised only if it is at most ``max_size_bytes`` or no
larger than the node's constant inputs together — folding must not make the model much
bigger (an Expand/Tile of a small constant to a huge tensor stays a node).

Models with IR version < 4 are left alone: there every initializer must also be a graph
input, so new initializers would make the model invalid.

Subgraphs: only the main graph is folded. If/Loop/Scan bodies are left alone on purpose:
their nodes can read outer-scope values and run conditionally or per iteration, and
the manager's checks run on the main graph's outputs; a constant computed inside a body
is cheap compared with the risk. (Constants of the main graph that bodies read do fold.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxcomp import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.errors import UsageError
from onnxcomp.ir import (
    RANDOM_OPS,
    OpRules,
    annotate_shapes,
    can_add_initializers,
    cleanup_after_rewrite,
    constant_nbytes,
    constant_node_value,
    default_opset,
    dims_of,
    has_subgraph,
    is_standard,
    np_dtype,
    onnx_elem_type,
    peek_values,
    static_shape,
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


class _Decline(Exception):
    """A numpy rule cannot evaluate this node (unsupported case): leave it to onnxruntime."""


class _TooLarge(Exception):
    """The node's output would exceed the size limit: do not fold it at all."""


@dataclass
class _Eval:
    """Per-node evaluation context handed to numpy rules."""

    opset: int
    max_bytes: int
    input_bytes: int

    def check(self, shape: tuple[int, ...] | list[int], dtype: np.dtype) -> None:
        """Raise `_TooLarge` if a tensor of ``shape``/``dtype`` breaks the size limit."""
        if any(int(d) < 0 for d in shape):
            raise _Decline("negative dimension")
        nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
        if nbytes > self.max_bytes and nbytes > self.input_bytes:
            raise _TooLarge(f"{nbytes} bytes")


_Rule = Callable[[gs.Node, list, _Eval], list[np.ndarray]]

#: The numpy evaluation rules, keyed by (domain, op type, opset range).
_RULES: OpRules[_Rule] = OpRules("fold-constants numpy evaluation")
_rule = _RULES.register


def _find_rule(node: gs.Node, opset: int) -> _Rule | None:
    # The table reads "ai.onnx" as the default domain; nodes spelled that way always went
    # to onnxruntime here (domains used to be compared verbatim), and still do.
    return _RULES.lookup(node.domain, node.op, opset) if node.domain != "ai.onnx" else None


def _ints(a: np.ndarray | None) -> list[int]:
    return [] if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


def _axes(node: gs.Node, inputs: list, pos: int) -> list[int] | None:
    """Axes from the attribute (old opsets) or the input at ``pos`` (opset 13+)."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(inputs) > pos and inputs[pos] is not None:
        return _ints(inputs[pos])
    return None


_NUMERIC = (np.bool_, np.integer, np.floating)


def _numeric(*arrays: np.ndarray) -> None:
    for a in arrays:
        if not issubclass(a.dtype.type, _NUMERIC):
            raise _Decline("non-numeric dtype")


@_rule("Constant")
def _constant(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    value = constant_node_value(node)
    if value is None:
        raise _Decline("sparse or string constant")
    return [value]


@_rule("Identity")
def _identity(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    return [inputs[0]]


@_rule("Shape")
def _shape_of_constant(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    return [_shape_slice(node, inputs[0].shape)]


def _shape_slice(node: gs.Node, shape: tuple[int, ...]) -> np.ndarray:
    """``Shape`` semantics including opset-15 ``start``/``end`` (clamped like Python slices)."""
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return np.array(shape[start:None if end is None else int(end)], dtype=np.int64)


@_rule("Size")
def _size_of_constant(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    return [np.array(inputs[0].size, dtype=np.int64)]


@_rule("Cast")
def _cast(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    _numeric(inputs[0])
    to = int(node.attrs["to"])
    if to in (onnx.TensorProto.STRING, onnx.TensorProto.BFLOAT16) or to >= onnx.TensorProto.FLOAT8E4M3FN:
        raise _Decline("target type without an exact numpy equivalent")
    if to == onnx.TensorProto.FLOAT16 or inputs[0].dtype == np.float16:
        raise _Decline("float16 rounding: leave to onnxruntime")
    return [inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(to))]


@_rule("CastLike", since=15)
def _cast_like(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    _numeric(inputs[0], inputs[1])
    if np.float16 in (inputs[0].dtype, inputs[1].dtype):
        raise _Decline("float16 rounding: leave to onnxruntime")
    return [inputs[0].astype(inputs[1].dtype)]


@_rule("Unsqueeze")
def _unsqueeze(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    axes = _axes(node, inputs, 1)
    if axes is None:
        raise _Decline("no axes")
    out_rank = inputs[0].ndim + len(axes)
    axes = sorted(a + out_rank if a < 0 else a for a in axes)
    out = inputs[0]
    for a in axes:
        out = np.expand_dims(out, a)
    return [out]


@_rule("Squeeze")
def _squeeze(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    axes = _axes(node, inputs, 1)
    x = inputs[0]
    if axes is None:
        return [np.squeeze(x)]
    axes = tuple(a + x.ndim if a < 0 else a for a in axes)
    if any(x.shape[a] != 1 for a in axes):
        raise _Decline("squeezing a dim that is not 1")
    return [np.squeeze(x, axis=axes)]


@_rule("Concat")
def _concat(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    parts = [a for a in inputs if a is not None]
    return [np.concatenate(parts, axis=int(node.attrs["axis"]))]


@_rule("Gather")
def _gather(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    data, idx = inputs[0], inputs[1]
    axis = int(node.attrs.get("axis", 0))
    dim = data.shape[axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise _Decline("index out of range")
    ev.check(data.shape[:axis] + idx.shape + data.shape[axis + 1 :], data.dtype)
    return [np.take(data, idx.astype(np.int64), axis=axis)]


@_rule("Reshape", since=5)
def _reshape(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    x, shape = inputs[0], _ints(inputs[1])
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@_rule("Slice", since=10)
def _slice(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise _Decline("zero step")
        # Python slicing clamps and wraps negative indices exactly as ONNX Slice specifies.
        index[a + x.ndim if a < 0 else a] = slice(s, e, st)
    return [x[tuple(index)].copy()]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], same_dtype: bool = True) -> _Rule:
    def rule(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
        a, b = inputs[0], inputs[1]
        _numeric(a, b)
        if a.dtype == np.float16 or a.dtype != b.dtype:
            raise _Decline("float16 or mixed dtypes")
        ev.check(np.broadcast_shapes(a.shape, b.shape), a.dtype)
        with np.errstate(all="ignore"):
            out = np.asarray(fn(a, b))
        if same_dtype and out.dtype != a.dtype:
            raise _Decline("numpy changed the dtype")
        return [out]

    return rule


for _op, _fn in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply)):
    _rule(_op, since=7)(_binary(_fn))
_rule("Equal", since=7)(_binary(np.equal, same_dtype=False))
_rule("Less", since=7)(_binary(np.less, same_dtype=False))
_rule("Greater", since=7)(_binary(np.greater, same_dtype=False))


@_rule("Div", since=7)
def _div(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    # ONNX integer Div truncates toward zero; numpy floors. Only floats are done here.
    if not (np.issubdtype(inputs[0].dtype, np.floating) and inputs[0].dtype in (np.float32, np.float64)):
        raise _Decline("integer division: leave to onnxruntime")
    return _binary(np.divide)(node, inputs, ev)


@_rule("Where", since=9)
def _where(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    c, x, y = inputs
    ev.check(np.broadcast_shapes(c.shape, x.shape, y.shape), x.dtype)
    return [np.where(c, x, y)]


@_rule("Transpose")
def _transpose(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    perm = node.attrs.get("perm")
    return [np.ascontiguousarray(np.transpose(inputs[0], perm))]


@_rule("ConstantOfShape", since=9)
def _constant_of_shape(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    shape = _ints(inputs[0])
    value = node.attrs.get("value")
    fill = peek_values(value).reshape(-1) if isinstance(value, gs.Constant) else np.zeros(1, np.float32)
    ev.check(shape, fill.dtype)
    return [np.full(shape, fill[0], dtype=fill.dtype)]


@_rule("Range", since=11)
def _range(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(a).reshape(()) for a in inputs)
    if not np.issubdtype(start.dtype, np.integer):
        raise _Decline("float Range accumulates differently: leave to onnxruntime")
    if int(delta) == 0:
        raise _Decline("zero delta")
    n = max(math.ceil((int(limit) - int(start)) / int(delta)), 0)
    ev.check((n,), start.dtype)
    return [np.arange(int(start), int(start) + n * int(delta), int(delta), dtype=start.dtype)[:n]]


@_rule("Expand", since=8)
def _expand(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    x, shape = inputs[0], _ints(inputs[1])
    try:
        out_shape = np.broadcast_shapes(x.shape, tuple(shape))
    except ValueError:
        raise _Decline("shapes do not broadcast") from None
    ev.check(out_shape, x.dtype)
    return [np.broadcast_to(x, out_shape).copy()]


@_rule("Tile", since=6)
def _tile(node: gs.Node, inputs: list, ev: _Eval) -> list[np.ndarray]:
    x, reps = inputs[0], _ints(inputs[1])
    if len(reps) != x.ndim:
        raise _Decline("repeats rank mismatch")
    ev.check([d * r for d, r in zip(x.shape, reps)], x.dtype)
    return [np.tile(x, reps)]


# --------------------------------------------------------------------------- the pass


@dataclass(frozen=True, kw_only=True)
class FoldConstantsOptions(PassOptions):
    """Options of `fold-constants`."""

    max_size_bytes: int = field(
        default=1 << 20,
        metadata={"help": "never materialise an output larger than this unless it is no larger than the node's constant inputs"},
    )
    shapes: bool = field(default=True, metadata={"help": "fold Shape/Size of tensors with fully static shapes"})
    onnxruntime: bool = field(default=True, metadata={"help": "evaluate ops without a numpy rule in one onnxruntime session per sweep"})

    def __post_init__(self) -> None:
        if self.max_size_bytes < 0:
            raise UsageError("max_size_bytes must be >= 0")


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


def _foldable_op(node: gs.Node) -> bool:
    return is_standard(node) and node.op not in _NEVER and not has_subgraph(node)


@register_pass("fold-constants")
class FoldConstants(Pass[FoldConstantsOptions]):
    """Evaluate constant subexpressions (incl. static shape arithmetic) at compile time."""

    lossless = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        if not can_add_initializers(ctx):
            return PassResult(modified=False, stats={"nodes_folded": 0, "skipped": "IR version < 4"})
        if opts.shapes:
            annotate_shapes(graph, ctx)
        stats: dict = {"nodes_folded": 0, "shape_nodes_folded": 0, "onnxruntime_runs": 0, "_declined": set()}
        toposort(graph, recurse_subgraphs=False)
        for _ in range(_MAX_SWEEPS):
            if not self._sweep(graph, ctx, opts, stats):
                break
        # A node declined in several sweeps is counted once.
        stats["declined_too_large"] = len(stats.pop("_declined"))
        modified = stats["nodes_folded"] > 0
        if modified:
            # Folded nodes go now; producers left dead go in the manager's cleanup.
            cleanup_after_rewrite(graph)
        return PassResult(modified=modified, stats=stats)

    # ------------------------------------------------------------------ one sweep
    def _sweep(self, graph: gs.Graph, ctx: PassContext, opts: FoldConstantsOptions, stats: dict) -> bool:
        opset = default_opset(graph)
        folded_before = stats["nodes_folded"]
        batch: list[gs.Node] = []
        pending: set[int] = set()  # ids of tensors the onnxruntime batch will produce
        graph_outputs = {id(t) for t in graph.outputs}
        for node in list(graph.nodes):
            if not node.outputs or not _foldable_op(node):
                continue
            if any(id(t) in graph_outputs for t in node.outputs):
                continue
            if opts.shapes and node.op in ("Shape", "Size") and node.inputs and not isinstance(node.inputs[0], gs.Constant):
                shape = static_shape(node.inputs[0])
                if shape is not None:
                    value = _shape_slice(node, shape) if node.op == "Shape" else np.array(math.prod(shape), dtype=np.int64)
                    self._apply(node, [value], stats)
                    stats["shape_nodes_folded"] += 1
                continue
            if node.op == "CastLike" and len(node.inputs) == 2 and isinstance(node.inputs[0], gs.Constant):
                # Only the *dtype* of the second input matters: known dtype = constant result.
                like = np_dtype(node.inputs[1].dtype)
                if like is not None and not isinstance(node.inputs[1], gs.Constant):
                    src = peek_values(node.inputs[0])
                    if issubclass(src.dtype.type, _NUMERIC) and issubclass(like.type, _NUMERIC) and np.float16 not in (src.dtype, like):
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
            rule = _find_rule(node, opset)
            if any(np_dtype(t.dtype) is None for t in present):
                rule = None  # bfloat16/float8 constants load as float32 in numpy: onnxruntime only
            if rule is not None:
                values = [_value_of(t, node.op) if (t.name or isinstance(t, gs.Constant)) else None for t in node.inputs]
                try:
                    outs = rule(node, values, _Eval(opset, opts.max_size_bytes, input_bytes))
                except _TooLarge:
                    stats["_declined"].add(id(node))
                    continue
                except (_Decline, ValueError, IndexError, TypeError, KeyError) as e:
                    ctx.logger.debug("fold-constants: numpy rule declined %s (%s): %s", node.name, node.op, e)
                    outs = None
                if outs is not None:
                    if self._fits(outs, input_bytes, opts):
                        self._apply(node, outs, stats)
                    else:
                        stats["_declined"].add(id(node))
                    continue
            if opts.onnxruntime:
                batch.append(node)
                pending.update(id(t) for t in node.outputs)
        if batch:
            self._fold_with_onnxruntime(graph, batch, ctx, opts, stats)
        return stats["nodes_folded"] > folded_before

    @staticmethod
    def _fits(outs: list[np.ndarray], input_bytes: int, opts: FoldConstantsOptions) -> bool:
        total = sum(o.nbytes for o in outs)
        return total <= opts.max_size_bytes or total <= input_bytes

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
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.log_severity_level = 3
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
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
            if not self._fits(arrays, input_bytes, opts):
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
        model.ir_version = ctx.original_model.ir_version or model.ir_version
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
            if out_bytes > opts.max_size_bytes and out_bytes > max(input_bytes, 1):
                stats["_declined"].add(id(n))
                dropped.update(id(t) for t in n.outputs)
                continue
            keep.append(n)
        return keep
