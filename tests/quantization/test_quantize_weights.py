"""The quantize-weights pass: through the real CLI on the small decoder export, formats, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from quant_testutil import cosine, make_model, ops, run_pass_by_name, session

from onnxcomp.cli import main
from onnxcomp.errors import UsageError
from onnxcomp.pipeline.registry import instantiate
from onnxcomp.quantization import rtn

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The small decoder export, its calibration npz, and held-out inputs (another seed)."""
    import models

    d = tmp_path_factory.mktemp("dec")
    path = models.export("decoder", d / "decoder.onnx", small=True, seq_len=16)
    # GPTQ needs more calibration tokens than the widest layer input (128 here): 32 x 32.
    calib = models.make_calibration("decoder", d / "calib.npz", n=32, small=True, seq_len=32)
    held_out = models.example_inputs("decoder", small=True, batch=1, seq_len=64, seed=123)
    return path, calib, held_out


def _optimize(src: Path, out: Path, spec: str, calib: Path | None = None) -> tuple[int, str, dict]:
    args = ["optimize", str(src), "-o", str(out), "-p", spec, "--report", str(out) + ".json"]
    if calib is not None:
        args += ["--calibration-data", str(calib)]
    r = CliRunner().invoke(main, args)
    report = json.loads(Path(str(out) + ".json").read_text()) if r.exit_code == 0 else {}
    return r.exit_code, r.output, report


def _logits(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session(onnx.load(str(path))).run(None, feeds)[0]


def test_cli_rtn_4bit_smaller_file_close_outputs(decoder, tmp_path):
    src, _, held = decoder
    out = tmp_path / "q.onnx"
    code, text, rep = _optimize(src, out, "quantize-weights")
    assert code == 0, text
    c = ops(onnx.load(str(out)))
    assert c["MatMulNBits"] == 15 and c["GatherBlockQuantized"] == 1  # 7 per layer x 2 + tied output projection
    assert out.stat().st_size < 0.35 * src.stat().st_size
    stats = rep["passes"][0]["stats"]
    assert stats["weights_quantized"] == 16 and stats["embeddings_quantized"] == 1
    assert cosine(_logits(out, held), _logits(src, held)) > 0.8  # 4-bit on a 64-wide model
    # The tied output projection takes embedding_bits (8), so int8 compute (accuracy level 4).
    levels = {n.name: _attrs(n) for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"}
    assert sorted((a["bits"], a["accuracy_level"]) for a in levels.values()) == [(4, 0)] * 14 + [(8, 4)]
    assert stats["tied_projection_bits"] == 8
    out8, out8_fp = tmp_path / "q8.onnx", tmp_path / "q8fp.onnx"
    assert _optimize(src, out8, "quantize-weights:bits=8")[0] == 0
    assert {_attrs(n)["accuracy_level"] for n in onnx.load(str(out8)).graph.node if n.op_type == "MatMulNBits"} == {4}
    assert _optimize(src, out8_fp, "quantize-weights:bits=8,accuracy_level=0")[0] == 0
    assert cosine(_logits(out8_fp, held), _logits(src, held)) > 0.999  # 8-bit weights, fp32 compute
    assert cosine(_logits(out8, held), _logits(src, held)) > 0.99  # and int8 activations as well


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_qdq_format_matches_matmulnbits(decoder, tmp_path):
    src, _, held = decoder
    a, b, c = tmp_path / "nbits.onnx", tmp_path / "qdq.onnx", tmp_path / "nbits_default.onnx"
    # fp32 compute everywhere (the default gives the 8-bit tied projection int8 compute)
    assert _optimize(src, a, "quantize-weights:accuracy_level=0")[0] == 0
    assert _optimize(src, c, "quantize-weights")[0] == 0
    code, text, _ = _optimize(src, b, "quantize-weights:format=qdq")
    assert code == 0, text
    m = onnx.load(str(b))
    assert ops(m)["DequantizeLinear"] == 16 and "MatMulNBits" not in ops(m)
    assert m.opset_import[0].version == 21
    # onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits with int8 compute
    # (accuracy level 4) by default; at level 0, or unfused, the outputs agree exactly.
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    fused = ort.InferenceSession(str(b), so, providers=["CPUExecutionProvider"]).run(None, held)[0]
    unfused = session(m, optimize=False).run(None, held)[0]
    for got in (fused, unfused):
        np.testing.assert_allclose(got, _logits(a, held), rtol=1e-4, atol=1e-4)
    assert cosine(_logits(b, held), _logits(a, held)) > 0.99  # default int8 compute: close
    assert cosine(_logits(b, held), _logits(c, held)) > 0.99  # both defaults: close


def test_gptq_and_awq_beat_rtn_on_held_out_inputs(decoder, tmp_path):
    src, calib, held = decoder
    ref = _logits(src, held)
    score = {}
    for algo in ("rtn", "gptq", "awq"):
        out = tmp_path / f"{algo}.onnx"
        code, text, rep = _optimize(src, out, f"quantize-weights:algorithm={algo}", calib)
        assert code == 0, text
        score[algo] = cosine(_logits(out, held), ref)
        if algo == "gptq":
            assert rep["passes"][0]["stats"]["gptq_error_vs_rtn"] < 0.8
        if algo == "awq":
            assert rep["passes"][0]["stats"]["awq_folded"] >= 1
    assert score["gptq"] > score["rtn"] and score["awq"] > score["rtn"], score


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("quantize-weights:algorithm=gptq", "algorithm=gptq needs --calibration-data"),
        ("quantize-weights:algorithm=awq", "algorithm=awq needs --calibration-data"),
        ("quantize-weights:bits=3", "bits must be 4 or 8"),
        ("quantize-weights:block_size=48", "block_size"),
        ("quantize-weights:block_size=512", "block_size"),
    ],
)
def test_bad_input_is_exit_2_one_line(decoder, tmp_path, spec, needle):
    src, _, _ = decoder
    out = tmp_path / "bad.onnx"
    code, text, _ = _optimize(src, out, spec)
    assert code == 2 and needle in text and "Traceback" not in text
    assert not out.exists()


def test_no_eligible_matmul_is_not_modified():
    m = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], {},
    )
    _, res = run_pass_by_name(m, "quantize-weights")
    assert not res.modified and res.stats["weights_quantized"] == 0


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_bias_equals_dequantized_reference(fmt, trans_b):
    rng = np.random.default_rng(0)
    k, n = 64, 24
    w_nk = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    m = make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=trans_b)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
        {"w": w_nk if trans_b else np.ascontiguousarray(w_nk.T), "b": bias},
    )
    q, res = run_pass_by_name(m, f"quantize-weights:format={fmt},min_weight_size=0")
    assert res.modified
    x = rng.standard_normal((3, k)).astype(np.float32)
    expect = x @ rtn(w_nk, 4, 32, False).dequantize().T + bias
    # qdq unfused (onnxruntime's fusion would compute in int8 by default, see above).
    got = session(q, optimize=fmt == "matmulnbits").run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


def _tied_model(vocab: int = 96, hidden: int = 64, seed: int = 2) -> tuple[onnx.ModelProto, np.ndarray]:
    """ids -> Gather(table) -> x @ Transpose(table): a tied embedding and output projection."""
    table = np.random.default_rng(seed).standard_normal((vocab, hidden)).astype(np.float32)
    m = make_model(
        [helper.make_node("Gather", ["table", "ids"], ["h"], name="embed"),
         helper.make_node("Transpose", ["table"], ["t"], name="t", perm=[1, 0]),
         helper.make_node("MatMul", ["h", "t"], ["logits"], name="head")],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, vocab])],
        {"table": table},
    )
    return m, table


@pytest.mark.parametrize(
    ("spec", "bits", "level"),
    [("", 8, 4), ("accuracy_level=0", 8, 0), ("embedding_bits=4", 4, 0), ("accuracy_level=4,embedding_bits=4", 4, 4)],
)
def test_tied_projection_takes_embedding_bits_and_int8_compute_at_8_bits(spec, bits, level):
    m, table = _tied_model()
    q, res = run_pass_by_name(m, f"quantize-weights:{spec}" if spec else "quantize-weights")
    head = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
    assert len(head) == 1 and ops(q)["GatherBlockQuantized"] == 1 and "Transpose" not in ops(q)
    assert (_attrs(head[0])["bits"], _attrs(head[0])["accuracy_level"]) == (bits, level)
    assert res.stats["tied_projection_bits"] == bits
    ids = np.array([[0, 7, 95, 3, 7]], np.int64)
    deq = rtn(table, bits, 32, False).dequantize()  # the table and the projection share the bits
    expect = deq[ids] @ deq.T
    got = session(q).run(None, {"ids": ids})[0]
    if level == 0:  # fp32 compute: exactly the dequantized weights
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    else:  # int8 activations: close, not exact
        assert cosine(got, expect) > 0.999 and not np.allclose(got, expect, rtol=1e-6, atol=1e-6)


def test_tied_projection_qdq_is_8_bit_and_exact():
    m, table = _tied_model()
    q, _ = run_pass_by_name(m, "quantize-weights:format=qdq")
    dq = {n.input[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    codes = {i.name: i.data_type for i in q.graph.initializer if i.name in dq}
    assert sorted(codes.values()) == [TensorProto.UINT8, TensorProto.UINT8]  # table and projection: 8 bits
    ids = np.array([[1, 2, 3, 4, 90]], np.int64)
    deq = rtn(table, 8, 32, False).dequantize()
    got = session(q, optimize=False).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, deq[ids] @ deq.T, rtol=1e-4, atol=1e-4)


def test_exclude_and_min_weight_size_keep_weights_float():
    rng = np.random.default_rng(1)
    m = make_model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="big"), helper.make_node("MatMul", ["h", "w2"], ["y"], name="keep")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 64])],
        {"w1": rng.standard_normal((64, 64)).astype(np.float32), "w2": rng.standard_normal((64, 64)).astype(np.float32)},
    )
    q, res = run_pass_by_name(m, "quantize-weights:exclude=[keep]")
    assert ops(q)["MatMulNBits"] == 1 and ops(q)["MatMul"] == 1 and res.stats["weights_quantized"] == 1
    _, res = run_pass_by_name(m, "quantize-weights:min_weight_size=5000")
    assert not res.modified


def test_options_are_typed_and_validated():
    o = instantiate("quantize-weights:bits=8,block_size=128,symmetric=true,algorithm=awq,format=qdq").options
    assert (o.bits, o.block_size, o.symmetric, o.algorithm, o.format) == (8, 128, True, "awq", "qdq")
    with pytest.raises(UsageError):
        instantiate("quantize-weights:algorithm=hqq")
    assert numpy_helper  # (used by the helpers above through make_model)


def test_int4_preset_cleans_up_then_quantizes(decoder, tmp_path):
    src, _, held = decoder
    out = tmp_path / "p.onnx"
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(out), "--preset", "int4", "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    names = [p["name"] for p in json.loads((tmp_path / "r.json").read_text())["passes"]]
    assert names[-1] == "quantize-weights" and "fold-constants" in names
    assert ops(onnx.load(str(out)))["MatMulNBits"] == 15
    assert cosine(_logits(out, held), _logits(src, held)) > 0.8


def test_mixed_precision_raises_sensitive_layers_until_target(decoder, tmp_path):
    src, calib, held = decoder
    plain, mixed = tmp_path / "plain.onnx", tmp_path / "mixed.onnx"
    assert _optimize(src, plain, "quantize-weights", calib)[0] == 0
    code, text, rep = _optimize(src, mixed, "quantize-weights:target_cosine=0.97", calib)
    assert code == 0, text
    st = rep["passes"][0]["stats"]
    assert st["target_met"] and st["estimated_cosine"] >= 0.97 and st["layers_8bit"] >= 1
    assert st["candidates"] <= 2 + 2 * 5  # doubling rounds, never one session per layer
    c = ops(onnx.load(str(mixed)))
    assert c["MatMulNBits"] + c["GatherBlockQuantized"] == 16  # 8-bit layers are still MatMulNBits
    ref = _logits(src, held)
    assert cosine(_logits(mixed, held), ref) > cosine(_logits(plain, held), ref)
    assert "perplexity" in rep["verification"] and "estimated_perplexity_increase" in st
    code, text, _ = _optimize(src, tmp_path / "x.onnx", "quantize-weights:target_cosine=0.99")
    assert code == 2 and "need --calibration-data" in text
