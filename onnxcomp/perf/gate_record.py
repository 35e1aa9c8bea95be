"""Record mode of the gate: baselines kept as JSON, normalised by a reference workload.

CI often keeps only a JSON baseline from an earlier run, perhaps on another machine.
An absolute time cannot be compared across machines, so each model is timed
interleaved with a fixed *reference workload* built in code (`reference_workload`: a
CNN of ~0.75 GFLOP through the same onnxruntime kernels) and only the normalised
cost ``n_i = ln(model_i / ref_i)`` is kept. The baseline file stores its ``n_i``; the
gate measures the candidate's ``m_i`` and estimates ``s = exp(median m − median n) − 1``
with a two-sample bootstrap (each side resampled independently; they were not measured
together). The same decision rule applies. A faster or slower CI machine scales model
and reference alike; a different CPU *microarchitecture* can still shift the ratio by
a few percent, so record baselines on the runner type that gates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.checking.runtime import parse_ep, providers_for
from onnxcomp.errors import UsageError
from onnxcomp.perf.feeds import feed_shapes, parse_shape_specs
from onnxcomp.perf.gate_result import GateResult
from onnxcomp.perf.gate_stats import Budget, adaptive_measure, bootstrap_median_ci, normalized_slowdown
from onnxcomp.perf.machine import environment
from onnxcomp.perf.prepare import PreparedModel, prepare_models
from onnxcomp.perf.timing import InterleavedTimer, LatencyStats, ProgressFn

log = logging.getLogger("onnxcomp")

#: Version of the reference workload; a baseline recorded with another one is refused.
REFERENCE_WORKLOAD = "cnn-v2"
BASELINE_FORMAT = "onnxcomp-gate-baseline/1"


# --------------------------------------------------------------------------- reference workload


def reference_workload() -> onnx.ModelProto:
    """A fixed CNN (≈0.75 GFLOP, 26 MB of weights) used to normalise latencies across machines.

    Built in code with seeded weights, so every run of every onnxcomp version with the same
    `REFERENCE_WORKLOAD` tag times the same computation. It goes through the same
    onnxruntime (MLAS) Conv/GEMM kernels as typical CNN and transformer models and, like
    them, streams tens of MB of weights per run, so a machine (or a noisy neighbour) that
    changes the model's speed by k changes this by about k too. It is deliberately not
    tiny: on a contended machine a run of a few ms is dominated by scheduler luck (one
    time slice or several), which made an earlier 10 ms workload's per-round ratio spread
    over an order of magnitude, against ±10 % for this one.
    """
    rng = np.random.default_rng(20240601)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(x: str, cin: int, cout: int, name: str, stride: int = 1) -> str:
        w = (rng.standard_normal((cout, cin, 3, 3)) / math.sqrt(9 * cin)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        nodes.append(helper.make_node("Conv", [x, name], [f"{name}_c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                                      strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        return f"{name}_r"

    x = conv("x", 32, 64, "w0", 2)  # 56² → 28²
    x = conv(x, 64, 128, "w1", 2)  # → 14²
    x = conv(x, 128, 256, "w2")
    x = conv(x, 256, 256, "w3")
    x = conv(x, 256, 512, "w4", 2)  # → 7²
    x = conv(x, 512, 512, "w5")
    inits.append(numpy_helper.from_array(np.array([1, 512], np.int64), "shape"))
    inits.append(numpy_helper.from_array((rng.standard_normal((512, 4096)) / math.sqrt(512)).astype(np.float32), "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Reshape", ["gap", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "onnxcomp_reference_workload",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 56, 56])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxcomp")
    model.ir_version = 8
    return model


# --------------------------------------------------------------------------- baseline records


def _reference_bytes() -> bytes:
    """`reference_workload`, serialized (how sessions are built from it)."""
    return reference_workload().SerializeToString()


def _measure_normalized(model: str, *, ep: str, threads: int | None, batch: int | None, shapes: dict, data: Any,
                        warmup: int, seed: int) -> tuple[InterleavedTimer, list[PreparedModel]]:
    """``model`` and the reference workload, prepared and warmed up, in one interleaved timer."""
    ep_name, device_id = parse_ep(ep)
    providers = providers_for(ep_name)
    prepared = prepare_models([model], providers=providers, device_id=device_id, threads=threads, batch=batch,
                              shapes=shapes, data=data, warmup=warmup, seed=seed,
                              extra_models=[(f"reference workload {REFERENCE_WORKLOAD}", _reference_bytes())])
    timer = InterleavedTimer([p.runner for p in prepared])
    timer.warmup(2)
    return timer, prepared


def record_baseline(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    ep: str = "cpu",
    threads: int | None = 1,
    batch: int | None = None,
    shapes: Sequence[str] | dict[str, Sequence[int]] | None = None,
    data: str | os.PathLike[str] | None = None,
    budget: Budget | None = None,
    precision: float = 0.01,
    warmup: int = 5,
    progress: ProgressFn | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``model`` against the reference workload and (optionally) write a baseline record.

    Measures until the 95 % interval of the normalised cost is narrower than
    ``±precision`` (relative) or the budget is spent.

    Returns:
        The record (JSON-ready dict); also written atomically to ``output`` if given.
    """
    budget = budget or Budget()
    shape_map = parse_shape_specs(shapes)
    t0 = time.perf_counter()
    timer, prepared = _measure_normalized(str(model), ep=ep, threads=threads, batch=batch, shapes=shape_map, data=data,
                                          warmup=warmup, seed=seed)
    start = time.perf_counter()
    samples = timer.rounds(budget.min_rounds)
    while True:
        logr = np.log(samples[:, 0]) - np.log(samples[:, 1])
        lo, hi = bootstrap_median_ci(logr, 0.95)
        elapsed = time.perf_counter() - start
        n = samples.shape[0]
        if progress is not None:
            progress(min(1.0, elapsed / budget.max_time_s), f"{n} rounds, ±{100 * (hi - lo) / 2:.2f}%")
        left = min(budget.max_rounds - n, int((budget.max_time_s - elapsed) / max(elapsed / n, 1e-9)))
        if (hi - lo) / 2 <= precision or left < 1:
            break
        samples = np.concatenate([samples, timer.rounds(max(1, min(left, max(10, n // 2))))])
    record = {
        "format": BASELINE_FORMAT,
        "reference_workload": REFERENCE_WORKLOAD,
        "model": str(model),
        "ep": ep,
        "providers": list(prepared[0].session.get_providers()),
        "threads": threads,
        "input_shapes": feed_shapes(prepared[0].feeds),
        "normalized_cost": float(np.exp(np.median(logr))),
        "log_ratios": [float(v) for v in logr],
        "latency_ms": {"model": LatencyStats.from_samples(samples[:, 0]).to_dict(),
                       "reference_workload": LatencyStats.from_samples(samples[:, 1]).to_dict()},
        "rounds": int(n),
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    if output is not None:
        from onnxcomp.io.outputs import write_text_atomic

        write_text_atomic(output, json.dumps(record, indent=1))
    return record


def load_baseline(path: Path) -> dict[str, Any]:
    """Read and validate a baseline record.

    Raises:
        UsageError: Missing, not JSON, or not a record of this format/reference workload.
    """
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"baseline record {path} not found") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read baseline record {path}: {e}") from None
    if not isinstance(rec, dict) or rec.get("format") != BASELINE_FORMAT:
        raise UsageError(f"{path} is not an onnxcomp gate baseline record (write one with `onnxcomp gate --record {path} MODEL`)")
    if rec.get("reference_workload") != REFERENCE_WORKLOAD:
        raise UsageError(f"{path} was recorded against reference workload {rec.get('reference_workload')!r}; this onnxcomp "
                         f"uses {REFERENCE_WORKLOAD!r}: record the baseline again")
    logr = rec.get("log_ratios")
    if not isinstance(logr, list) or len(logr) < 2 or not all(isinstance(v, (int, float)) for v in logr):
        raise UsageError(f"{path}: 'log_ratios' must be a list of at least 2 numbers")
    return rec


def gate_against_record(record_path: Path, candidate: str, max_slowdown: float, *, ep: str, threads: int | None,
                        batch: int | None, shapes: Any, data: Any, confidence: float, budget: Budget, warmup: int,
                        progress: ProgressFn | None, seed: int) -> GateResult:
    """Record mode of `onnxcomp.perf.gate.gate`: ``candidate`` against the baseline record at ``record_path``."""
    rec = load_baseline(record_path)
    warnings: list[str] = []
    if ep != rec.get("ep"):
        warnings.append(f"baseline recorded on ep={rec.get('ep')!r}, measuring on ep={ep!r}")
    if threads != rec.get("threads"):
        warnings.append(f"baseline recorded with threads={rec.get('threads')}, measuring with threads={threads}")
    shape_map = parse_shape_specs(shapes)
    if not shape_map and data is None and batch is None:
        shape_map = {k: tuple(v) for k, v in (rec.get("input_shapes") or {}).items()}
    t0 = time.perf_counter()
    timer, prepared = _measure_normalized(candidate, ep=ep, threads=threads, batch=batch, shapes=shape_map, data=data,
                                          warmup=warmup, seed=seed)
    shapes_now = feed_shapes(prepared[0].feeds)
    if rec.get("input_shapes") and shapes_now != rec["input_shapes"]:
        warnings.append(f"input shapes {shapes_now} differ from the baseline's {rec['input_shapes']}")
    base = np.asarray(rec["log_ratios"], dtype=np.float64)
    samples, est, decision, looks = adaptive_measure(
        timer, lambda s: normalized_slowdown(base, np.log(s[:, 0]) - np.log(s[:, 1]), confidence),
        max_slowdown, budget, progress)
    for w in warnings:
        log.warning("%s", w)
    return GateResult(
        mode="baseline-record", baseline=str(record_path), candidate=candidate, max_slowdown=max_slowdown, estimate=est,
        latency=decision, verdict=decision.verdict, reasons=[f"latency: {decision.reason}"], ep=ep,
        providers=list(prepared[0].session.get_providers()), threads=threads, rounds=int(samples.shape[0]), looks=looks,
        seconds=time.perf_counter() - t0, input_shapes=shapes_now,
        latency_ms={"candidate": LatencyStats.from_samples(samples[:, 0]).to_dict(),
                    "reference_workload": LatencyStats.from_samples(samples[:, 1]).to_dict()},
        warnings=warnings + prepared[0].warnings,
    )
