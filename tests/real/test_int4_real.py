"""bench/int4_real.py's own pieces on small models built in code (no download)."""

from __future__ import annotations

from pathlib import Path

import int4_real
import numpy as np
import pytest

import models
import onnxcomp
from onnxcomp.checking.perplexity import PerplexityAccumulator


def test_windows_are_disjoint_and_spread_through_the_stream() -> None:
    ids = list(range(1000))
    w = int4_real.windows(ids, 4, 100)
    assert w.shape == (4, 100) and w.dtype == np.int64
    starts = w[:, 0].tolist()
    assert starts == [0, 300, 600, 900]  # first and last of the 10 windows, evenly between
    assert all((row == np.arange(row[0], row[0] + 100)).all() for row in w)
    with pytest.raises(SystemExit, match="only 10 windows"):
        int4_real.windows(ids, 11, 100)


def test_score_all_streams_perplexity_and_cosine_like_one_pass(tmp_path: Path) -> None:
    fp32 = models.export("decoder", tmp_path / "fp32.onnx", small=True, dynamic_batch=True, seq_len=16)
    q = tmp_path / "q.onnx"
    onnxcomp.optimize(str(fp32), passes=["quantize-weights:symmetric=true"], output=str(q))
    text = np.random.default_rng(0).integers(0, 256, (5, 24)).astype(np.int64)
    (a, ca), (b, cb) = int4_real.score_all([fp32, q], text, batch=2)  # 3 batches, the last ragged
    ref = int4_real._session(fp32).run(None, {"input_ids": text})[0]
    acc = PerplexityAccumulator()
    acc.add(ref, text)
    assert a == pytest.approx(acc.perplexity, rel=1e-6) and ca == pytest.approx(1.0)
    out = int4_real._session(q).run(None, {"input_ids": text})[0].ravel().astype(np.float64)
    r = ref.ravel().astype(np.float64)
    assert cb == pytest.approx(out @ r / np.sqrt((out @ out) * (r @ r)), rel=1e-9) and cb < 1.0
    assert b != a


def test_port_of_a_transformers_llama_gives_its_logits() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    ours = int4_real.port(hf)
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5)
    hf.config.tie_word_embeddings = False
    with pytest.raises(SystemExit, match="not a tied"):
        int4_real.port(hf)
