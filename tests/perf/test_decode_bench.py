"""``onnxcomp bench --decode N`` on a tiny ``decoder_kv``: layout detection, greedy decode with
the cache fed back, the JSON/Markdown/table contract and exit 2 for models without a cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import models
import onnxcomp
from onnxcomp.checking.runtime import make_session
from onnxcomp.cli import main
from onnxcomp.errors import UsageError
from onnxcomp.io.files import load_model
from onnxcomp.perf.decode import DecodeRunner, KvLayout
from onnxcomp.perf.speed_check import (
    DECODE_PROMPT,
    DECODE_TOKENS,
    measure_speed,
    slower_warning,
)


def invoke(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def kv_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The small decoder_kv export and its 4-bit RTN result."""
    d = tmp_path_factory.mktemp("decode")
    fp32 = models.export("decoder_kv", d / "kv.onnx", small=True, seq_len=4)
    q = d / "kv.q4.onnx"
    onnxcomp.optimize(str(fp32), passes=["quantize-weights"], output=str(q))
    return fp32, q


def test_layout_of_the_decoder_kv_export(kv_models: tuple[Path, Path]) -> None:
    model = onnx.load(str(kv_models[0]), load_external_data=False)
    lay = KvLayout.detect(model)
    cfg = models.decoder.DECODER_SMALL
    assert lay.tokens == "input_ids" and lay.logits == "logits" and lay.cache_axis == 2
    assert len(lay.pasts) == 2 * cfg.num_layers
    assert [p.replace("past_key_values", "present") for p in lay.pasts] == list(lay.presents)
    assert lay.cache_shapes[0] == (0, cfg.num_kv_heads, 0, cfg.head_dim)


def test_greedy_decode_with_fed_back_cache_matches_a_full_pass(kv_models: tuple[Path, Path]) -> None:
    """The generated tokens are the argmax continuation of one cache-free pass over prompt + tokens."""
    path = kv_models[0]
    model = onnx.load(str(path), load_external_data=False)
    lay = KvLayout.detect(model)
    sess = make_session(str(path))
    prompt = np.random.default_rng(3).integers(0, 256, (1, 5))
    runner = DecodeRunner(sess, lay, prompt, 6)
    runner()
    assert runner.generated.shape == (1, 6) and len(runner.prefill_ms) == len(runner.decode_ms) == 1
    seq = np.concatenate([prompt, runner.generated], axis=1)
    logits = sess.run(["logits"], {"input_ids": seq, **lay.empty_caches(1)})[0]
    np.testing.assert_array_equal(logits[0, 4:-1].argmax(-1), runner.generated[0])
    runner.reset()
    assert runner.prefill_ms == [] and runner.decode_ms == []


def test_cli_decode_side_by_side(kv_models: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, q = kv_models
    out, md = tmp_path / "d.json", tmp_path / "d.md"
    code, stdout, err = invoke("bench", fp32, q, "--decode", 4, "--shape", "input_ids=1x6", "--rounds", 3, "--warmup", 1,
                               "--threads", 1, "--json", out, "--markdown", md)
    assert code == 0, err
    d = json.loads(out.read_text())
    assert d["decode_tokens"] == 4 and d["rounds"] == 3 and d["failed"] == 0
    first, second = (m["decode"] for m in d["models"])
    for dec in (first, second):
        assert dec["prompt_tokens"] == 6 and dec["new_tokens"] == 4 and dec["batch"] == 1
        assert dec["prefill_ms"]["n"] == 3 and dec["decode_ms_per_token"]["n"] == 3
        assert dec["decode_tokens_per_s"] == pytest.approx(1000.0 / dec["decode_ms_per_token"]["p50"])
        assert dec["layout"]["caches"] == 4 and dec["layout"]["cache_axis"] == 2
    assert first["decode_ratio_to_first"] == 1.0 and first["prefill_ratio_to_first"] == 1.0
    assert second["decode_ratio_to_first"] == pytest.approx(second["decode_tokens_per_s"] / first["decode_tokens_per_s"])
    assert "tokens/s" in stdout and "prefill" in stdout
    text = md.read_text()
    assert "decode tokens/s" in text and "kv.q4.onnx" in text and text.count("\n| kv") == 2


def test_cli_decode_refuses_a_model_without_cache(tmp_path: Path) -> None:
    g = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = invoke("bench", path, "--decode", 4, "--rounds", 2)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "no KV cache" in lines[0] and "plain.onnx" in lines[0]


@pytest.mark.parametrize("args", [["--decode", "0"], ["--decode", "3", "--data", "x.npz"]])
def test_cli_decode_bad_options_exit_2(kv_models: tuple[Path, Path], tmp_path: Path, args: list[str]) -> None:
    if "--data" in args:
        np.savez(tmp_path / "x.npz", input_ids=np.zeros((1, 4), np.int64))
        args = [a if a != "x.npz" else str(tmp_path / "x.npz") for a in args]
    code, _, err = invoke("bench", kv_models[0], *args, "--rounds", 1)
    assert code == 2 and "--decode" in err, err


def _hf_style(outputs: list[str], extra_input: str | None = None) -> onnx.ModelProto:
    """Header-only model in the shape of an optimum export (never run)."""
    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
           helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
           helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["batch", 3, "past_sequence_length", 8])]
    if extra_input:
        ins.append(helper.make_tensor_value_info(extra_input, TensorProto.FLOAT, [1]))
    outs = [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["batch", "seq", 50]),
            helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, ["batch", 3, "total", 8])]
    return helper.make_model(helper.make_graph([], "g", ins, outs))


def test_layout_pairs_by_position_and_feeds_mask_and_positions() -> None:
    lay = KvLayout.detect(_hf_style(["logits", "cache_out_0"]))
    assert lay.presents == ("cache_out_0",) and lay.cache_axis == 2 and lay.batch is None
    extras = lay.extras(2, 5, 1)
    assert extras["attention_mask"].shape == (2, 6) and extras["position_ids"].tolist() == [[5], [5]]


def test_layout_names_an_input_it_cannot_feed() -> None:
    with pytest.raises(UsageError, match="token_type_ids"):
        KvLayout.detect(_hf_style(["logits", "present.0.key"], extra_input="token_type_ids"))


def test_speed_check_times_decode_for_a_model_with_a_kv_cache(kv_models: tuple[Path, Path]) -> None:
    """``optimize``'s speed check times generations of a KV-cache model and reports the decode ratio."""
    fp32, q4 = (load_model(p) for p in kv_models)
    speed = measure_speed(fp32, q4, duration_s=0.05, min_rounds=3, warmup=1)
    assert speed["timed"] == "decode"
    assert speed["prompt_tokens"] == DECODE_PROMPT and speed["decode_tokens"] == DECODE_TOKENS
    assert speed["rounds"] >= 3 and speed["input_ms"] > 0 and speed["result_ms"] > 0
    assert np.isfinite(speed["ratio"]) and np.isfinite(speed["prefill_ratio"])
    assert "decoding" in slower_warning({**speed, "ratio": 0.5})


def test_speed_check_times_plain_runs_without_a_kv_cache(tmp_path: Path) -> None:
    path = models.export("decoder", tmp_path / "lm.onnx", small=True, seq_len=4)
    model = load_model(path)
    speed = measure_speed(model, model, duration_s=0.05, min_rounds=3, warmup=1)
    assert speed["timed"] == "run" and "prefill_ratio" not in speed
