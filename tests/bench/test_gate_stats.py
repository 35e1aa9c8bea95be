"""The gate's statistics and decision rule on synthetic timing samples (no timing here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcomp.errors import UsageError
from onnxcomp.perf.gate_stats import (
    Budget,
    SlowdownEstimate,
    adaptive_measure,
    bootstrap_median_ci,
    bootstrap_median_diff_ci,
    decide,
    normalized_slowdown,
    paired_slowdown,
)
from onnxcomp.perf.timing import InterleavedTimer


def noisy_pairs(n: int, slowdown: float, *, sigma: float = 0.05, drift: float = 0.0, outliers: int = 0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired latencies: shared per-round machine factor (drift + noise), own noise, spikes."""
    rng = np.random.default_rng(seed)
    machine = np.exp(np.linspace(0, drift, n) + rng.normal(0, 0.2, n))  # common to both in a round
    a = 10.0 * machine * np.exp(rng.normal(0, sigma, n))
    b = 10.0 * (1 + slowdown) * machine * np.exp(rng.normal(0, sigma, n))
    if outliers:
        idx = rng.choice(n, outliers, replace=False)
        b[idx] *= 20  # pre-empted runs
    return a, b


def test_identical_models_pass_by_interval() -> None:
    a, b = noisy_pairs(40, 0.0)
    est = paired_slowdown(a, b)
    assert est.low < 0 < est.high
    d = decide(est, 0.10, final=False)
    assert d is not None and d.verdict == "pass" and d.decided_by == "confidence-interval"


def test_twenty_percent_slower_fails_by_interval() -> None:
    a, b = noisy_pairs(40, 0.20)
    est = paired_slowdown(a, b)
    assert 0.15 < est.slowdown < 0.25
    assert est.low > 0.10
    d = decide(est, 0.10, final=False)
    assert d is not None and d.verdict == "regression" and d.decided_by == "confidence-interval"


def test_faster_candidate_passes() -> None:
    a, b = noisy_pairs(40, -0.3)
    d = decide(paired_slowdown(a, b), 0.10, final=False)
    assert d is not None and d.verdict == "pass"
    assert paired_slowdown(a, b).slowdown < -0.2


def test_shared_drift_and_round_noise_cancel_in_pairs() -> None:
    # The machine gets 3x slower over the run and each round has ±20 % shared noise, yet
    # the paired statistic still sees the true 0 % and decides quickly.
    a, b = noisy_pairs(30, 0.0, drift=math.log(3.0), sigma=0.02)
    est = paired_slowdown(a, b)
    assert abs(est.slowdown) < 0.03 and est.high < 0.10
    # An unpaired comparison of the same samples would be far less certain.
    lo, hi = bootstrap_median_diff_ci(np.log(b), np.log(a))
    assert (hi - lo) > 3 * (math.log1p(est.high) - math.log1p(est.low))


def test_outliers_do_not_flip_the_decision() -> None:
    a, b = noisy_pairs(60, 0.0, outliers=6)  # 10 % of B's runs pre-empted (20x)
    d = decide(paired_slowdown(a, b), 0.10, final=False)
    assert d is not None and d.verdict == "pass"
    # The mean ratio would have said "huge regression".
    assert np.mean(b / a) > 2


def test_straddling_interval_asks_for_more_then_uses_point_estimate() -> None:
    est_above = SlowdownEstimate(slowdown=0.12, low=0.05, high=0.2, n=20, confidence=0.95)
    est_below = SlowdownEstimate(slowdown=0.08, low=0.01, high=0.15, n=20, confidence=0.95)
    assert decide(est_above, 0.10, final=False) is None
    assert decide(est_below, 0.10, final=False) is None
    up = decide(est_above, 0.10, final=True)
    down = decide(est_below, 0.10, final=True)
    assert up is not None and up.verdict == "regression" and up.decided_by == "point-estimate-at-budget"
    assert down is not None and down.verdict == "pass" and down.decided_by == "point-estimate-at-budget"
    assert "straddled" in up.reason


def test_interval_edges_against_threshold() -> None:
    # Exactly at the threshold is "not below": not a confident pass.
    assert decide(SlowdownEstimate(0.05, 0.0, 0.10, 10, 0.95), 0.10, final=False) is None
    assert decide(SlowdownEstimate(0.15, 0.10, 0.2, 10, 0.95), 0.10, final=False) is None
    assert decide(SlowdownEstimate(0.15, 0.1001, 0.2, 10, 0.95), 0.10, final=False).verdict == "regression"  # type: ignore[union-attr]


def test_bootstrap_is_deterministic_and_narrows_with_n() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 400)
    assert bootstrap_median_ci(x) == bootstrap_median_ci(x)
    lo_s, hi_s = bootstrap_median_ci(x[:25])
    lo_l, hi_l = bootstrap_median_ci(x)
    assert hi_l - lo_l < hi_s - lo_s
    assert lo_l < 0 < hi_l


def test_bootstrap_interval_coverage() -> None:
    # Known answer: the median of Normal(0.3, 1) is 0.3; a 90 % interval should contain it
    # in roughly 90 % of repetitions (bootstrap percentile intervals are slightly liberal
    # for small n, hence the wide acceptance band).
    rng = np.random.default_rng(11)
    hits = 0
    reps = 120
    for i in range(reps):
        lo, hi = bootstrap_median_ci(rng.normal(0.3, 1.0, 40), 0.90, n_boot=400, seed=i)
        hits += lo <= 0.3 <= hi
    assert 0.78 <= hits / reps <= 0.99


def test_bootstrap_needs_two_samples() -> None:
    with pytest.raises(ValueError):
        bootstrap_median_ci([1.0])
    with pytest.raises(ValueError):
        paired_slowdown([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_slowdown([1.0, 0.0], [1.0, 1.0])


def test_normalized_slowdown_between_runs() -> None:
    rng = np.random.default_rng(4)
    base = np.log(2.0) + rng.normal(0, 0.03, 100)  # model costs 2.0x the reference workload
    same = np.log(2.0) + rng.normal(0, 0.03, 60)
    slower = np.log(2.5) + rng.normal(0, 0.03, 60)  # +25 %
    e_same = normalized_slowdown(base, same)
    e_slow = normalized_slowdown(base, slower)
    assert e_same.high < 0.10 and e_same.low < 0 < e_same.high
    assert e_slow.low > 0.10 and 0.2 < e_slow.slowdown < 0.3
    assert decide(e_slow, 0.10, final=False).verdict == "regression"  # type: ignore[union-attr]


class FakeTimer(InterleavedTimer):
    """Serves pre-generated samples instead of timing anything."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        super().__init__([lambda: None, lambda: None])
        self.data = np.stack([a, b], axis=1)
        self.pos = 0

    def rounds(self, n: int) -> np.ndarray:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        self.rounds_done += n
        return out


def _est(s: np.ndarray) -> SlowdownEstimate:
    return paired_slowdown(s[:, 0], s[:, 1])


def test_adaptive_stops_at_first_look_when_clear() -> None:
    a, b = noisy_pairs(2000, 0.0, sigma=0.02)
    samples, est, d, looks = adaptive_measure(FakeTimer(a, b), _est, 0.10, Budget(min_rounds=20, max_rounds=2000, max_time_s=60))
    assert looks == 1 and samples.shape == (20, 2) and d.verdict == "pass"


def test_adaptive_measures_more_while_straddling_then_decides_at_budget() -> None:
    a, b = noisy_pairs(2000, 0.10, sigma=0.3, seed=1)  # true slowdown == threshold
    samples, est, d, looks = adaptive_measure(FakeTimer(a, b), _est, 0.10, Budget(min_rounds=20, max_rounds=150, max_time_s=60))
    assert looks > 1
    if d.decided_by == "point-estimate-at-budget":
        assert samples.shape[0] == 150
        assert d.verdict == ("pass" if est.slowdown <= 0.10 else "regression")


def test_adaptive_detects_slower_after_more_rounds() -> None:
    # Noisy enough that 20 rounds straddle; the interval shrinks and clears the threshold.
    a, b = noisy_pairs(2000, 0.25, sigma=0.25, seed=2)
    first = paired_slowdown(a[:20], b[:20])
    samples, est, d, looks = adaptive_measure(FakeTimer(a, b), _est, 0.10, Budget(min_rounds=20, max_rounds=2000, max_time_s=60))
    assert d.verdict == "regression" and d.decided_by == "confidence-interval"
    assert samples.shape[0] >= 20
    assert (est.high - est.low) <= (first.high - first.low)


def test_interleaved_order_alternates() -> None:
    calls: list[str] = []
    ticks = iter(range(0, 10**9, 1000))
    t = InterleavedTimer([lambda: calls.append("A"), lambda: calls.append("B"), lambda: calls.append("C")],
                         clock=lambda: next(ticks))
    ms = t.rounds(3)
    assert calls == list("ABC") + list("CBA") + list("ABC")
    assert ms.shape == (3, 3) and np.all(ms == 0.001)
    t.rounds(1)  # parity carries over between calls
    assert calls[-3:] == list("CBA")


def test_budget_validation() -> None:
    with pytest.raises(UsageError):
        Budget(min_rounds=1)
    with pytest.raises(UsageError):
        Budget(min_rounds=50, max_rounds=10)
    with pytest.raises(UsageError):
        Budget(max_time_s=0)


def test_reference_workload_is_fixed_and_valid() -> None:
    import onnx

    from onnxcomp.perf.gate_record import REFERENCE_WORKLOAD, reference_workload

    m1, m2 = reference_workload(), reference_workload()
    assert m1.SerializeToString() == m2.SerializeToString()  # same computation in every run
    onnx.checker.check_model(m1, full_check=True)
    assert REFERENCE_WORKLOAD == "cnn-v2"  # bump the tag whenever the workload changes
