"""``bench``: latency of one or more models, interleaved, on one execution provider.

How the timing works is described in `onnxcomp.perf.timing`; this module puts it together
(sessions, warm-up, rounds, node placement) and holds the result types.

With ``keep_going`` (what the ``bench`` command uses), a model that cannot be loaded or run
becomes a row with its reason and the others are still timed; ratios are then to the first
model that ran.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcomp.checking.runtime import parse_ep, providers_for
from onnxcomp.errors import InvalidModelError, OnnxcompError, UsageError, one_line
from onnxcomp.perf.feeds import feed_shapes, parse_shape_specs
from onnxcomp.perf.machine import environment, model_size_bytes, peak_rss_mb
from onnxcomp.perf.placement import node_placement
from onnxcomp.perf.prepare import PreparedModel, prepare_models
from onnxcomp.perf.render import default_console, elide_middle, fit_table, fmt_g, human_bytes, table
from onnxcomp.perf.timing import InterleavedTimer, LatencyStats, ProgressFn, paired_ratio, timed_rounds

log = logging.getLogger("onnxcomp")


@dataclass
class ModelBench:
    """Benchmark of one model; ``latency`` is None and ``error`` says why when it could not be timed."""

    path: str
    latency: LatencyStats | None
    samples_ms: list[float]
    batch: int
    input_shapes: dict[str, list[int]]
    size_bytes: int
    host_memory_mb: float
    ratio_to_first: float = 1.0
    paired_ratio_to_first: float = 1.0
    node_placement: dict[str, dict[str, int]] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency (NaN for a model that was not timed)."""
        if self.latency is None:
            return float("nan")
        return self.batch * 1000.0 / self.latency.p50 if self.latency.p50 > 0 else float("inf")

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """JSON-ready dict (one entry of ``models`` in ``bench --json``); ``samples``: include ``samples_ms``."""
        d: dict[str, Any] = {
            "path": self.path,
            "latency_ms": self.latency.to_dict() if self.latency is not None else None,
            "ratio_to_first": self.ratio_to_first,
            "paired_ratio_to_first": self.paired_ratio_to_first,
            "throughput_per_s": self.throughput,
            "batch": self.batch,
            "input_shapes": self.input_shapes,
            "size_bytes": self.size_bytes,
            "host_memory_mb": self.host_memory_mb,
            "node_placement": self.node_placement,
            "warnings": self.warnings,
            "error": self.error,
        }
        if samples:
            d["samples_ms"] = self.samples_ms
        return d


@dataclass
class BenchResult:
    """Result of `bench`: one `ModelBench` per model plus the measurement conditions."""

    models: list[ModelBench]
    ep: str
    providers: list[str]
    threads: int | None
    warmup: int
    rounds: int
    seconds: float

    @property
    def failed(self) -> list[ModelBench]:
        """Models that could not be timed (each with its ``error``)."""
        return [m for m in self.models if m.error is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``bench --json`` contract)."""
        return {
            "ep": self.ep,
            "providers": self.providers,
            "threads": self.threads,
            "warmup": self.warmup,
            "rounds": self.rounds,
            "interleaved": True,
            "seconds": self.seconds,
            "process_peak_rss_mb": peak_rss_mb(),
            "environment": environment(),
            "models": [m.to_dict() for m in self.models],
            "failed": len(self.failed),
        }

    def render(self, console: Any | None = None) -> None:
        """A rich table: latency percentiles, ratio to the first model, size, memory."""
        console = console or default_console()
        title = (f"latency (ms) on {self.providers[0]} · threads={self.threads or 'default'} · "
                 f"{self.rounds} interleaved rounds")

        def build(width: int) -> Any:
            t = table(title, console)
            for col in ("model", "p50 ms", "p90", "p99", "mean", "sd", "× first", "per s", "size", "mem MB"):
                t.add_column(col, justify="left" if col == "model" else "right", no_wrap=col != "model")
            for m in self.models:
                s = m.latency
                name = elide_middle(Path(m.path).name, width)
                if s is None:  # not timed: the reason is printed below the table
                    t.add_row(name, "[red]failed[/]", *[""] * 6, human_bytes(m.size_bytes), "")
                    continue
                t.add_row(name, fmt_g(s.p50), fmt_g(s.p90), fmt_g(s.p99), fmt_g(s.mean),
                          fmt_g(s.stdev), f"{m.ratio_to_first:.3f}", fmt_g(m.throughput), human_bytes(m.size_bytes),
                          f"{m.host_memory_mb:.1f}")
            return t

        t = fit_table(build, console, max(len(Path(m.path).name) for m in self.models))
        console.print(t)
        timed = [m for m in self.models if m.latency is not None]
        shapes = {Path(m.path).name: m.input_shapes for m in timed}
        first = "the first model" if timed and timed[0] is self.models[0] else f"{Path(timed[0].path).name} (the first that ran)"
        console.print(f"inputs: {shapes}  (× first = p50 of {first} ÷ p50 of this one; > 1 is faster)")
        for m in self.failed:
            console.print(f"[red]failed[/] {Path(m.path).name}: {m.error}")
        for m in self.models:
            if m.node_placement:
                parts = "; ".join(f"{p}: " + ", ".join(f"{op}×{c}" for op, c in ops.items()) for p, ops in m.node_placement.items())
                console.print(f"[dim]{Path(m.path).name} node placement — {parts}[/]")
            for w in m.warnings:
                console.print(f"[yellow]warning[/] {Path(m.path).name}: {w}")


def bench(
    models: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    ep: str = "cpu",
    threads: int | None = None,
    *,
    batch: int | None = None,
    shapes: Sequence[str] | Mapping[str, Sequence[int]] | None = None,
    data: str | os.PathLike[str] | None = None,
    warmup: int = 10,
    rounds: int | None = None,
    duration_s: float = 5.0,
    min_rounds: int = 10,
    placement: bool | None = None,
    progress: ProgressFn | None = None,
    seed: int = 0,
    keep_going: bool = False,
) -> BenchResult:
    """Benchmark one or more models, interleaved, on one execution provider.

    Args:
        models: Model paths; the first is the reference for ``ratio_to_first``.
        ep: ``cpu``, ``cuda``, ``tensorrt``, … or a full provider name; ``cuda:1`` picks a device.
        threads: Intra-op threads per session (None: onnxruntime's default).
        batch: Size of a symbolic batch dim (axis 0) in generated inputs (default 1), or
            the batch cut from ``data``.
        shapes: Input shapes for dynamic dims, ``["name=1x3x224x224", ...]`` or a mapping.
        data: An ``.npz`` (keys = input names); its first batch is used instead of random inputs.
        warmup: Untimed runs per model before timing.
        rounds: Exact number of timed rounds; None: run for ``duration_s`` (≥ ``min_rounds``).
        duration_s: Timed-phase length when ``rounds`` is None.
        min_rounds: Fewest rounds when time-bounded.
        placement: Report which EP ran each op type (onnxruntime profiling); default: on
            for non-CPU EPs, where CPU fallback is what you want to know.
        progress: Optional ``progress(fraction, message)`` callback.
        seed: Seed for generated inputs.
        keep_going: A model that cannot be read or run becomes a row with its ``error``
            (``BenchResult.failed``) and the others are still timed; ratios are then to the
            first model that ran. Without it the first such model raises.

    Returns:
        A `BenchResult`; ``to_dict()`` is the ``bench --json`` document.

    Raises:
        UsageError: Unknown/unavailable EP, bad shapes, bad counts.
        InvalidModelError: A model cannot be read or run (with ``keep_going``: none can).
        CalibrationDataError: ``data`` is unusable.
    """
    paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    if not paths:
        raise UsageError("bench needs at least one model")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if rounds is not None and rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    ep_name, device_id = parse_ep(ep)
    providers = providers_for(ep_name)
    shape_map = parse_shape_specs(shapes)
    t0 = time.perf_counter()
    # One model alone may spin its thread pool; interleaved models must not steal each other's cores.
    spinning = len(paths) <= 1
    prepared: list[PreparedModel] = []
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            prepared += prepare_models([path], providers=providers, device_id=device_id, threads=threads, batch=batch,
                                       shapes=shape_map, data=data, warmup=warmup, seed=seed, spinning=spinning)
        except UsageError:
            raise  # bad options or data are the user's to fix, whichever model shows it
        except Exception as e:
            if not keep_going or len(paths) == 1:
                raise  # one model alone: its own error is the answer
            # Any other failure is this file's (unreadable, not runnable, or a bug on this model):
            # it becomes the row's reason and the others are still timed.
            reason = str(e) if isinstance(e, OnnxcompError) else f"internal error: {type(e).__name__}: {one_line(e, 300)}"
            errors[i] = reason  # reported in its row (the CLI also names it on stderr)
    if not prepared:
        raise InvalidModelError(f"no model could be timed; the first: {errors[0]}")
    for p in prepared:
        for w in p.warnings:
            log.warning("%s: %s", p.path, w)
    timer = InterleavedTimer([p.runner for p in prepared])
    timer.warmup(2)  # once more interleaved, so the first timed round is not the first switch
    ms = timed_rounds(timer, rounds=rounds, duration_s=duration_s, min_rounds=min_rounds, progress=progress)
    want_placement = placement if placement is not None else providers[0] != "CPUExecutionProvider"
    timed: list[ModelBench] = []
    first_p50 = float(np.median(ms[:, 0]))
    for j, p in enumerate(prepared):
        stats = LatencyStats.from_samples(ms[:, j])
        place = None
        if want_placement:
            place = node_placement(p.path, providers, p.feeds, threads=threads, device_id=device_id)
            cpu_ops = place.get("CPUExecutionProvider", {})
            if providers[0] != "CPUExecutionProvider" and cpu_ops:
                p.warnings.append(f"{sum(cpu_ops.values())} node(s) fell back to the CPU EP: "
                                  + ", ".join(f"{k}×{v}" for k, v in cpu_ops.items()))
        batch_size = int(next(iter(p.feeds.values())).shape[0]) if p.feeds and next(iter(p.feeds.values())).ndim else 1
        timed.append(ModelBench(
            path=p.path, latency=stats, samples_ms=[float(x) for x in ms[:, j]], batch=batch_size,
            input_shapes=feed_shapes(p.feeds), size_bytes=model_size_bytes(p.path), host_memory_mb=p.memory_mb,
            ratio_to_first=first_p50 / stats.p50 if stats.p50 > 0 else float("inf"),
            paired_ratio_to_first=paired_ratio(ms[:, 0], ms[:, j]), node_placement=place, warnings=list(p.warnings),
        ))
    results = _in_given_order(paths, timed, errors)
    return BenchResult(models=results, ep=ep, providers=list(prepared[0].session.get_providers()), threads=threads,
                       warmup=warmup, rounds=int(ms.shape[0]), seconds=time.perf_counter() - t0)


def _in_given_order(paths: Sequence[str | os.PathLike[str]], timed: list[ModelBench], errors: Mapping[int, str]
                    ) -> list[ModelBench]:
    """Timed models and failed rows, in the order the paths were given."""
    it = iter(timed)
    out: list[ModelBench] = []
    for i, path in enumerate(paths):
        if i in errors:
            size = Path(path).stat().st_size if Path(path).is_file() else 0  # external data unknown: unreadable
            out.append(ModelBench(path=str(path), latency=None, samples_ms=[], batch=0, input_shapes={}, size_bytes=size,
                                  host_memory_mb=0.0, ratio_to_first=float("nan"), paired_ratio_to_first=float("nan"),
                                  error=errors[i]))
        else:
            out.append(next(it))
    return out
