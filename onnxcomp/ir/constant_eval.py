"""Evaluate standard ONNX ops on numpy constants, cheaply and with size checks first.

Constant folding (``fold-constants``) evaluates the cheap ops that dominate shape
arithmetic (Shape, Gather, Concat, Unsqueeze, Slice, Cast, integer/float Add/Sub/Mul,
ConstantOfShape, Expand, Range, ...) here, in-process as numpy, with no onnxruntime
session to build. What this module adds over plain numpy:

* **size checks before allocating**: a rule whose output can be much larger than its
  inputs (ConstantOfShape, Expand, Tile, Range, Gather, broadcasting binaries) computes the
  output shape first and calls `EvalContext.check`, which raises `EvalTooLarge`, so a
  ``ConstantOfShape([1e5, 1e5])`` is refused without ever being materialised;
* **exact ONNX semantics or nothing**: a rule raises `EvalDeclined` for a case it does not
  handle, in particular wherever numpy would not match ONNX exactly (integer Div, float16
  rounding, float Range, ...), and the caller evaluates the node another way (onnxruntime).
  Malformed inputs may also surface as numpy's ``ValueError``, ``IndexError``,
  ``TypeError`` or ``KeyError``; callers treat those as a decline too.

Rules are stateless functions ``rule(node, inputs, ctx) -> outputs`` in `EVAL_RULES`, an
`onnxcomp.ir.OpRules` table keyed by (domain, op type, opset range); `find_eval_rule`
picks the one for a node. A rule gets the node's input values (None for an absent optional
input), never writes into them, and may return one of them or a view of one: a caller
that stores a result copies it first if it must own its bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.ir.graph import constant_node_value, constant_value, is_standard, peek_values
from onnxcomp.ir.rules import OpRules


class EvalDeclined(Exception):
    """A numpy rule cannot evaluate this node (unsupported case): leave it to onnxruntime."""


class EvalTooLarge(Exception):
    """The node's output would exceed the size limit: do not fold it at all."""


@dataclass
class EvalContext:
    """Per-node evaluation context handed to numpy rules.

    Attributes:
        opset: The default-domain opset of the graph.
        max_bytes: Outputs up to this many bytes are always accepted.
        input_bytes: Bytes of the node's constant inputs together: a larger output is
            accepted up to this size too (folding may move bytes, not multiply them).
    """

    opset: int
    max_bytes: int
    input_bytes: int

    def check(self, shape: tuple[int, ...] | list[int], dtype: np.dtype) -> None:
        """Check a tensor of ``shape``/``dtype`` against the size limit before it is allocated.

        Raises:
            EvalTooLarge: The tensor would break the size limit.
            EvalDeclined: ``shape`` has a negative dimension.
        """
        if any(int(d) < 0 for d in shape):
            raise EvalDeclined("negative dimension")
        nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
        if nbytes > self.max_bytes and nbytes > self.input_bytes:
            raise EvalTooLarge(f"{nbytes} bytes")


#: ``rule(node, inputs, ctx) -> outputs``: the node's input values (None for an absent
#: optional input) to its output values; raises `EvalDeclined` or `EvalTooLarge`.
EvalRule = Callable[[gs.Node, list, EvalContext], list[np.ndarray]]

#: The numpy evaluation rules, keyed by (domain, op type, opset range).
EVAL_RULES: OpRules[EvalRule] = OpRules("fold-constants numpy evaluation")
_rule = EVAL_RULES.register


def find_eval_rule(node: gs.Node, opset: int) -> EvalRule | None:
    """The numpy rule that evaluates ``node`` at ``opset``, or None (evaluate it another way)."""
    # The table reads "ai.onnx" as the default domain; nodes spelled that way always went
    # to onnxruntime here (domains used to be compared verbatim), and still do.
    return EVAL_RULES.lookup(node.domain, node.op, opset) if node.domain != "ai.onnx" else None


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


def is_numeric_dtype(dtype: np.dtype) -> bool:
    """True for bool, integer and float dtypes: the ones the numpy rules compute with."""
    return issubclass(dtype.type, _NUMERIC)


def _numeric(*arrays: np.ndarray) -> None:
    for a in arrays:
        if not is_numeric_dtype(a.dtype):
            raise EvalDeclined("non-numeric dtype")


@_rule("Constant")
def _constant(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    value = constant_node_value(node)
    if value is None:
        raise EvalDeclined("sparse or string constant")
    return [value]


@_rule("Identity")
def _identity(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    return [inputs[0]]


@_rule("Shape")
def _shape_of_constant(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    return [shape_op_value(node, inputs[0].shape)]


def shape_op_value(node: gs.Node, shape: tuple[int, ...]) -> np.ndarray:
    """The output of ``Shape`` node ``node`` for an input of ``shape`` (int64).

    Includes the opset-15 ``start``/``end`` attributes, clamped like Python slices.
    """
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return np.array(shape[start:None if end is None else int(end)], dtype=np.int64)


@_rule("Size")
def _size_of_constant(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    return [np.array(inputs[0].size, dtype=np.int64)]


@_rule("Cast")
def _cast(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    _numeric(inputs[0])
    to = int(node.attrs["to"])
    if to in (onnx.TensorProto.STRING, onnx.TensorProto.BFLOAT16) or to >= onnx.TensorProto.FLOAT8E4M3FN:
        raise EvalDeclined("target type without an exact numpy equivalent")
    if to == onnx.TensorProto.FLOAT16 or inputs[0].dtype == np.float16:
        raise EvalDeclined("float16 rounding: leave to onnxruntime")
    return [inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(to))]


@_rule("CastLike", since=15)
def _cast_like(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    _numeric(inputs[0], inputs[1])
    if np.float16 in (inputs[0].dtype, inputs[1].dtype):
        raise EvalDeclined("float16 rounding: leave to onnxruntime")
    return [inputs[0].astype(inputs[1].dtype)]


@_rule("Unsqueeze")
def _unsqueeze(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    axes = _axes(node, inputs, 1)
    if axes is None:
        raise EvalDeclined("no axes")
    out_rank = inputs[0].ndim + len(axes)
    axes = sorted(a + out_rank if a < 0 else a for a in axes)
    out = inputs[0]
    for a in axes:
        out = np.expand_dims(out, a)
    return [out]


@_rule("Squeeze")
def _squeeze(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    axes = _axes(node, inputs, 1)
    x = inputs[0]
    if axes is None:
        return [np.squeeze(x)]
    axes = tuple(a + x.ndim if a < 0 else a for a in axes)
    if any(x.shape[a] != 1 for a in axes):
        raise EvalDeclined("squeezing a dim that is not 1")
    return [np.squeeze(x, axis=axes)]


@_rule("Concat")
def _concat(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    parts = [a for a in inputs if a is not None]
    return [np.concatenate(parts, axis=int(node.attrs["axis"]))]


@_rule("Gather")
def _gather(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    data, idx = inputs[0], inputs[1]
    axis = int(node.attrs.get("axis", 0))
    dim = data.shape[axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise EvalDeclined("index out of range")
    ev.check(data.shape[:axis] + idx.shape + data.shape[axis + 1 :], data.dtype)
    return [np.take(data, idx.astype(np.int64), axis=axis)]


@_rule("Reshape", since=5)
def _reshape(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    x, shape = inputs[0], _ints(inputs[1])
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@_rule("Slice", since=10)
def _slice(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise EvalDeclined("zero step")
        # Python slicing clamps and wraps negative indices exactly as ONNX Slice specifies.
        index[a + x.ndim if a < 0 else a] = slice(s, e, st)
    return [x[tuple(index)].copy()]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], same_dtype: bool = True) -> EvalRule:
    def rule(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
        a, b = inputs[0], inputs[1]
        _numeric(a, b)
        if a.dtype == np.float16 or a.dtype != b.dtype:
            raise EvalDeclined("float16 or mixed dtypes")
        ev.check(np.broadcast_shapes(a.shape, b.shape), a.dtype)
        with np.errstate(all="ignore"):
            out = np.asarray(fn(a, b))
        if same_dtype and out.dtype != a.dtype:
            raise EvalDeclined("numpy changed the dtype")
        return [out]

    return rule


for _op, _fn in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply)):
    _rule(_op, since=7)(_binary(_fn))
_rule("Equal", since=7)(_binary(np.equal, same_dtype=False))
_rule("Less", since=7)(_binary(np.less, same_dtype=False))
_rule("Greater", since=7)(_binary(np.greater, same_dtype=False))


@_rule("Div", since=7)
def _div(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    # ONNX integer Div truncates toward zero; numpy floors. Only floats are done here.
    if not (np.issubdtype(inputs[0].dtype, np.floating) and inputs[0].dtype in (np.float32, np.float64)):
        raise EvalDeclined("integer division: leave to onnxruntime")
    return _binary(np.divide)(node, inputs, ev)


@_rule("Where", since=9)
def _where(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    c, x, y = inputs
    ev.check(np.broadcast_shapes(c.shape, x.shape, y.shape), x.dtype)
    return [np.where(c, x, y)]


@_rule("Transpose")
def _transpose(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    perm = node.attrs.get("perm")
    return [np.ascontiguousarray(np.transpose(inputs[0], perm))]


@_rule("ConstantOfShape", since=9)
def _constant_of_shape(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    shape = _ints(inputs[0])
    value = node.attrs.get("value")
    fill = peek_values(value).reshape(-1) if isinstance(value, gs.Constant) else np.zeros(1, np.float32)
    ev.check(shape, fill.dtype)
    return [np.full(shape, fill[0], dtype=fill.dtype)]


@_rule("Range", since=11)
def _range(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(a).reshape(()) for a in inputs)
    if not np.issubdtype(start.dtype, np.integer):
        raise EvalDeclined("float Range accumulates differently: leave to onnxruntime")
    if int(delta) == 0:
        raise EvalDeclined("zero delta")
    n = max(math.ceil((int(limit) - int(start)) / int(delta)), 0)
    ev.check((n,), start.dtype)
    return [np.arange(int(start), int(start) + n * int(delta), int(delta), dtype=start.dtype)[:n]]


@_rule("Expand", since=8)
def _expand(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    x, shape = inputs[0], _ints(inputs[1])
    try:
        out_shape = np.broadcast_shapes(x.shape, tuple(shape))
    except ValueError:
        raise EvalDeclined("shapes do not broadcast") from None
    ev.check(out_shape, x.dtype)
    return [np.broadcast_to(x, out_shape).copy()]


@_rule("Tile", since=6)
def _tile(node: gs.Node, inputs: list, ev: EvalContext) -> list[np.ndarray]:
    x, reps = inputs[0], _ints(inputs[1])
    if len(reps) != x.ndim:
        raise EvalDeclined("repeats rank mismatch")
    ev.check([d * r for d, r in zip(x.shape, reps)], x.dtype)
    return [np.tile(x, reps)]



# ----------------------------------------------------------------- shape facts
# Values that depend on a tensor only through the static part of its shape.


def partial_shape_value(node: gs.Node, opset: int) -> np.ndarray | None:
    """The value of ``Gather``/``Slice`` (constant indices) of ``Shape(x)`` when every dim it
    picks is static, though others of x may not be (``Shape(state)[0]`` of a
    [2, batch, 128] state); None otherwise."""
    src = node.inputs[0]
    if len(src.inputs) != 1 or any(not isinstance(t, gs.Constant) for t in node.inputs[1:] if t.name):
        return None
    shape_node = src.inputs[0]
    if shape_node.op != "Shape" or not is_standard(shape_node) or not shape_node.inputs:
        return None
    dims = shape_node.inputs[0].shape
    if dims is None:
        return None
    # -1 stands for a dim that is not static (real dims are >= 0), so it shows in the result.
    known = tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else -1 for d in dims)
    stand_in = shape_op_value(shape_node, known)
    rule = find_eval_rule(node, opset)
    if rule is None:
        return None
    values = [stand_in] + [peek_values(t) if t.name else None for t in node.inputs[1:]]
    try:
        (out,) = rule(node, values, EvalContext(opset, 1 << 20, 0))
    except (EvalDeclined, EvalTooLarge, ValueError, IndexError, TypeError, KeyError):
        return None
    return None if np.any(out < 0) else out


def own_dims_target(node: gs.Node) -> np.ndarray | None:
    """A constant target for ``Reshape(x, Concat(...))`` whose computed entries are x's own
    dims at the same positions (``Reshape(x, [Shape(x)[0], 200])``): those become 0, which
    Reshape reads as "copy this dim of x"; the other entries must be constants."""
    data, target = node.inputs[0], node.inputs[1]
    if node.attrs.get("allowzero", 0) or len(target.inputs) != 1:
        return None
    concat = target.inputs[0]
    if concat.op != "Concat" or not is_standard(concat) or int(concat.attrs.get("axis", 0)) not in (0, -1):
        return None
    entries: list[int] = []
    for piece in concat.inputs:
        value = constant_value(piece)
        if value is not None:
            entries.extend(int(v) for v in value.reshape(-1))
        elif _dim_index(piece, data) == len(entries):
            entries.append(0)
        else:
            return None
    return np.array(entries, np.int64) if entries.count(-1) <= 1 else None


def _dim_index(t: gs.Tensor, data: gs.Tensor) -> int | None:
    """k if one-element ``t`` is dim k of ``data`` (``Shape(data)[k]``, ``Shape(data)[k:k+1]``,
    through integer Casts and Unsqueeze/Squeeze/Reshape; a Cast to int32 is taken to keep
    the dim, i.e. dims below 2**31), else None."""
    for _ in range(6):
        if len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        if not is_standard(node):
            return None
        if node.op in ("Unsqueeze", "Squeeze", "Reshape") or _is_int_cast(node):
            t = node.inputs[0]
            continue
        if node.op not in ("Gather", "Slice"):
            return None
        src = node.inputs[0]
        while len(src.inputs) == 1 and _is_int_cast(src.inputs[0]):  # Shape -> Cast -> Slice
            src = src.inputs[0].inputs[0]
        if len(src.inputs) != 1 or src.inputs[0].op != "Shape" or src.inputs[0].inputs[0] is not data:
            return None
        shape_node = src.inputs[0]
        rank = len(data.shape) if data.shape is not None else None
        if rank is None or int(shape_node.attrs.get("start", 0)) != 0 or shape_node.attrs.get("end") is not None:
            return None
        idx = [constant_value(x) for x in node.inputs[1:] if x.name]
        if any(v is None for v in idx):
            return None
        if any(v.size != 1 for v in idx):
            return None
        first = [int(v.reshape(-1)[0]) for v in idx]
        if node.op == "Gather":
            k = first[0] if int(node.attrs.get("axis", 0)) == 0 else None
        else:  # Slice(starts, ends, axes, steps) of the 1-D shape: one element
            starts, ends = first[0], first[1]
            axis_ok = len(first) < 3 or first[2] in (0, -1)
            step_ok = len(first) < 4 or first[3] == 1
            k = starts if axis_ok and step_ok and (ends == starts + 1 or (starts == -1 and ends >= 1 << 62)) else None
        if k is None:
            return None
        k = k + rank if k < 0 else k
        return k if 0 <= k < rank else None
    return None


def _is_int_cast(node: gs.Node) -> bool:
    return node.op == "Cast" and is_standard(node) and int(node.attrs.get("to", 0)) in (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
