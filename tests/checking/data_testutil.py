"""Small models with the inputs real models have, built in code.

* `image_model`: ``x[B, 3, H, W]`` whose fixed Reshape only fits one image size (as a
  detector head fits its strides), with the batch dim given as -1, a name, or fixed;
* `silero_like`: ``input[?, ?]``, ``state[2, ?, 128]`` (batch on axis 1) and a scalar int64
  ``sr`` that selects an ``If`` branch by ``sr == 16000``; the other branch cannot run (as
  silero's 8 kHz branch on 16 kHz frames); the audio must be at least 65 samples long;
* `string_model`: a string input (StringNormalizer), as in onnx's test data.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper


def image_model(size: int = 320, batch: int | str = -1) -> onnx.ModelProto:
    """``y = Reshape(AveragePool32(x), [B, 3 * (size/32)**2])``: runs only on ``size``² images."""
    cells = (size // 32) ** 2 * 3
    shape = numpy_helper.from_array(np.array([-1 if not isinstance(batch, int) or batch < 0 else batch, cells], np.int64), "shape")
    nodes = [
        h.make_node("AveragePool", ["x"], ["p"], kernel_shape=[32, 32], strides=[32, 32]),
        h.make_node("Reshape", ["p", "shape"], ["flat"]),
        h.make_node("Relu", ["flat"], ["r"]),
        h.make_node("Identity", ["r"], ["y"]),  # something for the lossless cleanup to remove
    ]
    x = h.make_tensor_value_info("x", T.FLOAT, [batch, 3, "?", "?"])
    y = h.make_tensor_value_info("y", T.FLOAT, [batch if isinstance(batch, str) else None, cells])
    g = h.make_graph(nodes, "image", [x], [y], [shape])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def silero_like() -> onnx.ModelProto:
    """See the module docstring. Output ``y[B]``: sum over the padded audio and the state."""
    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return h.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    then_nodes = [
        const("pads", np.array([0, 64, 0, 64], np.int64)),
        h.make_node("Pad", ["input", "pads"], ["padded"], mode="reflect"),  # needs >= 65 samples
        const("zero", np.array(0, np.int64)),
        h.make_node("Gather", ["state", "zero"], ["h0"], axis=0),  # [B, 128]: batch on axis 1 of state
        h.make_node("Concat", ["padded", "h0"], ["both"], axis=1),  # the batch sizes must agree
        const("axis1", np.array([1], np.int64)),
        h.make_node("ReduceSum", ["both", "axis1"], ["then_y"], keepdims=0),
    ]
    then_g = h.make_graph(then_nodes, "then", [], [h.make_tensor_value_info("then_y", T.FLOAT, None)])
    else_nodes = [
        const("bad", np.array([7, 11, 13], np.int64)),
        h.make_node("Reshape", ["input", "bad"], ["else_y"]),  # fails: the wrong branch for 16 kHz
    ]
    else_g = h.make_graph(else_nodes, "else", [], [h.make_tensor_value_info("else_y", T.FLOAT, None)])
    nodes = [
        h.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.array(16000, np.int64), "rate")),
        h.make_node("Equal", ["sr", "rate"], ["is16k"]),
        h.make_node("If", ["is16k"], ["out"], then_branch=then_g, else_branch=else_g),
        h.make_node("Identity", ["out"], ["y"]),
    ]
    inputs = [
        h.make_tensor_value_info("input", T.FLOAT, [None, None]),
        h.make_tensor_value_info("state", T.FLOAT, [2, None, 128]),
        h.make_tensor_value_info("sr", T.INT64, []),
    ]
    g = h.make_graph(nodes, "silero_like", inputs, [h.make_tensor_value_info("y", T.FLOAT, [None])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def string_model() -> onnx.ModelProto:
    """Drops the word "monday" from a string tensor (StringNormalizer), then an Identity."""
    nodes = [
        h.make_node("StringNormalizer", ["x"], ["n"], stopwords=["monday"], is_case_sensitive=1),
        h.make_node("Identity", ["n"], ["y"]),
    ]
    g = h.make_graph(nodes, "strings", [h.make_tensor_value_info("x", T.STRING, ["N"])],
                     [h.make_tensor_value_info("y", T.STRING, ["N"])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def relu_model(shape: list[int | str | None]) -> onnx.ModelProto:
    """``y = Relu(x)`` with the given input shape (float32)."""
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "relu", [h.make_tensor_value_info("x", T.FLOAT, shape)],
                     [h.make_tensor_value_info("y", T.FLOAT, shape)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def silero_feed(rng: np.random.Generator, batch: int = 1, samples: int = 512) -> dict[str, np.ndarray]:
    """One complete feed of `silero_like`."""
    return {
        "input": rng.standard_normal((batch, samples)).astype(np.float32),
        "state": rng.standard_normal((2, batch, 128)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
