"""Channel importance criteria, aggregated over a whole group.

Every criterion yields one score per *root channel* of a group; a unit's score is the
mean over its channels. Weight-based scores are computed per member weight (any
constant of rank >= 2 in the group), mapped to root channels through the member's
(src, pos) pairs, normalized by their mean (so a 3x3 conv does not outvote a 1x1 conv
by sheer size) and summed over members.

* ``l1`` / ``l2``: ‖W[..., c, ...]‖₁ / ‖·‖₂ over all other axes.
* ``bn``: |γ| of the group's BatchNormalization scales (``l1`` where a group has none).
* ``wanda``: Σ over consumer weights of |W[:, c]|·‖X_c‖₂ — Wanda's |W|·‖X‖ summed over
  the weights that read channel c, i.e. how much the next layers' outputs depend on c.
  ‖X_c‖² is accumulated as a streamed sum of squares over the calibration batches, in
  one onnxruntime session with the needed activations added as outputs.
* ``random``: seeded uniform scores (a baseline).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.errors import UsageError
from onnxcomp.pruning.deps import ChannelGroup, Member

log = logging.getLogger("onnxcomp.pruning")

CRITERIA = ("l1", "l2", "bn", "wanda", "random")


def _per_position(m: Member, p: float) -> np.ndarray:
    w = np.abs(np.asarray(m.tensor.values, dtype=np.float64))
    w = np.moveaxis(w, m.axis, 0).reshape(w.shape[m.axis], -1)
    return w.sum(1) if p == 1 else np.sqrt(np.square(w).sum(1))


def _to_roots(size: int, m: Member, per_pos: np.ndarray) -> np.ndarray:
    v = np.bincount(m.src, weights=per_pos[m.pos], minlength=size)
    mean = v.mean()
    return v / mean if mean > 0 else v


def _weight_members(g: ChannelGroup) -> list[Member]:
    return [m for m in g.params() if np.asarray(m.tensor.values).ndim >= 2]


def magnitude_scores(g: ChannelGroup, p: float) -> np.ndarray:
    """l1 (p=1) or l2 (p=2) score per root channel."""
    total = np.zeros(g.size)
    for m in _weight_members(g):
        total += _to_roots(g.size, m, _per_position(m, p))
    return total if total.any() else np.ones(g.size)


def bn_scores(g: ChannelGroup, consumers: dict[str, list[tuple[gs.Node, int]]]) -> np.ndarray:
    """Sum of |γ| over the group's BatchNormalization scales (l1 when there are none)."""
    total = np.zeros(g.size)
    found = False
    for m in g.params():
        if any(n.op == "BatchNormalization" and i == 1 for n, i in consumers.get(m.tensor.name, ())):
            total += _to_roots(g.size, m, np.abs(np.asarray(m.tensor.values, dtype=np.float64)).reshape(-1))
            found = True
    if not found:
        log.debug("group %s has no BatchNormalization scale: using l1", g.root[0])
    return total if found else magnitude_scores(g, 1)


def _input_channel_reader(n: gs.Node, i: int, axis: int) -> tuple[str, int] | None:
    """(activation name, its channel axis) when weight input ``i`` of ``n`` is read along ``axis``."""
    if i != 1 or not n.inputs[0].name:
        return None
    if n.op == "Conv" and axis == 1 and int(n.attrs.get("group", 1)) == 1:
        return n.inputs[0].name, 1
    if n.op == "MatMul" and axis == 0:
        return n.inputs[0].name, -1
    if n.op == "Gemm" and not int(n.attrs.get("transA", 0)) and axis == (1 if int(n.attrs.get("transB", 0)) else 0):
        return n.inputs[0].name, 1
    return None


def wanda_requests(groups: list[ChannelGroup], consumers: dict[str, list[tuple[gs.Node, int]]]) -> dict[str, int]:
    """Activations whose per-channel ‖X‖ the wanda criterion needs (name -> channel axis)."""
    req: dict[str, int] = {}
    for g in groups:
        for m in _weight_members(g):
            for n, i in consumers.get(m.tensor.name, ()):
                r = _input_channel_reader(n, i, m.axis)
                if r is not None:
                    req[r[0]] = r[1]
    return req


def activation_norms(model: onnx.ModelProto, requests: dict[str, int], calibration: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Streamed per-channel ‖X‖₂ of the requested activations over the calibration data.

    One session over a copy of ``model`` with the activations added as outputs; only
    running sums of squares are kept, never the activations.
    """
    from onnxcomp.checking.runtime import make_session, run

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    known = {vi.name: vi for vi in m.graph.value_info}
    for name in requests:
        if name in present:
            continue
        vi = known.get(name)
        m.graph.output.append(vi if vi is not None else onnx.ValueInfoProto(name=name))
    sess = make_session(m)
    sums: dict[str, np.ndarray] = {}
    for feeds in calibration:
        outs = run(sess, feeds)
        for name, ax in requests.items():
            x = np.asarray(outs[name], dtype=np.float64)
            x = np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1)
            sq = np.square(x).sum(1)
            sums[name] = sums[name] + sq if name in sums else sq
    return {k: np.sqrt(v) for k, v in sums.items()}


def wanda_scores(g: ChannelGroup, consumers: dict[str, list[tuple[gs.Node, int]]], norms: dict[str, np.ndarray]) -> np.ndarray:
    """Σ over consumer weights of |W| summed over outputs × ‖X_c‖ (l2 without consumers)."""
    total = np.zeros(g.size)
    found = False
    for m in _weight_members(g):
        for n, i in consumers.get(m.tensor.name, ()):
            r = _input_channel_reader(n, i, m.axis)
            if r is None or r[0] not in norms:
                continue
            xn = norms[r[0]]
            w = _per_position(m, 1)
            if xn.shape != w.shape:
                continue
            total += _to_roots(g.size, m, w * xn)
            found = True
    if not found:
        log.debug("group %s has no weight reading it with activation norms: using l2", g.root[0])
    return total if found else magnitude_scores(g, 2)


def group_scores(
    criterion: str,
    groups: list[ChannelGroup],
    consumers: dict[str, list[tuple[gs.Node, int]]],
    *,
    rng: np.random.Generator,
    model: onnx.ModelProto | None = None,
    calibration: Iterable[dict[str, np.ndarray]] | None = None,
) -> dict[int, np.ndarray]:
    """Score every root channel of every group.

    Args:
        criterion: One of `CRITERIA`.
        groups: The groups to score.
        consumers: Tensor name -> (node, input index) of its readers.
        rng: Source of the ``random`` scores.
        model: The current model (``wanda`` runs it to measure activations).
        calibration: Feed dicts (``wanda``), e.g. ``ctx.calibration``.

    Returns:
        Group id -> score per root channel (higher = more important).

    Raises:
        UsageError: ``wanda`` without calibration data, or an unknown criterion.
    """
    if criterion not in CRITERIA:
        raise UsageError(f"unknown pruning criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "random":
        return {g.id: rng.random(g.size) for g in groups}
    if criterion in ("l1", "l2"):
        p = 1.0 if criterion == "l1" else 2.0
        return {g.id: magnitude_scores(g, p) for g in groups}
    if criterion == "bn":
        return {g.id: bn_scores(g, consumers) for g in groups}
    if calibration is None or model is None:
        raise UsageError("criterion 'wanda' needs calibration data (--calibration-data PATH, or 'random')")
    norms = activation_norms(model, wanda_requests(groups, consumers), calibration)
    return {g.id: wanda_scores(g, consumers, norms) for g in groups}
