"""Pruning coupling rules of the layout ops: concatenation, slicing, transposition, reshapes.

Concat / Split / Slice move positions by an offset (`indexmap.shift`); Reshape and
Flatten turn a channel into a block of features or a feature into its block
(`indexmap.expand` / `indexmap.contract`), which is how attention heads
([B, S, H*D] <-> [B, S, H, D]) are pruned whole.

See `onnxcomp.pruning.rules_base` for what a rule is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.pruning.indexmap import IDENTITY, IndexMap, contract, expand, shift
from onnxcomp.pruning.rules_base import Dim, Frozen, Link, Port, RuleEnv, RuleResult, attr_axis, rule


# ----------------------------------------------------------------------------- layout


@rule("Concat")
def concat_rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> RuleResult:
    """Concat: on the concat axis input i owns [off_i, off_i + len_i) of the output."""
    r = env.rank(node.outputs[0])
    ca = attr_axis(node, "axis", 0, r)
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
    sa = attr_axis(node, "axis", 0, r)
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
    ga = attr_axis(node, "axis", 0, r)
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
