"""Apply a pruning decision: slice every coupled axis in place, keeping tensor names.

For every group, the removed root channels select the removed positions of each member
(``pos`` where ``src`` is removed). Positions of one (tensor, axis) removed by several
groups (e.g. a Concat output fed by two groups) are unioned; kept = the complement.

* constants (weights, biases, norm parameters, broadcast constants): ``np.take(W, kept, axis)``;
* activations: only their recorded shape changes (the ops recompute them);
* shape-carrying constants that state a pruned size explicitly are rewritten:
  Reshape targets (a ``-1`` or copy-``0`` entry is left alone), Split sizes, and Slice
  starts/ends on a pruned axis (new start = number of kept positions before the old one).
  Rewritten constants get a fresh name per node, since they are often shared.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.pruning.deps import AxisKey, ChannelGroup
from onnxcomp.pruning.rules import RuleEnv

Kept = dict[str, dict[int, np.ndarray]]


def _dim(t: gs.Tensor, axis: int, shapes: dict[str, list]) -> int | None:
    if isinstance(t, gs.Constant):
        return int(t.values.shape[axis])
    s = shapes.get(t.name) or (list(t.shape) if t.shape is not None else None)
    if s is None or axis >= len(s) or not isinstance(s[axis], int):
        return None
    return int(s[axis])


def kept_positions(groups: Iterable[ChannelGroup], removed: dict[int, np.ndarray], shapes: dict[str, list]) -> tuple[Kept, dict[str, gs.Tensor]]:
    """Kept indices of every (tensor, axis) touched by a removal (relative to the input graph).

    Args:
        groups: All groups of the analysis.
        removed: Group id -> removed root channels.
        shapes: Static shapes by tensor name.

    Returns:
        ``{name: {axis: kept}}`` and the tensors by name.
    """
    drop: dict[AxisKey, list[np.ndarray]] = {}
    tensors: dict[str, gs.Tensor] = {}
    for g in groups:
        rem = removed.get(g.id)
        if rem is None or rem.size == 0:
            continue
        for key, m in g.members.items():
            pos = m.pos[np.isin(m.src, rem)]
            if pos.size:
                drop.setdefault(key, []).append(pos)
                tensors[key[0]] = m.tensor
    kept: Kept = {}
    for (name, axis), parts in drop.items():
        n = _dim(tensors[name], axis, shapes)
        if n is None:
            raise ValueError(f"cannot prune axis {axis} of {name!r}: unknown size")
        keep = np.setdiff1d(np.arange(n, dtype=np.int64), np.concatenate(parts))
        if keep.size == 0:
            raise ValueError(f"pruning would remove every position of axis {axis} of {name!r}")
        kept.setdefault(name, {})[axis] = keep
    return kept, tensors


def _const_like(name: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(values))


def _rewrite_reshape_target(graph: gs.Graph, node: gs.Node, changes: dict[int, int], env: RuleEnv) -> None:
    """Give ``node`` its own target shape with entries ``changes`` (axis -> size).

    A constant target is replaced; a Concat-built one is cloned (it is often shared by
    several Reshapes) with the constant pieces holding those entries replaced.
    """
    shape_t = node.inputs[1]
    target = RuleEnv.const(shape_t)
    if target is not None:
        new = target.astype(np.int64).reshape(-1).copy()
        for ax, n in changes.items():
            new[ax] = n
        node.inputs[1] = _const_like(f"{shape_t.name}_pruned_{node.name}", new.astype(target.dtype))
        return
    concat = shape_t.inputs[0]
    pieces, start = [], 0
    for k, piece in enumerate(concat.inputs):
        pv = RuleEnv.const(piece)
        n = pv.size if pv is not None else int(env.shape(piece)[0])
        hit = {ax - start: v for ax, v in changes.items() if start <= ax < start + n}
        if hit and pv is not None:
            nv = pv.astype(np.int64).reshape(-1).copy()
            for i, v in hit.items():
                nv[i] = v
            piece = _const_like(f"{shape_t.name}_{k}_pruned_{node.name}", nv.astype(pv.dtype))
        pieces.append(piece)
        start += n
    out = gs.Variable(f"{shape_t.name}_pruned_{node.name}", dtype=shape_t.dtype, shape=shape_t.shape)
    graph.nodes.append(gs.Node("Concat", name=f"{concat.name}_pruned_{node.name}", attrs=dict(concat.attrs),
                               inputs=pieces, outputs=[out]))
    node.inputs[1] = out


def _rewrite_shape_inputs(graph: gs.Graph, kept: Kept, shapes: dict[str, list]) -> int:
    """Rewrite Expand/Reshape/Split/Slice constants that state a pruned size; returns the count."""
    env = RuleEnv(shapes)
    n_rewritten = 0
    for node in list(graph.nodes):
        if node.op == "Expand":
            axes = kept.get(node.outputs[0].name)
            target = RuleEnv.const(node.inputs[1])
            if not axes or target is None:
                continue
            new = target.astype(np.int64).copy()
            ry = len(shapes.get(node.outputs[0].name) or [])
            for ax, keep in axes.items():
                k = ax - (ry - new.size)
                if 0 <= k < new.size and new[k] != 1:
                    new[k] = keep.size
            if not np.array_equal(new, target):
                node.inputs[1] = _const_like(f"{node.inputs[1].name}_pruned_{node.name}", new.astype(target.dtype))
                n_rewritten += 1
        elif node.op == "Reshape" and len(node.inputs) > 1:
            out = node.outputs[0]
            axes = kept.get(out.name)
            vec = env.shape_vector(node.inputs[1])
            if not axes or vec is None:
                continue
            allowzero = int(node.attrs.get("allowzero", 0))
            changes = {ax: keep.size for ax, keep in axes.items()
                       if ax < len(vec) and vec[ax] is not None and vec[ax] != -1 and not (vec[ax] == 0 and not allowzero)
                       and vec[ax] != keep.size}
            if changes:
                _rewrite_reshape_target(graph, node, changes, env)
                n_rewritten += 1
        elif node.op == "Split":
            x = node.inputs[0]
            axes = kept.get(x.name)
            if not axes:
                continue
            r = len(shapes.get(x.name) or x.shape or [])
            sa = int(node.attrs.get("axis", 0))
            sa = sa + r if sa < 0 else sa
            if sa not in axes:
                continue
            sizes = []
            for o in node.outputs:
                k = kept.get(o.name, {}).get(sa)
                sizes.append(k.size if k is not None else _dim(o, sa, shapes))
            if len(node.inputs) > 1 and node.inputs[1].name:
                node.inputs[1] = _const_like(f"{node.inputs[1].name}_pruned_{node.name}", np.array(sizes, dtype=np.int64))
            elif "split" in node.attrs:
                node.attrs["split"] = sizes
            elif "num_outputs" in node.attrs and len(set(sizes)) > 1:
                node.attrs.pop("num_outputs")
                node.inputs.append(_const_like(f"{node.name}_split_pruned", np.array(sizes, dtype=np.int64)))
            n_rewritten += 1
        elif node.op == "Slice":
            x = node.inputs[0]
            axes = kept.get(x.name)
            if not axes:
                continue
            starts, ends = RuleEnv.const(node.inputs[1]), RuleEnv.const(node.inputs[2])
            r = len(shapes.get(x.name) or x.shape or [])
            sl_axes = RuleEnv.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else np.arange(len(starts))
            ns, ne = starts.astype(np.int64).copy(), ends.astype(np.int64).copy()
            changed = False
            for k, a in enumerate(int(v) for v in sl_axes):
                a = a + r if a < 0 else a
                if a not in axes:
                    continue
                n = _dim(x, a, shapes)
                s, e, _ = slice(int(starts[k]), int(ends[k]), 1).indices(n)
                keep = axes[a]
                ns[k] = int(np.sum(keep < s))
                ne[k] = int(np.sum(keep < e))
                changed = True
            if changed:
                node.inputs[1] = _const_like(f"{node.inputs[1].name}_pruned_{node.name}", ns.astype(starts.dtype))
                node.inputs[2] = _const_like(f"{node.inputs[2].name}_pruned_{node.name}", ne.astype(ends.dtype))
                n_rewritten += 1
    return n_rewritten


def apply_kept(graph: gs.Graph, kept: Kept, tensors: dict[str, gs.Tensor], shapes: dict[str, list]) -> dict[str, int]:
    """Slice constants, update activation shapes and rewrite shape constants.

    Returns:
        Counts: ``{"tensors_sliced": ..., "shape_constants_rewritten": ...}``.
    """
    # Shape constants first: they read the *old* sizes of sliced inputs.
    rewritten = _rewrite_shape_inputs(graph, kept, shapes)
    # A depthwise Conv's group count is its channel count.
    for node in graph.nodes:
        if node.op == "Conv" and int(node.attrs.get("group", 1)) > 1 and isinstance(node.inputs[1], gs.Constant):
            w_axes = kept.get(node.inputs[1].name, {})
            if 0 in w_axes and node.inputs[1].values.shape[1] == 1:
                mult = node.inputs[1].values.shape[0] // int(node.attrs["group"])
                node.attrs["group"] = int(w_axes[0].size // mult)
    for name, axes in kept.items():
        t = tensors[name]
        if isinstance(t, gs.Constant):
            v = np.asarray(t.values)
            for ax, keep in axes.items():
                v = np.take(v, keep, axis=ax)
            t.values = np.ascontiguousarray(v)
            continue
        if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
            c = t.inputs[0].attrs["value"]
            v = np.asarray(c.values)
            for ax, keep in axes.items():
                v = np.take(v, keep, axis=ax)
            t.inputs[0].attrs["value"] = gs.Constant(c.name, np.ascontiguousarray(v))
        shape = list(shapes.get(name) or (t.shape or []))
        if t.dtype is None:  # graphsurgeon cannot export a shape without a dtype
            t.shape = None
        elif shape:
            for ax, keep in axes.items():
                if ax < len(shape):
                    shape[ax] = int(keep.size)
            t.shape = shape
    return {"tensors_sliced": len(kept), "shape_constants_rewritten": rewritten}
