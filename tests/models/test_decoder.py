"""The Llama-style decoder: causal, cached decoding equals full decoding, exports run in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

import models
from models.decoder import DECODER_SMALL


def test_decoder_is_causal_and_seeded() -> None:
    model = models.build("decoder", small=True)
    ids = torch.from_numpy(models.example_inputs("decoder", small=True, seq_len=12)["input_ids"])
    with torch.no_grad():
        full = model(ids)
        changed = ids.clone()
        changed[0, 8:] = (changed[0, 8:] + 1) % DECODER_SMALL.vocab_size
        later_changed = model(changed)
    assert full.shape == (1, 12, DECODER_SMALL.vocab_size)
    torch.testing.assert_close(full[:, :8], later_changed[:, :8])  # earlier tokens never see later ones
    assert not torch.allclose(full[:, 8:], later_changed[:, 8:])
    other = models.build("decoder", small=True, seed=1)
    assert not torch.equal(other.embed_tokens.weight, model.embed_tokens.weight)


def test_kv_cache_prefill_then_decode_equals_full_pass(tmp_path: Path) -> None:
    """ONNX decoder_kv: prefill 6 tokens (empty past), then 3 single-token steps."""
    import onnxruntime as ort

    path = models.export("decoder_kv", tmp_path / "kv.onnx", small=True, seq_len=4)
    full_path = models.export("decoder", tmp_path / "full.onnx", small=True, seq_len=4)
    spec = models.spec("decoder_kv", small=True)
    ins = onnx.load(str(path)).graph.input
    assert [i.name for i in ins] == list(spec.input_names)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, DECODER_SMALL.vocab_size, size=(1, 9), dtype=np.int64)
    hd, kvh = DECODER_SMALL.head_dim, DECODER_SMALL.num_kv_heads
    past = {n: np.zeros((1, kvh, 0, hd), np.float32) for n in spec.input_names[1:]}
    outs = sess.run(None, {"input_ids": ids[:, :6], **past})
    logits = [outs[0]]
    for t in range(6, 9):
        past = dict(zip(spec.input_names[1:], outs[1:]))
        outs = sess.run(None, {"input_ids": ids[:, t : t + 1], **past})
        logits.append(outs[0])
        assert outs[1].shape == (1, kvh, t + 1, hd)
    cached = np.concatenate(logits, axis=1)
    (full,) = ort.InferenceSession(str(full_path), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4)
