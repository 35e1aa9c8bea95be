"""The recovery presets through the real CLI, on fixed-batch and dynamic-batch models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.cli import main


def _cnn(batch: int | str) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-Reshape-Gemm; a fixed ``batch`` is baked into the Reshape shape,
    as fixed-batch exports do (the torch exporter writes ``[B, -1]``)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    fc = rng.standard_normal((5, 8 * 6 * 6)).astype(np.float32) * 0.05
    reshape = [batch if isinstance(batch, int) else 0, -1]
    if not isinstance(batch, int):
        reshape = [-1, 8 * 6 * 6]
    inits = [
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
        numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(5, np.float32), "fcb"),
        numpy_helper.from_array(np.array(reshape, np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Reshape", ["r2", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _setup(tmp_path: Path, batch: int | str, samples: int) -> tuple[Path, Path]:
    model = tmp_path / "model.onnx"
    onnx.save(_cnn(batch), model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((samples, 3, 6, 6)).astype(np.float32))
    return model, data


@pytest.mark.parametrize("batch", [4, 1, "N"])
def test_prune_distill_int8_on_fixed_and_dynamic_batch(tmp_path: Path, batch: int | str) -> None:
    pytest.importorskip("torch")
    model, data = _setup(tmp_path, batch, 48)
    out = tmp_path / "out.onnx"
    result = _invoke("optimize", str(model), "--preset", "prune-distill-int8", "-p", "prune-channels:ratio=0.5",
                     "-p", "distill:epochs=2", "--calibration-data", str(data), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.exists()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    b = batch if isinstance(batch, int) else 3
    y = sess.run(None, {"x": np.zeros((b, 3, 6, 6), np.float32)})[0]
    assert y.shape == (b, 5)


def test_distill_batch_size_option_follows_a_fixed_batch(tmp_path: Path) -> None:
    """``distill:batch_size=1`` on a batch-4 model trains in batches of 4, not 1."""
    pytest.importorskip("torch")
    model, data = _setup(tmp_path, 4, 24)
    report = tmp_path / "report.json"
    result = _invoke("optimize", str(model), "-p", "prune-channels:ratio=0.5", "-p", "distill:epochs=1,batch_size=1",
                     "--calibration-data", str(data), "-o", str(tmp_path / "out.onnx"), "--report", str(report))
    assert result.exit_code == 0, result.output
    import json

    rows = {r["name"]: r for r in json.loads(report.read_text())["passes"]}
    assert rows["distill"]["stats"]["batch_size"] == 4


def test_distill_refuses_too_few_samples_for_the_fixed_batch_before_work(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    model, data = _setup(tmp_path, 8, 5)  # 5 samples cannot fill one batch of 8
    out = tmp_path / "out.onnx"
    result = _invoke("optimize", str(model), "--preset", "prune-distill-int8", "--calibration-data", str(data), "-o", str(out))
    assert result.exit_code != 0
    assert "fixed batch size 8" in result.output
    assert not out.exists()


@pytest.mark.parametrize("batch", [2, "N"])
def test_prune_recover_on_fixed_and_dynamic_batch(tmp_path: Path, batch: int | str) -> None:
    model, data = _setup(tmp_path, batch, 40)
    out = tmp_path / "out.onnx"
    result = _invoke("optimize", str(model), "--preset", "prune-recover", "--calibration-data", str(data), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.exists()
