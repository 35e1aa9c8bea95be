"""Per-op channel-coupling rules, keyed by (domain, op_type, opset range).

A rule answers one question for one node: *if axis ``axis`` of the tensor at ``port``
loses some positions, which other (tensor, axis) of this node must lose the matching
positions, and through which index mapping?* It returns a list of `Link`, or `Frozen`
with the reason when the node cannot be pruned through (the group is then never
pruned: we never guess).

Rules are stateless functions with one signature::

    rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> list[Link] | Frozen

``axis`` is non-negative; ``env`` gives static shapes and constant values. Supporting a
new op is one function plus ``@rule("OpType")``.

Coupling facts used below (y = output, W = weight, C = channels):

* Conv: W is [Cout, Cin/g, k...]; y[:, o] needs W[o], b[o]; x[:, i] feeds W[:, i].
  Depthwise (g = Cin, W[:, 0] of size 1, multiplier m = Cout/Cin): x[:, c] feeds
  y[:, c*m:(c+1)*m] so input and output channels are one group (expand(m)).
* Gemm / MatMul with a constant weight: the contracted K axis of A couples with W's K
  axis; the N axis of y couples with W's N axis and the bias.
* Element-wise ops broadcast from the right; an input whose dim is 1 on the axis is a
  broadcast (not sliced), otherwise it is coupled (residual joins couple both sides).
* Concat / Split / Slice move positions by an offset (`indexmap.shift`); Reshape and
  Flatten turn a channel into a block of features or a feature into its block
  (`indexmap.expand` / `indexmap.contract`), which is how attention heads
  ([B, S, H*D] <-> [B, S, H, D]) are pruned whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.pruning.indexmap import IDENTITY, IndexMap, contract, expand, shift

Dim = Union[int, str, None]


@dataclass(frozen=True)
class Port:
    """Where a tensor attaches to a node: ``out`` (output) or input, and its index."""

    out: bool
    index: int


@dataclass(frozen=True)
class Link:
    """A coupled axis: ``tensor`` axis ``axis`` reached through ``maps`` (applied in order)."""

    tensor: gs.Tensor
    axis: int
    maps: tuple[IndexMap, ...] = ()


@dataclass(frozen=True)
class Frozen:
    """The node cannot be pruned through; ``reason`` says why (shown by ``inspect``)."""

    reason: str


class RuleEnv:
    """Static facts the rules may read: shapes and constant values.

    Args:
        shapes: Tensor name -> dims (int, symbolic str, or None) from shape inference.
    """

    def __init__(self, shapes: dict[str, list[Dim]]) -> None:
        self._shapes = shapes

    def shape(self, t: gs.Tensor) -> list[Dim] | None:
        """Dims of ``t`` or None when unknown."""
        if isinstance(t, gs.Constant):
            return list(t.values.shape)
        s = self._shapes.get(t.name)
        if s is None and t.shape is not None:
            s = list(t.shape)
        return s

    def rank(self, t: gs.Tensor) -> int | None:
        """Rank of ``t`` or None when unknown."""
        s = self.shape(t)
        return None if s is None else len(s)

    def dim(self, t: gs.Tensor, axis: int) -> Dim:
        """One dim of ``t`` (None when unknown or out of range)."""
        s = self.shape(t)
        if s is None or not (0 <= axis < len(s)):
            return None
        return s[axis]

    @staticmethod
    def const(t: gs.Tensor | None) -> np.ndarray | None:
        """Value of a constant tensor (initializer or ``Constant`` node output), else None."""
        if t is None:
            return None
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
            attrs = t.inputs[0].attrs
            v = attrs.get("value")
            if isinstance(v, gs.Constant):
                return np.asarray(v.values)
            for key, dtype in (("value_ints", np.int64), ("value_int", np.int64), ("value_floats", np.float32),
                               ("value_float", np.float32)):
                if key in attrs:
                    return np.asarray(attrs[key], dtype=dtype)
        return None

    def shape_vector(self, t: gs.Tensor) -> list[int | None] | None:
        """Entries of a 1-D shape tensor: constants, or a Concat of 1-D pieces where
        run-time pieces (e.g. ``Shape(x)[0:1]``) are None. None if not readable."""
        v = self.const(t)
        if v is not None:
            return [int(x) for x in v.reshape(-1)]
        if len(t.inputs) != 1 or t.inputs[0].op != "Concat":
            return None
        out: list[int | None] = []
        for piece in t.inputs[0].inputs:
            pv = self.const(piece)
            if pv is not None:
                out.extend(int(x) for x in pv.reshape(-1))
                continue
            ps = self.shape(piece)
            n = ps[0] if ps is not None and len(ps) == 1 else None
            if not isinstance(n, int):
                return None
            out.extend([None] * n)
        return out


RuleResult = Union[list[Link], Frozen]
RuleFn = Callable[[gs.Node, Port, int, RuleEnv], RuleResult]


@dataclass(frozen=True)
class _Entry:
    since: int
    until: int | None
    fn: RuleFn


_REGISTRY: dict[tuple[str, str], list[_Entry]] = {}


def rule(*ops: str, domain: str = "", since: int = 1, until: int | None = None) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the coupling rule of ``ops`` for opsets ``[since, until]``."""

    def deco(fn: RuleFn) -> RuleFn:
        for op in ops:
            _REGISTRY.setdefault((domain, op), []).append(_Entry(since, until, fn))
        return fn

    return deco


def lookup(domain: str, op: str, opset: int) -> RuleFn | None:
    """The rule for ``(domain, op)`` at ``opset``, or None (the op then freezes groups)."""
    domain = "" if domain in ("", "ai.onnx") else domain
    for e in _REGISTRY.get((domain, op), ()):
        if e.since <= opset and (e.until is None or opset <= e.until):
            return e.fn
    return None


def registered_ops() -> list[tuple[str, str]]:
    """All (domain, op_type) pairs that have a rule."""
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------- helpers


def _tensor(node: gs.Node, port: Port) -> gs.Tensor | None:
    seq = node.outputs if port.out else node.inputs
    if port.index >= len(seq):
        return None
    t = seq[port.index]
    return None if (isinstance(t, gs.Variable) and not t.name) else t


def _couple(node: gs.Node, port: Port, axis: int, classes: Sequence[Sequence[tuple[Port, int, IndexMap, IndexMap]]]) -> RuleResult | None:
    """Links of the class containing ``(port, axis)``.

    Each class member is ``(port, axis, to_canon, from_canon)``: maps into and out of
    the class's canonical index space. Returns None when (port, axis) is in no class.
    """
    for cls in classes:
        entry = next((m for m in cls if m[0] == port and m[1] == axis), None)
        if entry is None:
            continue
        links: list[Link] = []
        for p, ax, _to, frm in cls:
            if p == port and ax == axis:
                continue
            t = _tensor(node, p)
            if t is None:
                continue
            maps = tuple(m for m in (entry[2], frm) if m is not IDENTITY)
            links.append(Link(t, ax, maps))
        return links
    return None


def _ident(port: Port, axis: int) -> tuple[Port, int, IndexMap, IndexMap]:
    return (port, axis, IDENTITY, IDENTITY)


IN0, IN1, IN2, OUT0 = Port(False, 0), Port(False, 1), Port(False, 2), Port(True, 0)


def _attr_axis(node: gs.Node, name: str, default: int, rank: int | None) -> int | None:
    a = int(node.attrs.get(name, default))
    if a < 0:
        if rank is None:
            return None
        a += rank
    return a


# ----------------------------------------------------------------------------- conv family


@rule("Conv")
def conv_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Conv (plain, depthwise); other grouped convs freeze (channels interleave by group)."""
    w = node.inputs[1]
    if not isinstance(w, gs.Constant):
        return Frozen("Conv with a non-constant weight")
    group = int(node.attrs.get("group", 1))
    cout, cin_g = w.values.shape[0], w.values.shape[1]
    depthwise = group > 1 and cin_g == 1
    if group > 1 and not depthwise:
        return Frozen(f"grouped Conv (group={group}) that is not depthwise")
    if port in (IN0, OUT0) and axis != 1:
        return Frozen(f"Conv: axis {axis} is not the channel axis")
    if port == IN1 and axis != 0 and not (axis == 1 and not depthwise):
        return Frozen(f"Conv weight axis {axis} is not a channel axis")
    out_cls = [_ident(OUT0, 1), _ident(IN1, 0), _ident(IN2, 0)]
    if depthwise:
        m = cout // group
        out_cls.append((IN0, 1, expand(m), contract(m)))
        res = _couple(node, port, axis, [out_cls])
    else:
        res = _couple(node, port, axis, [out_cls, [_ident(IN0, 1), _ident(IN1, 1)]])
    return res if res is not None else Frozen(f"Conv: unexpected port {port}")


@rule("ConvTranspose")
def conv_transpose_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """ConvTranspose with group 1: W is [Cin, Cout, k...]."""
    if not isinstance(node.inputs[1], gs.Constant):
        return Frozen("ConvTranspose with a non-constant weight")
    if int(node.attrs.get("group", 1)) != 1:
        return Frozen("grouped ConvTranspose")
    res = _couple(node, port, axis, [[_ident(IN0, 1), _ident(IN1, 0)], [_ident(OUT0, 1), _ident(IN1, 1), _ident(IN2, 0)]])
    return res if res is not None else Frozen(f"ConvTranspose: axis {axis} is not a channel axis")


@rule("Gemm")
def gemm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Gemm: Y[M, N] = A[M, K] · B[K, N] + C (with transA / transB)."""
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    a_k, a_m = (0, 1) if ta else (1, 0)
    b_k, b_n = (1, 0) if tb else (0, 1)
    n_cls = [_ident(OUT0, 1), _ident(IN1, b_n)]
    m_cls = [_ident(OUT0, 0), _ident(IN0, a_m)]
    if len(node.inputs) > 2:
        c_shape = env.shape(node.inputs[2])
        # C broadcasts to [M, N]: a dim that is not 1 must equal N (last) or M (first).
        if c_shape:
            if c_shape[-1] != 1:
                n_cls.append(_ident(IN2, len(c_shape) - 1))
            if len(c_shape) == 2 and c_shape[0] != 1:
                m_cls.append(_ident(IN2, 0))
    res = _couple(node, port, axis, [[_ident(IN0, a_k), _ident(IN1, b_k)], n_cls, m_cls])
    return res if res is not None else Frozen(f"Gemm: axis {axis} of {port} not coupled")


@rule("MatMul")
def matmul_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """MatMul (numpy semantics): K couples A[-1] and B[-2]; batch axes broadcast."""
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ra, rb, ry = env.rank(a), env.rank(b), env.rank(y)
    if ra is None or rb is None or ry is None:
        return Frozen("MatMul with unknown ranks")
    if ra < 2 or rb < 2:
        return Frozen("MatMul with a 1-D operand")
    classes = [
        [_ident(IN0, ra - 1), _ident(IN1, rb - 2)],
        [_ident(IN0, ra - 2), _ident(OUT0, ry - 2)],
        [_ident(IN1, rb - 1), _ident(OUT0, ry - 1)],
    ]
    for i in range(ry - 2):
        cls = [_ident(OUT0, i)]
        d = env.dim(y, i)
        for p, t, r in ((IN0, a, ra), (IN1, b, rb)):
            j = i - (ry - r)
            if j >= 0 and env.dim(t, j) == d and d != 1:
                cls.append(_ident(p, j))
        classes.append(cls)
    res = _couple(node, port, axis, classes)
    return res if res is not None else Frozen(f"MatMul: axis {axis} of {port} is broadcast")


# ----------------------------------------------------------------------------- normalization


def _data_axes(node: gs.Node, env: RuleEnv, skip: int | None) -> list[list]:
    r = env.rank(node.inputs[0]) or 0
    return [[_ident(IN0, a), _ident(OUT0, a)] for a in range(r) if a != skip]


@rule("BatchNormalization")
def batchnorm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """BatchNormalization (inference): channel axis 1 couples scale, B, mean, var."""
    if any(o.outputs for o in node.outputs[1:]):
        return Frozen("BatchNormalization in training mode")
    ch = [_ident(IN0, 1), _ident(OUT0, 1)] + [_ident(Port(False, i), 0) for i in range(1, 5)]
    res = _couple(node, port, axis, [ch] + _data_axes(node, env, 1))
    return res if res is not None else Frozen("BatchNormalization: bad axis")


@rule("InstanceNormalization")
def instancenorm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """InstanceNormalization: per-channel statistics, so channels prune independently."""
    ch = [_ident(IN0, 1), _ident(OUT0, 1), _ident(IN1, 0), _ident(IN2, 0)]
    res = _couple(node, port, axis, [ch] + _data_axes(node, env, 1))
    return res if res is not None else Frozen("InstanceNormalization: bad axis")


@rule("LayerNormalization")
def layernorm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """LayerNormalization: outer axes pass through; a normalized axis couples scale/bias.

    Pruning a normalized axis changes the statistics (mean/variance over fewer
    features), as in Torch-Pruning; for transformers that axis is the residual stream,
    which reaches the graph output and is frozen anyway.
    """
    if any(o.outputs for o in node.outputs[1:]):
        return Frozen("LayerNormalization with used Mean/InvStdDev outputs")
    r = env.rank(node.inputs[0])
    na = _attr_axis(node, "axis", -1, r)
    if r is None or na is None:
        return Frozen("LayerNormalization with unknown rank")
    cls = _data_axes(node, env, None)
    for c in cls:
        a = c[0][1]
        if a >= na:
            for p in (IN1, IN2):
                if p.index < len(node.inputs):
                    s = env.shape(node.inputs[p.index])
                    j = a - (r - len(s)) if s is not None else -1
                    # Scale/bias broadcast to the normalized block: a dim other than 1 is that axis.
                    if s is not None and j >= 0 and s[j] != 1:
                        c.append(_ident(p, j))
    res = _couple(node, port, axis, cls)
    return res if res is not None else Frozen("LayerNormalization: bad axis")


@rule("GroupNormalization")
def groupnorm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """GroupNormalization: channels are normalized in groups, so the channel axis freezes."""
    if axis == 1:
        return Frozen("GroupNormalization normalizes channels in groups")
    res = _couple(node, port, axis, _data_axes(node, env, 1))
    return res if res is not None else Frozen("GroupNormalization: bad axis")


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
    cls = [_ident(OUT0, oa)]
    for i, t in enumerate(node.inputs):
        s = env.shape(t)
        if s is None:
            return Frozen(f"{node.op}: input {t.name!r} has unknown shape")
        j = oa - (ry - len(s))
        if j >= 0 and s[j] == d and d != 1:
            cls.append(_ident(Port(False, i), j))
    res = _couple(node, port, axis, [cls])
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
    sa = _attr_axis(node, "axis", default_axis, r)
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
    qa = _attr_axis(node, "axis", 1, r)
    s = env.shape(node.inputs[1]) if len(node.inputs) > 1 else None
    per_channel = bool(s) and len(s) == 1 and s[0] != 1
    if port.out or port.index == 0:
        cls = [_ident(IN0, axis), _ident(OUT0, axis)]
        if per_channel and qa == axis:
            cls += [_ident(IN1, 0), _ident(IN2, 0)]
    else:
        if not per_channel or qa is None:
            return Frozen(f"{node.op}: scale reached on a per-tensor axis")
        cls = [_ident(IN0, qa), _ident(OUT0, qa), _ident(IN1, 0), _ident(IN2, 0)]
    res = _couple(node, port, axis, [cls])
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


# ----------------------------------------------------------------------------- layout


@rule("Concat")
def concat_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Concat: on the concat axis input i owns [off_i, off_i + len_i) of the output."""
    r = env.rank(node.outputs[0])
    ca = _attr_axis(node, "axis", 0, r)
    if ca is None:
        return Frozen("Concat with unknown rank")
    if axis != ca:
        others = [Link(t, axis) for i, t in enumerate(node.inputs) if port.out or i != port.index]
        return others + ([] if port.out else [Link(node.outputs[0], axis)])
    lens = [env.dim(t, ca) for t in node.inputs]
    if not all(isinstance(n, int) for n in lens):
        return Frozen("Concat with unknown input sizes")
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(int).tolist()
    if port.out:
        return [Link(t, ca, (shift(offs[i], offs[i + 1], -offs[i]),)) for i, t in enumerate(node.inputs)]
    i = port.index
    return [Link(node.outputs[0], ca, (shift(0, lens[i], offs[i]),))]


@rule("Split")
def split_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Split: output j owns [off_j, off_j + len_j) of the input on the split axis."""
    if not port.out and port.index != 0:
        return Frozen("Split: split-sizes input")
    r = env.rank(node.inputs[0])
    sa = _attr_axis(node, "axis", 0, r)
    if sa is None:
        return Frozen("Split with unknown rank")
    outs = list(node.outputs)
    if axis != sa:
        links = [Link(t, axis) for j, t in enumerate(outs) if not (port.out and j == port.index)]
        return links + ([Link(node.inputs[0], axis)] if port.out else [])
    lens = [env.dim(t, sa) for t in outs]
    if not all(isinstance(n, int) for n in lens):
        return Frozen("Split with unknown output sizes")
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(int).tolist()
    if port.out:
        j = port.index
        return [Link(node.inputs[0], sa, (shift(0, lens[j], offs[j]),))]
    return [Link(t, sa, (shift(offs[j], offs[j + 1], -offs[j]),)) for j, t in enumerate(outs)]


@rule("Slice", since=10)
def slice_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Slice with constant starts/ends and step 1 on the channel axis: a range mapping."""
    if not port.out and port.index != 0:
        return Frozen("Slice: parameter input")
    x = node.inputs[0]
    r = env.rank(x)
    vals = [env.const(node.inputs[i]) if i < len(node.inputs) and node.inputs[i].name else None for i in range(1, 5)]
    starts, ends, axes, steps = vals
    if starts is None or ends is None or r is None or (len(node.inputs) > 3 and node.inputs[3].name and axes is None) \
            or (len(node.inputs) > 4 and node.inputs[4].name and steps is None):
        return Frozen("Slice with non-constant parameters")
    axes_l = [int(a) + r if int(a) < 0 else int(a) for a in (axes if axes is not None else range(len(starts)))]
    if axis not in axes_l:
        return [Link(node.outputs[0] if not port.out else x, axis)]
    k = axes_l.index(axis)
    step = int(steps[k]) if steps is not None else 1
    if step != 1:
        return Frozen("Slice with step != 1 on the channel axis")
    n = env.dim(x, axis)
    if not isinstance(n, int):
        return Frozen("Slice: unknown channel count")
    s, e, _ = slice(int(starts[k]), int(ends[k]), 1).indices(n)
    if port.out:
        return [Link(x, axis, (shift(0, max(e - s, 0), s),))]
    return [Link(node.outputs[0], axis, (shift(s, e, -s),))]


@rule("Transpose")
def transpose_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Transpose: output axis i is input axis perm[i]."""
    r = env.rank(node.inputs[0])
    perm = node.attrs.get("perm")
    if perm is None:
        if r is None:
            return Frozen("Transpose with unknown rank")
        perm = list(range(r))[::-1]
    perm = list(perm)
    if port.out:
        return [Link(node.inputs[0], perm[axis])]
    return [Link(node.outputs[0], perm.index(axis))]


def _axes_arg(node: gs.Node, env: RuleEnv) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = env.const(node.inputs[1])
        return None if v is None else [int(a) for a in v.reshape(-1)]
    return []


@rule("Unsqueeze")
def unsqueeze_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Unsqueeze: input axis a is the a-th output axis that is not inserted."""
    if not port.out and port.index != 0:
        return Frozen("Unsqueeze: axes input")
    ry = env.rank(node.outputs[0])
    axes = _axes_arg(node, env)
    if ry is None or axes is None:
        return Frozen("Unsqueeze with unknown axes")
    axes = [a + ry if a < 0 else a for a in axes]
    kept = [a for a in range(ry) if a not in axes]
    if port.out:
        return [Link(node.inputs[0], kept.index(axis))] if axis in kept else Frozen("Unsqueeze: inserted axis")
    return [Link(node.outputs[0], kept[axis])]


@rule("Squeeze")
def squeeze_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Squeeze: a channel axis (size > 1) is never squeezed; its index shifts."""
    if not port.out and port.index != 0:
        return Frozen("Squeeze: axes input")
    s = env.shape(node.inputs[0])
    axes = _axes_arg(node, env)
    if s is None or axes is None:
        return Frozen("Squeeze with unknown axes")
    r = len(s)
    axes = [a + r if a < 0 else a for a in axes] or [a for a in range(r) if s[a] == 1]
    kept = [a for a in range(r) if a not in axes]
    if port.out:
        return [Link(node.inputs[0], kept[axis])]
    return [Link(node.outputs[0], kept.index(axis))] if axis in kept else Frozen("Squeeze: squeezed axis")


def _prod(dims: Sequence[Dim]) -> tuple[int, tuple[str, ...]] | None:
    """Product of dims as (int part, sorted symbols); None if any dim is unknown."""
    n, syms = 1, []
    for d in dims:
        if isinstance(d, int) and d >= 0:
            n *= d
        elif isinstance(d, str) and d:
            syms.append(d)
        else:
            return None
    return n, tuple(sorted(syms))


def _reshape_map(src: Sequence[Dim], dst: Sequence[Dim], a: int) -> tuple[int, IndexMap] | str:
    """Map axis ``a`` of shape ``src`` onto shape ``dst`` (row-major reshape).

    Returns (axis in dst, index map) or a reason string. Three cases: the axis survives
    unchanged; it is split into [blocks, block_size] (hidden -> heads: contract); or it
    is merged with following axes (flatten: expand).
    """
    c = src[a]
    if not isinstance(c, int):
        return "unknown channel count"
    pre = _prod(src[:a])
    if pre is None:
        return "unknown leading dims"
    # The last axis whose leading product matches: dims of 1 before the channel
    # ([1, C, 1, 1] -> [1, C]) must not shift it onto a size-1 axis.
    b = -1
    for i in range(len(dst)):
        p = _prod(dst[:i])
        if p is None:
            return "unknown leading dims"
        if p == pre:
            b = i
        elif p[0] > pre[0] and not p[1]:
            break
    if b < 0:
        return "leading dims do not line up"
    if b >= len(dst) or not isinstance(dst[b], int):
        return "channel axis does not survive"
    if dst[b] == c:
        return b, IDENTITY
    if dst[b] < c:
        block = 1
        for e in range(b + 1, len(dst)):
            if not isinstance(dst[e], int):
                return "unknown dims"
            block *= dst[e]
            if dst[b] * block == c:
                return b, contract(block)
            if dst[b] * block > c:
                break
        return "channel axis split irregularly"
    block = 1
    for f in range(a + 1, len(src)):
        if not isinstance(src[f], int):
            return "unknown dims"
        block *= src[f]
        if c * block == dst[b]:
            return b, expand(block)
        if c * block > dst[b]:
            break
    return "channel axis merged irregularly"


@rule("Reshape")
def reshape_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Reshape: identity, channel -> block (flatten), or feature -> block (heads)."""
    if not port.out and port.index != 0:
        return Frozen("Reshape: shape input")
    si, so = env.shape(node.inputs[0]), env.shape(node.outputs[0])
    if si is None or so is None:
        return Frozen("Reshape with unknown shapes")
    vec = env.shape_vector(node.inputs[1]) if len(node.inputs) > 1 else None
    if vec is None:
        return Frozen("Reshape with a computed (non-constant) shape")
    src, dst, other = (so, si, node.inputs[0]) if port.out else (si, so, node.outputs[0])
    res = _reshape_map(src, dst, axis)
    if isinstance(res, str):
        return Frozen(f"Reshape: {res}")
    b, m = res
    # The target entry of the pruned output axis must be a constant (rewritten on apply,
    # or -1): a run-time entry could come from an unpruned tensor and go stale.
    out_axis = axis if port.out else b
    if out_axis >= len(vec) or vec[out_axis] is None:
        return Frozen("Reshape: the pruned axis' target size is computed at run time")
    return [Link(other, b, () if m is IDENTITY else (m,))]


@rule("Flatten")
def flatten_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Flatten: the first axis of the flattened block becomes blocks of features."""
    si, so = env.shape(node.inputs[0]), env.shape(node.outputs[0])
    if si is None or so is None:
        return Frozen("Flatten with unknown shapes")
    res = _reshape_map(so, si, axis) if port.out else _reshape_map(si, so, axis)
    if isinstance(res, str):
        return Frozen(f"Flatten: {res}")
    b, m = res
    return [Link(node.inputs[0] if port.out else node.outputs[0], b, () if m is IDENTITY else (m,))]


@rule("Pad", since=11)
def pad_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Pad passes a channel through when that axis is not padded."""
    if not port.out and port.index != 0:
        return Frozen("Pad: parameter input")
    r = env.rank(node.inputs[0])
    pads = env.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None or r is None:
        return Frozen("Pad with non-constant pads")
    axes = _axes_arg(node, env) if len(node.inputs) > 3 and node.inputs[3].name else list(range(r))
    if axes is None:
        return Frozen("Pad with non-constant axes")
    axes = [a + r if a < 0 else a for a in axes]
    pads = pads.reshape(-1)
    if axis in axes:
        k = axes.index(axis)
        if pads[k] != 0 or pads[k + len(axes)] != 0:
            return Frozen("Pad pads the channel axis")
    return [Link(node.outputs[0] if not port.out else node.inputs[0], axis)]


@rule("Resize", "Upsample")
def resize_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Resize/Upsample with scale 1 on the channel axis passes it through."""
    if not port.out and port.index != 0:
        return Frozen(f"{node.op}: parameter input")
    if axis > 1:
        return Frozen(f"{node.op}: spatial axis")
    sizes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    if sizes is not None:
        return Frozen(f"{node.op} with explicit output sizes")
    return [Link(node.outputs[0] if not port.out else node.inputs[0], axis)]


@rule("Gather")
def gather_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Gather on another axis passes the channel through (shifted by the indices' rank)."""
    if not port.out and port.index != 0:
        return Frozen("Gather: channel reached the indices")
    r, ri = env.rank(node.inputs[0]), env.rank(node.inputs[1])
    ga = _attr_axis(node, "axis", 0, r)
    if r is None or ri is None or ga is None:
        return Frozen("Gather with unknown ranks")
    if port.out:
        if ga <= axis < ga + ri:
            return Frozen("Gather: indexed axis")
        return [Link(node.inputs[0], axis if axis < ga else axis - ri + 1)]
    if axis == ga:
        return Frozen("Gather indexes the channel axis")
    return [Link(node.outputs[0], axis if axis < ga else axis + ri - 1)]


@rule("CastLike")
def castlike_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """CastLike: input 0 passes through; input 1 only supplies the element type."""
    if not port.out and port.index == 1:
        return []
    return [Link(node.outputs[0] if not port.out else node.inputs[0], axis)]


def _from_shape_op(t: gs.Tensor, depth: int = 4) -> bool:
    """True if ``t`` is computed from a Shape op within ``depth`` producers (it then
    follows pruned tensors at run time, e.g. a bias built as Expand(0, Shape(W)))."""
    frontier = [t]
    for _ in range(depth):
        nxt = []
        for x in frontier:
            for n in x.inputs:
                if n.op == "Shape":
                    return True
                nxt.extend(i for i in n.inputs if isinstance(i, gs.Variable))
        frontier = nxt
    return False


@rule("Expand", since=8)
def expand_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Expand: a non-broadcast axis passes through; a constant target shape is rewritten
    on apply, a computed one is accepted only when derived from Shape."""
    if not port.out and port.index != 0:
        return Frozen("Expand: shape input")
    x, y = node.inputs[0], node.outputs[0]
    rx, ry = env.rank(x), env.rank(y)
    if rx is None or ry is None:
        return Frozen("Expand with unknown ranks")
    target = env.const(node.inputs[1])
    oa = axis if port.out else axis + (ry - rx)
    xa = oa - (ry - rx)
    coupled = xa >= 0 and env.dim(x, xa) == env.dim(y, oa) and env.dim(y, oa) != 1
    # A constant target shape is rewritten by `apply` (like a Reshape target).
    if target is None and not coupled and not _from_shape_op(node.inputs[1]):
        return Frozen("Expand with a computed shape")
    if port.out:
        return [Link(x, xa)] if coupled else []
    return [Link(y, oa)]


@rule("Shape", "Size")
def shape_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Shape/Size read dims at run time, so they follow the pruned tensor by themselves."""
    return []
