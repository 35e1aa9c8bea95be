#!/usr/bin/env python
"""Side-by-side benchmark: onnxcomp presets vs. onnxruntime quantization, onnxsim, Torch-Pruning.

One command regenerates ``bench/RESULTS.md``, ``bench/results.json`` and ``bench/results.png``::

    python bench/run.py --quick            # a few minutes: resnet18, mobilenetv2, bert, digits
    python bench/run.py                    # every reference model, longer timing
    python bench/run.py --models bert,digits --tools onnxcomp:int8,ort:quantize_static
    python bench/run.py --render-only      # rebuild RESULTS.md + PNG from results.json

For each model: export FP32 from `models`, write calibration and held-out evaluation data,
run every applicable tool (`suite_tools.TOOLS`) under a time limit, measure size, params,
FLOPs and fidelity of each output, then time FP32 and every output **interleaved in one
process** with `onnxcomp.bench`. A tool that is missing, fails, times out or produces a
model onnxruntime cannot run becomes a row with its error; the run goes on.
Intermediate models live in ``bench/out/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `models/` lives at the repository root and is not an installed package; the suite's
# helper modules live beside this script.
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from suite_config import ModelSetting, SuiteConfig, make_config  # noqa: E402
from suite_tools import REFERENCE, TOOLS, Tool, ToolInputs, first_line, run_tool  # noqa: E402

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few-minute run: resnet18, mobilenetv2, bert, digits")
    p.add_argument("--models", type=_csv, default=None, help="comma-separated models (default: per --quick)")
    p.add_argument("--tools", type=_csv, default=None,
                   help="comma-separated tool keys to run (default: all): " + ", ".join(t.key for t in TOOLS))
    p.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio for every pruning tool")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--duration", type=float, default=None, help="seconds of interleaved timing per model")
    p.add_argument("--tool-timeout", type=float, default=None, help="seconds before a tool counts as failed")
    p.add_argument("--small", action="store_true", help="small model variants (debugging the harness only)")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md/results.json/results.png go")
    p.add_argument("--work-dir", type=Path, default=HERE / "out", help="intermediate models and data")
    p.add_argument("--render-only", action="store_true", help="re-render RESULTS.md and the plot from results.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.tools:
        known = {t.key for t in TOOLS}
        bad = [t for t in args.tools if t not in known]
        if bad:
            p.error(f"unknown tool(s) {bad}; known: {', '.join(sorted(known))}")
    return args


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _say(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """FP32 model and data files of one model."""

    fp32: Path
    calib_npz: Path
    eval_npz: Path
    train_npz: Path | None
    eval_desc: str
    export_seconds: float


def prepare(name: str, st: ModelSetting, cfg: SuiteConfig, work: Path) -> Prepared:
    """Export FP32 and write calibration / evaluation (/ training) data for one model."""
    import numpy as np

    import models

    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    t0 = time.perf_counter()
    models.export(name, fp32, small=cfg.small, batch=st.batch, seq_len=st.seq_len, dynamic_batch=st.dynamic_batch,
                  seed=cfg.seed)
    export_s = time.perf_counter() - t0
    calib = models.make_calibration(name, work / "calib.npz", n=st.calib_samples, small=cfg.small,
                                    seq_len=st.seq_len, seed=cfg.seed)
    train = None
    if name == "digits":
        eval_npz = models.digits.test_split_npz(work / "test.npz")
        train = models.digits.train_split_npz(work / "train.npz")
        with np.load(eval_npz) as z:
            n = len(z["label"])
        desc = f"the labelled test split ({n} images, batches of {st.batch})"
    else:
        # A seed stream distinct from the calibration stream: the tools never see these.
        arrays = models.example_inputs(name, small=cfg.small, batch=st.eval_samples, seq_len=st.seq_len,
                                       seed=cfg.seed + 1000)
        eval_npz = work / "eval.npz"
        with open(eval_npz, "wb") as f:
            np.savez(f, **arrays)
        kind = "random token ids, rows right-padded" if name == "bert" else "standard-normal images"
        desc = f"{st.eval_samples} held-out samples ({kind}, batches of {st.batch})"
    return Prepared(fp32, Path(calib), Path(eval_npz), Path(train) if train else None, desc, export_s)


# --------------------------------------------------------------------------- one model


def _row(name: str, tool: Tool | None, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": name,
        "tool": tool.key if tool else "fp32",
        "label": tool.label if tool else "FP32",
        "family": tool.family if tool else REFERENCE,
        "category": tool.category if tool else "reference",
        "status": "ok",
        "error": None,
        "tool_seconds": None,
        "path": None,
        "notes": [],
        "details": {},
        "cost": None,
        "fidelity": None,
        "timing": None,
    }
    base.update(kw)
    return base


def _measure(row: dict[str, Any], path: Path, st: ModelSetting, prep: Prepared, cfg: SuiteConfig) -> None:
    """Fill cost and fidelity; a model that onnxruntime cannot run marks the row failed."""
    from suite_measure import cost_of, fidelity_of

    try:
        row["cost"] = cost_of(path).to_dict()
    except Exception as e:  # the cost model failing is not the tool's fault: note it, keep going
        row["notes"].append(f"cost model failed: {first_line(e)}")
    try:
        row["fidelity"] = fidelity_of(prep.fp32, path, st, prep.eval_npz, cfg).to_dict()
    except Exception as e:
        row["status"], row["error"] = "failed", f"cannot run in onnxruntime: {first_line(e)}"


def _time_rows(rows: list[dict[str, Any]], st: ModelSetting, prep: Prepared, cfg: SuiteConfig) -> dict[str, Any]:
    """Interleaved timing of FP32 + every row that produced a runnable model."""
    from suite_measure import time_interleaved

    timed = [r for r in rows if r["status"] == "ok" and r["path"]]
    paths = [Path(r["path"]) for r in timed]
    try:
        # FP32 is timed a second time, in its own session, as a control: two sessions of the
        # *same* file differ only by noise and placement, so their ratio is the run's noise
        # floor, which the findings use as the speed tie margin.
        timings, cond = time_interleaved(paths + [paths[0]], st, prep.eval_npz, cfg)
        for r, t in zip(timed, timings):
            r["timing"] = t.to_dict()
        timed[0]["timing"]["control_latency_ratio"] = timings[-1].latency_ratio
        cond["control_latency_ratio"] = timings[-1].latency_ratio
        return cond
    except Exception as e:
        # One model that loads for fidelity but not for the timer must not cost every other
        # row its timing: fall back to FP32-vs-one pairs (still interleaved) and say so.
        _say(f"  interleaved timing of all variants failed ({first_line(e)}); timing in pairs")
        cond = {}
        for r in timed[1:]:
            try:
                (t0, t1), cond = time_interleaved([paths[0], Path(r["path"])], st, prep.eval_npz, cfg)
                r["timing"] = t1.to_dict()
                timed[0]["timing"] = t0.to_dict()
            except Exception as e2:
                r["status"], r["error"] = "failed", f"timing failed: {first_line(e2)}"
        cond["note"] = "timed as FP32-vs-variant pairs (all-variant interleaving failed)"
        return cond


def run_model(name: str, cfg: SuiteConfig, work_root: Path, tool_keys: tuple[str, ...] | None
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every tool on one model, measured and timed. Never raises for a tool's failure."""
    st = cfg.setting(name)
    work = work_root / (f"{name}-small" if cfg.small else name)
    info: dict[str, Any] = {"name": name, "shape": st.shape_text(), "batch": st.batch, "seq_len": st.seq_len,
                            "calib_samples": st.calib_samples, "eval_samples": st.eval_samples, "error": None}
    _say(f"{name}: exporting FP32 and writing data")
    try:
        prep = prepare(name, st, cfg, work)
    except Exception as e:
        info["error"] = f"FP32 export/data failed: {first_line(e)}"
        return info, [_row(name, None, status="failed", error=info["error"])]
    info["eval_data"] = prep.eval_desc
    fp32 = _row(name, None, tool_seconds=prep.export_seconds, path=str(prep.fp32),
                notes=["torch.onnx dynamo export (models.export), BatchNorm folded by the exporter"])
    _measure(fp32, prep.fp32, st, prep, cfg)
    rows = [fp32]
    if fp32["status"] != "ok":
        info["error"] = fp32["error"]
        return info, rows
    for tool in TOOLS:
        if not tool.applies(st) or (tool_keys and tool.key not in tool_keys):
            continue
        _say(f"{name}: {tool.label}")
        out_path = work / f"{tool.key.replace(':', '_').replace('+', '_')}.onnx"
        inp = ToolInputs(name, st, cfg, prep.fp32, prep.calib_npz, prep.train_npz, out_path)
        out, seconds, err = run_tool(tool, inp)
        if out is None:
            # The pass manager wraps exceptions raised inside a pass, so look for the marker anywhere.
            status = "timeout" if err and "ToolTimeout" in err else "failed"
            rows.append(_row(name, tool, status=status, error=err, tool_seconds=seconds))
            _say(f"  {status}: {err}")
            continue
        row = _row(name, tool, tool_seconds=seconds, path=str(out.path), notes=list(out.notes),
                   details=out.details)
        _measure(row, out.path, st, prep, cfg)
        rows.append(row)
        f = row["fidelity"] or {}
        _say(f"  {row['status']} in {seconds:.1f} s; cosine {f.get('cosine')}, accuracy {f.get('accuracy')}"
             + (f"; {row['error']}" if row["error"] else ""))
        gc.collect()
    _say(f"{name}: timing {sum(r['status'] == 'ok' for r in rows)} models interleaved")
    info["timing"] = _time_rows(rows, st, prep, cfg)
    return info, rows


# --------------------------------------------------------------------------- output


def write_outputs(doc: dict[str, Any], out_dir: Path) -> None:
    """results.json, RESULTS.md and results.png (atomically replaced)."""
    from suite_findings import findings
    from suite_plot import plot
    from suite_report import render_markdown

    from onnxcomp.pipeline.report import json_safe

    out_dir.mkdir(parents=True, exist_ok=True)
    doc["findings"] = [f.to_dict() for f in findings(doc.get("rows", []))]
    _atomic_text(out_dir / "results.json", _compact_number_lists(json.dumps(json_safe(doc), indent=1,
                                                                            allow_nan=False)) + "\n")
    try:
        png = plot(doc, out_dir / "results.png.tmp.png")
        if png:
            os.replace(png, out_dir / "results.png")
    except Exception as e:  # a broken plot must not lose the table
        _say(f"plot failed: {first_line(e)}")
    _atomic_text(out_dir / "RESULTS.md", render_markdown(doc))


_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9][0-9.eE+-]*(?:,\s*-?[0-9][0-9.eE+-]*)*)\s*\]")


def _compact_number_lists(text: str) -> str:
    """Put lists of numbers (per-round latency samples) on one line: readable, diffable JSON."""
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _config_dict(cfg: SuiteConfig) -> dict[str, Any]:
    from onnxcomp.checking.runtime import resolve_providers

    d = asdict(cfg)
    d.pop("settings", None)
    d["providers"] = resolve_providers(cfg.ep)
    return d


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or re-render it) and write the outputs. Returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")
        logging.getLogger("onnxcomp").setLevel(logging.ERROR)
    if args.render_only:
        src = args.out_dir / "results.json"
        if not src.exists():
            print(f"error: {src} does not exist; run the benchmark first", file=sys.stderr)
            return 2
        write_outputs(json.loads(src.read_text()), args.out_dir)
        _say(f"re-rendered {args.out_dir / 'RESULTS.md'}")
        return 0
    try:
        cfg = make_config(quick=args.quick, models=args.models, small=args.small, ratio=args.ratio,
                          threads=args.threads, duration_s=args.duration, tool_timeout_s=args.tool_timeout,
                          seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from suite_env import environment, load_average

    argv_used = sys.argv[1:] if argv is None else argv
    doc: dict[str, Any] = {
        "schema": 1,
        "command": "python bench/run.py" + ("" if not argv_used else " " + shlex.join(argv_used)),
        "mode": "quick" if args.quick else "full",
        "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment(),
        "load_average": {"start": load_average(), "end": None},
        "config": _config_dict(cfg),
        "models": [],
        "rows": [],
    }
    t0 = time.perf_counter()
    for name in cfg.models:
        info, rows = run_model(name, cfg, args.work_dir, args.tools)
        doc["models"].append(info)
        doc["rows"].extend(rows)
        doc["duration_s"] = round(time.perf_counter() - t0, 1)
        doc["load_average"]["end"] = load_average()
        write_outputs(doc, args.out_dir)  # after every model, so an interrupted run keeps its rows
        gc.collect()
    _say(f"done in {time.perf_counter() - t0:.0f} s; wrote {args.out_dir / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
