"""CI latency-regression gate: interleaved timing, a confidence interval, a decision.

**Paired mode** (``gate BASELINE.onnx CANDIDATE.onnx``). Both models are timed in this
process, interleaved: round *i* yields a pair ``(a_i, b_i)`` run back to back, in the
order A B on even rounds and B A on odd ones (so "runs second" and linear drift cancel).
The statistic is the paired log ratio ``r_i = ln(b_i / a_i)``: whatever slows the
machine during round *i* (a neighbour's job, frequency scaling) multiplies both times
and cancels in the ratio. The slowdown estimate is

    s = exp(median_i r_i) − 1

The median (not the mean) ignores the heavy right tail of latency samples — one
pre-empted run produces one wild ratio, not a shifted mean. Its confidence interval is a
percentile bootstrap over rounds (resample the *pairs* with replacement, take the median
of each resample; a fixed seed makes the interval a deterministic function of the
samples).

**Decision** with threshold ``t`` (``--max-slowdown``), interval ``[lo, hi]``:

* ``hi < t``: PASS — confidently within budget;
* ``lo > t``: REGRESSION — confidently beyond budget;
* otherwise the interval straddles ``t``: measure more rounds (batches growing ~50 %
  per look, so only ~10 looks happen and the repeated-look error stays small) until it
  stops straddling or the time/round budget is spent; then decide on the point estimate
  (``s <= t`` passes) and say so (``decided_by: "point-estimate-at-budget"``).

A model compared with an identical copy has true ``s = 0``, far from ``t = 0.10``: ``hi``
drops below ``t`` after a few dozen rounds. A candidate doing 20 % more work has
``lo > 0.10`` just as quickly. Only candidates whose true slowdown is close to ``t`` need
the budget, and for them either answer is defensible.

**Fidelity**: with ``--min-cosine`` the worst per-output cosine similarity of the
candidate against the baseline (on ``--data`` or generated inputs) must reach the bound,
else the verdict is REGRESSION whatever the latency.

**Record mode** (CI keeps only a JSON baseline from an earlier run, perhaps on another
machine). An absolute time cannot be compared across machines, so each model is timed
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.perf.bench import (
    InterleavedTimer,
    LatencyStats,
    ProgressFn,
    _parse_ep,
    environment,
    feed_shapes,
    fidelity_on,
    parse_shape_specs,
    prepare_models,
    providers_for,
)
from onnxcomp.errors import UsageError
from onnxcomp.checking.metrics import summarize

log = logging.getLogger("onnxcomp")

Verdict = Literal["pass", "regression"]
#: Version of the reference workload; a baseline recorded with another one is refused.
REFERENCE_WORKLOAD = "cnn-v2"
BASELINE_FORMAT = "onnxcomp-gate-baseline/1"


# --------------------------------------------------------------------------- statistics


def _bootstrap_medians(x: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Medians of ``n_boot`` resamples of ``x`` (with replacement), in bounded memory."""
    out = np.empty(n_boot)
    n = len(x)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        out[start:start + k] = np.median(x[rng.integers(0, n, size=(k, n))], axis=1)
    return out


def bootstrap_median_ci(x: Sequence[float] | np.ndarray, confidence: float = 0.95, *, n_boot: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``x``.

    Args:
        x: Samples (at least 2).
        confidence: Two-sided coverage, e.g. 0.95.
        n_boot: Bootstrap resamples.
        seed: Fixed, so the interval is a deterministic function of ``x``.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.size < 2:
        raise ValueError("need at least 2 samples for an interval")
    meds = _bootstrap_medians(arr, n_boot, np.random.default_rng(seed))
    a = (1 - confidence) / 2
    lo, hi = np.quantile(meds, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_median_diff_ci(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, confidence: float = 0.95,
                             *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``median(x) − median(y)``, x and y resampled independently."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.size < 2 or ya.size < 2:
        raise ValueError("need at least 2 samples on each side for an interval")
    rng = np.random.default_rng(seed)
    diffs = _bootstrap_medians(xa, n_boot, rng) - _bootstrap_medians(ya, n_boot, rng)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [a, 1 - a])
    return float(lo), float(hi)


@dataclass(frozen=True)
class SlowdownEstimate:
    """Relative slowdown of the candidate (0.1 = 10 % slower; negative = faster) and its interval."""

    slowdown: float
    low: float
    high: float
    n: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"slowdown": self.slowdown, "ci": [self.low, self.high], "confidence": self.confidence, "n": self.n}


def paired_slowdown(baseline_ms: Sequence[float] | np.ndarray, candidate_ms: Sequence[float] | np.ndarray,
                    confidence: float = 0.95, *, n_boot: int = 2000, seed: int = 0) -> SlowdownEstimate:
    """Slowdown from interleaved pairs: ``exp(median ln(b_i/a_i)) − 1`` with a bootstrap interval."""
    a, b = np.asarray(baseline_ms, dtype=np.float64), np.asarray(candidate_ms, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("latencies must be positive")
    r = np.log(b) - np.log(a)
    lo, hi = bootstrap_median_ci(r, confidence, n_boot=n_boot, seed=seed)
    return SlowdownEstimate(math.expm1(float(np.median(r))), math.expm1(lo), math.expm1(hi), int(r.size), confidence)


def normalized_slowdown(baseline_log_ratios: Sequence[float] | np.ndarray, candidate_log_ratios: Sequence[float] | np.ndarray,
                        confidence: float = 0.95, *, n_boot: int = 2000, seed: int = 0) -> SlowdownEstimate:
    """Slowdown between two runs normalised by the reference workload (record mode).

    Args:
        baseline_log_ratios: ``ln(model_i / reference_i)`` from the recorded run.
        candidate_log_ratios: The same for the candidate, measured now.
    """
    base, cand = np.asarray(baseline_log_ratios, dtype=np.float64), np.asarray(candidate_log_ratios, dtype=np.float64)
    lo, hi = bootstrap_median_diff_ci(cand, base, confidence, n_boot=n_boot, seed=seed)
    point = float(np.median(cand) - np.median(base))
    return SlowdownEstimate(math.expm1(point), math.expm1(lo), math.expm1(hi), int(cand.size), confidence)


@dataclass(frozen=True)
class LatencyDecision:
    """The latency verdict and how it was reached."""

    verdict: Verdict
    decided_by: Literal["confidence-interval", "point-estimate-at-budget"]
    reason: str


def decide(est: SlowdownEstimate, max_slowdown: float, *, final: bool) -> LatencyDecision | None:
    """Apply the decision rule; None means "still straddling, measure more" (only if not ``final``)."""
    pct = lambda v: f"{100 * v:+.1f}%"  # noqa: E731
    ci = f"[{pct(est.low)}, {pct(est.high)}]"
    if est.high < max_slowdown:
        return LatencyDecision("pass", "confidence-interval",
                               f"slowdown {pct(est.slowdown)}, {est.confidence:.0%} CI {ci} entirely below {pct(max_slowdown)}")
    if est.low > max_slowdown:
        return LatencyDecision("regression", "confidence-interval",
                               f"slowdown {pct(est.slowdown)}, {est.confidence:.0%} CI {ci} entirely above {pct(max_slowdown)}")
    if not final:
        return None
    verdict: Verdict = "pass" if est.slowdown <= max_slowdown else "regression"
    return LatencyDecision(verdict, "point-estimate-at-budget",
                           f"slowdown {pct(est.slowdown)} {'<=' if verdict == 'pass' else '>'} {pct(max_slowdown)}; "
                           f"the {est.confidence:.0%} CI {ci} still straddled the threshold when the budget ran out")


# --------------------------------------------------------------------------- adaptive loop


@dataclass
class Budget:
    """How long the gate may measure: rounds and seconds (measurement phase only)."""

    min_rounds: int = 20
    max_rounds: int = 2000
    max_time_s: float = 30.0

    def __post_init__(self) -> None:
        if self.min_rounds < 2:
            raise UsageError("--min-rounds must be >= 2")
        if self.max_rounds < self.min_rounds:
            raise UsageError(f"--max-rounds ({self.max_rounds}) must be >= --min-rounds ({self.min_rounds})")
        if self.max_time_s <= 0:
            raise UsageError("--max-time must be > 0")


def adaptive_measure(
    timer: InterleavedTimer,
    estimate: Callable[[np.ndarray], SlowdownEstimate],
    max_slowdown: float,
    budget: Budget,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, SlowdownEstimate, LatencyDecision, int]:
    """Measure rounds until the interval leaves the threshold or the budget is spent.

    Returns:
        ``(samples ms [rounds, models], estimate, decision, looks)``.
    """
    start = time.perf_counter()
    samples = timer.rounds(budget.min_rounds)
    looks = 0
    while True:
        looks += 1
        est = estimate(samples)
        n = samples.shape[0]
        elapsed = time.perf_counter() - start
        per_round = elapsed / max(n, 1)
        left_rounds = min(budget.max_rounds - n, int((budget.max_time_s - elapsed) / max(per_round, 1e-9)))
        decision = decide(est, max_slowdown, final=left_rounds < 1)
        if progress is not None:
            progress(min(1.0, max(n / budget.max_rounds, elapsed / budget.max_time_s)),
                     f"{n} rounds, slowdown {100 * est.slowdown:+.1f}% [{100 * est.low:+.1f}%, {100 * est.high:+.1f}%]")
        if decision is not None:
            return samples, est, decision, looks
        step = max(1, min(left_rounds, max(10, n // 2)))
        samples = np.concatenate([samples, timer.rounds(step)])


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


# --------------------------------------------------------------------------- results


@dataclass
class GateResult:
    """Everything the gate measured and decided; ``exit_code`` is 0 (pass) or 1 (regression)."""

    mode: Literal["paired", "baseline-record"]
    baseline: str
    candidate: str
    max_slowdown: float
    estimate: SlowdownEstimate
    latency: LatencyDecision
    verdict: Verdict
    reasons: list[str]
    ep: str
    providers: list[str]
    threads: int | None
    rounds: int
    looks: int
    seconds: float
    input_shapes: dict[str, list[int]]
    latency_ms: dict[str, dict[str, float | int]]
    min_cosine: float | None = None
    fidelity: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 regression."""
        return 0 if self.verdict == "pass" else 1

    def to_dict(self) -> dict[str, Any]:
        """The ``gate --json`` document."""
        return {
            "verdict": self.verdict, "exit_code": self.exit_code, "mode": self.mode, "reasons": self.reasons,
            "baseline": self.baseline, "candidate": self.candidate,
            "max_slowdown": self.max_slowdown, **self.estimate.to_dict(),
            "decided_by": self.latency.decided_by, "latency_verdict": self.latency.verdict,
            "min_cosine": self.min_cosine, "fidelity": self.fidelity,
            "ep": self.ep, "providers": self.providers, "threads": self.threads, "input_shapes": self.input_shapes,
            "rounds": self.rounds, "looks": self.looks, "seconds": self.seconds, "latency_ms": self.latency_ms,
            "warnings": self.warnings, "environment": environment(),
        }

    def to_markdown(self) -> str:
        """A summary for a CI job page (``$GITHUB_STEP_SUMMARY``)."""
        icon = "✅ PASS" if self.verdict == "pass" else "❌ REGRESSION"
        e = self.estimate
        lines = [
            f"### onnxcomp gate: {icon}",
            "",
            f"`{Path(self.candidate).name}` vs `{Path(self.baseline).name}` ({self.mode})",
            "",
            "| check | measured | bound | result |",
            "|---|---|---|---|",
            f"| latency slowdown (median of paired ratios) | {100 * e.slowdown:+.2f}% "
            f"({e.confidence:.0%} CI {100 * e.low:+.2f}% … {100 * e.high:+.2f}%) | ≤ {100 * self.max_slowdown:.1f}% "
            f"| {'pass' if self.latency.verdict == 'pass' else '**regression**'} ({self.latency.decided_by}) |",
        ]
        if self.min_cosine is not None and self.fidelity is not None:
            cos = self.fidelity.get("cosine")
            ok = cos is not None and cos >= self.min_cosine
            lines.append(f"| output cosine (worst output) | {cos:.6f} | ≥ {self.min_cosine} | {'pass' if ok else '**regression**'} |")
        lines += [
            "",
            f"{self.rounds} interleaved rounds in {self.seconds:.1f} s on {self.providers[0]}, "
            f"threads={self.threads or 'default'}, inputs {self.input_shapes}.",
        ]
        if self.latency_ms:
            lines.append("p50 latency: " + ", ".join(f"{k} {v['p50']:.3f} ms" for k, v in self.latency_ms.items()) + ".")
        for r in self.reasons:
            lines.append(f"- {r}")
        for w in self.warnings:
            lines.append(f"- ⚠️ {w}")
        return "\n".join(lines) + "\n"

    def render(self, console: Any | None = None) -> None:
        """One verdict line plus the reasons."""
        from onnxcomp.perf.bench import _console

        console = console or _console()
        color = "green" if self.verdict == "pass" else "red"
        e = self.estimate
        console.print(f"[bold {color}]{self.verdict.upper()}[/]: slowdown {100 * e.slowdown:+.2f}% "
                      f"({e.confidence:.0%} CI {100 * e.low:+.2f}% … {100 * e.high:+.2f}%, threshold {100 * self.max_slowdown:.1f}%; "
                      f"{self.rounds} rounds, {self.seconds:.1f} s, {self.providers[0]}, threads={self.threads or 'default'})")
        for r in self.reasons:
            console.print(f"  {r}")
        for w in self.warnings:
            console.print(f"  [yellow]warning[/]: {w}")


# --------------------------------------------------------------------------- gate API


def _validate(max_slowdown: float, min_cosine: float | None, confidence: float) -> None:
    if not (0 <= max_slowdown < 10):
        raise UsageError(f"--max-slowdown must be a fraction such as 0.10 (10 %), got {max_slowdown}")
    if min_cosine is not None and not (-1 <= min_cosine <= 1):
        raise UsageError(f"--min-cosine must be within [-1, 1], got {min_cosine}")
    if not (0.5 <= confidence < 1):
        raise UsageError(f"--confidence must be within [0.5, 1), got {confidence}")


def _fidelity_check(baseline: str, candidate: str, min_cosine: float | None, providers: list[str], device_id: int,
                    threads: int | None, data: Any, batch: int | None, shapes: dict, seed: int) -> tuple[dict | None, list[str]]:
    if min_cosine is None:
        return None, []
    per_output, n, _ = fidelity_on(baseline, candidate, providers=providers, device_id=device_id, threads=threads,
                                   data=data, batch=batch, shapes=shapes, seed=seed)
    overall = summarize(per_output)
    overall["samples"] = n
    overall["outputs"] = {k: v.to_dict() for k, v in per_output.items()}
    cos = overall["cosine"]
    if not (cos >= min_cosine):  # NaN fails too
        return overall, [f"fidelity: worst output cosine {cos:.6f} < --min-cosine {min_cosine}"]
    return overall, []


def gate(
    baseline: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    max_slowdown: float = 0.10,
    *,
    min_cosine: float | None = None,
    ep: str = "cpu",
    threads: int | None = 1,
    batch: int | None = None,
    shapes: Sequence[str] | dict[str, Sequence[int]] | None = None,
    data: str | os.PathLike[str] | None = None,
    confidence: float = 0.95,
    budget: Budget | None = None,
    warmup: int = 5,
    progress: ProgressFn | None = None,
    seed: int = 0,
) -> GateResult:
    """Decide whether ``candidate`` regresses against ``baseline``.

    ``baseline`` is a model (paired mode) or a ``.json`` written by `record_baseline`
    (record mode; ``ep``/``threads``/shapes then come from the record unless given, and
    ``min_cosine`` is not available because the baseline model is not at hand).

    Args:
        baseline: Baseline model path, or a baseline record ``.json``.
        candidate: Candidate model path.
        max_slowdown: Allowed relative slowdown (0.10 = 10 %).
        min_cosine: If given, the worst output cosine vs the baseline must be at least this.
        ep: Execution provider (``cpu``, ``cuda``, ``cuda:1``, …).
        threads: Intra-op threads per session. Default 1: on a small shared machine two
            multi-threaded sessions contend for cores and the ratio gets noisier.
        batch / shapes / data: Inputs, as for `onnxcomp.perf.bench.bench`.
        confidence: Two-sided coverage of the interval.
        budget: Rounds and seconds allowed for the measurement.
        warmup: Untimed runs per model first.
        progress: ``progress(fraction, message)`` callback.
        seed: Inputs seed.

    Returns:
        A `GateResult` (``exit_code`` 0 pass / 1 regression).

    Raises:
        UsageError, InvalidModelError, CalibrationDataError: Bad input (exit code 2).
    """
    _validate(max_slowdown, min_cosine, confidence)
    budget = budget or Budget()
    if str(baseline).lower().endswith(".json"):
        if min_cosine is not None:
            raise UsageError("--min-cosine needs the baseline model, not a baseline record (.json)")
        return _gate_against_record(Path(baseline), str(candidate), max_slowdown, ep=ep, threads=threads, batch=batch,
                                    shapes=shapes, data=data, confidence=confidence, budget=budget, warmup=warmup,
                                    progress=progress, seed=seed)
    t0 = time.perf_counter()
    ep_name, device_id = _parse_ep(ep)
    providers = providers_for(ep_name)
    shape_map = parse_shape_specs(shapes)
    fid, reasons = _fidelity_check(str(baseline), str(candidate), min_cosine, providers, device_id, threads, data, batch,
                                   shape_map, seed)
    prepared = prepare_models([baseline, candidate], providers=providers, device_id=device_id, threads=threads,
                              batch=batch, shapes=shape_map, data=data, warmup=warmup, seed=seed)
    timer = InterleavedTimer([p.runner for p in prepared])
    timer.warmup(2)
    samples, est, decision, looks = adaptive_measure(
        timer, lambda s: paired_slowdown(s[:, 0], s[:, 1], confidence), max_slowdown, budget, progress)
    # `reasons` holds the failed checks so far; the verdict is a regression if any failed.
    verdict: Verdict = "regression" if reasons or decision.verdict == "regression" else "pass"
    reasons.insert(0, f"latency: {decision.reason}")
    if fid is not None and len(reasons) == 1:
        reasons.append(f"fidelity: worst output cosine {fid['cosine']:.6f} >= {min_cosine}")
    return GateResult(
        mode="paired", baseline=str(baseline), candidate=str(candidate), max_slowdown=max_slowdown, estimate=est,
        latency=decision, verdict=verdict, reasons=reasons, ep=ep, providers=list(prepared[0].session.get_providers()),
        threads=threads, rounds=int(samples.shape[0]), looks=looks, seconds=time.perf_counter() - t0,
        input_shapes=feed_shapes(prepared[1].feeds),
        latency_ms={"baseline": LatencyStats.from_samples(samples[:, 0]).to_dict(),
                    "candidate": LatencyStats.from_samples(samples[:, 1]).to_dict()},
        min_cosine=min_cosine, fidelity=fid, warnings=[w for p in prepared for w in p.warnings],
    )


def _reference_bytes() -> bytes:
    return reference_workload().SerializeToString()


def _measure_normalized(model: str, *, ep: str, threads: int | None, batch: int | None, shapes: dict, data: Any,
                        warmup: int, seed: int) -> tuple[InterleavedTimer, list[Any]]:
    ep_name, device_id = _parse_ep(ep)
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
        out = Path(output)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, out)
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


def _gate_against_record(record_path: Path, candidate: str, max_slowdown: float, *, ep: str, threads: int | None,
                         batch: int | None, shapes: Any, data: Any, confidence: float, budget: Budget, warmup: int,
                         progress: ProgressFn | None, seed: int) -> GateResult:
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
