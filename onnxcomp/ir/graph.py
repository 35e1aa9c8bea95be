"""Small graph helpers shared by the lossless passes.

All helpers are linear in graph size: onnx-graphsurgeon keeps use-def links on every
tensor (``tensor.inputs`` = producers, ``tensor.outputs`` = consumers), so a "consumer
map" is already maintained by the IR; what this module adds is constant access, static
shape facts, and rewiring that keeps graph-output names stable. Shape inference lives in
`onnxcomp.ir.shapes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

#: Ops whose result is random: never folded, merged or removed as duplicates.
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)

#: Domains of the standard operator set (anything else is a custom op: left alone).
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def np_dtype(dtype: object) -> np.dtype | None:
    """``dtype`` as a numpy dtype, or None when it has none (unknown, or an ONNX-only type
    such as bfloat16/float8, which graphsurgeon reports as an ``onnx.TensorProto`` enum)."""
    if dtype is None or isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        return None
    try:
        return np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        return None


def onnx_elem_type(dtype: object) -> int:
    """``dtype`` as an ``onnx.TensorProto`` element type (0 when unknown)."""
    if dtype is None:
        return 0
    if isinstance(dtype, (int, np.integer)):
        return int(dtype)
    try:
        return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))  # type: ignore[call-overload]
    except (TypeError, KeyError):
        return 0


def same_dtype(a: object, b: object) -> bool:
    """True if two dtypes (numpy or ONNX enum) are known and equal."""
    ea, eb = onnx_elem_type(a), onnx_elem_type(b)
    return ea != 0 and ea == eb


def is_standard(node: gs.Node) -> bool:
    """True if ``node`` belongs to the default ONNX domain."""
    return (node.domain or "") in STANDARD_DOMAINS


#: The standard ops with graph attributes; the checker rejects graph attributes elsewhere.
_BODY_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def has_subgraph(node: gs.Node) -> bool:
    """True if ``node`` carries a graph attribute (If/Loop/Scan bodies, functions' graphs)."""
    # Runs for every node in several passes and after every pass: answer standard ops by
    # name, look at attributes only for the body ops and other domains.
    if not node.attrs or (node.op not in _BODY_OPS and (node.domain or "") in STANDARD_DOMAINS):
        return False
    for a in node.attrs.values():
        if isinstance(a, gs.Graph) or (isinstance(a, list) and a and isinstance(a[0], gs.Graph)):
            return True
    return False


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """Yield ``graph`` and every subgraph nested in its nodes (explicit stack, no recursion)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.nodes:
            for a in node.attrs.values():
                if isinstance(a, gs.Graph):
                    stack.append(a)


def default_opset(graph: gs.Graph) -> int:
    """The default-domain opset of ``graph`` (subgraphs inherit the model's)."""
    return int(graph.opset or 0)


def peek_values(tensor: gs.Constant, *, readonly: bool = False) -> np.ndarray:
    """The value of a constant without caching a lazily loaded payload on the tensor.

    ``Constant.values`` replaces a lazy payload with the loaded array, which is a change
    of the graph as far as the manager's "did the pass really change nothing?" check is
    concerned; passes that only *look* must not do that.

    Args:
        tensor: The constant.
        readonly: Skip the defensive copy graphsurgeon makes of a lazily loaded payload;
            the array may then be a read-only view of the model's bytes. For callers that
            only read the value and keep nothing derived from it without copying (hashing,
            arithmetic that makes new arrays); it halves the cost of loading a weight.
    """
    raw = tensor._values
    if isinstance(raw, LazyValues):
        if readonly and type(raw) is LazyValues:  # subclasses (external data) load their own way
            return onnx.numpy_helper.to_array(raw.tensor)
        return np.asarray(raw.load())
    return np.asarray(tensor.values)


def constant_nbytes(tensor: gs.Constant) -> int:
    """Size of a constant's payload in bytes, without loading it."""
    raw = tensor._values
    if isinstance(raw, LazyValues):
        try:
            return math.prod(int(d) for d in raw.shape) * np.dtype(raw.dtype).itemsize
        except (TypeError, ValueError):  # dtypes numpy lacks (bfloat16, float8): estimate from the proto
            return raw.tensor.ByteSize()
    return int(np.asarray(raw).nbytes)


def constant_value(tensor: gs.Tensor, *, readonly: bool = False) -> np.ndarray | None:
    """The value of ``tensor`` if it is a constant (initializer or single-output Constant node).

    Returns None for variables and for Constant nodes holding sparse tensors or attribute
    references (not statically known). ``readonly`` is passed on to `peek_values`.
    """
    if isinstance(tensor, gs.Constant):
        return peek_values(tensor, readonly=readonly)
    if len(tensor.inputs) == 1:
        node = tensor.inputs[0]
        if node.op == "Constant" and is_standard(node) and len(node.outputs) == 1:
            return constant_node_value(node, readonly=readonly)
    return None


def constant_node_value(node: gs.Node, *, readonly: bool = False) -> np.ndarray | None:
    """The value of a ``Constant`` node from whichever ``value*`` attribute it uses."""
    attrs = node.attrs
    if "value" in attrs:
        v = attrs["value"]
        return peek_values(v, readonly=readonly) if isinstance(v, gs.Constant) else None
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None  # sparse_value / value_string(s): leave to onnxruntime or alone


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True if ``tensor`` is one of ``graph.outputs`` (identity comparison, not name)."""
    return any(t is tensor for t in graph.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True if ``tensor`` is one of ``graph.inputs``."""
    return any(t is tensor for t in graph.inputs)


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> int:
    """Make every consumer node of ``old`` read ``new`` instead; return how many inputs changed.

    Graph outputs are not touched (see `bypass`, which keeps output names stable).
    """
    changed = 0
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
                changed += 1
    return changed


def bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor, result: gs.Tensor) -> bool:
    """Remove the effect of ``node`` whose output ``result`` equals its input ``source``.

    Consumers of ``result`` read ``source`` instead. When ``result`` is a graph output its
    *name* is part of the model interface, so instead the producer of ``source`` is made to
    write ``result`` directly (``source``'s other readers follow). That is impossible when
    ``source`` is a graph input, a constant, another graph output, or a subgraph's outer-scope
    value; then nothing changes and False is returned.

    The node itself is left dangling; ``graph.cleanup()`` removes it.
    """
    if not is_graph_output(graph, result):
        replace_uses(result, source)
        _detach(node)
        return True
    if isinstance(source, gs.Constant) or is_graph_input(graph, source) or is_graph_output(graph, source):
        return False
    if len(source.inputs) != 1:
        return False
    producer = source.inputs[0]
    if not any(n is producer for n in graph.nodes):  # outer-scope value of a subgraph
        return False
    if result.dtype is None and source.dtype is not None:
        result.dtype = source.dtype
    if result.shape is None and source.shape is not None:
        result.shape = source.shape
    _detach(node)
    replace_uses(source, result)
    idx = next(i for i, t in enumerate(producer.outputs) if t is source)
    producer.outputs[idx] = result
    return True


def _detach(node: gs.Node) -> None:
    """Disconnect ``node`` from its inputs and outputs so cleanup drops it."""
    node.inputs.clear()
    node.outputs.clear()


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The fully static shape of ``tensor`` or None if any dim is unknown or symbolic."""
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.shape)
    shape = tensor.shape
    if shape is None:
        return None
    if all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return tuple(int(d) for d in shape)
    return None


def tensor_map(graph: gs.Graph) -> dict[str, gs.Tensor]:
    """The named tensors of ``graph`` (not its subgraphs) by name, like ``graph.tensors()``.

    Same contents and order as graphsurgeon's ``Graph.tensors()`` (graph inputs, then node
    inputs and outputs in node order, then graph outputs; a later tensor with a taken name
    replaces the earlier one in place), without its per-tensor list concatenations and
    duplicate-name diagnostics, which made it one of the lossless passes' hot spots.
    """
    tensors: dict[str, gs.Tensor] = {}
    for t in graph.inputs:
        if t.name != "":  # graphsurgeon's "empty" (omitted optional) tensor
            tensors[t.name] = t
    for node in graph.nodes:
        for t in node.inputs:
            if t.name != "":
                tensors[t.name] = t
        for t in node.outputs:
            if t.name != "":
                tensors[t.name] = t
    for t in graph.outputs:
        if t.name != "":
            tensors[t.name] = t
    return tensors


def consumer_map(graph: gs.Graph) -> dict[str, list[tuple[gs.Node, int]]]:
    """Readers of every main-graph tensor by name: ``name -> [(node, input index), ...]``
    in node order (linear). graphsurgeon's ``tensor.outputs`` gives a tensor's readers
    but not which input slot reads it, and a name-keyed map survives tensor swaps."""
    consumers: dict[str, list[tuple[gs.Node, int]]] = {}
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if t.name:
                consumers.setdefault(t.name, []).append((node, i))
    return consumers


def count_nodes(graph: gs.Graph) -> int:
    """Number of nodes in ``graph`` including nested subgraphs."""
    return sum(len(g.nodes) for g in iter_graphs(graph))


def unique_namer(graph: gs.Graph, prefix: str):
    """Return a function producing tensor/node names unused in ``graph`` (``prefix_N``)."""
    taken = set(tensor_map(graph)) | {n.name for n in graph.nodes}
    counter = [0]

    def fresh(base: str = "") -> str:
        while True:
            counter[0] += 1
            name = f"{base or prefix}__{prefix}{counter[0]}"
            if name not in taken:
                taken.add(name)
                return name

    return fresh


def toposort(graph: gs.Graph, *, recurse_subgraphs: bool = True) -> None:
    """Sort ``graph.nodes`` topologically in O(nodes + edges), keeping the original order
    wherever the dependencies allow (so an already sorted graph is left as it is).

    onnx-graphsurgeon's own ``Graph.toposort`` computes hierarchy levels with repeated
    producer lookups, which grew to a third of the lossless preset's time on a
    MobileNet export and scales worse than linearly; this is Kahn's algorithm with a heap
    on the original positions. A node with subgraph bodies (If/Loop/Scan) depends on
    every outer tensor its bodies read.
    """
    import heapq

    nodes = list(graph.nodes)
    producer: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for t in node.outputs:
            producer[id(t)] = i
    dependents: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    nested: list[gs.Node] = []  # nodes with subgraph bodies (few; checked once each)
    in_order = True  # every dependency points backwards: Kahn's order is the identity
    for i, node in enumerate(nodes):
        reads = node.inputs
        if node.attrs and has_subgraph(node):
            nested.append(node)
            reads = list(reads)
            for sub in node.subgraphs(recursive=True):
                for inner in sub.nodes:
                    reads.extend(inner.inputs)
        seen: set[int] = set()
        for t in reads:
            j = producer.get(id(t))
            if j is not None and j != i and j not in seen:
                seen.add(j)
                dependents[j].append(i)
                indegree[i] += 1
                in_order = in_order and j < i
    if not in_order:
        ready = [i for i in range(len(nodes)) if indegree[i] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for k in dependents[i]:
                indegree[k] -= 1
                if indegree[k] == 0:
                    heapq.heappush(ready, k)
        if len(order) != len(nodes):
            cyclic = [nodes[i].name or nodes[i].op for i in range(len(nodes)) if indegree[i] > 0][:5]
            raise ValueError(f"graph has a cycle through nodes {cyclic}")
        graph.nodes = [nodes[i] for i in order]
    if recurse_subgraphs:
        for node in nested:
            for sub in node.subgraphs():
                toposort(sub, recurse_subgraphs=True)


def remove_dead_nodes(graph: gs.Graph) -> None:
    """graphsurgeon's ``graph.cleanup(remove_unused_graph_inputs=False)``, in linear time.

    Drops (and disconnects) every node no graph output depends on, and detaches producers
    of graph inputs. graphsurgeon's cleanup walks tensors by name through per-graph tensor
    maps and node-id bookkeeping; on a raw export it ran after every pass of every sweep.
    Graphs with If/Loop/Scan bodies or local functions still take graphsurgeon's cleanup,
    which also cleans inside them.
    """
    nodes = graph.nodes
    if graph.functions or any(node.attrs and has_subgraph(node) for node in nodes):
        graph.cleanup(remove_unused_graph_inputs=False)
        return
    for t in graph.inputs:
        if t.inputs:
            t.inputs.clear()  # a graph input has no producer
    live: set[int] = set()
    visited = {id(t) for t in graph.outputs}
    stack = list(graph.outputs)
    while stack:
        for node in stack.pop().inputs:  # the tensor's producers
            if id(node) in live:
                continue
            live.add(id(node))
            for t in node.inputs:
                if id(t) not in visited:
                    visited.add(id(t))
                    stack.append(t)
    if all(id(node) in live for node in nodes):
        return
    kept = []
    for node in nodes:
        if id(node) in live:
            kept.append(node)
        else:
            node.inputs.clear()
            node.outputs.clear()
    graph.nodes = kept


def cleanup_after_rewrite(graph: gs.Graph) -> None:
    """Remove the nodes a pass detached (no inputs, no outputs) from ``graph``.

    The manager runs graphsurgeon's full ``cleanup`` after every pass that reports a change,
    so a pass need not repeat it: dropping its detached nodes (linear, cheap) leaves the
    same graph once the manager has cleaned up, and keeps a pass run on its own from
    leaving output-less nodes behind. With If/Loop/Scan bodies the full cleanup still runs
    here: dead body nodes count as readers (which blocks rewrites of bodies visited later)
    and their outer reads constrain sorting.
    """
    nodes = graph.nodes
    if any(node.attrs and has_subgraph(node) for node in nodes):
        graph.cleanup(remove_unused_graph_inputs=False)
    elif any(not node.inputs and not node.outputs for node in nodes):
        graph.nodes = [node for node in nodes if node.inputs or node.outputs]
