"""Runs in parallel threads of one process give the results sequential runs give.

Per-run state lives in a `PipelineRun`, not on the manager or in module globals: two
`optimize` calls at once (and one `PassManager` running two models at once) must neither
mix their graphs, baselines and reports nor change what each produces.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.pipeline import PassManager, pipeline_for


def _conv_bn_model(seed: int) -> onnx.ModelProto:
    """Conv -> BatchNorm -> Relu -> Identity with a constant-folding chance (lossless work)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"),
        numpy_helper.from_array(np.array([2.0], np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Mul", ["two", "two"], ["four"]),
        helper.make_node("Mul", ["r", "four"], ["m"]),
        helper.make_node("Identity", ["m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, f"g{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calibration(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(100 + seed).standard_normal((4, 3, 8, 8)).astype(np.float32)}


def _signature(result: tuple[onnx.ModelProto, onnxcomp.Report]) -> tuple[bytes, str]:
    """The result's bytes and the report without timings."""
    model, report = result
    rows = [(p.name, p.modified, p.rolled_back, p.nodes_after, p.params_after, p.fidelity) for p in report.passes]
    return model.SerializeToString(), json.dumps([rows, report.verification, report.warnings], sort_keys=True, default=str)


def _in_threads(jobs: list[Callable[[], tuple[onnx.ModelProto, onnxcomp.Report]]]) -> list[tuple[bytes, str]]:
    """Run the jobs at once (released together by a barrier), results in job order."""
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], tuple[onnx.ModelProto, onnxcomp.Report]]) -> tuple[bytes, str]:
        barrier.wait()
        return _signature(job())

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_two_optimize_runs_in_threads_match_sequential_runs() -> None:
    models = [_conv_bn_model(0), _conv_bn_model(1)]
    jobs = [
        lambda: onnxcomp.optimize(models[0], preset="lossless"),
        lambda: onnxcomp.optimize(models[1], preset="int8", calibration_data=_calibration(1)),
    ]
    sequential = [_signature(job()) for job in jobs]
    assert sequential[0][0] != sequential[1][0]  # different work, so a mix-up would show
    for _ in range(3):
        assert _in_threads(jobs) == sequential


def test_one_manager_runs_two_models_at_once() -> None:
    manager = PassManager(pipeline_for("lossless"))
    models = [_conv_bn_model(2), _conv_bn_model(3)]
    sequential = [_signature(manager.run(m)) for m in models]
    assert sequential[0] != sequential[1]
    for _ in range(3):
        assert _in_threads([lambda: manager.run(models[0]), lambda: manager.run(models[1])]) == sequential
