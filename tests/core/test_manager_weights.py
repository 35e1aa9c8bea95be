"""The manager with weights large enough to be lent to onnxruntime instead of serialized.

Tiny test graphs keep every weight inline; these use weights above
`onnxcomp.ir.weightless.MIN_STRIPPED_BYTES`, so checks go through payload-free headers,
borrowed arrays and payloads written only when a result is accepted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp import Pass, PassResult, register_pass
from onnxcomp.errors import PassError
from onnxcomp.pipeline.manager import PassManager
from onnxcomp.pipeline.steps import until_stable
from onnxcomp.pipeline.registry import instantiate, isolated_registry
from onnxcomp.checking.runtime import make_session, run
from onnxcomp.ir.weightless import MIN_STRIPPED_BYTES

WIDTH = 64  # 64 x 64 float32 = 16 KiB per weight


def _matmul_chain(weight_format: str = "raw", dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x -> MatMul(W0) -> Identity -> MatMul(W1) -> y, with weights over the strip limit."""
    rng = np.random.default_rng(0)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    weights = [rng.standard_normal((WIDTH, WIDTH)).astype(np_dtype) / 8 for _ in range(2)]
    assert weights[0].nbytes >= MIN_STRIPPED_BYTES
    inits = []
    for i, w in enumerate(weights):
        if weight_format == "raw":
            inits.append(numpy_helper.from_array(w, f"W{i}"))
        else:  # typed field (float_data), as some exporters write
            inits.append(helper.make_tensor(f"W{i}", dtype, w.shape, w.reshape(-1).tolist()))
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "W1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", dtype, [2, WIDTH])], [helper.make_tensor_value_info("y", dtype, [2, WIDTH])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _outputs(model: onnx.ModelProto, dtype=np.float32) -> np.ndarray:
    x = np.linspace(-1, 1, 2 * WIDTH, dtype=dtype).reshape(2, WIDTH)
    return run(make_session(model, optimize=False), {"x": x})["y"]


def _assert_complete(model: onnx.ModelProto) -> None:
    """Every initializer carries its whole payload (nothing left as a header)."""
    for t in model.graph.initializer:
        assert numpy_helper.to_array(t).shape == tuple(t.dims)
    onnx.checker.check_model(model, full_check=True)


def _replace_w1_pass(name: str, suffix: str, transform, doc: str) -> None:
    """Register a lossless pass that replaces W1 by ``transform(W1)`` under a new name, once."""

    class ReplaceW1(Pass):
        lossless = True

        def run(self, graph, ctx):
            node = next(n for n in graph.nodes if n.op == "MatMul" and n.inputs[1].name.startswith("W1"))
            w = node.inputs[1]
            if w.name.endswith(suffix):
                return PassResult(modified=False)
            node.inputs[1] = gs.Constant(w.name + suffix, transform(np.asarray(w.values)))
            return PassResult(modified=True)

    ReplaceW1.__doc__ = doc
    register_pass(name)(ReplaceW1)


@pytest.fixture
def registry():
    with isolated_registry():
        _replace_w1_pass("scale-weight", "_x2", lambda w: w * 2, "Lossless in name only: W1 becomes a new, doubled weight.")
        _replace_w1_pass("same-weight", "_copy", lambda w: w.copy(), "Lossless and honest: W1 becomes an equal copy under a new name.")
        yield


@pytest.mark.parametrize("weight_format", ["raw", "typed"])
def test_lossless_preset_keeps_big_weights_whole(weight_format: str) -> None:
    model = _matmul_chain(weight_format)
    out, report = onnxcomp.optimize(model)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMul"]
    _assert_complete(out)
    np.testing.assert_allclose(_outputs(out), _outputs(model), atol=1e-6)
    assert report.verification["within_tolerance"] is True


def test_a_new_big_weight_from_a_pass_is_written_into_the_result(registry) -> None:
    model = _matmul_chain()
    out, _ = onnxcomp.optimize(model, ["same-weight"])
    assert "W1_copy" in [t.name for t in out.graph.initializer]
    _assert_complete(out)
    np.testing.assert_array_equal(_outputs(out), _outputs(model))


def test_drift_in_a_big_weight_is_rolled_back_in_a_group(registry) -> None:
    model = _matmul_chain()
    group = until_stable(instantiate("eliminate-identity"), instantiate("scale-weight"), max_iterations=4)
    out, report = PassManager([group]).run(model)
    rows = [(r.name, r.modified, r.rolled_back) for r in report.passes]
    assert ("scale-weight", False, True) in rows
    assert ("eliminate-identity", True, False) in rows
    assert [t.name for t in out.graph.initializer] == ["W0", "W1"]
    _assert_complete(out)
    np.testing.assert_allclose(_outputs(out), _outputs(model), atol=1e-6)


def test_drift_in_a_big_weight_is_an_error_in_strict_mode(registry) -> None:
    with pytest.raises(PassError, match="scale-weight"):
        onnxcomp.optimize(_matmul_chain(), ["scale-weight"], strict=True)


def test_half_precision_weights_are_lent_and_verified() -> None:
    model = _matmul_chain(dtype=TensorProto.FLOAT16)
    out, report = onnxcomp.optimize(model)
    _assert_complete(out)
    assert out.graph.initializer[0].data_type == TensorProto.FLOAT16
    np.testing.assert_array_equal(_outputs(out, np.float16), _outputs(model, np.float16))
    assert report.verification["verified"] is True


def test_the_input_model_is_not_modified() -> None:
    model = _matmul_chain()
    before = model.SerializeToString()
    onnxcomp.optimize(model)
    assert model.SerializeToString() == before
