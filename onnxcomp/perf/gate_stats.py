"""The gate's statistics: bootstrap intervals, slowdown estimates, the decision rule, the adaptive loop.

Why a median of ratios, a bootstrap interval and looks at growing batches: see `onnxcomp.perf.gate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from onnxcomp.errors import UsageError
from onnxcomp.perf.timing import InterleavedTimer, ProgressFn

Verdict = Literal["pass", "regression"]


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
        """JSON-ready dict (merged into the ``gate --json`` document)."""
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
