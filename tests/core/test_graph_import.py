"""`graph_import.import_plain` builds exactly what graphsurgeon's importer builds.

Every model is imported both ways and the two graphs are compared field by field: graph
fields, each node (op, name, domain, attributes, wiring by position), each tensor (class,
every instance field, values of constants) and the producer/consumer lists graphsurgeon
keeps on tensors. Models outside the plain subset must be refused (None), never
approximated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from onnxcomp.ir.importer import import_plain


def parse(text: str) -> onnx.ModelProto:
    """Parse ONNX text without checking it: some cases are deliberately unusual."""
    return onnx.parser.parse_model(text)


_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
_BACKEND = sorted(
    [p / "model.onnx" for kind in ("pytorch-converted", "pytorch-operator", "simple") for p in (_DATA / kind).glob("*")]
    + list((_DATA / "light").glob("*.onnx"))
)
_BACKEND = [p for p in _BACKEND if p.exists()]


def _value(v: object) -> object:
    """A comparable form of an attribute value or tensor field."""
    if isinstance(v, gs.Constant):
        return ("Constant", v.name, v.dtype, tuple(v.shape), v.data_location, np.asarray(v.values).tobytes())
    if isinstance(v, np.dtype):
        return ("dtype", v.str)
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v


def _tensor_fields(t: gs.Tensor, index: dict[int, int]) -> dict:
    out = {"class": type(t).__name__}
    for key, v in vars(t).items():
        if key in ("inputs", "outputs"):  # producer/consumer nodes, by position in the graph
            out[key] = [index[id(n)] for n in v]
            out[key + "_sync"] = (type(v).__name__, v.field_name, v.parent_obj is t)
        elif key == "_values":
            lazy = {k: (list(x) if k == "shape" else _value(x)) for k, x in vars(v).items() if k != "tensor"}
            out[key] = (type(v).__name__, lazy, v.tensor.SerializeToString(), np.asarray(v.load()).tobytes())
        else:
            out[key] = _value(v)
    return out


def _describe(graph: gs.Graph) -> dict:
    """Everything graphsurgeon's IR holds about ``graph``, with objects replaced by positions."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    ids: dict[int, int] = {}  # tensor identity -> first-seen position (sharing must match)

    def ref(t: gs.Tensor) -> tuple:
        return (t.name, ids.setdefault(id(t), len(ids)))

    nodes = []
    for n in graph.nodes:
        fields = {k: v for k, v in vars(n).items() if k not in ("inputs", "outputs", "attrs")}
        nodes.append(
            {
                "fields": fields,
                "attrs": [(k, type(v).__name__, _value(v)) for k, v in n.attrs.items()],
                "inputs": [ref(t) for t in n.inputs],
                "outputs": [ref(t) for t in n.outputs],
                "sync": [(type(lst).__name__, lst.field_name, lst.parent_obj is n) for lst in (n.inputs, n.outputs)],
            }
        )
    tensors = {name: _tensor_fields(t, index) for name, t in graph.tensors().items()}
    graph_fields = {
        k: (list(v) if k == "import_domains" else v)
        for k, v in vars(graph).items()
        if k not in ("nodes", "inputs", "outputs", "_functions")
    }
    return {
        "graph": graph_fields,
        "functions": len(graph.functions),
        "inputs": [ref(t) for t in graph.inputs],
        "outputs": [ref(t) for t in graph.outputs],
        "nodes": nodes,
        "tensors": tensors,
    }


def _assert_same_import(model: onnx.ModelProto) -> None:
    plain = import_plain(model)
    assert plain is not None, "expected a plain model"
    assert _describe(plain) == _describe(gs.import_onnx(model))


@pytest.mark.parametrize("path", _BACKEND, ids=lambda p: p.parent.name if p.name == "model.onnx" else p.stem)
def test_backend_models_import_as_graphsurgeon_does(path: Path) -> None:
    model = onnx.load(str(path))
    plain = import_plain(model)
    if plain is None:  # outside the plain subset: graphsurgeon imports it (nothing to compare)
        return
    assert _describe(plain) == _describe(gs.import_onnx(model))


def test_backend_models_mostly_take_the_fast_path() -> None:
    # Guards against the plain subset silently shrinking to nothing (then the test above
    # would compare nothing).
    plain = sum(import_plain(onnx.load(str(p))) is not None for p in _BACKEND)
    assert plain >= 0.8 * len(_BACKEND)


def test_edge_cases_of_the_plain_subset() -> None:
    model = parse(
        """
        <ir_version: 8, opset_import: ["" : 17, "custom.dom" : 1]>
        g (float[N, 3] x, float[3] w) => (float[N, 3] y, z) {
            a = Add(x, w)
            b = Identity(a)
            c, unused = custom.dom.Thing <s = "text", f = 0.5, i = 3, ints = [1, 2], floats = [1.5], strs = ["p", "q"]> (b, )
            d = Clip(c, , )
            y = Identity(d)
            z = Constant <value = float[2] {1.0, 2.0}> ()
        }
        """
    )
    # Repeated and untyped value_info entries, an initializer that is also an input,
    # a tensor named only by a node, an input with a dim_param and an unknown dim, and a
    # bfloat16 initializer (numpy has no such dtype: graphsurgeon's own constant import).
    model.graph.initializer.append(helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))
    model.graph.initializer.append(helper.make_tensor("wb", TensorProto.BFLOAT16, [3], [1.0, 2.0, 3.0]))
    model.graph.node.append(helper.make_node("Cast", ["wb"], ["wf"], to=TensorProto.FLOAT))
    model.graph.node.append(helper.make_node("Add", ["y", "wf"], ["y2"]))
    model.graph.value_info.extend(
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            onnx.ValueInfoProto(name="b"),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [None, 3]),
        ]
    )
    _assert_same_import(model)


def test_non_plain_models_are_refused() -> None:
    with_subgraph = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (bool c, float[2] x) => (float[2] y) {
            y = If(c) <then_branch = t () => (float[2] o) { o = Identity(x) },
                       else_branch = e () => (float[2] o) { o = Neg(x) }>
        }
        """
    )
    assert import_plain(with_subgraph) is None

    sequence_typed = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (seq(float[2]) s) { s = SequenceConstruct(x) }
        """
    )
    assert import_plain(sequence_typed) is None

    bf16 = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (bfloat16[2] x) => (bfloat16[2] y) { y = Identity(x) }
        """
    )
    assert import_plain(bf16) is None  # graphsurgeon keeps the ONNX enum: its path

    denotation_only = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Identity(x) }
        """
    )
    denotation_only.graph.value_info.add(name="y").type.denotation = "IMAGE"  # a type with no kind
    assert import_plain(denotation_only) is None

    no_default_opset = parse(
        """
        <ir_version: 8, opset_import: ["custom.dom" : 1]>
        g (float[2] x) => (float[2] y) { y = custom.dom.Thing(x) }
        """
    )
    assert import_plain(no_default_opset) is None

    with_function = parse(
        """
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.f(x) }
        <domain: "local", opset_import: ["" : 17]>
        f (a) => (b) { b = Neg(a) }
        """
    )
    assert import_plain(with_function) is None
