"""Accuracy recovery after pruning on the trained digits CNN: ``reconstruct`` vs ``distill``.

Runs, on the same pruned model (``prune-channels:ratio=R``):

* ``pruned``               -- no recovery;
* ``pruned+reconstruct``   -- least-squares layer refit on calibration images (no training);
* ``pruned+distill``       -- knowledge distillation on the training split (with labels);
* ``pruned+distill(no refit)`` -- distillation from the pruned weights (``refit=false``,
  4x the epochs);
* the presets ``prune-recover`` and ``prune-distill-int8`` (INT8 runs need ``quantize-int8``).

and prints top-1 on the 450-image test split, parameters, and pass seconds (wall clock,
noisy on shared machines: read them as "order of magnitude", not as a benchmark).

Usage::

    python bench/recovery.py [--ratio 0.5] [--small] [--calib 512] [--epochs 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
import onnxcomp
from onnxcomp.ir.cost import model_cost
from onnxcomp.pipeline.registry import registered_passes


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in onnxruntime (CPU EP, 2 threads)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": x[i : i + 128]})[0].argmax(1) for i in range(0, len(x), 128)])
    return float((pred == y).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--small", action="store_true", help="the 8-16-32 variant")
    ap.add_argument("--calib", type=int, default=512, help="calibration images for reconstruct / int8")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--skip", default="", help="comma-separated runs to skip")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    path = models.digits.onnx_path(small=args.small)
    original = onnx.load(path)
    with tempfile.TemporaryDirectory() as d:
        test = np.load(models.digits.test_split_npz(Path(d) / "test.npz"))
        train_path = models.digits.train_split_npz(Path(d) / "train.npz")
        train = np.load(train_path)
        rng = np.random.default_rng(0)
        idx = rng.choice(len(train["input"]), size=min(args.calib, len(train["input"])), replace=False)
        calib = {"input": train["input"][idx]}
        x, y = test["input"], test["label"]

        prune = f"prune-channels:ratio={args.ratio}"
        distill = f"distill:epochs={args.epochs},lr={args.lr}"
        runs: dict[str, tuple[str | None, list[str]]] = {
            "pruned": (None, [prune]),
            "pruned+reconstruct": (None, [prune, f"reconstruct:ridge={args.ridge}"]),
            "pruned+distill": (None, [prune, distill]),
            "pruned+distill(no refit)": (None, [prune, f"{distill},refit=false,epochs={2 * args.epochs},lr=5e-3,patience=6"]),
            "preset prune-recover": ("prune-recover", [prune]),
        }
        if "quantize-int8" in registered_passes():
            runs["original+int8"] = (None, ["quantize-int8"])
            runs["preset prune-distill-int8"] = ("prune-distill-int8", [prune, distill])
        skip = {s for s in args.skip.split(",") if s}
        p0 = model_cost(original).params
        rows = [{"run": "original", "top1": accuracy(original, x, y), "params": p0, "params_removed": 0.0, "seconds": {}}]
        for name, (preset, passes) in runs.items():
            if name in skip:
                continue
            t0 = time.perf_counter()
            model, report = onnxcomp.optimize(
                original, passes, preset=preset, calibration_data=calib, train_data=str(train_path), verify="final"
            )
            secs = {r.name: round(r.seconds, 2) for r in report.passes if r.name in ("prune-channels", "reconstruct", "distill", "quantize-int8")}
            p = model_cost(model).params
            rows.append({
                "run": name, "top1": accuracy(model, x, y), "params": p, "params_removed": 1 - p / p0,
                "seconds": secs, "total_seconds": round(time.perf_counter() - t0, 2),
                "stats": {r.name: r.stats for r in report.passes},
            })
            print(f"{name:26s} top1 {rows[-1]['top1']:.4f}  params {p} (-{rows[-1]['params_removed']:.1%})  {secs}", flush=True)
    print()
    print(f"digits{' (small)' if args.small else ''}, ratio {args.ratio}, onnxruntime CPU EP, test n={len(y)}")
    print(f"{'run':26s} {'top-1':>7s} {'params':>8s} {'removed':>8s}  seconds")
    for r in rows:
        print(f"{r['run']:26s} {r['top1']:7.2%} {r['params']:8d} {r['params_removed']:8.1%}  {r['seconds']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
