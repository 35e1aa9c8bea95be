"""Command line: ``python -m models export [--out DIR] [--small] [--names a,b] [--keep-batchnorm]``.

Writes ``<name>.onnx`` and ``<name>.calib.npz`` for every selected model, plus
``digits.test.npz`` (and ``digits.val.npz``, ``digits.train.npz``) when digits is selected, and
prints one line per model: file size, parameter count, and the cosine
similarity between onnxruntime and PyTorch outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import (
    CAUSAL_LMS,
    MODEL_NAMES,
    build,
    cosine,
    digits,
    example_inputs,
    export,
    make_calibration,
    param_count,
    run_onnx,
)
from .decoder import DECODER_SIZES


def _check(name: str, onnx_path: Path, args: argparse.Namespace) -> float:
    """Lowest output cosine between onnxruntime and PyTorch on fresh inputs."""
    size = _decoder_size(name, args)
    model = build(name, small=args.small, seed=args.seed, decoder_size=size)
    inputs = example_inputs(name, small=args.small, batch=args.batch, seq_len=args.seq_len, seed=args.seed + 1, decoder_size=size)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in inputs.values()))
    refs = ref if isinstance(ref, tuple) else (ref,)
    outs = run_onnx(onnx_path, inputs)
    return min(cosine(o, r.numpy()) for o, r in zip(outs, refs))


def _decoder_size(name: str, args: argparse.Namespace) -> str | None:
    """``--decoder-size`` for the decoders, None for every other model."""
    return args.decoder_size if name in CAUSAL_LMS else None


def _export_all(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else list(MODEL_NAMES)
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        t0 = time.perf_counter()
        path = export(
            name,
            out / f"{name}.onnx",
            small=args.small,
            batch=args.batch,
            seq_len=args.seq_len,
            keep_batchnorm=args.keep_batchnorm,
            dynamic_batch=args.dynamic_batch,
            seed=args.seed,
            decoder_size=_decoder_size(name, args),
        )
        make_calibration(
            name, out / f"{name}.calib.npz", n=args.calib_n, small=args.small, seq_len=args.seq_len, decoder_size=_decoder_size(name, args)
        )
        extra = ""
        if name == "digits":
            digits.test_split_npz(out / "digits.test.npz")
            digits.validation_split_npz(out / "digits.val.npz")
            digits.train_split_npz(out / "digits.train.npz")
            _, acc = digits.train_or_load(small=args.small, seed=args.seed)
            extra = f"  test_acc={acc:.4f}"
        seconds = time.perf_counter() - t0
        params = param_count(build(name, small=args.small, seed=args.seed, decoder_size=_decoder_size(name, args)))
        line = f"{name:<12} {path.stat().st_size / 2**20:9.2f} MiB  {params:>11,d} params  {seconds:6.1f}s"
        if not args.no_check:
            line += f"  ort_cos={_check(name, path, args):.6f}"
        print(line + extra, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m models``.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="export models to ONNX (+ calibration npz)")
    p.add_argument("--out", default="models_out", help="output directory (default: ./models_out)")
    p.add_argument("--small", action="store_true", help="export the small test variants")
    p.add_argument("--names", default="", help=f"comma-separated subset of {','.join(MODEL_NAMES)}")
    p.add_argument("--keep-batchnorm", action="store_true", help="raw export keeping BatchNormalization nodes")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch (and BERT seq) dimension")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=32, help="BERT sequence length (default 32)")
    p.add_argument("--calib-n", type=int, default=16, help="calibration samples per model (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--decoder-size", choices=tuple(DECODER_SIZES), default=None, help="decoder/decoder_kv shape (135m: SmolLM-135M's); overrides --small"
    )
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export_all(args)
    return 2  # pragma: no cover - argparse enforces a known command


if __name__ == "__main__":
    sys.exit(main())
