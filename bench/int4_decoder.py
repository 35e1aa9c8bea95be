"""4-bit weight-only quantization of the reference decoder LM, side by side with onnxruntime's.

    PYTHONPATH=. python bench/int4_decoder.py [--small] [--out bench/RESULTS_int4.md]

The decoder's weights are random, so there is no natural text to score it on. Held-out
"text" is therefore *sampled from the FP32 model itself* (temperature 1, its own
distribution), where its perplexity is meaningful; calibration sequences are sampled the
same way with another seed, so no method is fitted on the text it is scored on. For every
method: file size vs FP32, tool time, held-out perplexity and its increase, logits cosine,
and prefill latency (1 x 128, 2 threads, interleaved rounds; noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import models
import onnxcomp
from onnxcomp.checking.perplexity import PerplexityAccumulator


def _session(path: Path, threads: int = 2) -> ort.InferenceSession:
    # No thread spinning: sessions timed in turn must not steal each other's cores
    # (see int8_speed.session).
    from onnxcomp.checking.runtime import open_session

    return open_session(str(path), ["CPUExecutionProvider"], threads=threads, spinning=False)


def sample_text(path: Path, n: int, length: int, seed: int) -> np.ndarray:
    """``n`` sequences of ``length`` tokens sampled from the model (no cache, batch n)."""
    sess = _session(path)
    rng = np.random.default_rng(seed)
    vocab = sess.get_outputs()[0].shape[-1]
    ids = rng.integers(0, vocab, (n, 1))
    for _ in range(length - 1):
        (logits,) = sess.run(None, {"input_ids": ids})
        z = logits[:, -1].astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        nxt = np.array([rng.choice(vocab, p=row) for row in p])
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return ids.astype(np.int64)


def score(path: Path, ref_logits: np.ndarray | None, text: np.ndarray) -> tuple[float, float, np.ndarray]:
    sess = _session(path)
    (logits,) = sess.run(None, {"input_ids": text})
    acc = PerplexityAccumulator()
    acc.add(logits, text)
    cos = 1.0 if ref_logits is None else float(
        np.dot(logits.ravel(), ref_logits.ravel()) / (np.linalg.norm(logits) * np.linalg.norm(ref_logits))
    )
    return acc.perplexity, cos, logits


def ort_rtn(src: Path, dst: Path) -> None:
    """onnxruntime's own 4-bit RTN (block 32, its defaults: symmetric, MatMul only)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def prefill_ms(paths: list[Path], seq: int, rounds: int = 15) -> list[float]:
    """Median prefill latency (ms), the models interleaved round by round."""
    sessions = [_session(p) for p in paths]
    ids = np.random.default_rng(0).integers(0, sessions[0].get_outputs()[0].shape[-1], (1, seq))
    times: list[list[float]] = [[] for _ in paths]
    for s in sessions:
        s.run(None, {"input_ids": ids})
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, {"input_ids": ids})
            times[i].append((time.perf_counter() - t) * 1e3)
    return [float(np.median(t)) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--decode", type=int, default=32, help="decode steps for the KV-cache table (0: skip)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="int4-"))
    fp32 = models.export("decoder", work / "fp32.onnx", small=args.small, dynamic_batch=True, seq_len=16)
    n, length = (8, 64) if args.small else (8, 128)
    held = sample_text(fp32, n, length, seed=1)
    # GPTQ needs more calibration tokens than the widest layer input (1024), else XᵀX is
    # rank-deficient and it fits the calibration subspace.
    calib = {"input_ids": sample_text(fp32, 4 * n, length, seed=2)}
    ppl0, _, ref = score(fp32, None, held)
    rows = [("FP32", fp32, 0.0)]
    t = time.perf_counter()
    ort_rtn(fp32, work / "ort_rtn.onnx")
    rows.append(("onnxruntime MatMulNBitsQuantizer RTN (sym, MatMul only)", work / "ort_rtn.onnx", time.perf_counter() - t))
    specs = {
        "onnxcomp rtn (sym, embedding 4-bit)": "quantize-weights:symmetric=true,embedding_bits=4",
        "onnxcomp rtn (sym, embedding 8-bit)": "quantize-weights:symmetric=true",
        "onnxcomp rtn (asym, embedding 8-bit; the default)": "quantize-weights",
        "onnxcomp gptq (asym, embedding 8-bit)": "quantize-weights:algorithm=gptq",
        "onnxcomp awq (asym, embedding 8-bit)": "quantize-weights:algorithm=awq",
    }
    for label, spec in specs.items():
        dst = work / f"{len(rows)}.onnx"
        t = time.perf_counter()
        onnxcomp.optimize(str(fp32), passes=[spec], output=str(dst), calibration_data=calib)
        rows.append((label, dst, time.perf_counter() - t))
    lat = prefill_ms([p for _, p, _ in rows], seq=128)
    size0 = fp32.stat().st_size
    lines = [
        (
            f"Decoder {'small' if args.small else 'full'} ({models.param_count(models.build('decoder', small=args.small)):,} params); "
            f"held-out: {n} x {length} tokens sampled from the FP32 model (seed 1), calibration: another {4 * n} x {length} (seed 2). "
            "Prefill 1 x 128, 2 threads, median of 15 interleaved rounds (noisy, shared 2-core machine)."
        ),
        "",
        "| method | size vs FP32 | tool s | perplexity | increase | logits cosine | prefill ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, path, secs), ms in zip(rows, lat):
        ppl, cos, _ = score(path, ref, held)
        lines.append(
            f"| {label} | {path.stat().st_size / size0:.3f} | {secs:.1f} | {ppl:.3f} | {ppl / ppl0 - 1:+.2%} | {cos:.5f} | {ms:.2f} |"
        )
    if args.decode:
        kv = models.export("decoder_kv", work / "kv.onnx", small=args.small, seq_len=16)
        ort_rtn(kv, work / "kv_ort.onnx")
        onnxcomp.optimize(str(kv), passes=["quantize-weights:symmetric=true"], output=str(work / "kv_rtn.onnx"))
        onnxcomp.optimize(str(kv), passes=["quantize-weights:symmetric=true,accuracy_level=4"], output=str(work / "kv_rtn4.onnx"))
        kv_rows = [("FP32", kv), ("onnxruntime RTN", work / "kv_ort.onnx"), ("onnxcomp rtn (sym)", work / "kv_rtn.onnx"),
                   ("onnxcomp rtn (sym, accuracy_level=4)", work / "kv_rtn4.onnx")]
        # The same measurement as `onnxcomp bench --decode N --shape input_ids=1x64 --threads 2`.
        res = onnxcomp.bench([str(p) for _, p in kv_rows], threads=2, decode=args.decode, shapes={"input_ids": (1, 64)},
                             rounds=5, warmup=2)
        lines += ["", (f"decoder_kv: prefill 64 tokens, then {args.decode} greedy decode steps with the cache fed back "
                       f"(`onnxcomp bench --decode {args.decode}`); tokens/s at the median per-token time of "
                       f"{res.rounds} interleaved generations, 2 threads (noisy, shared machine)."), "",
                  "| model | size vs FP32 | prefill ms | decode tokens/s | vs FP32 |", "|---|---|---|---|---|"]
        for (label, path), m in zip(kv_rows, res.models):
            d = m.decode
            lines.append(f"| {label} | {path.stat().st_size / kv.stat().st_size:.3f} | {d.prefill.p50:.2f} | "
                         f"{d.tokens_per_s:.1f} | ×{d.decode_ratio_to_first:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
