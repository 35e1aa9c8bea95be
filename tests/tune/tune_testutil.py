"""Helpers of the tune tests: a small classifier built in code, its files, the CLI runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.cli.main import main


def classifier() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv 16 -> Relu -> Conv 16 -> Relu -> GlobalAveragePool -> Gemm -> logits[N,4] (opset 17)."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [init("w1", 16, 3, 3, 3), init("b1", 16), init("w2", 16, 16, 3, 3), init("b2", 16), init("wf", 4, 16), init("bf", 4)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass
class Files:
    """The model and its data on disk."""

    model: Path
    calib: Path
    eval: Path
    folder: Path


def run_tune(files: Files, tmp: Path, *args: str, trials: int = 4, storage: str | None = None) -> Result:
    """``onnxcomp tune`` through the CLI, fast timing, outputs in ``tmp``."""
    storage = storage or f"sqlite:///{tmp / 'tune.db'}"
    argv = ["tune", str(files.model), "--calibration-data", str(files.calib), "--eval-data", str(files.eval),
            "--trials", str(trials), "--timing", "0.05", "--threads", "1", "--storage", storage, *args]
    return CliRunner().invoke(main, argv)


def report_of(path: Path) -> dict:
    """A JSON report."""
    return json.loads(path.read_text())


def configs(report: dict) -> list[dict]:
    """The trial configurations, in trial order."""
    return [t["configuration"] for t in sorted(report["trials"], key=lambda t: t["number"])]
