"""Tiny models and a context factory for the recovery tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.ir.convert import ModelMeta
from onnxcomp.pipeline.pass_api import PassContext
from onnxcomp.pruning import PruneRecord


def conv_net(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray | None, *, fc: np.ndarray | None = None,
             fc_b: np.ndarray | None = None, hw: int = 6, group2: int = 1) -> onnx.ModelProto:
    """x -> Conv(pad 1) -> Relu -> Conv(pad 1, stride 1) [-> GAP -> Flatten -> Gemm] -> y."""
    cin = w1.shape[1]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")]
    conv2_in = ["r", "w2"]
    if b2 is not None:
        inits.append(numpy_helper.from_array(b2, "b2"))
        conv2_in.append("b2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Conv", conv2_in, ["c2"], name="conv2", pads=[1, 1, 1, 1], group=group2),
    ]
    out = "c2"
    out_shape: list = ["N", w2.shape[0], hw, hw]
    if fc is not None:
        inits += [numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(fc_b, "fc_b")]
        nodes += [
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
            helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        ]
        out, out_shape = "logits", ["N", fc.shape[0]]
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, hw, hw])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def make_ctx(teacher: onnx.ModelProto, student: onnx.ModelProto, feeds: dict[str, np.ndarray], *,
             kept: dict | None = None, train: dict[str, np.ndarray] | None = None, batch_size: int = 16) -> PassContext:
    """A PassContext as the manager would build it (teacher = the run's original model).

    ``kept`` (``{tensor: (axis, kept indices)}``) becomes the pruning record
    prune-channels would have left.
    """
    ctx = PassContext(
        original_model=teacher,
        meta=ModelMeta(),
        calibration=CalibrationData.from_source(feeds, student, batch_size=batch_size),
        train_data=CalibrationData.from_source(train, student, batch_size=batch_size) if train is not None else None,
        seed=0,
    )
    if kept is not None:
        ctx.records.put(PruneRecord(groups=(), tensors={name: {axis: idx} for name, (axis, idx) in kept.items()}))
    return ctx


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
