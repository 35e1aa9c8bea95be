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
from onnxcomp.perf.decode import DecodeRunner, DecodeStats, decode_stats, prepare_decoder
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
    #: With ``decode``: prefill latency and decode speed (``latency`` is then one whole generation).
    decode: DecodeStats | None = None

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
        if self.decode is not None:
            d["decode"] = self.decode.to_dict()
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
    #: ``bench(decode=N)``: tokens generated after each prefill (None: plain latency bench).
    decode_tokens: int | None = None

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
            "decode_tokens": self.decode_tokens,
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
        what = "latency (ms)" if self.decode_tokens is None else f"whole generation (ms, prefill + {self.decode_tokens} tokens)"
        title = f"{what} on {self.providers[0]} · threads={self.threads or 'default'} · {self.rounds} interleaved rounds"

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

        longest = max(len(Path(m.path).name) for m in self.models)
        console.print(fit_table(build, console, longest))
        timed = [m for m in self.models if m.latency is not None]
        first = "the first model" if timed and timed[0] is self.models[0] else f"{Path(timed[0].path).name} (the first that ran)"
        if self.decode_tokens is None:
            shapes = {Path(m.path).name: m.input_shapes for m in timed}
            console.print(f"inputs: {shapes}  (× first = p50 of {first} ÷ p50 of this one; > 1 is faster)")
        else:
            self._render_decode(console, longest, first)
        for m in self.failed:
            console.print(f"[red]failed[/] {Path(m.path).name}: {m.error}")
        for m in self.models:
            if m.node_placement:
                parts = "; ".join(f"{p}: " + ", ".join(f"{op}×{c}" for op, c in ops.items()) for p, ops in m.node_placement.items())
                console.print(f"[dim]{Path(m.path).name} node placement — {parts}[/]")
            for w in m.warnings:
                console.print(f"[yellow]warning[/] {Path(m.path).name}: {w}")


    def _render_decode(self, console: Any, longest: int, first: str) -> None:
        """The ``--decode`` table: prefill latency and decode speed per model."""
        rows = [m for m in self.models if m.decode is not None]
        if not rows:
            return
        d0 = rows[0].decode
        assert d0 is not None

        def build(width: int) -> Any:
            t = table(f"decode: prompt {d0.batch}x{d0.prompt_tokens}, then {self.decode_tokens} greedy tokens, cache fed back", console)
            for col in ("model", "prefill ms", "p90", "× first", "tokens/s", "ms/token p90", "× first"):
                t.add_column(col, justify="left" if col == "model" else "right", no_wrap=col != "model")
            for m in rows:
                d = m.decode
                assert d is not None
                t.add_row(elide_middle(Path(m.path).name, width), fmt_g(d.prefill.p50), fmt_g(d.prefill.p90),
                          f"{d.prefill_ratio_to_first:.3f}", fmt_g(d.tokens_per_s), fmt_g(d.per_token.p90),
                          f"{d.decode_ratio_to_first:.3f}")
            return t

        console.print(fit_table(build, console, longest))
        console.print(f"× first: prefill p50 of {first} ÷ this one's; tokens/s of this one ÷ {first}'s (> 1 is faster)")

    def to_markdown(self) -> str:
        """A Markdown summary (``bench --markdown``): one row per model, decode columns with ``decode``."""
        head = ["model", "p50 ms", "p90 ms", "× first", "size"]
        if self.decode_tokens is not None:
            head += ["prefill ms", "prefill × first", "decode tokens/s", "decode × first"]
        lines = [f"Bench on {self.providers[0]}, threads={self.threads or 'default'}, {self.rounds} interleaved rounds"
                 + (f"; latency = one generation (prefill + {self.decode_tokens} tokens)" if self.decode_tokens else ""),
                 "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in self.models:
            name = Path(m.path).name
            if m.latency is None:
                lines.append(f"| {name} | failed: {m.error} |" + " |" * (len(head) - 2))
                continue
            row = [name, fmt_g(m.latency.p50), fmt_g(m.latency.p90), f"{m.ratio_to_first:.3f}", human_bytes(m.size_bytes)]
            if m.decode is not None:
                d = m.decode
                row += [fmt_g(d.prefill.p50), f"{d.prefill_ratio_to_first:.3f}", fmt_g(d.tokens_per_s), f"{d.decode_ratio_to_first:.3f}"]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"


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
    decode: int | None = None,
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
        decode: Causal LMs with a KV cache: time whole greedy generations (a prefill of
            the prompt, ``--shape`` of the token input or 1×32, then ``decode`` tokens with
            the presents fed back as pasts; `onnxcomp.perf.decode`). ``latency`` is then one
            generation and each model gets ``decode`` statistics (prefill ms, tokens/s).
            Warm-up is at most 3 generations per model.

    Returns:
        A `BenchResult`; ``to_dict()`` is the ``bench --json`` document.

    Raises:
        UsageError: Unknown/unavailable EP, bad shapes, bad counts; with ``decode``, a
            model without a KV cache.
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
    if decode is not None and decode < 1:
        raise UsageError(f"--decode must be >= 1 token, got {decode}")
    if decode is not None and data is not None:
        raise UsageError("--decode generates from a random prompt; it does not take --data (give the prompt size with --shape)")
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
            if decode is not None:
                prepared.append(prepare_decoder(path, new_tokens=decode, providers=providers, device_id=device_id,
                                                threads=threads, batch=batch, shapes=shape_map, warmup=min(warmup, 3),
                                                spinning=spinning, seed=seed))
                continue
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
    timer.warmup(1 if decode else 2)  # once more interleaved, so the first timed round is not the first switch
    decoders = [p.runner for p in prepared if isinstance(p.runner, DecodeRunner)]
    for r in decoders:
        r.reset()  # only timed generations count
    ms = timed_rounds(timer, rounds=rounds, duration_s=duration_s, min_rounds=min_rounds, progress=progress)
    generation = iter(decode_stats(decoders)) if decoders else None
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
            decode=next(generation) if generation is not None else None,
        ))
    results = _in_given_order(paths, timed, errors)
    return BenchResult(models=results, ep=ep, providers=list(prepared[0].session.get_providers()), threads=threads,
                       warmup=warmup, rounds=int(ms.shape[0]), seconds=time.perf_counter() - t0, decode_tokens=decode)


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
