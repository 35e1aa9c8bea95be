"""Models of IR version < 4 (every initializer is also a graph input): their initializers
are weights, folded like any other; the result is IR 4 with only the real inputs."""

from __future__ import annotations

import numpy as np
import onnx
from lossless_testutil import assert_same_outputs, ops, run_pass
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.ir import to_graph

RNG = np.random.default_rng(0)


def _ir3_conv_bn() -> onnx.ModelProto:
    """x -> Conv(W, B) -> BatchNormalization -> Relu, opset 8, IR 3, weights listed as inputs."""
    inits = [
        numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "B"),
        numpy_helper.from_array(RNG.uniform(0.5, 2, 4).astype(np.float32), "g"),
        numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "m"),
        numpy_helper.from_array(RNG.uniform(0.5, 2, 4).astype(np.float32), "v"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 3
    onnx.checker.check_model(m, full_check=True)
    return m


def test_ir3_initializers_import_as_constants() -> None:
    m = _ir3_conv_bn()
    graph, _ = to_graph(m)
    assert [t.name for t in graph.inputs] == ["x"]
    assert graph.ir_version == 4  # the first IR whose initializers need not be inputs
    # IR >= 4: an initializer listed as an input stays an overridable input.
    m.ir_version = 4
    graph4, _ = to_graph(m)
    assert [t.name for t in graph4.inputs] == ["x", "W", "B", "g", "b", "m", "v"]


def test_lossless_preset_folds_batchnorm_of_an_ir3_model() -> None:
    m = _ir3_conv_bn()
    out, report = onnxcomp.optimize(m, preset="lossless")
    assert ops(out) == {"Conv": 1, "Relu": 1}
    assert [i.name for i in out.graph.input] == ["x"]
    assert out.ir_version == 4 and report.verification["verified"]
    onnx.checker.check_model(out, full_check=True)
    assert_same_outputs(m, out, atol=1e-5, rtol=1e-5)


def _constant_of_shape_model(shape: list[int], reader: str) -> onnx.ModelProto:
    """A weight built at run time by ConstantOfShape (onnx's `light` zoo models do this)."""
    shape_t = numpy_helper.from_array(np.array(shape, np.int64), "w_shape")
    fill = numpy_helper.from_array(np.array([0.01], np.float32))
    nodes = [helper.make_node("ConstantOfShape", ["w_shape"], ["w"], value=fill)]
    if reader == "Conv":
        nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]))
        out_shape = [1, shape[0], 8, 8]
    else:  # the same tensor read as an activation operand, not as a weight
        nodes.append(helper.make_node("Add", ["x", "w"], ["y"]))
        out_shape = shape
    x_shape = [1, shape[1], 8, 8] if reader == "Conv" else shape
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [shape_t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_large_weight_only_constant_is_materialised_up_to_max_weight_bytes() -> None:
    conv = _constant_of_shape_model([16, 8, 3, 3], "Conv")  # 4.6 KB
    out, res = run_pass(conv, "fold-constants", max_size_bytes=1024)
    assert res.modified and ops(out) == {"Conv": 1}
    assert_same_outputs(conv, out)
    out, res = run_pass(conv, "fold-constants", max_size_bytes=1024, max_weight_bytes=1024)
    assert not res.modified  # the weight limit binds too
    add = _constant_of_shape_model([1, 8, 12, 12], "Add")
    out, res = run_pass(add, "fold-constants", max_size_bytes=1024)
    assert not res.modified and ops(out) == {"ConstantOfShape": 1, "Add": 1}
