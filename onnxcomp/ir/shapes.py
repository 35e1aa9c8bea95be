"""Shape facts: the one reader of declared dims, and ONNX shape inference run on models
without their weights.

Inference needs each weight's type and shape, never its bytes, and serializing hundreds of
MB of weights would dominate its cost: large weights become typed graph inputs (the rule
and the threshold are `onnxcomp.ir.weightless`'s, shared with the checker).
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxcomp.ir.graph import (
    constant_nbytes,
    default_opset,
    iter_graphs,
    onnx_elem_type,
    static_shape,
    tensor_map,
)
from onnxcomp.ir.weightless import MIN_STRIPPED_BYTES, structure_skeleton, typed_input

#: A dim as declared: a size, a symbolic name, or None (unknown).
Dim = int | str | None


class ShapeContext(Protocol):
    """What shape helpers need of a pass context (`onnxcomp.pipeline.PassContext` has it)."""

    original_model: onnx.ModelProto
    logger: logging.Logger
    #: Tensors shape inference was already asked about, by ``id`` (kept for the whole run).
    shapes_seen: weakref.WeakValueDictionary[int, gs.Tensor]

    def analysis(self, key: str, compute: Callable[[], Any]) -> Any: ...


def dims_of(vi: onnx.ValueInfoProto) -> list[Dim] | None:
    """The declared dims of a tensor value-info (None when it declares no tensor shape)."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def infer_shapes(model: onnx.ModelProto, *, data_prop: bool = True) -> onnx.ModelProto:
    """ONNX shape inference on ``model`` without its large weights (best effort: on failure,
    ``model`` itself is returned). Read the facts with `dims_of` over ``graph.value_info``."""
    skeleton = structure_skeleton(model)
    # Below IR 4 inference ignores initializers that are not graph inputs, and passes add
    # such constants (the exporter does not list them as inputs).
    skeleton.ir_version = max(skeleton.ir_version, 4)
    try:
        return onnx.shape_inference.infer_shapes(skeleton, data_prop=data_prop)
    except Exception:  # inference is an aid: unknown shapes make passes cautious, never wrong
        return model


def tensor_dims(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Declared dims of every tensor of the main graph (inputs, value_info, outputs)."""
    g = model.graph
    out: dict[str, list[Dim]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = dims_of(vi)
        if dims is not None:
            out[vi.name] = dims
    return out


def can_add_initializers(ctx: ShapeContext) -> bool:
    """Whether a pass may create initializers that are not graph inputs: always, since
    `onnxcomp.ir.to_graph` imports IR < 4 models (where every initializer had to be an
    input) with their initializers as constants and exports them at IR 4. Kept for
    plugins written against earlier versions."""
    return True




def _lacks_facts(tensor: gs.Tensor) -> bool:
    """True if shape inference could still tell something about variable ``tensor``: its
    dtype is unknown or its shape is not fully static (see what `annotate_shapes` fills in)."""
    return tensor.dtype is None or static_shape(tensor) is None


_np_dtype_of = functools.cache(onnx.helper.tensor_dtype_to_np_dtype)

def annotate_shapes(graph: gs.Graph, ctx: ShapeContext) -> None:
    """Fill in missing dtypes/shapes of variables (main graph and bodies) from ONNX shape inference.

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
    # Values inside If/Loop/Scan bodies: inference types them too (names are unique model-wide).
    for body in iter_graphs(graph):
        if body is not graph:
            lacking.extend(
                (name, t) for name, t in tensor_map(body).items() if name not in tensors and not isinstance(t, gs.Constant) and _lacks_facts(t)
            )
    if not lacking:
        return
    # By id (graphsurgeon tensors are unhashable); weak, so a dead tensor's id is no match.
    seen = ctx.shapes_seen
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
        for vi in _inferred_values(inferred.graph):
            if vi.name not in wanted:
                continue
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            dtype = _np_dtype_of(tt.elem_type) if tt.elem_type else None
            facts[vi.name] = (dtype, dims_of(vi))
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


def _inferred_values(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Value infos and outputs of ``graph`` and of every body nested in it."""
    out: list[onnx.ValueInfoProto] = []
    stack = [graph]
    while stack:
        g = stack.pop()
        out.extend(g.value_info)
        out.extend(g.output)
        for node in g.node:
            stack.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    return out


def _skeleton_model(graph: gs.Graph, ctx: ShapeContext, tensors: dict[str, gs.Tensor]) -> onnx.ModelProto:
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
        if isinstance(raw, SparseValues) or constant_nbytes(t) > MIN_STRIPPED_BYTES:
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


