"""``onnxcomp optimize`` (lossless, no data) on real pretrained models, through the CLI.

The PP-OCR direction classifier declares its batch as -1; silero VAD has a scalar ``sr``,
a ``state`` with the batch on axis 1 and an If. Both must come out with exit 0 and the
same outputs on realistic inputs (rendered text lines; a speech stream with the LSTM
state carried from chunk to chunk), at batch sizes the tools never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import real_data as D
from click.testing import CliRunner

from onnxcomp.cli import main


def optimize_lossless(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"{src.stem}.lossless.onnx"
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(out), "--preset", "lossless"])
    assert r.exit_code == 0, r.output + (r.stderr if r.stderr_bytes else "")
    assert out.exists()
    return out


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_lossless_ppocr_classifier_batch_minus_one(real_model, tmp_path: Path) -> None:
    src = real_model("ocr_cls")
    before = src.read_bytes()
    out = optimize_lossless(src, tmp_path)
    assert src.read_bytes() == before  # the input is never touched
    rng = np.random.default_rng(0)
    lines = ["Total 12.50 EUR", "loading dock", "Invoice"]
    x = np.stack([D.fit_line(D.render_line(t, rng)[::-1, ::-1] if i % 2 else D.render_line(t, rng), 48, 192)
                  for i, t in enumerate(lines)])
    ref, got = session(src).run(None, {"x": x})[0], session(out).run(None, {"x": x})[0]
    assert got.shape == ref.shape == (3, 2)  # batch 3 still runs: the -1 batch stays dynamic
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert len(onnx.load(str(out)).graph.node) <= len(onnx.load(str(src)).graph.node)


def test_lossless_silero_vad_stream(real_model, tmp_path: Path) -> None:
    src = real_model("silero_vad")
    out = optimize_lossless(src, tmp_path)
    chunks = D.vad_chunks(D.synthetic_speech(D.HELD_OUT, 2.0, seed=3))
    sessions = [session(src), session(out)]
    states = [np.zeros((2, 1, 128), np.float32) for _ in sessions]
    probs: list[list[float]] = [[], []]
    for x in chunks:
        for k, s in enumerate(sessions):
            p, states[k] = s.run(None, {"input": x[None], "state": states[k], "sr": np.array(16000, np.int64)})
            probs[k].append(float(p.ravel()[0]))
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-4)
    np.testing.assert_allclose(states[1], states[0], atol=1e-4)
    assert max(probs[0]) > 0.5 > min(probs[0])  # the stream has speech and silence: a real check
    assert len(onnx.load(str(out)).graph.node) <= len(onnx.load(str(src)).graph.node)
