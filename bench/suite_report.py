"""RESULTS.md from the benchmark document (the dict written as ``results.json``).

The markdown is a pure function of the document, so ``python bench/run.py --render-only``
regenerates it (and the plot) without re-measuring, and tests can render fake rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from suite_findings import (
    CONFIDENCE,
    FID_TIE,
    SPEED_TIE,
    Finding,
    fidelity_name,
    fidelity_value,
    findings,
    losses_paragraph,
    speed_tie,
)

Doc = Mapping[str, Any]


def _num(v: Any, fmt: str, dash: str = "–") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return dash
    return format(v, fmt)


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}"


def _millions(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.3f}"


def _gflops(cost: Mapping[str, Any] | None) -> str:
    if not cost:
        return "–"
    text = f"{cost['flops'] / 1e9:.3f}"
    return text + "†" if cost.get("flops_partial") else text


def _cell(text: str) -> str:
    """Markdown-table-safe text (no pipes or newlines, bounded length)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= 220 else text[:217] + "…"


def _status(row: Mapping[str, Any]) -> str:
    status = row.get("status", "?")
    if status == "ok":
        return "ok"
    return f"**{status.upper()}**"


def model_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One model's table: a row per tool/preset, FP32 first."""
    labelled = fidelity_name(rows) == "accuracy"
    head = ["tool", "kind", "status", "p50 ms", "latency ÷ FP32", "size MB", "params M", "GFLOPs", "cosine",
            "top-1 agree"]
    if labelled:
        head.append("accuracy")
    head += ["tool time s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        t, f, c = r.get("timing") or {}, r.get("fidelity") or {}, r.get("cost") or {}
        notes = list(r.get("notes") or [])
        if r.get("error"):
            notes.insert(0, f"error: {r['error']}")
        cells = [
            r["label"], r["family"] if r["family"] != "reference" else "—", _status(r),
            _num(t.get("p50_ms"), ".2f"), _num(t.get("latency_ratio"), ".3f"),
            _mb(c.get("size_bytes")), _millions(c.get("params")), _gflops(c or None),
            _num(f.get("cosine"), ".5f"), _num(f.get("top1_agreement"), ".3f"),
        ]
        if labelled:
            cells.append(_num(f.get("accuracy"), ".2%"))
        cells += [_num(r.get("tool_seconds"), ".1f"), _cell("; ".join(notes))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(models: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per model, one column per tool: ``latency ÷ FP32 · fidelity`` in each cell.

    Fidelity is test accuracy for the labelled model and cosine to FP32 otherwise; a tool
    that does not apply to a model is ``n/a``, one that failed says so.
    """
    from suite_tools import TOOLS

    order = {t.key: i for i, t in enumerate(TOOLS)}  # registry order, whatever model came first
    seen: dict[str, str] = {}
    for r in rows:
        if r["tool"] != "fp32":
            seen.setdefault(r["tool"], r["label"])
    tools = dict(sorted(seen.items(), key=lambda kv: order.get(kv[0], len(order))))
    head = ["model", "FP32 p50 ms", *tools.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m in models:
        mrows = {r["tool"]: r for r in rows if r["model"] == m["name"]}
        kind = fidelity_name(mrows.values())
        fp32_t = (mrows.get("fp32") or {}).get("timing") or {}
        cells = [m["name"], _num(fp32_t.get("p50_ms"), ".2f")]
        for key in tools:
            r = mrows.get(key)
            if r is None:
                cells.append("n/a")
            elif r.get("status") != "ok":
                cells.append(f"**{r.get('status', '?').upper()}**")
            else:
                lat = _num((r.get("timing") or {}).get("latency_ratio"), ".3f")
                fid = fidelity_value(r)
                fid_text = "–" if fid is None else (f"{fid:.2%}" if kind == "accuracy" else f"{fid:.4f}")
                cells.append(f"×{lat} · {fid_text}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings_table(found: Sequence[Finding]) -> str:
    """Head-to-head verdicts (like-for-like pairs only)."""
    pairs = [f for f in found if f.verdict != "pareto"]
    if not pairs:
        return "_No peer/onnxcomp pairs were measured._"
    lines = ["| model | category | peer | onnxcomp | onnxcomp … | details |", "|---|---|---|---|---|---|"]
    for f in pairs:
        lines.append(f"| {f.model} | {f.category} | {f.peer} | {f.onnxcomp} | **{f.verdict}** | {_cell(f.text)} |")
    return "\n".join(lines)


def _versions_line(versions: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" if v else f"{k} (not installed)" for k, v in versions.items())


def render_markdown(doc: Doc) -> str:
    """The whole RESULTS.md for a benchmark document.

    Args:
        doc: The ``results.json`` document (``environment``, ``config``, ``models``, ``rows``…).

    Returns:
        Markdown text ending with a newline.
    """
    env, cfg = doc.get("environment", {}), doc.get("config", {})
    rows: list[Mapping[str, Any]] = list(doc.get("rows", []))
    found = findings(rows)
    load = doc.get("load_average") or {}
    out: list[str] = []
    out.append("# onnxcomp vs. the tools people use today\n")
    out.append(f"Generated by `{doc.get('command', 'python bench/run.py')}` on {doc.get('generated_utc', '?')} "
               f"in {_num(doc.get('duration_s'), '.0f')} s ({doc.get('mode', '?')} run). "
               "Do not edit by hand: rerun the command. Raw numbers: [`results.json`](results.json).\n")
    if cfg.get("small"):
        out.append("> **Warning:** this run used the *small* debug variants of the models (`--small`); "
                   "its numbers say nothing about the real models.\n")
    out.append("## Setup\n")
    out.append(f"- **Machine:** {env.get('cpu', '?')}; {env.get('logical_cpus', '?')} logical CPUs "
               f"({env.get('affinity_cpus', '?')} usable by this process); {env.get('ram_gib', '?')} GiB RAM; "
               f"{env.get('os', '?')}; Python {env.get('python', '?')}.")
    out.append(f"- **Load average** (1/5/15 min) at start {load.get('start')}, at end {load.get('end')} "
               "— a shared machine makes every latency noisier; ratios from interleaved timing are robust to "
               "slow drift, not to a neighbour's bursts.")
    out.append(f"- **Runtime:** onnxruntime {env.get('versions', {}).get('onnxruntime')}, execution provider "
               f"`{cfg.get('ep', 'cpu')}` ({', '.join(cfg.get('providers') or ['CPUExecutionProvider'])}), "
               f"{cfg.get('threads')} intra-op threads, 1 inter-op thread, ORT_ENABLE_ALL, no thread spinning.")
    out.append(f"- **Versions:** {_versions_line(env.get('versions', {}))}.")
    out.append(f"- **Timing:** `onnxcomp.bench`: per model, FP32 and every produced variant are timed **interleaved "
               f"in one process** (each round runs every model once, order reversed every other round), "
               f"{cfg.get('warmup')} warm-up runs each, then ≥ {cfg.get('min_rounds')} rounds / {cfg.get('duration_s')} s. "
               "`p50 ms` is the median latency of one `run` call on the stated batch; `latency ÷ FP32` is p50 ÷ FP32's "
               "p50 in the same run (< 1 = faster).")
    out.append("- **Fidelity:** against the FP32 model on held-out inputs the tools never saw (cosine over all output "
               "elements, worst output; top-1 agreement for classifiers); for the trained `digits` model, top-1 "
               "**accuracy on the 450-image test split**. Calibration samples are separate from evaluation samples.")
    out.append(f"- **Pruning:** every pruning tool removes {cfg.get('ratio', 0.5):.0%} of the channels of each pruned "
               "layer. **No fine-tuning for anyone**, except onnxcomp's recovery presets (`prune-recover`: "
               "training-free layer-wise reconstruction on the calibration samples; `prune-distill-int8`: "
               "distillation on the digits training split), which are the point of those rows.")
    out.append("- **Size/params/FLOPs:** file size on disk; parameters and FLOPs (2·MACs of Conv/Gemm/MatMul) from "
               "onnxcomp's shared cost model. † = the model uses integer kernels (MatMulInteger, ConvInteger, QLinear*) "
               "whose FLOPs the cost model does not count. Tool time is wall-clock, on the same loaded machine.")
    out.append("- **Peers:** onnxruntime `quantize_static` (after `quant_pre_process`; QDQ, per-channel, MinMax, "
               "default S8S8 and U8S8) on every model, `quantize_dynamic` on transformers; onnx-simplifier `simplify`; "
               "Torch-Pruning `MagnitudePruner` (L2 magnitude) on the PyTorch model, exported like the original "
               "(classifier kept; on transformers only FFN expansion layers). A tool that fails or times out is a "
               "row with its error, never dropped.\n")
    out.append("| model | inputs (timed batch) | calibration samples | evaluation |")
    out.append("|---|---|---|---|")
    for m in doc.get("models", []):
        out.append(f"| {m['name']} | {m.get('shape', '?')} | {m.get('calib_samples', '?')} | {_cell(m.get('eval_data', '?'))} |")
    out.append("")
    out.append("## Summary\n")
    out.append("Each cell: latency ÷ FP32 (p50, lower is faster) · fidelity (test accuracy for `digits`, cosine to "
               "FP32 otherwise). Details per model below.\n")
    out.append(summary_table(doc.get("models", []), rows) + "\n")
    out.append("## Where onnxcomp loses\n")
    out.append("Generated from the numbers below: a peer that is faster (p50 lower by more than "
               f"{SPEED_TIE:.0%} — or twice the gap between two sessions of the same FP32 file, if larger — and the {CONFIDENCE:.0%} bootstrap interval of the p50 ratio over the interleaved "
               "rounds below 1) at equal or better fidelity than the onnxcomp preset of the same category, an "
               "onnxcomp preset that failed where a peer worked, and peer points no onnxcomp preset matches in "
               "both speed and fidelity. Fidelity ties: cosine within "
               f"{FID_TIE:g}; accuracy must be equal or higher.\n")
    out.append(losses_paragraph(found) + "\n")
    out.append("## Head-to-head\n")
    out.append(findings_table(found) + "\n")
    out.append("## Results per model\n")
    out.append("![latency ratio vs fidelity, one panel per model](results.png)\n")
    for m in doc.get("models", []):
        mrows = [r for r in rows if r["model"] == m["name"]]
        out.append(f"### {m['name']}\n")
        para = f"Inputs {m.get('shape', '?')}; fidelity on {_cell(m.get('eval_data', '?'))}."
        tc = m.get("timing") or {}
        if tc:
            para += (f" Timed {tc.get('rounds')} interleaved rounds on {', '.join(tc.get('providers') or [])}, "
                     f"threads {tc.get('threads')}.")
            if tc.get("control_latency_ratio") is not None:
                para += (f" Control: a second session of the FP32 file ran at ×{tc['control_latency_ratio']:.3f} of the "
                         f"first, so speed gaps below {speed_tie(mrows):.1%} count as ties on this model.")
            if tc.get("note"):
                para += f" Note: {tc['note']}."
        out.append(para + "\n")
        if m.get("error"):
            out.append(f"**Model-level failure:** {_cell(m['error'])}\n")
        out.append(model_table(mrows) if mrows else "_No rows._")
        out.append("")
    out.append("## Reproduce\n")
    out.append("```\npip install -e '.[bench,torch]'\npython bench/run.py --quick      # resnet18, mobilenetv2, "
               "bert, digits: ~5-7 min on a quiet 2-core CPU\npython bench/run.py              # + resnet50, vit; "
               "more samples, longer timing (well over 30 min on 2 cores)\n```\n")
    return "\n".join(out)
