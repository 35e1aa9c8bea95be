"""Measuring speed: input feeds, interleaved timing, bench, compare and the CI gate.

Modules: `feeds` (inputs), `timing` (runners, interleaved rounds, latency statistics),
`prepare` (models with sessions, warmed up), `placement` (which EP runs what), `machine`
(environment, memory, size), `render` (console formatting), `benchmark` (``bench``),
`comparison` (``compare``), `gate_stats` / `gate_result` / `gate_record` / `gate` (the
latency-regression gate).

The gate function is ``onnxcomp.perf.gate.gate``: it is not re-exported here, where the
name ``gate`` would hide the `onnxcomp.perf.gate` module (``bench`` and ``compare`` live
in modules of other names for the same reason).
"""

from onnxcomp.perf.benchmark import BenchResult, ModelBench, bench
from onnxcomp.perf.comparison import CompareResult, compare
from onnxcomp.perf.gate_record import record_baseline
from onnxcomp.perf.gate_result import GateResult
from onnxcomp.perf.gate_stats import Budget, SlowdownEstimate
from onnxcomp.perf.timing import LatencyStats

__all__ = [
    "BenchResult",
    "Budget",
    "CompareResult",
    "GateResult",
    "LatencyStats",
    "ModelBench",
    "SlowdownEstimate",
    "bench",
    "compare",
    "record_baseline",
]
