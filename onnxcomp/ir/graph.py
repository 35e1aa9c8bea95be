"""Small graph helpers shared by the lossless passes.

All helpers are linear in graph size: onnx-graphsurgeon keeps use-def links on every
tensor (``tensor.inputs`` = producers, ``tensor.outputs`` = consumers), so a "consumer
map" is already maintained by the IR; what this module adds is constant access, static
shape facts, and rewiring that keeps graph-output names stable.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxcomp.pipeline.pass_api import PassContext
from onnxcomp.ir.weightless import typed_input

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


def can_add_initializers(ctx: PassContext) -> bool:
    """False for IR < 4 models, where every initializer must also be a graph input: a pass
    that creates constants would produce an invalid model (the exporter does not add inputs)."""
    return ctx.original_model.ir_version >= 4


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


def _lacks_facts(tensor: gs.Tensor) -> bool:
    """True if shape inference could still tell something about variable ``tensor``: its
    dtype is unknown or its shape is not fully static (see what `annotate_shapes` fills in)."""
    return tensor.dtype is None or static_shape(tensor) is None


_np_dtype_of = functools.cache(onnx.helper.tensor_dtype_to_np_dtype)

#: ``ctx.artifacts`` key of the tensors shape inference has seen (lacking variables, constants).
_SEEN_KEY = "lossless.shapes.seen"


def annotate_shapes(graph: gs.Graph, ctx: PassContext) -> None:
    """Fill in missing dtypes/shapes of main-graph variables from ONNX shape inference.

    Inference only runs when some variable still lacks a dtype or a fully static shape:
    otherwise there is nothing it could add, and after the first sweep of a static-shape
    model that is the usual case (passes give the tensors they create dtype and shape).
    The inferred facts are cached in ``ctx`` (``analysis("lossless.shapes")``) until a pass
    modifies the graph, so a fixed-point sweep infers at most once per change, not once per
    pass. They cover the tensors that lacked facts when they were inferred: later calls on
    the same (unmodified) graph can only find fewer such tensors. Failures of shape
    inference (e.g. models over 2 GiB, custom ops) leave shapes as they were.

    A tensor inference was already asked about and could not settle (a dynamic dim, a
    data-dependent shape) is no reason to infer again while the graph holds no constant
    inference has not seen: lossless rewrites keep every surviving tensor's value, and what
    lets a re-run settle more is new constants (a folded shape computation) to propagate.
    Without this rule a raw export paid one whole-model inference per modifying pass.
    Inference re-runs when a tensor it has not seen lacks facts or a new constant appears.
    """
    tensors = tensor_map(graph)
    lacking = [(name, t) for name, t in tensors.items() if not isinstance(t, gs.Constant) and _lacks_facts(t)]
    if not lacking:
        return
    # By id (graphsurgeon tensors are unhashable); weak, so a dead tensor's id is no match.
    seen: weakref.WeakValueDictionary[int, gs.Tensor] = ctx.artifacts.setdefault(_SEEN_KEY, weakref.WeakValueDictionary())
    constants = [t for t in tensors.values() if isinstance(t, gs.Constant)]
    if all(seen.get(id(t)) is t for _, t in lacking) and all(seen.get(id(t)) is t for t in constants):
        return

    def compute() -> dict[str, tuple[np.dtype | None, list | None]]:
        seen.update((id(t), t) for _, t in lacking)
        seen.update((id(t), t) for t in constants)
        try:
            skeleton = _skeleton_model(graph, ctx, tensors)
            inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
        except Exception as e:  # inference is an optimisation aid, never a reason to fail
            ctx.logger.info("shape inference failed (static-shape rewrites disabled): %s", e)
            return {}
        wanted = {name for name, _ in lacking}
        facts: dict[str, tuple[np.dtype | None, list | None]] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.name not in wanted:
                continue
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            dtype = _np_dtype_of(tt.elem_type) if tt.elem_type else None
            shape = None
            if tt.HasField("shape"):
                shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
            facts[vi.name] = (dtype, shape)
        return facts

    facts = ctx.analysis("lossless.shapes", compute)
    if not facts:
        return
    # Only tensors lacking facts can change below, so only they are visited.
    for name, tensor in lacking:
        if name not in facts:
            continue
        dtype, shape = facts[name]
        if tensor.dtype is None and dtype is not None:
            tensor.dtype = dtype
        if shape is None or static_shape(tensor) is not None:
            continue
        if tensor.shape is None:
            tensor.shape = shape
        elif len(tensor.shape) == len(shape):
            # Merge dim by dim: an inferred value wins, a dim only the model knew is kept.
            tensor.shape = [new if new is not None else old for new, old in zip(shape, tensor.shape)]


#: Constants larger than this are replaced by typed graph inputs for shape inference:
#: only small ones (shape vectors, axes, scalars) carry information inference can use.
_SKELETON_MAX_CONSTANT_BYTES = 4096


def _skeleton_model(graph: gs.Graph, ctx: PassContext, tensors: dict[str, gs.Tensor]) -> onnx.ModelProto:
    """Export ``graph`` for shape inference without its large weights.

    Serialising and inferring a model with 100 MB of weights costs seconds; the weights'
    dtype and shape are all inference needs, so they become typed graph inputs. Nodes are
    exported straight from the graph (no ``graph.copy()``, which is slow on wide graphs).
    ``tensors`` is the graph's `tensor_map`.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    nodes = [export_node(n) for n in graph.nodes]
    inputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs]
    outputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs]
    inits = []
    for t in tensors.values():
        if not isinstance(t, gs.Constant):
            continue
        raw = t._values
        if isinstance(raw, SparseValues) or constant_nbytes(t) > _SKELETON_MAX_CONSTANT_BYTES:
            elem = raw.tensor.data_type if isinstance(raw, LazyValues) else onnx_elem_type(np.asarray(raw.values if isinstance(raw, SparseValues) else raw).dtype)
            inputs.append(typed_input(t.name, elem, t.shape))
        else:
            inits.append(OnnxExporter.export_tensor_proto(t))
    g = onnx.helper.make_graph(nodes, graph.name or "skeleton", inputs, outputs, inits)
    opsets = list(graph.import_domains) if graph.import_domains else [onnx.helper.make_opsetid("", default_opset(graph))]
    model = onnx.helper.make_model(g, opset_imports=opsets)
    model.ir_version = max(ctx.original_model.ir_version, 4)  # initializers need not be inputs
    model.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    return model


_ATTR = onnx.AttributeProto


def _plain_attribute(key: str, value: object) -> onnx.AttributeProto | None:
    """The AttributeProto of an int, float, string or non-empty list of one of these (the
    one ``onnx.helper.make_attribute`` builds), or None for any other value."""
    kind = type(value)
    if kind is int:
        return _ATTR(name=key, type=_ATTR.INT, i=value)
    if kind is float:
        return _ATTR(name=key, type=_ATTR.FLOAT, f=value)
    if kind is str:
        return _ATTR(name=key, type=_ATTR.STRING, s=value.encode("utf-8"))
    if kind is list and value:
        first = type(value[0])
        if not all(type(v) is first for v in value):
            return None
        if first is int:
            return _ATTR(name=key, type=_ATTR.INTS, ints=value)
        if first is float:
            return _ATTR(name=key, type=_ATTR.FLOATS, floats=value)
        if first is str:
            return _ATTR(name=key, type=_ATTR.STRINGS, strings=[v.encode("utf-8") for v in value])
    return None


def export_node(node: gs.Node) -> onnx.NodeProto:
    """``OnnxExporter.export_node(node)``: the same NodeProto, built faster.

    Shape inference exports every node of the graph after each change; graphsurgeon's
    exporter spends most of that in ``make_attribute``'s generic type dispatch. Plain
    attributes (ints, floats, strings and lists of them, nearly all attributes of real
    models) are built directly; a node with any other attribute (tensors, graphs,
    references, bools, mixed lists) goes through graphsurgeon's exporter.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    attributes = []
    for key, value in node.attrs.items():
        attribute = _plain_attribute(key, value)
        if attribute is None:
            return OnnxExporter.export_node(node)
        attributes.append(attribute)
    proto = onnx.NodeProto(
        op_type=node.op, input=[t.name for t in node.inputs], output=[t.name for t in node.outputs], attribute=attributes
    )
    if node.name:  # set like onnx.helper.make_node does: an empty name is left unset
        proto.name = node.name
    if node.domain is not None:
        proto.domain = node.domain
    return proto


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
