"""The ONNX -> torch interpreter: numerics, exact weight round trip, unsupported ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from onnxcomp.errors import UsageError
from onnxcomp.recovery.torch_graph import (
    OnnxModule,
    trainable_initializers,
    unsupported_ops,
    write_initializers,
)

from .conftest import conv_net


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _mixed_model() -> onnx.ModelProto:
    """Many ops of the interpreter in one graph (BN, pooling, LN, softmax, shape ops, GELU)."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 6, 6] x) => (float[N, 4] y, float[N, 4] p) {
        c = Conv <pads = [1, 1, 1, 1], strides = [1, 1]> (x, w, b)
        bn = BatchNormalization <epsilon = 0.001> (c, s, bb, mean, var)
        cl = Clip (bn, lo, hi)
        mp = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (cl)
        ap = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 1]> (mp)
        sh = Shape (ap)
        n0 = Gather <axis = 0> (sh, zero)
        n1 = Unsqueeze (n0, zero1)
        shp = Concat <axis = 0> (n1, minus1)
        f = Reshape (ap, shp)
        ln = LayerNormalization <axis = -1> (f, lns, lnb)
        m = MatMul (ln, fw)
        a = Add (m, fb)
        d = Div (a, sqrt2)
        e = Erf (d)
        e1 = Add (e, one)
        g1 = Mul (a, e1)
        y = Mul (g1, half)
        t = Transpose <perm = [1, 0]> (y)
        t2 = Transpose <perm = [1, 0]> (t)
        r = ReduceMean <axes = [1], keepdims = 1> (t2)
        ctr = Sub (t2, r)
        p = Softmax <axis = 1> (ctr)
    }
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(1)
    inits = {
        "w": rng.standard_normal((3, 2, 3, 3)), "b": rng.standard_normal(3), "s": rng.uniform(0.5, 1.5, 3),
        "bb": rng.standard_normal(3), "mean": rng.standard_normal(3), "var": rng.uniform(0.5, 2, 3),
        "lo": np.array(-1.0), "hi": np.array(2.0), "lns": rng.standard_normal(27), "lnb": rng.standard_normal(27),
        "fw": rng.standard_normal((27, 4)), "fb": rng.standard_normal(4), "sqrt2": np.array(np.sqrt(2.0)),
        "one": np.array(1.0), "half": np.array(0.5),
    }
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items())
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_interpreter_matches_onnxruntime() -> None:
    model = _mixed_model()
    x = np.random.default_rng(0).standard_normal((5, 2, 6, 6)).astype(np.float32)
    ref = _ort(model, {"x": x})
    out = OnnxModule(model)({"x": torch.from_numpy(x)})
    np.testing.assert_allclose(out["y"].detach().numpy(), ref[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["p"].detach().numpy(), ref[1], atol=1e-5, rtol=1e-4)


def test_trainable_set_excludes_bn_statistics_and_scalars() -> None:
    names = trainable_initializers(_mixed_model())
    assert {"w", "b", "s", "bb", "lns", "lnb", "fw", "fb"} <= names
    assert not names & {"mean", "var", "lo", "hi", "sqrt2", "one", "half", "zero", "zero1", "minus1"}


def test_weights_round_trip_exactly() -> None:
    model = _mixed_model()
    module = OnnxModule(model)
    back = write_initializers(model, module.export_initializers(only_trainable=False))
    assert back.SerializeToString() == model.SerializeToString()
    for init in model.graph.initializer:
        np.testing.assert_array_equal(module.tensor(init.name).detach().numpy(), numpy_helper.to_array(init))


def test_parameters_are_the_initializers(rng: np.random.Generator) -> None:
    """Changing a torch parameter changes the model, and writing it back changes ONNX alike."""
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    model = conv_net(w1, np.zeros(4, np.float32), w2, np.zeros(2, np.float32))
    module = OnnxModule(model)
    with torch.no_grad():
        module.tensor("w2").mul_(2.0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    updated = write_initializers(model, module.export_initializers())
    np.testing.assert_allclose(module({"x": torch.from_numpy(x)})["c2"].detach().numpy(), _ort(updated, {"x": x})[0], atol=1e-4)
    np.testing.assert_allclose(_ort(updated, {"x": x})[0], 2 * _ort(model, {"x": x})[0], atol=1e-4, rtol=1e-4)


def test_unsupported_op_is_named() -> None:
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->i"), helper.make_node("NonZero", ["x"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("z", TensorProto.INT64, [2, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UsageError, match="Einsum, NonZero"):
        OnnxModule(model)


@pytest.mark.parametrize(("opset", "expected"), [(17, ["Gelu"]), (20, [])])
def test_an_op_is_supported_from_its_minimum_opset_on(opset: int, expected: list[str]) -> None:
    nodes = [helper.make_node("Gelu", ["x"], ["g"]), helper.make_node("Relu", ["g"], ["y"], domain="ai.onnx")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # Gelu is implemented from opset 20 on; "ai.onnx" is the default domain spelled out.
    assert unsupported_ops(model) == expected
