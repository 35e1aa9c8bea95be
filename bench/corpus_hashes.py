"""Byte-identity of onnxcomp's outputs across a change: hash every result on a fixed corpus.

A refactoring that promises "behaviour unchanged" is checked here: run ``--record`` on the
old code, ``--check`` on the new one, and every output model (its file bytes, as a user
gets them) and the behaviour part of every report (passes, modified flags, node and
parameter counts, rollbacks, warnings; not timings) must be the same.

The corpus (161 models for the lossless preset):

* our reference exports ``resnet18``, ``mobilenetv2``, ``bert``, each optimised and with
  BatchNorm kept (``keep_batchnorm``), at both sizes (``--small`` and full): 12 models;
* every model of onnx's own backend test data: ``light``, ``pytorch-converted``,
  ``pytorch-operator``, ``simple`` (149 models in onnx 1.2x).

Lossy presets (``int8``, ``prune``, ``prune-recover``) also run on the small exports with
their calibration samples, and ``prune-distill-int8`` on the small trained ``digits`` model
with its training split, so pruning, quantization and both recoveries are covered too.

Usage::

    PYTHONPATH=. python bench/corpus_hashes.py --record bench/out/hashes.json
    PYTHONPATH=. python bench/corpus_hashes.py --check bench/out/hashes.json

Hashes depend on the versions of torch (the exports), onnx and onnxruntime: record and
check with the same environment. The exports are hashed too, so a changed export is told
apart from a changed optimisation. Exit code: 0 all identical, 1 some differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

BACKEND_SETS = ("light", "pytorch-converted", "pytorch-operator", "simple")
OWN = ("resnet18", "mobilenetv2", "bert")
LOSSY_PRESETS = ("int8", "prune", "prune-recover")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _report_signature(report: Any) -> str:
    """What a report says about behaviour (no timings), hashed."""
    rows = [(p.name, p.modified, p.rolled_back, p.nodes_before, p.nodes_after, p.params_after, p.bytes_after, p.flops_after, sorted(p.stats.items())) for p in report.passes]
    ver = {k: v for k, v in report.verification.items() if k in ("verified", "identical_to_input", "within_tolerance", "reason")}
    text = json.dumps([rows, ver, report.warnings], default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _optimize(model: Path, out: Path, **kwargs: Any) -> dict[str, str]:
    import onnxcomp

    try:
        _, report = onnxcomp.optimize(model, output=out, **kwargs)
    except onnxcomp.OnnxcompError as e:  # a refusal is behaviour too
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return {"model": _sha(out), "report": _report_signature(report)}


def corpus(work: Path) -> list[tuple[str, Path, Path | None]]:
    """(key, model path, calibration path or None) of every corpus model."""
    from models import export, make_calibration

    items: list[tuple[str, Path, Path | None]] = []
    for small in (True, False):
        for name in OWN:
            for keep_bn in (False, True):
                key = f"own/{name}{'_bn' if keep_bn else ''}{'_small' if small else ''}"
                path = work / (key.replace("/", "_") + ".onnx")
                calib = work / (key.replace("/", "_") + ".calib.npz")
                if not path.exists():
                    export(name, path, small=small, keep_batchnorm=keep_bn)
                if not calib.exists():
                    make_calibration(name, calib, small=small)
                items.append((key, path, calib))
    # digits (trained, small): the only reference model with training data, for distill.
    from models import digits

    path, calib, train = work / "own_digits_small.onnx", work / "own_digits_small.calib.npz", work / "own_digits_small.train.npz"
    if not path.exists():
        export("digits", path, small=True)
    if not calib.exists():
        make_calibration("digits", calib, small=True)
    if not train.exists():
        digits.train_split_npz(train)
    items.append(("own/digits_small", path, calib))
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    for s in BACKEND_SETS:
        for p in sorted((root / s).rglob("*.onnx")):
            items.append((f"{s}/{p.relative_to(root / s).with_suffix('').as_posix()}", p, None))
    return items


def measure(work: Path, lossy: bool = True) -> dict[str, Any]:
    """Hashes of every corpus result (see the module docstring)."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxcomp-hashes-") as tmp:
        out = Path(tmp) / "out.onnx"
        for key, path, calib in corpus(work):
            entry: dict[str, Any] = {"input": _sha(path)}
            entry["lossless"] = _optimize(path, out, preset="lossless", allow_unverified=True)
            if lossy and calib is not None and key.endswith("_small"):
                for preset in LOSSY_PRESETS:
                    entry[preset] = _optimize(path, out, preset=preset, calibration_data=calib)
            if key == "own/digits_small":
                train = calib.with_name(calib.name.replace(".calib.", ".train."))
                entry["prune-distill-int8"] = _optimize(path, out, preset="prune-distill-int8", calibration_data=calib, train_data=train)
            results[key] = entry
            out.unlink(missing_ok=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, help="write the hashes to this JSON file")
    mode.add_argument("--check", type=Path, help="compare against hashes recorded earlier")
    ap.add_argument("--work-dir", type=Path, default=Path("bench/out/corpus"), help="where exports are cached")
    ap.add_argument("--no-lossy", action="store_true", help="lossless preset only")
    args = ap.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = measure(args.work_dir, lossy=not args.no_lossy)
    n_runs = sum(len(v) - 1 for v in results.values())
    print(f"{len(results)} models, {n_runs} runs in {time.perf_counter() - t0:.0f} s")
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        meta = {"onnx": onnx.__version__, "onnxruntime": __import__("onnxruntime").__version__, "torch": __import__("torch").__version__}
        args.record.write_text(json.dumps({"versions": meta, "results": results}, indent=1, sort_keys=True))
        print(f"recorded {args.record}")
        return 0
    recorded = json.loads(args.check.read_text())["results"]
    differ = []
    for key in sorted(set(recorded) | set(results)):
        old, new = recorded.get(key), results.get(key)
        if old != new:
            differ.append(key)
            print(f"DIFFERS {key}:\n  recorded {old}\n  now      {new}")
    same = len(set(recorded) & set(results)) - len([k for k in differ if k in recorded and k in results])
    print(f"{same} identical, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
