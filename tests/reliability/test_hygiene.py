"""Graph hygiene at load (onnxcomp.io.hygiene) and import/export fidelity (onnxcomp.ir.convert)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.checking.runtime import make_session, run
from onnxcomp.errors import InvalidModelError
from onnxcomp.io.hygiene import check_unique_names, normalize
from onnxcomp.ir.convert import to_graph, to_model

from . import _cases
from .conftest import lossless_args, run_cli


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ------------------------------------------------------------------ sorting
def test_sorted_model_is_returned_as_is() -> None:
    m = _cases.relu_model()
    out, report = normalize(m)
    assert out is m and not report.warnings


def test_unsorted_nodes_are_sorted_in_a_copy(tmp_path: Path) -> None:
    m = onnx.load(str(_cases.unsorted(tmp_path)))
    frozen = m.SerializeToString()
    out, report = normalize(m)
    assert out is not m and m.SerializeToString() == frozen
    assert _ops(out) == ["Relu", "Identity", "Add"]
    assert report.warnings and "sorted" in report.warnings[0]
    onnx.checker.check_model(out, full_check=True)


def _if_reading_a_later_output() -> onnx.ModelProto:
    """An If whose then-body reads ``w``, produced by a node listed after the If."""
    then_g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="if"),
             helper.make_node("Relu", ["x"], ["w"], name="producer")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                       helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_node_with_subgraph_waits_for_its_outer_scope_inputs() -> None:
    """The If body reads ``w``; its producer comes later in the file and must move first."""
    m = _if_reading_a_later_output()
    out, _ = normalize(m)
    assert [n.name for n in out.graph.node] == ["producer", "if"]
    onnx.checker.check_model(out, full_check=True)


def test_unsorted_subgraph_body_is_sorted() -> None:
    body = helper.make_graph([helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Neg", ["x"], ["a"])], "then", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)], "g",
                          [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, report = normalize(m)
    then_body = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in then_body.node] == ["Neg", "Relu"]
    assert len(report.sorted_graphs) == 1
    onnx.checker.check_model(out, full_check=True)


def test_cycle_is_an_error_naming_nodes(tmp_path: Path) -> None:
    m = onnx.load(str(_cases.cycle(tmp_path)))
    with pytest.raises(InvalidModelError, match="cycle through nodes"):
        normalize(m)


# ------------------------------------------------------------------ names
def test_duplicate_names_listed(tmp_path: Path) -> None:
    m = onnx.load(str(_cases.duplicate_names(tmp_path)))
    with pytest.raises(InvalidModelError, match=r"duplicate tensor names in main graph: 't'"):
        check_unique_names(m.graph)


def test_node_output_shadowing_an_input_is_a_duplicate() -> None:
    m = _cases.parse("g (float[4] x) => (float[4] y) { x = Relu(x)\n y = Identity(x) }")
    with pytest.raises(InvalidModelError, match="'x'"):
        check_unique_names(m.graph)


def test_initializer_backing_an_input_is_not_a_duplicate(tmp_path: Path) -> None:
    m = onnx.load(str(_cases.initializer_as_input(tmp_path)))
    check_unique_names(m.graph)  # must not raise


# ------------------------------------------------- behaviour through the CLI
def _optimize(src: Path, tmp_path: Path) -> onnx.ModelProto:
    out = tmp_path / "out.onnx"
    res = run_cli("optimize", src, "-o", out, *lossless_args())
    assert res.exit_code == 0, res.stderr
    return onnx.load(str(out))


def test_overridable_initializer_stays_an_input(tmp_path: Path) -> None:
    out = _optimize(_cases.initializer_as_input(tmp_path), tmp_path)
    assert "W" in [i.name for i in out.graph.input] and "W" in [t.name for t in out.graph.initializer]
    sess = make_session(out, optimize=False)
    x = np.zeros(4, np.float32)
    np.testing.assert_array_equal(run(sess, {"x": x})["y"], np.ones(4, np.float32))
    w = np.full(4, 7.0, np.float32)
    # session.run directly: onnxcomp.checking.runtime.run drops feeds onnxruntime lists as
    # overridable initializers rather than inputs.
    np.testing.assert_array_equal(sess.run(["y"], {"x": x, "W": w})[0], w)  # the override is honoured


def test_random_op_is_never_folded(tmp_path: Path) -> None:
    out = _optimize(_cases.random_op(tmp_path), tmp_path)
    assert "RandomNormal" in _ops(out)


def test_nan_inf_weights_survive(tmp_path: Path) -> None:
    out = _optimize(_cases.nan_inf_weights(tmp_path), tmp_path)
    sess = make_session(out, optimize=False)
    y = run(sess, {"x": np.zeros(4, np.float32)})["y"]
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == -np.inf and y[3] == 1.0


def test_fp16_stays_fp16(tmp_path: Path) -> None:
    out = _optimize(_cases.fp16_model(tmp_path), tmp_path)
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert all(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer)


def test_shared_weight_is_not_changed_for_its_other_consumer(tmp_path: Path) -> None:
    src = _cases.shared_weights_bn(tmp_path)
    original_w = numpy_helper.to_array(next(t for t in onnx.load(str(src)).graph.initializer if t.name == "W"))
    out = _optimize(src, tmp_path)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    producer = {o: n for n in out.graph.node for o in n.output}
    conv2 = producer["y2"]
    assert conv2.op_type == "Conv"
    np.testing.assert_array_equal(inits[conv2.input[1]], original_w)


def test_symbolic_dims_stay_symbolic(tmp_path: Path) -> None:
    out = _optimize(_cases.symbolic_dims(tmp_path), tmp_path)
    dims = [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "C"]


# ------------------------------------------------------ graph_io fidelity
def test_sequence_and_optional_interface_types_round_trip(tmp_path: Path) -> None:
    for build in (_cases.sequence_output, _cases.optional_input):
        sub = tmp_path / build.__name__
        sub.mkdir()
        m = onnx.load(str(build(sub)))
        graph, meta = to_graph(m)
        back = to_model(graph, meta)
        assert [o.type for o in back.graph.output] == [o.type for o in m.graph.output]
        assert [i.type for i in back.graph.input] == [i.type for i in m.graph.input]


def test_changed_element_type_is_not_papered_over() -> None:
    m = _cases.parse("g (float[4] x) => (float[4] y) { y = Relu(x) }")
    graph, meta = to_graph(m)
    graph.outputs[0].dtype = np.float16
    back = to_model(graph, meta)
    assert back.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16


# ------------------------------------------- hygiene through the pass manager
# The manager runs hygiene only when the checker rejects the input (a valid model is
# already sorted with unique names): these cases must still get hygiene's handling.
def test_manager_sorts_an_unsorted_input_and_says_so(tmp_path: Path) -> None:
    import onnxcomp

    m = onnx.load(str(_cases.unsorted(tmp_path)))
    out, report = onnxcomp.optimize(m)
    assert any("sorted" in w for w in report.warnings)
    onnx.checker.check_model(out, full_check=True)


def test_manager_sorts_a_node_before_the_body_that_reads_it() -> None:
    import onnxcomp

    m = _if_reading_a_later_output()
    out, report = onnxcomp.optimize(m)
    assert any("sorted" in w for w in report.warnings)
    assert [n.op_type for n in out.graph.node] == ["Relu", "If"]


@pytest.mark.parametrize(("case", "message"), [("cycle", "cycle through nodes"), ("duplicate_names", "duplicate tensor names")])
def test_manager_reports_hygiene_errors(tmp_path: Path, case: str, message: str) -> None:
    import onnxcomp

    m = onnx.load(str(getattr(_cases, case)(tmp_path)))
    with pytest.raises(InvalidModelError, match=message):
        onnxcomp.optimize(m)
