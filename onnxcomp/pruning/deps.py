"""Channel dependency analysis: which (tensor, axis) positions must be pruned together.

Starting from a *root* axis (the output-channel axis of a Conv/ConvTranspose/Gemm/MatMul
weight), an explicit stack propagates through the per-op rules of `rules` to every
coupled axis, carrying pairs ``(src, pos)``: root channel ``src`` owns position ``pos``
of that axis. Each (tensor, axis) is visited only with pairs not seen before (delta
propagation), and producers/consumers come from maps built once, so the walk is linear
in the number of (pair, edge) visits.

Root channels that share a position anywhere in the group are merged into one *unit*
(union-find): an attention head is one unit of ``head_dim`` root channels because the
[B, S, H, D] reshape maps all of them to one head position. Pruning removes whole units.

A group is *frozen* (never pruned) when propagation hits an op without a rule, an op
that cannot pass the channel through, a graph input or a graph output; the reasons are
kept for ``onnxcomp inspect``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.ir import infer_shapes as ir_infer_shapes
from onnxcomp.ir import tensor_dims, to_graph, to_model
from onnxcomp.pruning.rules import Dim, Frozen, Port, RuleEnv, lookup

AxisKey = tuple[str, int]

_ROOT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Member:
    """One coupled axis of a group.

    Attributes:
        tensor: The tensor (a `gs.Constant` weight or a `gs.Variable` activation).
        axis: The axis of ``tensor`` that loses positions.
        src: Root channel of each pair.
        pos: Position on ``axis`` of each pair (parallel to ``src``).
    """

    tensor: gs.Tensor
    axis: int
    src: np.ndarray
    pos: np.ndarray

    @property
    def is_param(self) -> bool:
        """True for constants (weights, biases, norm parameters, broadcast constants)."""
        return isinstance(self.tensor, gs.Constant)


@dataclass
class ChannelGroup:
    """A set of axes that must lose matching positions.

    Attributes:
        id: Index of the group in the analysis.
        root: (weight name, axis) the group was grown from.
        size: Number of root channels.
        members: Coupled axes by (tensor name, axis).
        units: Root channels that are removed together (one array per unit).
        nodes: Names of the nodes the group touches (for ``exclude`` and ``inspect``).
        frozen: Why the group cannot be pruned (empty when it can).
        root_node: Name of the node whose weight is the root.
    """

    id: int
    root: AxisKey
    size: int
    members: dict[AxisKey, Member] = field(default_factory=dict)
    units: list[np.ndarray] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    root_node: str = ""

    @property
    def prunable(self) -> bool:
        """Not frozen and more than one unit (a group never loses every channel)."""
        return not self.frozen and len(self.units) > 1

    @property
    def label(self) -> str:
        """A readable name: the root weight, or (for exporter-generated names such as
        ``val_19``) the root node's bias/parameter name that carries a module path."""
        if "." in self.root[0] or not self.params():
            return self.root[0]
        named = [m.tensor.name for m in self.params() if "." in m.tensor.name]
        return named[0] if named else self.root[0]

    @property
    def unit_size(self) -> int:
        """Root channels per unit (1 for plain channels, head_dim for heads)."""
        return max((len(u) for u in self.units), default=1)

    def params(self) -> list[Member]:
        """Members that are constants (what gets sliced besides activations)."""
        return [m for m in self.members.values() if m.is_param]


def infer_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Static shapes of every tensor (name -> dims) via ONNX shape inference on the
    weightless model (`onnxcomp.ir.infer_shapes`), initializers' own dims included."""
    shapes = tensor_dims(ir_infer_shapes(model))
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


class _Graphmaps:
    """Producer/consumer maps, built once per analysis."""

    def __init__(self, graph: gs.Graph) -> None:
        self.consumers: dict[str, list[tuple[gs.Node, int]]] = {}
        self.producer: dict[str, tuple[gs.Node, int]] = {}
        for node in graph.nodes:
            for i, t in enumerate(node.inputs):
                if t.name:
                    self.consumers.setdefault(t.name, []).append((node, i))
            for j, t in enumerate(node.outputs):
                if t.name:
                    self.producer[t.name] = (node, j)
        self.outputs = {t.name for t in graph.outputs}
        self.inputs = {t.name for t in graph.inputs}


def _roots(graph: gs.Graph) -> Iterable[tuple[gs.Node, gs.Constant, int]]:
    """Output-channel axes of weights: where groups grow from."""
    for node in graph.nodes:
        if node.op not in _ROOT_OPS or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if not isinstance(w, gs.Constant) or w.values.ndim < 2:
            continue
        if node.op == "Conv":
            yield node, w, 0
        elif node.op == "ConvTranspose":
            yield node, w, 1
        elif node.op == "Gemm":
            yield node, w, 0 if int(node.attrs.get("transB", 0)) else 1
        elif w.values.ndim == 2:  # MatMul with a constant [K, N] weight
            yield node, w, 1


def _pairs_code(src: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return src.astype(np.int64) * (1 << 32) + pos.astype(np.int64)


def _units(size: int, members: Iterable[Member]) -> list[np.ndarray]:
    """Connected components of root channels that share a position on some member.

    Vectorized min-label propagation: each round, every position takes the smallest
    label of its channels and every channel the smallest label of its positions;
    members where each position has one channel (the common case) are skipped.
    """
    shared = []
    for m in members:
        if m.pos.size and np.unique(m.pos).size < m.pos.size:
            shared.append(m)
    labels = np.arange(size, dtype=np.int64)
    changed = bool(shared)
    while changed:
        changed = False
        for m in shared:
            per_pos = np.full(int(m.pos.max()) + 1, size, dtype=np.int64)
            np.minimum.at(per_pos, m.pos, labels[m.src])
            per_src = np.full(size, size, dtype=np.int64)
            np.minimum.at(per_src, m.src, per_pos[m.pos])
            new = np.minimum(labels, per_src)
            new = new[new]  # pointer jumping shortens chains
            if not np.array_equal(new, labels):
                labels, changed = new, True
    order = np.argsort(labels, kind="stable")
    cuts = np.nonzero(np.diff(labels[order]))[0] + 1
    return [u.astype(np.int64) for u in np.split(order, cuts)]


def _grow(gid: int, node: gs.Node, w: gs.Constant, axis: int, maps: _Graphmaps, env: RuleEnv, opset: int) -> ChannelGroup:
    size = int(w.values.shape[axis])
    group = ChannelGroup(gid, (w.name, axis), size, root_node=node.name)
    seen: dict[AxisKey, np.ndarray] = {}
    nodes: dict[str, None] = {}
    frozen: dict[str, None] = {}
    ids = np.arange(size, dtype=np.int64)
    stack: list[tuple[gs.Tensor, int, np.ndarray, np.ndarray]] = [(w, axis, ids, ids.copy())]

    def visit(n: gs.Node, port: Port, t: gs.Tensor, ax: int, src: np.ndarray, pos: np.ndarray) -> None:
        nodes.setdefault(n.name or n.op, None)
        fn = lookup(n.domain or "", n.op, opset)
        if fn is None:
            frozen.setdefault(f"{n.op} '{n.name}' has no pruning rule", None)
            return
        res = fn(n, port, ax, env)
        if isinstance(res, Frozen):
            frozen.setdefault(f"{n.op} '{n.name}': {res.reason}", None)
            return
        for link in res:
            s, p = src, pos
            for m in link.maps:
                s, p = m(s, p)
            if p.size == 0:  # e.g. a Concat input that none of these channels reach
                continue
            r = env.rank(link.tensor)
            a = link.axis + r if (link.axis < 0 and r is not None) else link.axis
            stack.append((link.tensor, a, s, p))

    while stack:
        t, ax, src, pos = stack.pop()
        key = (t.name, ax)
        code = _pairs_code(src, pos)
        old = seen.get(key)
        if old is not None:
            new_mask = ~np.isin(code, old)
            if not new_mask.any():
                continue
            src, pos, code = src[new_mask], pos[new_mask], code[new_mask]
            seen[key] = np.union1d(old, code)
            mem = group.members[key]
            mem.src = np.concatenate([mem.src, src])
            mem.pos = np.concatenate([mem.pos, pos])
        else:
            code, first = np.unique(code, return_index=True)
            src, pos = src[first], pos[first]
            seen[key] = code
            group.members[key] = Member(t, ax, src, pos)
        if isinstance(t, gs.Variable):
            if t.name in maps.outputs:
                frozen.setdefault(f"reaches graph output '{t.name}'", None)
            if t.name in maps.inputs:
                frozen.setdefault(f"reaches graph input '{t.name}'", None)
            prod = maps.producer.get(t.name)
            if prod is not None:
                visit(prod[0], Port(True, prod[1]), t, ax, src, pos)
        for cn, i in maps.consumers.get(t.name, ()):
            visit(cn, Port(False, i), t, ax, src, pos)
    group.nodes = list(nodes)
    group.frozen = list(frozen)
    group.units = _units(size, group.members.values())
    return group


def analyze(graph: gs.Graph, shapes: dict[str, list[Dim]], *, exclude: tuple[str, ...] = ()) -> list[ChannelGroup]:
    """Find every channel group of ``graph``.

    Args:
        graph: The graph (not modified).
        shapes: Static shapes by tensor name (see `infer_shapes`).
        exclude: Glob patterns over node names and weight names; a group touching a
            match is frozen.

    Returns:
        Groups in topological order of their roots; every root axis belongs to exactly one.
    """
    maps = _Graphmaps(graph)
    env = RuleEnv(shapes)
    opset = int(graph.opset or 1)
    groups: list[ChannelGroup] = []
    covered: set[AxisKey] = set()
    for node, w, axis in _roots(graph):
        if (w.name, axis) in covered:
            continue
        g = _grow(len(groups), node, w, axis, maps, env, opset)
        covered.update(g.members)
        if exclude:
            # Node names of torch exports rarely carry module paths; weight names do.
            names = g.nodes + [m.tensor.name for m in g.params()]
            hit = next((n for n in names for pat in exclude if fnmatch.fnmatchcase(n, pat)), None)
            if hit is not None:
                g.frozen.append(f"excluded: '{hit}' matches an exclude pattern")
        groups.append(g)
    return groups


class AnalysisContext(Protocol):
    """What `channel_groups` needs of a pass context (`onnxcomp.PassContext` has it)."""

    def analysis(self, key: str, compute: Callable[[], Any]) -> Any: ...

    def to_model(self, graph: gs.Graph) -> onnx.ModelProto: ...


def channel_groups(
    graph: gs.Graph, ctx: AnalysisContext, exclude: tuple[str, ...] = ()
) -> tuple[list[ChannelGroup], dict[str, list[Dim]]]:
    """The channel groups of ``graph`` and the shapes they were found with.

    Cached as an analysis of ``ctx`` until a pass changes the graph, so passes that
    look at the same groups share one analysis.
    """

    def compute() -> tuple[list[ChannelGroup], dict[str, list[Dim]]]:
        shapes = infer_shapes(ctx.to_model(graph))
        return analyze(graph, shapes, exclude=exclude), shapes

    return ctx.analysis(f"pruning.channel_groups:{','.join(exclude)}", compute)


def analyze_model(model: onnx.ModelProto, *, exclude: tuple[str, ...] = ()) -> tuple[gs.Graph, list[ChannelGroup]]:
    """Import ``model``, fold its constants (as the pass does) and analyze it."""
    graph, meta = to_graph(model)
    try:  # the pass folds constants first too (exact); do the same here
        graph.fold_constants().cleanup()
    except Exception:
        pass
    return graph, analyze(graph, infer_shapes(to_model(graph.copy(), meta)), exclude=exclude)
