"""Tiny models and helpers for the quantization tests (onnx.helper, deterministic)."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.pipeline.pass_api import PassContext


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_relu_concat_model(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv+Relu -> (Conv+Relu, MaxPool-branch) -> Concat -> Reshape -> Gemm -> y."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _w(rng, 8, 3, 3, 3), "b1": _w(rng, 8),
        "w2": _w(rng, 4, 8, 3, 3), "b2": _w(rng, 4),
        "w3": _w(rng, 4, 8, 1, 1),
        "shape": np.array([1, -1], dtype=np.int64),
        "wf": _w(rng, 10, 8 * 8 * 8, scale=0.05), "bf": _w(rng, 10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "w3"], ["c3"], name="conv3"),
        helper.make_node("Concat", ["r2", "c3"], ["cat"], name="concat", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )


def encoder_model(seed: int = 0, hidden: int = 64, outliers: float = 0.0, opset: int = 17) -> onnx.ModelProto:
    """x -> LayerNorm -> (MatMul Wq, MatMul Wk) -> MatMul(q, k^T) -> Softmax -> MatMul(., v) -> MatMul Wo.

    ``outliers`` > 0 scales three LayerNorm channels by that factor (activation outliers).
    """
    rng = np.random.default_rng(seed)
    gamma = np.ones(hidden, np.float32)
    beta = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    if outliers:
        gamma[[3, 17, 40]] *= outliers
        beta[[3, 17, 40]] *= outliers
    inits = {
        "gamma": gamma, "beta": beta,
        "wq": _w(rng, hidden, hidden, scale=0.1), "wk": _w(rng, hidden, hidden, scale=0.1),
        "wv": _w(rng, hidden, hidden, scale=0.1), "wo": _w(rng, hidden, hidden, scale=0.1),
        "perm_shape": np.array([0, 2, 1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["ln", "wk"], ["k"], name="mm_k"),
        helper.make_node("MatMul", ["ln", "wv"], ["v"], name="mm_v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="mm_o"),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    del inits["perm_shape"]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, hidden])],
        inits,
        opset=opset,
    )


def calib(model: onnx.ModelProto, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 2 for d in vi.type.tensor_type.shape.dim]
        dims[0] = n
        out[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def run_pass(model: onnx.ModelProto, data, **options):
    """Run quantize-int8 directly on a graph; returns (result model, PassResult)."""
    from onnxcomp.passes.quantize_int8 import QuantizeInt8, QuantizeInt8Options

    graph, meta = to_graph(model)
    cal = None if data is None else CalibrationData.from_source(data, model)
    ctx = PassContext(original_model=model, meta=meta, calibration=cal)
    res = QuantizeInt8(QuantizeInt8Options(**options)).run(graph, ctx)
    graph.cleanup().toposort()
    out = to_model(graph, meta)
    onnx.checker.check_model(out, full_check=True)
    return out, res


def ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def session(model: onnx.ModelProto, optimize: bool = True, dump: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if dump is not None:
        so.optimized_model_filepath = str(dump)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def optimized_ops(model: onnx.ModelProto) -> collections.Counter:
    """Op types after onnxruntime's CPU graph optimizations (which fuse QDQ groups)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "opt.onnx"
        session(model, dump=p)
        return ops(onnx.load(p))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


__all__ = ["onnxcomp"]


def run_pass_by_name(model: onnx.ModelProto, spec: str, data=None):
    """Run any registered pass (``"name:k=v"``) directly on a graph; returns (model, PassResult)."""
    from onnxcomp.pipeline.registry import instantiate

    graph, meta = to_graph(model)
    cal = None if data is None else CalibrationData.from_source(data, model)
    ctx = PassContext(original_model=model, meta=meta, calibration=cal)
    res = instantiate(spec).run(graph, ctx)
    graph.cleanup().toposort()
    out = to_model(graph, meta)
    onnx.checker.check_model(out, full_check=True)
    return out, res
