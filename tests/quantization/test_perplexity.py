"""Perplexity for causal LMs: the accumulator, `compare --metric perplexity`, the optimize report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcomp.checking.perplexity import (
    PerplexityAccumulator,
    causal_lm_interface,
    lm_feeds,
)
from onnxcomp.cli import main

torch = pytest.importorskip("torch")


def test_accumulator_matches_definition():
    v = 7
    acc = PerplexityAccumulator()
    acc.add(np.zeros((2, 5, v), np.float32), np.zeros((2, 5), np.int64))  # uniform logits
    assert acc.tokens == 8 and acc.perplexity == pytest.approx(v)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 6, v)).astype(np.float32)
    ids = rng.integers(0, v, (1, 6))
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    acc = PerplexityAccumulator()
    acc.add(logits, ids, mask)
    logp = logits[0, :3] - np.log(np.exp(logits[0, :3]).sum(-1, keepdims=True))
    expect = np.exp(-np.mean([logp[t, ids[0, t + 1]] for t in range(3)]))  # padded targets skipped
    assert acc.tokens == 3 and acc.perplexity == pytest.approx(expect, rel=1e-6)


def test_accumulator_chunks_positions(monkeypatch: pytest.MonkeyPatch):
    """The log-softmax is taken a few positions at a time: the same perplexity as in one go."""
    from onnxcomp.checking import perplexity

    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((2, 9, 11)) * 4).astype(np.float32)
    ids = rng.integers(0, 11, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, 6:] = 0
    whole = PerplexityAccumulator()
    whole.add(logits, ids, mask)
    monkeypatch.setattr(perplexity, "CHUNK", 2 * 11)  # two positions at a time
    chunked = PerplexityAccumulator()
    chunked.add(logits, ids, mask)
    assert chunked.tokens == whole.tokens == 8 + 5 and chunked.perplexity == pytest.approx(whole.perplexity, rel=1e-12)


@pytest.fixture(scope="module")
def kv_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import models

    return models.export("decoder_kv", tmp_path_factory.mktemp("kv") / "kv.onnx", small=True, seq_len=4)


@pytest.fixture(scope="module")
def plain_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import models

    return models.export("decoder", tmp_path_factory.mktemp("plain") / "dec.onnx", small=True, seq_len=4)


def test_kv_model_is_a_causal_lm_fed_an_empty_cache(kv_decoder):
    m = onnx.load(str(kv_decoder))
    iface = causal_lm_interface(m)
    assert iface is not None and iface.logits == "logits" and len(iface.extra_inputs) == 4
    feeds = lm_feeds(iface, np.zeros((1, 9), np.int64))
    assert feeds["past_key_values.0.key"].shape == (1, 2, 0, 16)


def test_compare_metric_perplexity_and_optimize_report(kv_decoder, plain_decoder, tmp_path):
    import models

    ids = np.concatenate([models.example_inputs("decoder_kv", small=True, seq_len=24, seed=s)["input_ids"] for s in range(3)])
    data = tmp_path / "text.npz"
    np.savez(data, input_ids=ids)
    q = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["optimize", str(kv_decoder), "-o", str(q), "-p", "quantize-weights:bits=8", "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    ppl = json.loads((tmp_path / "r.json").read_text())["verification"]["perplexity"]
    assert ppl["tokens"] > 0 and abs(ppl["increase"]) < 0.25  # 8-bit moves it little (random, very peaked model)
    # compare reads every model input from --data: the cache-less export takes input_ids alone.
    plain = plain_decoder
    q = tmp_path / "q2.onnx"
    assert CliRunner().invoke(main, ["optimize", str(plain), "-o", str(q), "-p", "quantize-weights"]).exit_code == 0
    r = CliRunner().invoke(main, ["compare", str(plain), str(q), "--data", str(data), "--metric", "perplexity", "--no-speed",
                                  "--json", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "c.json").read_text())["perplexity"]
    assert got["tokens"] == 3 * 23 and got["reference"] > 1 and np.isfinite(got["candidate"])
    # No text, or not a causal LM: exit 2 with one line.
    r = CliRunner().invoke(main, ["compare", str(plain), str(q), "--metric", "perplexity", "--no-speed"])
    assert r.exit_code == 2 and "needs --data" in r.output
    from testutil import relu_model

    relu = relu_model()
    other = tmp_path / "relu.onnx"
    onnx.save(relu, other)
    x = relu.graph.input[0]
    shape = [d.dim_value or 1 for d in x.type.tensor_type.shape.dim]
    np.savez(tmp_path / "x.npz", **{x.name: np.ones(shape, np.float32)})
    r = CliRunner().invoke(main, ["compare", str(other), str(other), "--data", str(tmp_path / "x.npz"), "--metric", "perplexity", "--no-speed"])
    assert r.exit_code == 2 and "needs a causal LM" in r.output


def test_an_encoder_is_not_a_causal_lm(tmp_path):
    import models

    bert = models.export("bert", tmp_path / "bert.onnx", small=True, seq_len=8)
    assert causal_lm_interface(onnx.load(str(bert))) is None  # last_hidden_state is 3-D but not logits


def _verification(tmp_path: Path, model: Path, data: Path, name: str) -> dict:
    out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
    r = CliRunner().invoke(main, ["optimize", str(model), "-o", str(out), "-p", "quantize-weights", "--no-speed-check",
                                  "--calibration-data", str(data), "--report", str(report)])
    assert r.exit_code == 0, r.output
    return json.loads(report.read_text())["verification"]


def test_optimize_verifies_a_causal_lm_window_by_window(plain_decoder, tmp_path, monkeypatch):
    """Held-out text is run one window per session run (here with every window's logits
    kept in a file), within the compute budget, and the report says how much was used."""
    import models
    from onnxcomp.checking import verify, verify_data

    plain = plain_decoder
    data = tmp_path / "text.npz"
    np.savez(data, input_ids=np.concatenate([models.example_inputs("decoder", small=True, seq_len=24, seed=s)["input_ids"] for s in range(12)]))
    # Every window's logits in a file (read back one window at a time).
    with monkeypatch.context() as m:
        m.setattr(verify, "SPILL_BYTES", 0)
        full = _verification(tmp_path, plain, data, "full")
    assert full["data"] == "3 held-out windows of text.npz (72 tokens)" and full["perplexity"]["tokens"] == 3 * 23
    assert 0 < full["cosine"] < 1 and np.isfinite(full["perplexity"]["increase"])
    # A budget of 30 tokens' compute: the first window only (a second would pass it).
    params = sum(int(np.prod(t.dims)) for t in onnx.load(str(plain)).graph.initializer)
    monkeypatch.setattr(verify_data, "LM_VERIFY_MACS", 30 * params)
    one = _verification(tmp_path, plain, data, "one")
    assert one["data"] == "1 of 3 held-out windows of text.npz (24 tokens)" and one["perplexity"]["tokens"] == 23


def test_output_store_reads_spilled_outputs_back_and_cleans_up(tmp_path, monkeypatch):
    import gc

    from onnxcomp.checking import verify

    monkeypatch.setattr(verify, "SPILL_BYTES", 100)
    store = verify.OutputStore(tmp_path)
    big, small = {"logits": np.arange(60, dtype=np.float32).reshape(1, 3, 20)}, {"y": np.ones(3, np.float32)}
    store.append(big)
    store.append(small)
    (folder,) = tmp_path.iterdir()
    assert len(list(folder.iterdir())) == 1  # only the large one went to a file
    got = list(store)
    np.testing.assert_array_equal(got[0]["logits"], big["logits"])
    np.testing.assert_array_equal(store[1]["y"], small["y"])
    del store, got
    gc.collect()
    assert not folder.exists()
