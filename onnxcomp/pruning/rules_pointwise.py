"""Pruning coupling rules of the element-wise ops, softmax, Q/DQ, pooling and reductions.

Element-wise ops broadcast from the right; an input whose dim is 1 on the axis is a
broadcast (not sliced), otherwise it is coupled (residual joins couple both sides).
Unary ops, pooling and reductions pass a channel through unless they act across it.

See `onnxcomp.pruning.rules_base` for what a rule is.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxcomp.pruning.rules_base import (
    IN0,
    IN1,
    IN2,
    OUT0,
    Frozen,
    Link,
    Port,
    RuleEnv,
    RuleResult,
    attr_axis,
    couple,
    ident,
    rule,
)


# ----------------------------------------------------------------------------- element-wise


@rule("Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "PRelu", "Where", "Mod",
      "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "BitShift")
def elementwise_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Numpy broadcasting: inputs whose dim equals the output dim are coupled, dims of 1 are broadcast."""
    y = node.outputs[0]
    ry = env.rank(y)
    if ry is None:
        return Frozen(f"{node.op} with unknown output rank")
    if port.out:
        oa = axis
    else:
        r = env.rank(node.inputs[port.index])
        if r is None:
            return Frozen(f"{node.op} with unknown input rank")
        oa = axis + (ry - r)
    d = env.dim(y, oa)
    if not isinstance(d, int):
        return Frozen(f"{node.op}: unknown size of axis {oa}")
    cls = [ident(OUT0, oa)]
    for i, t in enumerate(node.inputs):
        s = env.shape(t)
        if s is None:
            return Frozen(f"{node.op}: input {t.name!r} has unknown shape")
        j = oa - (ry - len(s))
        if j >= 0 and s[j] == d and d != 1:
            cls.append(ident(Port(False, i), j))
    res = couple(node, port, axis, [cls])
    return res if res is not None else Frozen(f"{node.op}: axis {axis} is broadcast")


_UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Sin", "Cos", "Not", "Clip", "Cast", "Identity", "Dropout", "ThresholdedRelu", "IsNaN", "IsInf",
)


@rule(*_UNARY)
def unary_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Element-wise unary ops: output 0 mirrors input 0; scalar extras (Clip min/max) stay."""
    if port.out and port.index != 0:
        return Frozen(f"{node.op}: extra output")
    if not port.out and port.index != 0:
        return Frozen(f"{node.op}: channel reached a parameter input")
    return [Link(node.outputs[0] if not port.out else node.inputs[0], axis)]


def _softmax(node: gs.Node, port: Port, axis: int, env: RuleEnv, default_axis: int, coerce_2d: bool) -> RuleResult:
    r = env.rank(node.inputs[0])
    sa = attr_axis(node, "axis", default_axis, r)
    # Before opset 13 the input is coerced to 2-D at `axis`: every axis >= it is normalized.
    if sa is None or axis == sa or (coerce_2d and axis >= sa):
        return Frozen(f"{node.op} normalizes over the channel axis")
    return [Link(node.outputs[0] if not port.out else node.inputs[0], axis)]


@rule("Softmax", "LogSoftmax", "Hardmax", since=13)
def softmax_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Softmax over another axis passes channels through; over the channel axis it freezes."""
    return _softmax(node, port, axis, env, -1, False)


@rule("Softmax", "LogSoftmax", "Hardmax", until=12)
def softmax_rule_v1(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Softmax (opset < 13, 2-D coercion at ``axis``)."""
    return _softmax(node, port, axis, env, 1, True)


@rule("QuantizeLinear", "DequantizeLinear")
def qdq_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Q/DQ: data passes through; per-channel scale/zero-point on that axis are coupled."""
    r = env.rank(node.inputs[0])
    qa = attr_axis(node, "axis", 1, r)
    s = env.shape(node.inputs[1]) if len(node.inputs) > 1 else None
    per_channel = bool(s) and len(s) == 1 and s[0] != 1
    if port.out or port.index == 0:
        cls = [ident(IN0, axis), ident(OUT0, axis)]
        if per_channel and qa == axis:
            cls += [ident(IN1, 0), ident(IN2, 0)]
    else:
        if not per_channel or qa is None:
            return Frozen(f"{node.op}: scale reached on a per-tensor axis")
        cls = [ident(IN0, qa), ident(OUT0, qa), ident(IN1, 0), ident(IN2, 0)]
    res = couple(node, port, axis, [cls])
    return res if res is not None else Frozen(f"{node.op}: bad axis")


# ----------------------------------------------------------------------------- pooling / reductions


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Pooling keeps batch and channel axes; spatial axes freeze (they are not channels)."""
    if (port.out and port.index != 0) or any(o.outputs for o in node.outputs[1:]):
        return Frozen(f"{node.op}: its indices output encodes channel positions")
    if axis > 1:
        return Frozen(f"{node.op}: spatial axis {axis}")
    return [Link(node.outputs[0] if not port.out else node.inputs[0], axis)]


def _reduce_axes(node: gs.Node, env: RuleEnv, r: int) -> list[int] | None:
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and node.inputs[1].name:
        v = env.const(node.inputs[1])
        if v is None:
            return None
        axes = [int(x) for x in v.reshape(-1)]
    else:
        axes = []
    if not axes:
        return [] if int(node.attrs.get("noop_with_empty_axes", 0)) else list(range(r))
    return sorted(a + r if a < 0 else a for a in axes)


@rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def reduce_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Reductions over other axes pass the channel through (shifted if keepdims=0)."""
    if not port.out and port.index != 0:
        return Frozen(f"{node.op}: axes input")
    r = env.rank(node.inputs[0])
    if r is None:
        return Frozen(f"{node.op} with unknown rank")
    axes = _reduce_axes(node, env, r)
    if axes is None:
        return Frozen(f"{node.op} with non-constant axes")
    keep = int(node.attrs.get("keepdims", 1))
    kept_in = [a for a in range(r) if a not in axes]
    if port.out:
        ia = axis if keep else (kept_in[axis] if axis < len(kept_in) else None)
        if ia is None or ia in axes:
            return Frozen(f"{node.op}: reduced axis")
        return [Link(node.inputs[0], ia)]
    if axis in axes:
        return Frozen(f"{node.op} reduces over the channel axis")
    return [Link(node.outputs[0], axis if keep else kept_in.index(axis))]

