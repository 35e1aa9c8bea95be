"""Pruning coupling rules of the linear ops and the normalizations after them.

* Conv: W is [Cout, Cin/g, k...]; y[:, o] needs W[o], b[o]; x[:, i] feeds W[:, i].
  Depthwise (g = Cin, W[:, 0] of size 1, multiplier m = Cout/Cin): x[:, c] feeds
  y[:, c*m:(c+1)*m] so input and output channels are one group (expand(m)).
* Gemm / MatMul with a constant weight: the contracted K axis of A couples with W's K
  axis; the N axis of y couples with W's N axis and the bias.
* Batch/Instance/Layer normalization couple their per-channel parameters with the
  channel axis; GroupNormalization freezes it.

See `onnxcomp.pruning.rules_base` for what a rule is.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxcomp.pruning.indexmap import contract, expand
from onnxcomp.pruning.rules_base import (
    IN0,
    IN1,
    IN2,
    OUT0,
    ClassMember,
    Frozen,
    Port,
    RuleEnv,
    RuleResult,
    attr_axis,
    couple,
    ident,
    rule,
)


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
    out_cls = [ident(OUT0, 1), ident(IN1, 0), ident(IN2, 0)]
    if depthwise:
        m = cout // group
        out_cls.append((IN0, 1, expand(m), contract(m)))
        res = couple(node, port, axis, [out_cls])
    else:
        res = couple(node, port, axis, [out_cls, [ident(IN0, 1), ident(IN1, 1)]])
    return res if res is not None else Frozen(f"Conv: unexpected port {port}")


@rule("ConvTranspose")
def conv_transpose_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """ConvTranspose with group 1: W is [Cin, Cout, k...]."""
    if not isinstance(node.inputs[1], gs.Constant):
        return Frozen("ConvTranspose with a non-constant weight")
    if int(node.attrs.get("group", 1)) != 1:
        return Frozen("grouped ConvTranspose")
    res = couple(node, port, axis, [[ident(IN0, 1), ident(IN1, 0)], [ident(OUT0, 1), ident(IN1, 1), ident(IN2, 0)]])
    return res if res is not None else Frozen(f"ConvTranspose: axis {axis} is not a channel axis")


@rule("Gemm")
def gemm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Gemm: Y[M, N] = A[M, K] · B[K, N] + C (with transA / transB)."""
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    a_k, a_m = (0, 1) if ta else (1, 0)
    b_k, b_n = (1, 0) if tb else (0, 1)
    n_cls = [ident(OUT0, 1), ident(IN1, b_n)]
    m_cls = [ident(OUT0, 0), ident(IN0, a_m)]
    if len(node.inputs) > 2:
        c_shape = env.shape(node.inputs[2])
        # C broadcasts to [M, N]: a dim that is not 1 must equal N (last) or M (first).
        if c_shape:
            if c_shape[-1] != 1:
                n_cls.append(ident(IN2, len(c_shape) - 1))
            if len(c_shape) == 2 and c_shape[0] != 1:
                m_cls.append(ident(IN2, 0))
    res = couple(node, port, axis, [[ident(IN0, a_k), ident(IN1, b_k)], n_cls, m_cls])
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
        [ident(IN0, ra - 1), ident(IN1, rb - 2)],
        [ident(IN0, ra - 2), ident(OUT0, ry - 2)],
        [ident(IN1, rb - 1), ident(OUT0, ry - 1)],
    ]
    for i in range(ry - 2):
        cls = [ident(OUT0, i)]
        d = env.dim(y, i)
        for p, t, r in ((IN0, a, ra), (IN1, b, rb)):
            j = i - (ry - r)
            if j >= 0 and env.dim(t, j) == d and d != 1:
                cls.append(ident(p, j))
        classes.append(cls)
    res = couple(node, port, axis, classes)
    return res if res is not None else Frozen(f"MatMul: axis {axis} of {port} is broadcast")


# ----------------------------------------------------------------------------- normalization


def _data_axes(node: gs.Node, env: RuleEnv, skip: int | None) -> list[list[ClassMember]]:
    r = env.rank(node.inputs[0]) or 0
    return [[ident(IN0, a), ident(OUT0, a)] for a in range(r) if a != skip]


@rule("BatchNormalization")
def batchnorm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """BatchNormalization (inference): channel axis 1 couples scale, B, mean, var."""
    if any(o.outputs for o in node.outputs[1:]):
        return Frozen("BatchNormalization in training mode")
    ch = [ident(IN0, 1), ident(OUT0, 1)] + [ident(Port(False, i), 0) for i in range(1, 5)]
    res = couple(node, port, axis, [ch] + _data_axes(node, env, 1))
    return res if res is not None else Frozen("BatchNormalization: bad axis")


@rule("InstanceNormalization")
def instancenorm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """InstanceNormalization: per-channel statistics, so channels prune independently."""
    ch = [ident(IN0, 1), ident(OUT0, 1), ident(IN1, 0), ident(IN2, 0)]
    res = couple(node, port, axis, [ch] + _data_axes(node, env, 1))
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
    na = attr_axis(node, "axis", -1, r)
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
                        c.append(ident(p, j))
    res = couple(node, port, axis, cls)
    return res if res is not None else Frozen("LayerNormalization: bad axis")


@rule("GroupNormalization")
def groupnorm_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """GroupNormalization: channels are normalized in groups, so the channel axis freezes."""
    if axis == 1:
        return Frozen("GroupNormalization normalizes channels in groups")
    res = couple(node, port, axis, _data_axes(node, env, 1))
    return res if res is not None else Frozen("GroupNormalization: bad axis")

