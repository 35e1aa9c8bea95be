"""``eliminate-identity``: remove nodes whose output equals one of their inputs.

A rule per op decides, from constants and static shapes only, that ``y = op(x, ...)`` is
exactly ``y = x`` (same values, same dtype, same shape); the node is then bypassed:

* ``Identity``; ``Concat`` of a single input;
* ``Dropout`` in inference (opset ≥ 12: ``training_mode`` absent or constant false;
  opset 7–11: always inference; older: ``is_test=1``) whose mask output is unused;
* ``Reshape`` to a constant shape that resolves (0 = copy, -1 = infer) to the input's static shape;
* ``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze`` read only by Reshapes with explicit
  targets (no 0 entries): reshapes compose, so the inner one is redundant;
* ``Transpose`` with the identity permutation; ``Cast`` to the input's own dtype;
  a Transpose read only by Transposes is composed into them (q[j] = p1[p2[j]]);
* ``Expand`` whose broadcast result shape equals the input's static shape;
* ``Slice`` with step 1 whose clamped range covers every sliced axis entirely (an axis of
  unknown size only when the slice is ``[0:INT64_MAX]``-like);
* ``Pad`` with all-zero pads;
* ``ReduceMean/Sum/Max/Min/Prod`` with ``keepdims`` over axes of static size 1
  (e.g. global pooling of a 1×1 feature map);
* ``Add``/``Sub`` of an all-zero constant and ``Mul``/``Div`` by an all-one constant, when the
  constant cannot broadcast the input to a larger shape (x + 0 may turn -0.0 into +0.0,
  which no comparison distinguishes).

Graph outputs keep their names: when the removed node writes a graph output, the
producer of its input is renamed to write that output instead (see
`onnxcomp.ir.graph.bypass`). An identity from a graph input (or a constant, or an
outer-scope value) straight to a graph output must stay: without it the output would
have no producer of its own name.

Subgraphs: this pass also works inside If/Loop/Scan bodies (every rule is local and the
body's own outputs are protected exactly like the main graph's).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassContext, PassResult, register_pass
from onnxcomp.ir import (
    OpRules,
    annotate_shapes,
    bypass,
    cleanup_after_rewrite,
    constant_value,
    default_opset,
    is_standard,
    iter_graphs,
    same_dtype,
    static_shape,
)

#: A rule returns the input tensor the node's first output equals, or None (not a no-op).
_Rule = Callable[[gs.Node, int], "gs.Tensor | None"]
#: The no-op tests, keyed by (domain, op type, opset range).
_RULES: OpRules[_Rule] = OpRules("eliminate-identity no-op tests")
_rule = _RULES.register


def _find(node: gs.Node, opset: int) -> _Rule | None:
    # The table reads "ai.onnx" as the default domain; nodes spelled that way were never
    # bypassed by a table rule here (domains used to be compared verbatim), and still are not.
    return _RULES.lookup(node.domain, node.op, opset) if node.domain != "ai.onnx" else None


def _const(t: gs.Tensor) -> np.ndarray | None:
    """The value of ``t`` if it is a constant, as a possibly read-only view: this pass only
    reads constants (and builds new arrays from them), so a weight is loaded with one copy."""
    return constant_value(t, readonly=True)


def _const_ints(node: gs.Node, pos: int) -> list[int] | None:
    if len(node.inputs) <= pos or not node.inputs[pos].name:
        return None
    v = _const(node.inputs[pos])
    return None if v is None else [int(x) for x in v.reshape(-1)]


def _unused(graph_outputs: set[int], t: gs.Tensor) -> bool:
    return not t.outputs and id(t) not in graph_outputs


@_rule("Identity")
def _identity(node: gs.Node, opset: int) -> gs.Tensor | None:
    return node.inputs[0]


@_rule("Concat")
def _concat(node: gs.Node, opset: int) -> gs.Tensor | None:
    return node.inputs[0] if len(node.inputs) == 1 else None


@_rule("Dropout")
def _dropout(node: gs.Node, opset: int) -> gs.Tensor | None:
    if opset >= 12:
        if len(node.inputs) > 2 and node.inputs[2].name:
            mode = _const(node.inputs[2])
            if mode is None or bool(mode.reshape(-1)[0]):
                return None  # training mode (or unknown): dropout is random
    elif opset < 7 and not node.attrs.get("is_test", 0):
        return None
    return node.inputs[0]


def _reshape(node: gs.Node, opset: int) -> gs.Tensor | None:
    shape_in = static_shape(node.inputs[0])
    target = _const_ints(node, 1)
    if shape_in is None or target is None or len(target) != len(shape_in):
        return None
    allowzero = node.attrs.get("allowzero", 0)
    resolved = [shape_in[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if resolved.count(-1) == 1:
        known = int(np.prod([d for d in resolved if d != -1]))
        if known == 0:
            return None
        resolved[resolved.index(-1)] = int(np.prod(shape_in)) // known
    return node.inputs[0] if tuple(resolved) == shape_in else None


def _reshape_any(node: gs.Node, opset: int) -> gs.Tensor | None:
    same = _reshape(node, opset)
    return same if same is not None else _reshape_read_only_by_reshapes(node)


def _reshape_read_only_by_reshapes(node: gs.Node, opset: int = 0) -> gs.Tensor | None:
    """A reshape-like node whose output only feeds Reshapes with explicit targets is a
    no-op: Reshape keeps the element order, so ``Reshape(Reshape(x, s1), s2) == Reshape(x, s2)``
    when s2 has no 0 (copy-this-dim) entries."""
    y = node.outputs[0]
    if not y.outputs:
        return None
    for reader in y.outputs:
        if reader.op != "Reshape" or not is_standard(reader) or reader.inputs[0] is not y or any(t is y for t in reader.inputs[1:]):
            return None
        target = _const(reader.inputs[1])
        if target is None or (not reader.attrs.get("allowzero", 0) and np.any(target == 0)):
            return None
    return node.inputs[0]


_rule("Flatten", "Squeeze", "Unsqueeze")(_reshape_read_only_by_reshapes)


_rule("Reshape", since=5)(_reshape_any)


@_rule("Transpose")
def _transpose(node: gs.Node, opset: int) -> gs.Tensor | None:
    perm = node.attrs.get("perm")
    if perm is None:
        shape = node.inputs[0].shape
        return node.inputs[0] if shape is not None and len(shape) <= 1 else None
    return node.inputs[0] if list(perm) == list(range(len(perm))) else None


@_rule("Cast")
def _cast(node: gs.Node, opset: int) -> gs.Tensor | None:
    if "to" not in node.attrs:
        return None
    # "saturate" only matters for casts *into* float8, never for a same-type cast.
    return node.inputs[0] if same_dtype(node.inputs[0].dtype, int(node.attrs["to"])) else None


@_rule("CastLike", since=15)
def _cast_like(node: gs.Node, opset: int) -> gs.Tensor | None:
    return node.inputs[0] if same_dtype(node.inputs[0].dtype, node.inputs[1].dtype) else None


@_rule("Expand", since=8)
def _expand(node: gs.Node, opset: int) -> gs.Tensor | None:
    shape_in = static_shape(node.inputs[0])
    target = _const_ints(node, 1)
    if shape_in is None or target is None:
        return None
    try:
        out = np.broadcast_shapes(shape_in, tuple(target))
    except ValueError:
        return None
    return node.inputs[0] if tuple(out) == shape_in else None


#: An end at least this large reaches the end of any axis (exporters write INT64_MAX).
_TO_THE_END = 1 << 62


@_rule("Slice", since=10)
def _slice(node: gs.Node, opset: int) -> gs.Tensor | None:
    shape_in = node.inputs[0].shape
    starts, ends = _const_ints(node, 1), _const_ints(node, 2)
    if shape_in is None or starts is None or ends is None:
        return None
    axes = _const_ints(node, 3) if len(node.inputs) > 3 and node.inputs[3].name else list(range(len(starts)))
    steps = _const_ints(node, 4) if len(node.inputs) > 4 and node.inputs[4].name else [1] * len(starts)
    if axes is None or steps is None:
        return None
    rank = len(shape_in)
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st != 1:
            return None  # a reversed or strided slice is never a no-op
        if not -rank <= a < rank:
            return None
        dim = shape_in[a + rank if a < 0 else a]
        if s == 0 and e >= _TO_THE_END:
            continue  # [0:end] of any axis, static or not
        if not isinstance(dim, (int, np.integer)) or dim < 0:
            return None
        lo, hi, _ = slice(s, e, st).indices(int(dim))
        if lo != 0 or hi != dim:
            return None
    return node.inputs[0]


@_rule("Pad", since=2)
def _pad(node: gs.Node, opset: int) -> gs.Tensor | None:
    pads = list(node.attrs["pads"]) if "pads" in node.attrs else _const_ints(node, 1)
    if pads is None or any(pads):
        return None
    return node.inputs[0]


def _reduce_over_unit_axes(node: gs.Node, opset: int) -> gs.Tensor | None:
    """A keepdims reduction over axes that all have static size 1 returns its input."""
    # Only the reduced dims must be static (a symbolic batch dim is fine).
    shape_in = node.inputs[0].shape
    if shape_in is None or not node.attrs.get("keepdims", 1):
        return None
    axes = list(node.attrs["axes"]) if "axes" in node.attrs else _const_ints(node, 1)
    if axes is None:  # no axes: reduce all (or nothing with noop_with_empty_axes)
        axes = [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(len(shape_in)))
    if node.op in ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"):
        return None  # not the identity on single elements (abs, square, log…)
    if any(not -len(shape_in) <= a < len(shape_in) for a in axes):
        return None
    return node.inputs[0] if all(shape_in[a] == 1 for a in axes) else None


_rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")(_reduce_over_unit_axes)


def _neutral(value: float, commutative: bool) -> _Rule:
    """Rule for ``x ∘ c == x`` with ``c`` an all-``value`` constant that cannot enlarge ``x``."""

    def rule(node: gs.Node, opset: int) -> gs.Tensor | None:
        for x_pos, c_pos in ((0, 1), (1, 0)) if commutative else ((0, 1),):
            x, c = node.inputs[x_pos], node.inputs[c_pos]
            cv = _const(c)
            if cv is None or not cv.size or not same_dtype(x.dtype, cv.dtype) or not np.all(cv == value):
                continue
            if cv.ndim == 0:
                return x
            shape_x = static_shape(x)
            if shape_x is not None:
                try:
                    if np.broadcast_shapes(shape_x, cv.shape) == shape_x:
                        return x
                except ValueError:
                    pass
            elif x.shape is not None and cv.ndim <= len(x.shape) and all(d == 1 for d in cv.shape):
                return x
        return None

    return rule


_rule("Add", since=7)(_neutral(0.0, True))
_rule("Sub", since=7)(_neutral(0.0, False))
_rule("Mul", since=7)(_neutral(1.0, True))
_rule("Div", since=7)(_neutral(1.0, False))


def _merge_transpose_chains(graph: gs.Graph, outputs: set[int]) -> int:
    """Compose ``Transpose(Transpose(x, p1), p2)`` into ``Transpose(x, q)``, q[j] = p1[p2[j]].

    Fires when every reader of the inner Transpose is a Transpose (so the inner one dies);
    a composed identity permutation is then removed by the Transpose rule.
    """
    merged = 0
    for inner in list(graph.nodes):
        if inner.op != "Transpose" or not is_standard(inner) or "perm" not in inner.attrs or not inner.outputs:
            continue
        y = inner.outputs[0]
        readers = list(y.outputs)
        if not readers or id(y) in outputs:
            continue
        if not all(r.op == "Transpose" and is_standard(r) and "perm" in r.attrs and r.inputs[0] is y for r in readers):
            continue
        p1 = list(inner.attrs["perm"])
        for r in readers:
            r.attrs["perm"] = [p1[j] for j in r.attrs["perm"]]
            r.inputs[0] = inner.inputs[0]
        inner.inputs.clear()
        inner.outputs.clear()
        merged += 1
    return merged


#: Rules that change the *shape* seen by the output (reshape chains) must not fire when that
#: output is a graph output; these are the shape-exact replacements (None: no rule).
_EXACT_FOR_GRAPH_OUTPUTS: dict[str, _Rule | None] = {"Reshape": _reshape, "Flatten": None, "Squeeze": None, "Unsqueeze": None}


@register_pass("eliminate-identity")
class EliminateIdentity(Pass):
    """Remove Identity, inference Dropout and no-op Reshape/Transpose/Cast/Expand/Slice/Pad nodes."""

    lossless = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        annotate_shapes(graph, ctx)
        opset = default_opset(graph)
        removed: dict[str, int] = {}
        for g in list(iter_graphs(graph)):
            outputs = {id(t) for t in g.outputs}
            merged = _merge_transpose_chains(g, outputs)
            if merged:
                removed["Transpose"] = removed.get("Transpose", 0) + merged
            for node in list(g.nodes):
                if not is_standard(node) or not node.inputs or not node.outputs:
                    continue
                rule = _find(node, opset)
                if id(node.outputs[0]) in outputs and node.op in _EXACT_FOR_GRAPH_OUTPUTS:
                    # A graph output must keep its exact shape: only shape-preserving rules.
                    rule = _EXACT_FOR_GRAPH_OUTPUTS[node.op]
                if rule is None or not node.inputs[0].name:
                    continue
                # Every output but the first must be unused (e.g. Dropout's mask).
                if any(not _unused(outputs, t) for t in node.outputs[1:]):
                    continue
                source = rule(node, opset)
                if source is None:
                    continue
                result = node.outputs[0]
                if source.dtype is not None and result.dtype is not None and not same_dtype(source.dtype, result.dtype):
                    continue
                if bypass(g, node, source, result):
                    removed[node.op] = removed.get(node.op, 0) + 1
            if removed:
                # Bypassed nodes go now; nodes left dead go in the manager's cleanup.
                cleanup_after_rewrite(g)
        total = sum(removed.values())
        return PassResult(modified=total > 0, stats={"nodes_removed": total, **{f"removed_{k}": v for k, v in sorted(removed.items())}})
