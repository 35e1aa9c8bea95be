"""Conversion between ``onnx.ModelProto`` and the onnx-graphsurgeon IR that passes mutate.

onnx-graphsurgeon drops a few things on import that a user's model must keep, so this
module carries them beside the graph in a `ModelMeta`:

* model-level metadata (``metadata_props``, ``doc_string``, ``domain``, ``model_version``);
* initializers that are *also* graph inputs in models of IR version >= 4: there they are
  overridable defaults (the exporter chose to list them as inputs). graphsurgeon would turn
  them into constants and drop them from the inputs, which changes the model's interface
  and lets passes fold values the user may override. We strip them before import (so they
  become plain graph inputs) and restore them on export.

Models of IR version < 4 are different: there *every* initializer must also be a graph
input, so listing a weight as an input says nothing about overriding it; they are the
model's weights. `to_graph` imports them as constants (they leave the graph inputs, as
onnxsim and onnxslim also do) and raises the graph's IR version to 4, the first that allows
initializers which are not inputs; opsets are untouched. Outputs for the default feeds
(everything but the weights) are unchanged; a caller who really feeds new weights at run
time must keep the original model.

Names are a serialization concern: duplicates are fixed once, here, at export.

Tensors of a lazily loaded model (see ``model_io.load_model(lazy_external=True)``) stay
on disk: their constants get `ExternalValues`, which graphsurgeon exports as the
original (tiny) external reference and which read the validated file only if a pass
actually asks for the values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxcomp.ir.graph import constant_nbytes, iter_graphs, tensor_map
from onnxcomp.ir.importer import import_plain
from onnxcomp.ir.weightless import MIN_STRIPPED_BYTES, ArrayCache, lendable


#: The first IR version whose initializers need not be graph inputs.
MIN_IR_WITHOUT_INPUTS = 4


@dataclass
class ModelMeta:
    """Model-level facts that live outside the graphsurgeon IR."""

    doc_string: str = ""
    domain: str = ""
    model_version: int = 0
    metadata_props: list[tuple[str, str]] = field(default_factory=list)
    #: Initializers that are also graph inputs (overridable defaults), restored on export.
    overridable_initializers: list[onnx.TensorProto] = field(default_factory=list)
    #: The declared types of graph inputs and outputs by name: graphsurgeon keeps only
    #: dtype+shape, so sequence/optional element shapes would be lost on export.
    interface_types: dict[str, onnx.TypeProto] = field(default_factory=dict)


def to_graph(model: onnx.ModelProto, *, initializers_as_constants: bool = False) -> tuple[gs.Graph, ModelMeta]:
    """Import ``model`` into a graphsurgeon graph, never mutating ``model``.

    Args:
        model: The model to import.
        initializers_as_constants: Treat initializers that are also graph inputs as
            constants (they then leave the model interface). Default: keep them as inputs,
            except in models of IR version < 4, whose initializers are always constants
            (see the module docstring); the graph then has IR version 4.

    Returns:
        The graph and the metadata needed to export it faithfully.
    """
    meta = ModelMeta(
        doc_string=model.doc_string,
        domain=model.domain,
        model_version=model.model_version,
        metadata_props=[(p.key, p.value) for p in model.metadata_props],
    )
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.HasField("type"):
            t = onnx.TypeProto()
            t.CopyFrom(vi.type)
            meta.interface_types[vi.name] = t
    input_names = {i.name for i in model.graph.input}
    shadowed = [t for t in model.graph.initializer if t.name in input_names]
    old_ir = model.ir_version < MIN_IR_WITHOUT_INPUTS
    initializers_as_constants = initializers_as_constants or old_ir
    if shadowed and not initializers_as_constants:
        # Import a copy without those initializers; deep-copying is acceptable here
        # because only old-IR or unusual models take this path.
        stripped = onnx.ModelProto()
        stripped.CopyFrom(model)
        keep = [t for t in stripped.graph.initializer if t.name not in input_names]
        del stripped.graph.initializer[:]
        stripped.graph.initializer.extend(keep)
        meta.overridable_initializers = [copy.deepcopy(t) for t in shadowed]
        model = stripped
    elif shadowed:
        stripped = onnx.ModelProto()
        stripped.CopyFrom(model)
        names = {t.name for t in shadowed}
        keep_inputs = [i for i in stripped.graph.input if i.name not in names]
        del stripped.graph.input[:]
        stripped.graph.input.extend(keep_inputs)
        model = stripped
    graph = import_plain(model)
    if graph is None:  # subgraphs, functions, unusual types: graphsurgeon's importer
        graph = gs.import_onnx(model)
    if old_ir:
        # Export writes graph.ir_version: constants need not be inputs from IR 4 on.
        graph.ir_version = MIN_IR_WITHOUT_INPUTS
    _wrap_referenced(graph)
    _own_renamed_payloads(graph)
    return graph, meta


class ExternalValues(LazyValues):
    """Lazy values of a tensor still in the input's external-data file.

    graphsurgeon's own `LazyValues.load` resolves external locations against the
    current directory; this reads through `onnxcomp.io.safety.read_external`, which
    re-validates the location against the model's folder.
    """

    def load(self):  # noqa: ANN201 - numpy array, as in the base class
        from onnx import numpy_helper

        from onnxcomp.io import safety

        t = self.tensor
        if lendable(t.data_type):  # read straight into the array: one copy, not three
            path, offset, length = safety.external_source(t)
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
            count = int(np.prod(t.dims, dtype=np.int64))
            if length == count * dtype.itemsize:
                arr = np.fromfile(path, dtype=dtype, count=count, offset=offset)
                if arr.size != count:
                    raise ValueError(f"tensor {t.name!r}: external data file {path.name} ended early")
                return arr.reshape(tuple(t.dims)).astype(dtype.newbyteorder("="), copy=False)
        inline = onnx.TensorProto()
        inline.CopyFrom(self.tensor)  # header only: external tensors carry no payload
        inline.raw_data = safety.read_external(self.tensor)
        del inline.external_data[:]
        inline.data_location = onnx.TensorProto.DEFAULT
        return numpy_helper.to_array(inline)


def _wrap_referenced(graph: gs.Graph) -> None:
    """Swap graphsurgeon's LazyValues for `ExternalValues` on referenced tensors."""
    from onnxcomp.io import safety

    stack = [graph]
    while stack:
        g = stack.pop()
        for t in tensor_map(g).values():
            v = getattr(t, "_values", None)
            if type(v) is LazyValues and safety.is_referenced(v.tensor):
                t._values = ExternalValues(v.tensor)
        for node in g.nodes:
            stack.extend(a for a in node.attrs.values() if isinstance(a, gs.Graph))


def _dedupe_tensor_names(graph: gs.Graph) -> None:
    """Give distinct tensors distinct names (linear walk; graph inputs/outputs keep theirs)."""
    owner: dict[str, int] = {}
    for t in list(graph.inputs) + list(graph.outputs):
        owner.setdefault(t.name, id(t))
    counter = 0
    for node in graph.nodes:
        for t in list(node.inputs) + list(node.outputs):
            if not t.name:  # optional (omitted) inputs are legitimately unnamed
                continue
            prev = owner.setdefault(t.name, id(t))
            if prev != id(t):
                base = t.name
                while True:
                    counter += 1
                    candidate = f"{base}__{counter}"
                    if candidate not in owner:
                        break
                t.name = candidate
                owner[candidate] = id(t)


def _own_renamed_payloads(graph: gs.Graph) -> None:
    """Give lazily loaded constants outside the main graph's initializers (Constant-node
    attributes, body initializers) their own TensorProto where exporting them (for
    shape inference, a batch model or the result) would write into the input model's:
    graphsurgeon's exporter sets ``name`` on the proto a constant was loaded from, and
    a Constant node's tensor has none. Main-graph initializers keep their name and are
    swapped for headers at export (`_swap_in_headers`). Costs one copy of such tensors."""
    for g in iter_graphs(graph):
        found: list[gs.Constant] = [t for t in tensor_map(g).values() if isinstance(t, gs.Constant)] if g is not graph else []
        for node in g.nodes:
            found.extend(a for a in node.attrs.values() if isinstance(a, gs.Constant))
        for c in found:
            v = c._values
            if isinstance(v, LazyValues) and not (v.tensor.HasField("name") and v.tensor.name == c.name):
                own = onnx.TensorProto()
                own.CopyFrom(v.tensor)
                c._values = type(v)(own)


#: Weights not yet written into an exported model: name -> (constant, its values).
Pending = dict[str, tuple[gs.Constant, object]]


def to_model(graph: gs.Graph, meta: ModelMeta) -> onnx.ModelProto:
    """Export ``graph`` to a ModelProto, restoring what `to_graph` set aside."""
    model, pending = export_parts(graph, meta)
    fill_payloads(model, pending)
    return model


def export_parts(graph: gs.Graph, meta: ModelMeta) -> tuple[onnx.ModelProto, Pending]:
    """Export ``graph`` with its large weights as payload-free headers, to fill in later.

    graphsurgeon's own export copies every weight three or four times (to bytes, into a
    TensorProto, into the graph, into the model). Here it exports header-only stand-ins;
    small payloads are written at once, large ones are returned so a check can lend them
    to onnxruntime as arrays (`pending_arrays`) and `fill_payloads` writes each one once,
    only if the model is kept. This also keeps graphsurgeon from renaming the *input*
    model's tensors in place (it sets ``name`` on the TensorProto behind a lazy constant).
    """
    _dedupe_tensor_names(graph)
    _own_renamed_payloads(graph)  # names `_dedupe_tensor_names` changed
    kwargs = {}
    if graph.import_domains is not None:
        kwargs["opset_imports"] = list(graph.import_domains)
    pending = _swap_in_headers(graph)
    try:
        model = gs.export_onnx(graph, do_type_check=False, **kwargs)
    finally:
        for c, values in pending.values():
            c._values = values
    # Small payloads (what shape inference reads) and types numpy lacks are written now.
    now = {k: v for k, v in pending.items() if constant_nbytes(v[0]) < MIN_STRIPPED_BYTES or not _lendable(v[1])}
    fill_payloads(model, now)
    pending = {k: v for k, v in pending.items() if k not in now}
    model.doc_string = meta.doc_string
    model.domain = meta.domain
    model.model_version = meta.model_version
    for key, value in meta.metadata_props:
        model.metadata_props.add(key=key, value=value)
    _restore_interface_types(model.graph, meta)
    if meta.overridable_initializers:
        existing = {t.name for t in model.graph.initializer}
        input_names = {i.name for i in model.graph.input}
        for t in meta.overridable_initializers:
            if t.name in input_names and t.name not in existing:
                model.graph.initializer.append(t)
    return model, pending


def _lendable(values: object) -> bool:
    if isinstance(values, LazyValues):
        return lendable(values.tensor.data_type)
    return lendable(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(values).dtype))


def _swap_in_headers(graph: gs.Graph) -> Pending:
    """Give main-graph constants payload-free stand-ins for the duration of an export."""
    swapped: Pending = {}
    for t in tensor_map(graph).values():
        if not isinstance(t, gs.Constant) or isinstance(t._values, SparseValues):
            continue
        values = t._values
        plain = isinstance(values, LazyValues) or (
            isinstance(values, np.ndarray) and values.dtype.kind not in "OSU" and t.export_dtype == t.dtype
        )
        if not plain:
            continue  # unusual payloads take graphsurgeon's own path
        header = onnx.TensorProto(name=t.name, dims=list(t.shape))
        header.data_type = values.tensor.data_type if isinstance(values, LazyValues) else onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
        swapped[t.name] = (t, values)
        t._values = LazyValues(header)
    return swapped


def pending_arrays(pending: Pending, cache: ArrayCache | None = None) -> dict[str, np.ndarray]:
    """The values of pending weights as arrays, without copying where possible.

    Weights computed by passes are already arrays; unchanged input weights are decoded
    once (``cache``) or memory-mapped if still on disk.
    """
    out: dict[str, np.ndarray] = {}
    for name, (_, values) in pending.items():
        if isinstance(values, LazyValues):
            out[name] = cache.array(values.tensor) if cache is not None else ArrayCache().array(values.tensor)
        else:
            out[name] = np.ascontiguousarray(values)
    return out


def fill_payloads(model: onnx.ModelProto, pending: Pending) -> None:
    """Write the pending payloads into the exported headers, one copy each."""
    if not pending:
        return
    for init in model.graph.initializer:
        entry = pending.get(init.name)
        if entry is None:
            continue
        const, values = entry
        if isinstance(values, LazyValues):
            init.CopyFrom(values.tensor)  # the original tensor (or its external reference)
            init.name = const.name
        else:
            init.raw_data = np.ascontiguousarray(values).tobytes()
            if const.data_location is not None:
                init.data_location = const.data_location


def _type_kind(t: onnx.TypeProto) -> tuple:
    """The type without shapes: ('tensor', elem) / ('sequence', inner) / ... ."""
    which = t.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        return (which, getattr(t, which).elem_type)
    if which == "sequence_type":
        return (which, _type_kind(t.sequence_type.elem_type))
    if which == "optional_type":
        return (which, _type_kind(t.optional_type.elem_type))
    if which == "map_type":
        return (which, t.map_type.key_type, _type_kind(t.map_type.value_type))
    return (which,)


def _restore_interface_types(graph: onnx.GraphProto, meta: ModelMeta) -> None:
    """Put back the declared input/output types where export lost only shape detail.

    A changed element type or kind is left as exported, so a pass that really changed
    the interface stays visible to verification instead of being papered over.
    """
    for vi in list(graph.input) + list(graph.output):
        orig = meta.interface_types.get(vi.name)
        if orig is None or vi.type == orig:
            continue
        if not vi.HasField("type") or _type_kind(vi.type) == _type_kind(orig):
            vi.type.CopyFrom(orig)


def set_metadata(meta: ModelMeta, key: str, value: str) -> None:
    """Set (or replace) one ``metadata_props`` entry carried through export."""
    meta.metadata_props = [(k, v) for k, v in meta.metadata_props if k != key] + [(key, value)]
