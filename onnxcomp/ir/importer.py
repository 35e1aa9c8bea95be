"""A faster import of plain ONNX graphs into the onnx-graphsurgeon IR.

graphsurgeon's importer spends most of its time in per-object bookkeeping: every tensor
attribute goes through ``Tensor.__setattr__`` and every node input through the Python-level
``SynchronizedList.extend`` that mirrors it into the tensor's consumer list. On a raw
PyTorch export (hundreds of small nodes) that import was a quarter of the whole lossless
preset. This module builds the *same* objects -- graphsurgeon ``Node``, ``Variable``,
``Constant`` and ``Graph``, with the same fields, values and cross-links -- in one linear
walk, filling the synchronized lists directly.

It only handles what most models are: one graph with tensor-typed values, initializers,
and nodes whose attributes are numbers, strings, tensors or lists of numbers/strings.
Anything else (subgraph or sparse attributes, model functions, sparse initializers,
sequence/map/optional-typed values, attribute references) returns None and the caller uses
graphsurgeon's own importer, which stays the reference: tests import every model both
ways and compare the results field by field.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter, get_numpy_type
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.util.misc import SynchronizedList

_A = onnx.AttributeProto
#: Attribute types this importer converts, and how (graphsurgeon's conversions).
_ATTRIBUTES: dict[int, Callable[[onnx.AttributeProto], object]] = {
    _A.FLOAT: lambda a: a.f,
    _A.INT: lambda a: a.i,
    _A.STRING: lambda a: a.s.decode(),
    _A.TENSOR: lambda a: _constant(a.t),
    _A.FLOATS: lambda a: list(a.floats),
    _A.INTS: lambda a: list(a.ints),
    _A.STRINGS: lambda a: [s.decode() for s in a.strings],
}


class _NotPlain(Exception):
    """The model uses something only graphsurgeon's importer handles."""


def _dtype(elem_type: int) -> object:
    """graphsurgeon's dtype for a value's ONNX element type (a numpy dtype)."""
    dtype = _numpy_dtype(elem_type)
    if dtype is None:
        raise _NotPlain  # graphsurgeon warns and keeps the enum: let it
    return dtype


def _synced(owner: object, field_name: str) -> SynchronizedList:
    """An empty ``SynchronizedList(owner, field_name, [])``, minus the ``extend([])`` call."""
    s = SynchronizedList.__new__(SynchronizedList)
    s.parent_obj = owner
    s.field_name = field_name
    return s


@functools.cache
def _numpy_dtype(elem_type: int) -> np.dtype | None:
    return get_numpy_type(elem_type)


def _constant(t: onnx.TensorProto) -> gs.Constant:
    """``OnnxImporter.import_tensor(t)`` for an initializer or tensor attribute: a Constant
    with `LazyValues`, built without graphsurgeon's per-field helpers."""
    dtype = _numpy_dtype(t.data_type)
    if dtype is None:  # bfloat16, float8...: graphsurgeon keeps (and warns about) the enum
        return OnnxImporter.import_tensor(t)
    values = LazyValues.__new__(LazyValues)
    values.__dict__.update(tensor=t, shape=t.dims, dtype=dtype, nbytes=math.prod(t.dims) * np.dtype(dtype).itemsize)
    c = gs.Constant.__new__(gs.Constant)
    c.__dict__.update(
        name=t.name,
        inputs=_synced(c, "outputs"),
        outputs=_synced(c, "inputs"),
        _values=values,
        data_location=int(t.data_location) if t.HasField("data_location") else None,
        _export_dtype=None,
    )
    return c


def _variable(name: str) -> gs.Variable:
    """``gs.Variable(name)`` without its per-attribute ``__setattr__`` hooks."""
    v = gs.Variable.__new__(gs.Variable)
    v.__dict__.update(
        name=name,
        inputs=_synced(v, "outputs"),
        outputs=_synced(v, "inputs"),
        dtype=None,
        shape=None,
        type="tensor_type",
    )
    return v


def _typed_variable(vi: onnx.ValueInfoProto) -> gs.Variable:
    """A Variable for a value-info entry, typed as graphsurgeon types it."""
    v = _variable(vi.name)
    which = vi.type.WhichOneof("value")
    if which is None and not vi.type.denotation:  # empty: graphsurgeon leaves it untyped
        return v
    if which != "tensor_type":
        raise _NotPlain
    tt = vi.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        # Not `onnxcomp.ir.dims_of`: this must be exactly graphsurgeon's reading (an empty
        # dim_param stays ""), which the importer's equivalence test holds it to.
        shape = [
            d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
        ]
    v.__dict__.update(dtype=_dtype(tt.elem_type), shape=shape)
    return v


def _attributes(node: onnx.NodeProto) -> OrderedDict:
    attrs: OrderedDict = OrderedDict()
    for a in node.attribute:
        convert = _ATTRIBUTES.get(a.type)
        if convert is None or a.ref_attr_name:
            raise _NotPlain
        attrs[a.name] = convert(a)
    return attrs


def import_plain(model: onnx.ModelProto) -> gs.Graph | None:
    """``gs.import_onnx(model)`` for a plain model, or None if ``model`` is not plain."""
    g = model.graph
    if model.functions or g.sparse_initializer:
        return None
    try:
        return _import(model)
    except _NotPlain:
        return None


def _import(model: onnx.ModelProto) -> gs.Graph:
    g = model.graph
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise _NotPlain  # graphsurgeon warns and picks a default opset: let it
    tensors: dict[str, gs.Tensor] = {}
    for init in g.initializer:
        if init.name not in tensors:  # graphsurgeon keeps the first of duplicate names
            tensors[init.name] = _constant(init)
    for vi in g.value_info:
        known = tensors.get(vi.name)
        if known is None:
            tensors[vi.name] = _typed_variable(vi)
        elif isinstance(known, gs.Variable):  # a repeated entry adds what the first lacked
            extra = _typed_variable(vi)
            known.__dict__.update(dtype=known.dtype or extra.dtype, shape=known.shape or extra.shape)
    initializer_names = {t.name for t in g.initializer}
    graph_inputs = []
    for vi in g.input:
        if vi.name in initializer_names:
            continue
        t = tensors.get(vi.name)
        if t is None:
            t = tensors[vi.name] = _typed_variable(vi)
        graph_inputs.append(t)
    graph_outputs = []
    for vi in g.output:
        t = tensors.get(vi.name)
        if t is None:
            t = tensors[vi.name] = _typed_variable(vi)
        graph_outputs.append(t)

    def tensor(name: str) -> gs.Tensor:
        t = tensors.get(name)
        if t is None:
            if not name:  # an omitted optional input/output: a fresh empty tensor each time
                return _variable("")
            t = tensors[name] = _variable(name)
        return t

    nodes = []
    append = list.append
    for onnx_node in g.node:
        node = gs.Node.__new__(gs.Node)
        ins = [tensor(name) for name in onnx_node.input]
        outs = [tensor(name) for name in onnx_node.output]
        node_inputs = _synced(node, "outputs")
        node_outputs = _synced(node, "inputs")
        list.extend(node_inputs, ins)
        list.extend(node_outputs, outs)
        # What SynchronizedList.extend would do, minus its per-element method calls.
        for t in ins:
            append(t.outputs, node)
        for t in outs:
            append(t.inputs, node)
        node.__dict__.update(
            op=onnx_node.op_type,
            name=onnx_node.name,
            attrs=_attributes(onnx_node),
            inputs=node_inputs,
            outputs=node_outputs,
            domain=onnx_node.domain if onnx_node.HasField("domain") else None,
        )
        nodes.append(node)

    return gs.Graph(
        nodes=nodes,
        inputs=graph_inputs,
        outputs=graph_outputs,
        name=g.name,
        doc_string=g.doc_string,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        opset=opset,
        import_domains=model.opset_import,
        functions=[],
        ir_version=model.ir_version,
    )
