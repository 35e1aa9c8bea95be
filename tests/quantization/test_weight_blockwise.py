"""Block-wise weight-only building blocks: RTN exactness, packing, onnxruntime kernels, GPTQ, AWQ folds."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper
from quant_testutil import session

from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.quantization import (
    apply_input_scale,
    gptq,
    layer_error,
    matmulnbits_arrays,
    pack_codes,
    rtn,
    search_awq_scales,
    unpack_codes,
)


def _reference_rtn(w: np.ndarray, bits: int, bs: int, symmetric: bool) -> np.ndarray:
    """Independent per-block loop: the dequantized weight RTN must produce."""
    n, k = w.shape
    out = np.zeros_like(w)
    qmax = 2**bits - 1
    for r in range(n):
        for b0 in range(0, k, bs):
            blk = w[r, b0 : b0 + bs].astype(np.float64)
            if symmetric:
                m = blk[np.argmax(np.abs(blk))]
                s, z = (m / -(2 ** (bits - 1)) or 1.0), 2 ** (bits - 1)
            else:
                lo, hi = min(blk.min(), 0.0), max(blk.max(), 0.0)
                s = (hi - lo) / qmax or 1.0
                z = min(max(round(-lo / s), 0), qmax)
            q = np.clip(np.round(blk / np.float32(s)) + z, 0, qmax)
            out[r, b0 : b0 + bs] = (q - z) * np.float32(s)
    return out


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("k", "bs"), [(64, 32), (70, 16), (40, 128)])
def test_rtn_dequantizes_like_the_reference(bits, symmetric, k, bs):
    w = np.random.default_rng(k + bits).standard_normal((12, k)).astype(np.float32)
    bq = rtn(w, bits, bs, symmetric)
    assert bq.codes.max() <= 2**bits - 1 and bq.codes.shape == (12, -(-k // bs) * bs)
    np.testing.assert_allclose(bq.dequantize(), _reference_rtn(w, bits, bs, symmetric), rtol=1e-6, atol=1e-6)
    # Error within half a step; symmetric blocks clip the side opposite the extreme by up to one.
    step = np.abs(bq.scales).repeat(bs, axis=1)[:, :k]
    assert np.all(np.abs(bq.dequantize() - w) <= step * (1.0 if symmetric else 0.5) + 1e-6)


def test_pack_unpack_roundtrip_low_nibble_first():
    codes = np.array([[1, 2, 3, 4, 15, 0, 7]], np.uint8)
    packed = pack_codes(codes, 4)
    assert packed.tolist() == [[0x21, 0x43, 0x0F, 0x07]]
    np.testing.assert_array_equal(unpack_codes(packed, 4, 7), codes)
    np.testing.assert_array_equal(pack_codes(codes, 8), codes)


def _matmulnbits_model(k: int, n: int, bq, accuracy_level: int = 0) -> onnx.ModelProto:
    arr = matmulnbits_arrays(bq)
    ins = ["A", "B", "scales"] + (["zero_points"] if "zero_points" in arr else [])
    node = helper.make_node(
        "MatMulNBits", ins, ["Y"], domain="com.microsoft", K=k, N=n, bits=bq.bits, block_size=bq.block_size, accuracy_level=accuracy_level
    )
    g = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, n])], [numpy_helper.from_array(v, key) for key, v in arr.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_onnxruntime_matmulnbits_equals_dequantized_reference(bits, symmetric):
    rng = np.random.default_rng(1)
    k, n = 72, 20  # K not a multiple of the block: the last block is padded
    w = rng.standard_normal((n, k)).astype(np.float32)
    bq = rtn(w, bits, 32, symmetric)
    a = rng.standard_normal((3, k)).astype(np.float32)
    (y,) = session(_matmulnbits_model(k, n, bq)).run(None, {"A": a})
    np.testing.assert_allclose(y, a @ bq.dequantize().T, rtol=1e-4, atol=1e-4)


def test_gptq_lowers_layer_error_against_rtn_on_correlated_inputs():
    rng = np.random.default_rng(0)
    k, n = 128, 48
    mix = np.eye(k) + 0.4 * rng.standard_normal((k, k))
    x = rng.standard_normal((1024, k)) @ mix
    h = x.T @ x / len(x)
    w = rng.standard_normal((n, k)).astype(np.float32)
    base = layer_error(w, rtn(w, 4, 32, False).dequantize(), h)
    for act_order in (True, False):
        bq = gptq(w, h, bits=4, block_size=32, symmetric=False, act_order=act_order)
        assert bq.codes.max() <= 15
        assert layer_error(w, bq.dequantize(), h) < 0.7 * base
    # Uncorrelated unit inputs: GPTQ has nothing to exploit but must not be much worse.
    eye = np.eye(k)
    assert layer_error(w, gptq(w, eye, bits=4, block_size=32, symmetric=True).dequantize(), eye) <= 1.1 * layer_error(
        w, rtn(w, 4, 32, True).dequantize(), eye
    )


def test_awq_search_never_worse_than_rtn_and_helps_outlier_channels():
    rng = np.random.default_rng(2)
    k = 64
    x = rng.standard_normal((2048, k))
    x[:, :3] *= 30.0  # activation outlier channels
    h = x.T @ x / len(x)
    w = rng.standard_normal((32, k)).astype(np.float32)
    s, alpha, err = search_awq_scales([w], h, np.abs(x).mean(0), bits=4, block_size=32, symmetric=False)
    base = layer_error(w, rtn(w, 4, 32, False).dequantize(), h)
    assert alpha > 0 and err < 0.9 * base and s.shape == (k,)


def _fold_model(producer: str) -> onnx.ModelProto:
    """x -> producer -> t -> (MatMul w1, MatMul w2): the readers that share one AWQ scale."""
    rng = np.random.default_rng(3)
    k = 16
    inits = {
        "w1": rng.standard_normal((k, 8)).astype(np.float32), "w2": rng.standard_normal((k, 8)).astype(np.float32),
        "g": rng.standard_normal(k).astype(np.float32), "b": rng.standard_normal(k).astype(np.float32),
        "wp": rng.standard_normal((k, k)).astype(np.float32), "wu": rng.standard_normal((k, k)).astype(np.float32),
    }
    nodes = {
        "rmsnorm_mul": [helper.make_node("Mul", ["x", "g"], ["t"])],
        "layernorm": [helper.make_node("LayerNormalization", ["x", "g", "b"], ["t"], axis=-1)],
        "matmul": [helper.make_node("MatMul", ["x", "wp"], ["t"])],
        "swiglu": [
            helper.make_node("MatMul", ["x", "wp"], ["gate"]), helper.make_node("Sigmoid", ["gate"], ["sg"]),
            helper.make_node("Mul", ["gate", "sg"], ["act"]), helper.make_node("MatMul", ["x", "wu"], ["up"]),
            helper.make_node("Mul", ["act", "up"], ["t"]),
        ],
        "shared": [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["t"], ["y3"])],
    }[producer]
    nodes += [helper.make_node("MatMul", ["t", "w1"], ["y1"], name="r1"), helper.make_node("MatMul", ["t", "w2"], ["y2"], name="r2")]
    outs = ["y1", "y2"] + (["y3"] if producer == "shared" else [])
    g = helper.make_graph(
        nodes, "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, k])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        [numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("producer", "how"), [("rmsnorm_mul", "norm"), ("layernorm", "norm"), ("matmul", "matmul"), ("swiglu", "matmul"), ("shared", "mul")]
)
def test_awq_scale_folding_is_exact_in_float(producer, how):
    model = _fold_model(producer)
    graph, meta = to_graph(model)
    readers = [n for n in graph.nodes if n.name in ("r1", "r2")]
    s = np.random.default_rng(4).uniform(0.25, 4.0, 16).astype(np.float32)
    assert apply_input_scale(graph, readers[0].inputs[0], readers, 1.0 / s, "t") == how
    for r in readers:  # the weights take s on their input channels (rows of [K, N])
        w = r.inputs[1]
        r.inputs[1] = gs.Constant(w.name + "_s", (np.asarray(w.values) * s[:, None]).astype(np.float32))
    graph.cleanup().toposort()
    scaled = to_model(graph, meta)
    feeds = {"x": np.random.default_rng(5).standard_normal((2, 5, 16)).astype(np.float32)}
    for a, b in zip(session(scaled).run(None, feeds), session(model).run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert (sum(n.op_type == "Mul" for n in scaled.graph.node) > sum(n.op_type == "Mul" for n in model.graph.node)) == (how == "mul")
