"""Graph hygiene at load time: names are unique, nodes are in topological order.

Passes assume a well-formed SSA graph. Two common defects in real files would otherwise
make them silently wrong or make the checker reject a model onnxruntime happily runs:

* **Duplicate tensor names** (two producers of one name, an initializer given twice, an
  input also produced by a node): which value a consumer means is ambiguous, so this is an
  `InvalidModelError` that lists the names. (An initializer that is *also* a graph input
  is not a duplicate: it is an overridable default, see `onnxcomp.ir.convert`.)
* **Unsorted nodes**: sorted here (Kahn's algorithm, linear in nodes + edges). A node
  that holds subgraphs depends on every outer-scope name its bodies read, so those
  implicit inputs count as edges too. A cycle is an error naming nodes on it.

Every graph level is handled (subgraph bodies are sorted in place within the copy).
The caller's ModelProto is never mutated: a sorted *copy* is returned only when some
graph was actually out of order.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import onnx

from onnxcomp.errors import InvalidModelError

log = logging.getLogger("onnxcomp")

_MAX_LISTED = 5


@dataclass
class HygieneReport:
    """What `normalize` changed (empty when the model was already clean)."""

    sorted_graphs: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """User-facing one-line notes."""
        if not self.sorted_graphs:
            return []
        return [f"nodes were not in topological order in graph(s) {', '.join(self.sorted_graphs[:_MAX_LISTED])}; sorted them"]


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes (explicit stack, no recursion)."""
    free: set[str] = set()
    # Each entry: (graph, names defined in the enclosing scopes *inside* the top subgraph).
    stack: list[tuple[onnx.GraphProto, frozenset[str]]] = [(graph, frozenset())]
    while stack:
        g, outer = stack.pop()
        defined = set(outer)
        defined.update(i.name for i in g.input)
        defined.update(t.name for t in g.initializer)
        defined.update(t.name for t in g.sparse_initializer if t.values.name)
        for n in g.node:
            defined.update(o for o in n.output if o)
        for n in g.node:
            free.update(i for i in n.input if i and i not in defined)
            for sg in _subgraphs(n):
                stack.append((sg, frozenset(defined)))
        free.update(o.name for o in g.output if o.name not in defined)
    return free


def check_unique_names(graph: onnx.GraphProto, where: str = "main graph") -> None:
    """Every tensor name is defined once in ``graph`` (inputs, initializers, node outputs).

    Raises:
        InvalidModelError: Listing the duplicated names.
    """
    seen: set[str] = set()
    dupes: list[str] = []
    inputs = {i.name for i in graph.input}

    def define(name: str) -> None:
        if not name:
            return
        if name in seen:
            if name not in dupes:
                dupes.append(name)
        else:
            seen.add(name)

    for i in graph.input:
        define(i.name)
    for t in graph.initializer:
        if t.name in inputs:
            # An initializer backing an input: a default value, not a second definition —
            # unless the same initializer name appears twice.
            inputs.discard(t.name)
            continue
        define(t.name)
    for n in graph.node:
        for o in n.output:
            define(o)
    if dupes:
        listed = ", ".join(repr(d) for d in dupes[:_MAX_LISTED]) + (f" and {len(dupes) - _MAX_LISTED} more" if len(dupes) > _MAX_LISTED else "")
        raise InvalidModelError(f"duplicate tensor names in {where}: {listed} (each name must be defined once)")


def _order(graph: onnx.GraphProto, where: str) -> list[int] | None:
    """A topological order of ``graph.node`` (indices), or None when already sorted."""
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for idx, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = idx
    deps: list[set[int]] = []
    already_sorted = True
    for idx, n in enumerate(nodes):
        needed = set(i for i in n.input if i)
        for sg in _subgraphs(n):
            needed |= _free_names(sg)
        d = {producer[name] for name in needed if name in producer}
        d.discard(idx)  # a node reading its own output is caught by the checker
        if any(p >= idx for p in d):
            already_sorted = False
        deps.append(d)
    if already_sorted:
        return None
    consumers: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    for idx, d in enumerate(deps):
        for p in d:
            consumers[p].append(idx)
            indegree[idx] += 1
    ready = deque(i for i in range(len(nodes)) if indegree[i] == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for c in consumers[i]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or f"{nodes[i].op_type}#{i}" for i in range(len(nodes)) if indegree[i] > 0]
        raise InvalidModelError(f"{where} has a cycle through nodes {', '.join(stuck[:_MAX_LISTED])}; not a valid ONNX graph")
    return order


def _graphs_with_names(model: onnx.ModelProto) -> list[tuple[onnx.GraphProto, str]]:
    out: list[tuple[onnx.GraphProto, str]] = []
    stack: list[tuple[onnx.GraphProto, str]] = [(model.graph, "main graph")]
    while stack:
        g, where = stack.pop()
        out.append((g, where))
        for n in g.node:
            for sg in _subgraphs(n):
                stack.append((sg, f"subgraph {sg.name or '?'} of node {n.name or n.op_type}"))
    return out


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, HygieneReport]:
    """Check names and sort nodes; return the model (a sorted copy if it had to change).

    Raises:
        InvalidModelError: Duplicate tensor names or a cycle.
    """
    report = HygieneReport()
    plans: list[tuple[int, list[int], str]] = []
    for gi, (g, where) in enumerate(_graphs_with_names(model)):
        check_unique_names(g, where)
        order = _order(g, where)
        if order is not None:
            plans.append((gi, order, where))
    if not plans:
        return model, report
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)  # only unsorted models pay for a copy
    graphs = _graphs_with_names(fixed)  # same traversal order as above
    # Children before parents: re-creating a parent's nodes copies its (already sorted)
    # bodies, whereas the reverse would sort bodies detached from the new parent.
    for gi, order, where in reversed(plans):
        g = graphs[gi][0]
        nodes = [onnx.NodeProto() for _ in order]
        for new, old in zip(nodes, order):
            new.CopyFrom(g.node[old])
        del g.node[:]
        g.node.extend(nodes)
        report.sorted_graphs.append(where)
    for w in report.warnings:
        log.warning(w)
    return fixed, report
