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

**Record mode** (`onnxcomp.perf.gate_record`): CI keeps only a JSON baseline from an
earlier run, perhaps on another machine. Each model is timed interleaved with a fixed
reference workload and only the normalised cost ``ln(model_i / ref_i)`` is kept; the
slowdown is the difference of the medians of the candidate's and the baseline's, with
a two-sample bootstrap interval, and the same decision rule applies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxcomp.checking.metrics import summarize
from onnxcomp.checking.runtime import parse_ep, providers_for
from onnxcomp.errors import UsageError
from onnxcomp.perf.comparison import fidelity_on
from onnxcomp.perf.feeds import feed_shapes, parse_shape_specs
from onnxcomp.perf.gate_record import gate_against_record
from onnxcomp.perf.gate_result import GateResult
from onnxcomp.perf.gate_stats import Budget, Verdict, adaptive_measure, paired_slowdown
from onnxcomp.perf.prepare import prepare_models
from onnxcomp.perf.timing import InterleavedTimer, LatencyStats, ProgressFn


def _validate(max_slowdown: float, min_cosine: float | None, confidence: float) -> None:
    """Refuse thresholds that cannot be meant (a percentage given for a fraction, …)."""
    if not (0 <= max_slowdown < 10):
        raise UsageError(f"--max-slowdown must be a fraction such as 0.10 (10 %), got {max_slowdown}")
    if min_cosine is not None and not (-1 <= min_cosine <= 1):
        raise UsageError(f"--min-cosine must be within [-1, 1], got {min_cosine}")
    if not (0.5 <= confidence < 1):
        raise UsageError(f"--confidence must be within [0.5, 1), got {confidence}")


def _fidelity_check(baseline: str, candidate: str, min_cosine: float | None, providers: list[str], device_id: int,
                    threads: int | None, data: Any, batch: int | None, shapes: dict, seed: int) -> tuple[dict | None, list[str]]:
    """The ``--min-cosine`` check: ``(fidelity summary or None, [failure reason] or [])``."""
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

    ``baseline`` is a model (paired mode) or a ``.json`` written by
    `onnxcomp.perf.gate_record.record_baseline`
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
        batch / shapes / data: Inputs, as for `onnxcomp.perf.benchmark.bench`.
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
        return gate_against_record(Path(baseline), str(candidate), max_slowdown, ep=ep, threads=threads, batch=batch,
                                   shapes=shapes, data=data, confidence=confidence, budget=budget, warmup=warmup,
                                   progress=progress, seed=seed)
    t0 = time.perf_counter()
    ep_name, device_id = parse_ep(ep)
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
