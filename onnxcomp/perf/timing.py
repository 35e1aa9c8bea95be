"""Timing models in onnxruntime: runners, interleaved rounds, latency statistics.

How we time (see DESIGN.md, "How we measure speed"):

* One onnxruntime session per model, all in this process, on one execution provider.
* Warm-up runs first (allocator arenas, kernel selection, CUDA graph/cuDNN autotuning).
* Timed rounds are **interleaved**: round *i* runs every model once, in forward order on
  even rounds and reversed order on odd rounds (A B, B A, A B, …). Slow drift of the
  machine (frequency scaling, a neighbour's job) then hits every model alike, and the
  position inside a round (cache state left by the previous model) is balanced.
* Each sample is the wall time of one ``run`` call (``time.perf_counter_ns``); the Python
  garbage collector is paused while timing.
* On device EPs (CUDA, TensorRT) inputs are copied to the device **once** and bound with
  IO binding, outputs are bound to device memory, and every timed call ends with a device
  synchronisation, so the number is the GPU's real time and not the launch time or the
  host↔device copies.
* Intra-op thread pools do not spin while idle when several sessions are interleaved:
  a spinning pool of model A would otherwise steal a core from model B.

Quoted speed is a **ratio** (``ratio_to_first`` = p50 of the first model ÷ p50 of this
model; > 1 means faster than the first), never a lone absolute time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from onnxcomp.checking.runtime import CUDA_DEVICE_EPS
from onnxcomp.errors import UsageError
from onnxcomp.perf.feeds import Feeds

#: ``progress(fraction_done, message)``; fraction is in [0, 1].
ProgressFn = Callable[[float, str], None]


# --------------------------------------------------------------------------- runners


class PlainRunner:
    """``session.run`` on host (numpy) inputs: the CPU EP and EPs without IO binding."""

    def __init__(self, session: ort.InferenceSession, feeds: Feeds) -> None:
        self.session = session
        wanted = {i.name for i in session.get_inputs()}
        self.feeds = {k: v for k, v in feeds.items() if k in wanted}

    def __call__(self) -> None:
        self.session.run(None, self.feeds)


class IoBindingRunner:
    """Times device EPs honestly: inputs bound on device once, outputs bound to device.

    Each call is ``run_with_iobinding`` followed by ``synchronize_outputs`` so the call
    returns only when the device has finished (onnxruntime also synchronises the EPs at
    the end of ``Run`` by default; the explicit sync keeps that true if a user passes
    run options that disable it). No host↔device copy is inside the timed region.
    """

    def __init__(
        self,
        session: Any,
        feeds: Feeds,
        device_type: str,
        device_id: int = 0,
        *,
        ortvalue_from_numpy: Callable[..., Any] | None = None,
    ) -> None:
        to_device = ortvalue_from_numpy or ort.OrtValue.ortvalue_from_numpy
        self.session = session
        self.binding = session.io_binding()
        wanted = {i.name for i in session.get_inputs()}
        # Keep references: the OrtValues own the device buffers the binding points to.
        self.host = {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in wanted}
        self.inputs = {k: to_device(v, device_type, device_id) for k, v in self.host.items()}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for o in session.get_outputs():
            self.binding.bind_output(o.name, device_type, device_id)
        self.binding.synchronize_inputs()

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()


def make_runner(session: Any, feeds: Feeds, providers: Sequence[str], device_id: int = 0) -> PlainRunner | IoBindingRunner:
    """IO binding on CUDA-memory EPs (CUDA, TensorRT), plain ``run`` otherwise."""
    if providers and providers[0] in CUDA_DEVICE_EPS:
        return IoBindingRunner(session, feeds, "cuda", device_id)
    return PlainRunner(session, feeds)


# --------------------------------------------------------------------------- timing


class InterleavedTimer:
    """Times several runners round by round, alternating the order (A B, B A, …).

    Keeps its round parity across calls, so a gate can ask for more rounds adaptively and
    the forward/reversed alternation continues unbroken.
    """

    def __init__(self, runners: Sequence[Callable[[], None]], clock: Callable[[], int] = time.perf_counter_ns) -> None:
        if not runners:
            raise UsageError("nothing to time")
        self.runners = list(runners)
        self.clock = clock
        self.rounds_done = 0

    def order(self, round_index: int) -> list[int]:
        """Model indices in the order round ``round_index`` runs them."""
        idx = list(range(len(self.runners)))
        return idx if round_index % 2 == 0 else idx[::-1]

    def warmup(self, runs: int) -> None:
        """``runs`` untimed runs of every model, interleaved."""
        for i in range(runs):
            for j in self.order(i):
                self.runners[j]()

    def rounds(self, n: int) -> np.ndarray:
        """Time ``n`` more rounds; returns milliseconds, shape ``(n, models)``."""
        out = np.empty((n, len(self.runners)), dtype=np.float64)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a GC pause inside one sample is noise we can avoid
        try:
            for r in range(n):
                for j in self.order(self.rounds_done):
                    t0 = self.clock()
                    self.runners[j]()
                    out[r, j] = (self.clock() - t0) / 1e6
                self.rounds_done += 1
        finally:
            if gc_was_enabled:
                gc.enable()
        return out


def timed_rounds(
    timer: InterleavedTimer,
    *,
    rounds: int | None,
    duration_s: float,
    min_rounds: int = 10,
    max_rounds: int = 100_000,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """A fixed number of rounds, or rounds until ``duration_s`` has passed (≥ ``min_rounds``)."""
    start = time.perf_counter()
    chunks: list[np.ndarray] = []
    done = 0
    target = rounds if rounds is not None else max_rounds
    while done < target:
        step = max(1, min(target - done, 10))
        chunks.append(timer.rounds(step))
        done += step
        elapsed = time.perf_counter() - start
        if progress is not None:
            frac = done / target if rounds is not None else min(1.0, elapsed / max(duration_s, 1e-9))
            progress(frac, f"round {done}")
        if rounds is None and elapsed >= duration_s and done >= min_rounds:
            break
    return np.concatenate(chunks) if chunks else np.empty((0, len(timer.runners)))


@dataclass
class LatencyStats:
    """Summary of latency samples in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    min: float
    max: float
    n: int

    @classmethod
    def from_samples(cls, ms: np.ndarray) -> "LatencyStats":
        """Percentiles (linear interpolation), mean, sample stdev of ``ms``."""
        ms = np.asarray(ms, dtype=np.float64)
        if ms.size == 0:
            raise ValueError("no samples")
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
                   float(ms.min()), float(ms.max()), int(ms.size))

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready dict (the ``latency_ms`` entries of the reports)."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean, "stdev": self.stdev,
                "min": self.min, "max": self.max, "n": self.n}


def paired_ratio(first: np.ndarray, this: np.ndarray) -> float:
    """Median over rounds of first_i / this_i (robust to drift between rounds)."""
    return float(np.exp(np.median(np.log(first) - np.log(this))))
