"""What quantize-weights holds in memory: the moments session (what it runs, how it is fed),
float32 sums, errors in row chunks, weights let go as soon as their site is written."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
from onnx import TensorProto, helper
from quant_testutil import make_model

import onnxcomp.passes.quantize_weights as qw
from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.ir.convert import to_graph
from onnxcomp.pipeline.pass_api import PassContext
from onnxcomp.quantization import InputMoments, gptq, layer_error


def _head_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x -> MatMul w1 -> Relu -> MatMul w2 -> MatMul head -> logits: three weight sites whose
    inputs are x, r and b; the head's own output (like an LM's logits) feeds no layer input."""
    w = {"w1": rng.standard_normal((16, 32)), "w2": rng.standard_normal((32, 16)) * 0.2, "head": rng.standard_normal((16, 64))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["b"], name="mm2"),
        helper.make_node("MatMul", ["b", "head"], ["logits"], name="head"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5, 64])],
        w,
    )
    return model, w


def test_moments_are_streamed_per_sample_from_the_layer_inputs_only(monkeypatch):
    rng = np.random.default_rng(0)
    model, w = _head_model(rng)
    x = rng.standard_normal((24, 5, 16)).astype(np.float32)
    seen: dict = {"batches": []}
    real = qw.collect_moments

    def spy(m, batches, widths, **kw):
        seen["ops"] = [n.name for n in m.graph.node]

        def fed():
            for b in batches:
                seen["batches"].append(b["x"].shape[0])
                yield b

        seen["given"] = real(m, fed(), widths, **kw)
        seen["moments"] = dict(seen["given"])
        return seen["given"]

    monkeypatch.setattr(qw, "collect_moments", spy)
    graph, meta = to_graph(model)
    cal = CalibrationData.from_source({"x": x}, model, batch_size=8)
    ctx = PassContext(original_model=model, meta=meta, calibration=cal)
    opts = qw.QuantizeWeightsOptions(algorithm="gptq", min_weight_size=0, block_size=16, calibration_batches=2, embeddings=False)
    result = qw.QuantizeWeights(opts).run(graph, ctx)
    assert result.modified and result.stats["weights_quantized"] == 3
    assert seen["ops"] == ["mm1", "relu", "mm2"]  # the head runs for nothing: not in the session
    assert seen["batches"] == [1] * 16  # one sample a run; calibration_batches counts batches of 8
    assert seen["given"] == {}  # each input's sums were freed after its last layer
    # The sums equal those over the first two batches taken whole (float64 reference).
    x16 = x[:16].reshape(-1, 16).astype(np.float64)
    r = np.maximum(x16 @ w["w1"], 0)
    b = r @ w["w2"]
    for name, ref in (("x", x16), ("r", r), ("b", b)):
        got = seen["moments"][name]
        assert got.rows == 80
        np.testing.assert_allclose(got.hessian, ref.T @ ref / 80, rtol=1e-4, atol=1e-4 * np.abs(ref).max() ** 2)
        np.testing.assert_allclose(got.abs_mean, np.abs(ref).mean(axis=0), rtol=1e-5)


def test_float32_sums_give_the_float64_hessian_and_gptq_result():
    """Correlated inputs with outlier channels, 64 updates of 256 rows: float32 running sums
    stay within 1e-5 of float64 ones, and GPTQ's layer error does not move."""
    rng = np.random.default_rng(1)
    k, n = 128, 48
    mix = rng.standard_normal((k, k)) / np.sqrt(k)
    scale = np.ones(k)
    scale[[5, 40, 77]] = 60.0  # LLM-like activation outliers
    m32 = InputMoments.empty(k)
    xtx64 = np.zeros((k, k))
    for _ in range(64):
        x = ((rng.standard_normal((256, k)) @ mix) * scale + 0.3).astype(np.float32)
        m32.update(x)
        xtx64 += x.astype(np.float64).T @ x.astype(np.float64)
    assert m32.xtx.dtype == np.float32
    h64 = xtx64 / m32.rows
    h32 = m32.hessian
    assert h32.dtype == np.float64
    assert np.max(np.abs(h32 - h64)) <= 1e-5 * np.max(np.abs(h64))
    wt = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
    errs = [layer_error(wt, gptq(wt, h, bits=4, block_size=32, symmetric=False).dequantize(), h64) for h in (h32, h64)]
    assert abs(errs[0] - errs[1]) <= 1e-3 * errs[1]


def test_errors_in_row_chunks_equal_whole_matrix_errors(monkeypatch):
    """layer_error and the AWQ search work a few rows at a time (memory): same results."""
    # importlib: the package's name `gptq` is the function, not the module.
    awq = importlib.import_module("onnxcomp.quantization.awq")
    gq = importlib.import_module("onnxcomp.quantization.gptq")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 64)) * np.linspace(0.1, 5, 64)
    h = x.T @ x / 512
    ws = [(rng.standard_normal((n, 64)) * 0.1).astype(np.float32) for n in (50, 19)]
    wq = ws[0] + rng.standard_normal(ws[0].shape).astype(np.float32) * 0.01
    whole_err = layer_error(ws[0], wq, h)
    whole = awq.search_scales(ws, h, np.abs(x).mean(0), bits=4, block_size=32, symmetric=False, grid=5)
    monkeypatch.setattr(gq, "ERROR_ROWS", 8)
    monkeypatch.setattr(awq, "ERROR_ROWS", 8)
    assert np.isclose(layer_error(ws[0], wq, h), whole_err, rtol=1e-12)
    chunked = awq.search_scales(ws, h, np.abs(x).mean(0), bits=4, block_size=32, symmetric=False, grid=5)
    assert chunked[1] == whole[1] and np.array_equal(chunked[0], whole[0])
    assert np.isclose(chunked[2], whole[2], rtol=1e-12)


def test_a_written_site_lets_go_of_its_float_weight():
    """Sites are written one by one without mixed precision: the replaced node must not keep
    the float weight (an AWQ-scaled copy in memory) alive until the final cleanup."""
    from onnxcomp.ir import unique_namer
    from onnxcomp.quantization import emit_matmulnbits, find_weight_sites, rtn

    model, _ = _head_model(np.random.default_rng(3))
    graph, _ = to_graph(model)
    sites = find_weight_sites(graph, min_weight_size=0, block_size=16)
    name = unique_namer(graph, prefix="wq")
    for site in sites:
        weight, node = site.weight, site.node
        emit_matmulnbits(graph, site, rtn(site.w_nk(), 4, 16, False), accuracy_level=0, name=name(node.name))
        assert weight.outputs == [] and node.inputs == [] and node.outputs == []
