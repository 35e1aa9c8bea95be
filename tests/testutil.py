"""Helpers shared by tests (importable as `testutil`)."""

from __future__ import annotations


import numpy as np
import onnx
import onnx.parser





def parse(text: str) -> onnx.ModelProto:
    """Parse ONNX text and check it."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def relu_model() -> onnx.ModelProto:
    """x -> Relu -> Identity -> y, plus a dead Sigmoid."""
    return parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          a = Relu(x)
          dead = Sigmoid(x)
          y = Identity(a)
        }
        """
    )


def conv_model() -> onnx.ModelProto:
    """A small conv net with constant weights (deterministic)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = onnx.helper.make_graph(
        nodes, "g", [x], [y], [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")]
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
