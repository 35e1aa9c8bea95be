"""Latency benchmarks and side-by-side comparison of ONNX models in onnxruntime.

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
import json
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.checking.calibration import CalibrationData, generate_inputs, required_input_specs
from onnxcomp.errors import CalibrationDataError, InvalidModelError, UsageError
from onnxcomp.checking.metrics import OutputFidelity, summarize
from onnxcomp.io.files import external_data_files, load_model
from onnxcomp.checking.runtime import resolve_providers

log = logging.getLogger("onnxcomp")

Feeds = dict[str, np.ndarray]
#: ``progress(fraction_done, message)``; fraction is in [0, 1].
ProgressFn = Callable[[float, str], None]

#: Execution providers whose tensors live in CUDA device memory (IO binding device type).
_CUDA_DEVICE_EPS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
#: Ops that mark a quantized (QDQ or QOperator) model.
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


# --------------------------------------------------------------------------- inputs


def parse_shape_specs(specs: Sequence[str] | Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` strings (or pass a mapping through).

    Raises:
        UsageError: A spec is not ``NAME=DxDx...`` with positive integer dims.
    """
    if not specs:
        return {}
    if isinstance(specs, Mapping):
        return {k: tuple(int(d) for d in v) for k, v in specs.items()}
    out: dict[str, tuple[int, ...]] = {}
    for s in specs:
        name, sep, dims = s.rpartition("=")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims.strip()):
            raise UsageError(f"bad --shape {s!r}: expected NAME=DIMxDIMx... such as input=1x3x224x224")
        shape = tuple(int(d) for d in dims.strip().split("x"))
        if any(d <= 0 for d in shape):
            raise UsageError(f"bad --shape {s!r}: dims must be positive")
        out[name] = shape
    return out


def make_feeds(
    model: onnx.ModelProto,
    *,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Feeds:
    """One feed dict for timing: the first batch of ``data``, else generated inputs.

    Generated inputs get ``shapes[name]`` where given (checked against fixed dims). A
    symbolic dim named in a ``--shape`` input takes that size in every input that shares
    it (a sequence length ``seq`` in both ``input_ids`` and ``attention_mask``); other
    symbolic dims become ``batch`` on axis 0 (default 1) and 1 elsewhere.

    Raises:
        UsageError: ``shapes`` names an unknown input or contradicts a fixed dim.
        CalibrationDataError: ``data`` is missing, unreadable or lacks an input.
    """
    specs = required_input_specs(model)
    if data is not None:
        calib = CalibrationData.from_source(data, model, batch_size=batch)
        first = calib.first_batches(1)
        if not first:
            raise CalibrationDataError(f"{data} has no complete batch for this model (batch size {calib.batch_size})")
        return first[0]
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise UsageError(f"--shape names unknown input(s) {unknown}; model inputs: {[s.name for s in specs]}")
    dim_sizes: dict[str, int] = {}
    for s in specs:
        if s.name not in shapes:
            continue
        want = shapes[s.name]
        if s.shape is not None and len(s.shape) != len(want):
            raise UsageError(f"--shape {s.name}: rank {len(want)} but the model input has rank {len(s.shape)} {list(s.shape)}")
        for d, w in zip(s.shape or (), want):
            if isinstance(d, int) and d != w:
                raise UsageError(f"--shape {s.name}={'x'.join(map(str, want))} contradicts the fixed shape {list(s.shape or ())}")
            if isinstance(d, str):
                dim_sizes[d] = w
    for s in specs:
        if s.shape and isinstance(s.shape[0], str) and s.shape[0] not in dim_sizes:
            dim_sizes[s.shape[0]] = batch or 1
    feeds = generate_inputs(model, dim_value=1, dim_sizes=dim_sizes, seed=seed)
    for name, want in shapes.items():
        if feeds[name].shape != tuple(want):  # unnamed dims: generate this one explicitly
            dt = feeds[name].dtype
            rng = np.random.default_rng(seed)
            feeds[name] = rng.standard_normal(want).astype(dt) if dt.kind == "f" else np.zeros(want, dt)
    if batch is not None:
        fixed = {s.name: s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
        if fixed and all(v != batch for v in fixed.values()):
            log.warning("--batch %d ignored for input(s) with a fixed batch size %s", batch, fixed)
    return feeds


def feed_shapes(feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """``{input: shape}`` for reports."""
    return {k: list(v.shape) for k, v in feeds.items()}


# --------------------------------------------------------------------------- sessions


def _parse_ep(ep: str | None) -> tuple[str, int]:
    """``"cuda:1"`` → (``"cuda"``, 1); device 0 by default."""
    name, _, dev = (ep or "cpu").partition(":")
    if dev and not dev.isdigit():
        raise UsageError(f"bad execution provider {ep!r}: expected NAME or NAME:DEVICE_ID (e.g. cuda:1)")
    return name, int(dev or 0)


def session_options(*, threads: int | None, spinning: bool, profile_prefix: str | None = None) -> ort.SessionOptions:
    """Session options for timing: all graph optimizations on, as deployed."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def providers_for(ep: str) -> list[str]:
    """`resolve_providers`, plus the CUDA EP behind TensorRT when available.

    TensorRT leaves unsupported subgraphs to the next provider in the list; without CUDA
    in between they would run on the CPU and the benchmark would mostly time copies.
    """
    providers = resolve_providers(ep)
    if providers[0] == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers() \
            and "CUDAExecutionProvider" not in providers:
        providers.insert(1, "CUDAExecutionProvider")
    return providers


def _provider_args(providers: Sequence[str], device_id: int) -> list[Any]:
    out: list[Any] = []
    for p in providers:
        out.append((p, {"device_id": str(device_id)}) if p in _CUDA_DEVICE_EPS else p)
    return out


def open_session(path: str, providers: Sequence[str], so: ort.SessionOptions, device_id: int = 0) -> ort.InferenceSession:
    """An InferenceSession from a model file; failures become one-line errors.

    Raises:
        InvalidModelError: onnxruntime cannot load the model on these providers.
    """
    try:
        return ort.InferenceSession(path, sess_options=so, providers=_provider_args(providers, device_id))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise InvalidModelError(f"onnxruntime cannot load {path}: {first}") from None


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
    if providers and providers[0] in _CUDA_DEVICE_EPS:
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
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean, "stdev": self.stdev,
                "min": self.min, "max": self.max, "n": self.n}


# --------------------------------------------------------------------------- EP placement


def quantized_node_count(model: onnx.ModelProto) -> int:
    """Nodes that belong to INT8 execution: Q/DQ pairs, QLinear* and *Integer ops."""
    return sum(1 for n in model.graph.node if n.op_type in _QUANT_OPS or n.op_type.startswith("QLinear"))


def ep_warnings(model: onnx.ModelProto, providers: Sequence[str]) -> list[str]:
    """Warnings about optimizations that do not pay on the chosen EP.

    The CUDA EP has no INT8 kernels for QDQ Conv/MatMul: it runs the float op between
    Dequantize and Quantize (or falls back to the CPU EP), so an INT8 model is usually
    *slower* there than the float model. TensorRT does run QDQ models in INT8.
    """
    out: list[str] = []
    q = quantized_node_count(model)
    if q and providers and providers[0] == "CUDAExecutionProvider":
        out.append(f"model has {q} quantization nodes (INT8 QDQ) but the CUDA EP has no INT8 kernels for them: "
                   "it runs float math between Q/DQ or falls back to the CPU EP, so INT8 rarely pays here "
                   "(use the TensorRT EP for INT8 on NVIDIA GPUs); see node placement")
    return out


def placement_from_profile(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Which EP ran which op types, from onnxruntime profiling events.

    Node events (``cat == "Node"``) carry ``args.provider`` and ``args.op_name``; each node
    appears once per phase and run, so nodes are counted by distinct node name.

    Returns:
        ``{provider: {op_type: node_count}}``.
    """
    seen: dict[str, tuple[str, str]] = {}
    for ev in events:
        if ev.get("cat") != "Node":
            continue
        args = ev.get("args") or {}
        provider, op = args.get("provider"), args.get("op_name")
        if not provider or not op:
            continue
        node = str(ev.get("name", "")).rsplit("_", 2)[0] if str(ev.get("name", "")).endswith("_kernel_time") else str(ev.get("name", ""))
        seen[node] = (provider, op)
    out: dict[str, dict[str, int]] = {}
    for provider, op in seen.values():
        out.setdefault(provider, {}).setdefault(op, 0)
        out[provider][op] += 1
    return {p: dict(sorted(ops.items())) for p, ops in sorted(out.items())}


def node_placement(
    path: str, providers: Sequence[str], feeds: Feeds, *, threads: int | None = None, device_id: int = 0
) -> dict[str, dict[str, int]]:
    """Run ``path`` once with onnxruntime profiling and report the EP of every op type.

    This is what actually ran after onnxruntime's own graph optimizations and partitioning
    (fused ops show up under their fused names).
    """
    with tempfile.TemporaryDirectory(prefix="onnxcomp-profile-") as tmp:
        so = session_options(threads=threads, spinning=False, profile_prefix=str(Path(tmp) / "profile"))
        sess = open_session(path, providers, so, device_id)
        PlainRunner(sess, feeds)()
        prof = sess.end_profiling()
        try:
            events = json.loads(Path(prof).read_text())
        finally:
            Path(prof).unlink(missing_ok=True)
    if isinstance(events, dict):  # some builds wrap events in {"traceEvents": [...]}
        events = events.get("traceEvents", [])
    return placement_from_profile(events)


# --------------------------------------------------------------------------- bench API


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (all sessions together), in MB."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB
    except (ImportError, OSError):
        return None


def model_size_bytes(path: str | os.PathLike[str]) -> int:
    """The model file plus its external-data files."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in external_data_files(p) if f.exists())


@dataclass
class ModelBench:
    """Benchmark of one model."""

    path: str
    latency: LatencyStats
    samples_ms: list[float]
    batch: int
    input_shapes: dict[str, list[int]]
    size_bytes: int
    host_memory_mb: float
    ratio_to_first: float = 1.0
    paired_ratio_to_first: float = 1.0
    node_placement: dict[str, dict[str, int]] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch * 1000.0 / self.latency.p50 if self.latency.p50 > 0 else float("inf")

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "latency_ms": self.latency.to_dict(),
            "ratio_to_first": self.ratio_to_first,
            "paired_ratio_to_first": self.paired_ratio_to_first,
            "throughput_per_s": self.throughput,
            "batch": self.batch,
            "input_shapes": self.input_shapes,
            "size_bytes": self.size_bytes,
            "host_memory_mb": self.host_memory_mb,
            "node_placement": self.node_placement,
            "warnings": self.warnings,
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
            "process_peak_rss_mb": _peak_rss_mb(),
            "environment": environment(),
            "models": [m.to_dict() for m in self.models],
        }

    def render(self, console: Any | None = None) -> None:
        """A rich table: latency percentiles, ratio to the first model, size, memory."""
        from rich.table import Table

        console = console or _console()
        t = Table(title=f"latency on {self.providers[0]} · threads={self.threads or 'default'} · "
                        f"{self.rounds} interleaved rounds", title_justify="left")
        for col in ("model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "sd ms", "× first", "samples/s", "size", "mem MB"):
            t.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
        for m in self.models:
            s = m.latency
            t.add_row(Path(m.path).name, _g(s.p50), _g(s.p90), _g(s.p99), _g(s.mean), _g(s.stdev),
                      f"{m.ratio_to_first:.3f}", _g(m.throughput), _human_bytes(m.size_bytes), f"{m.host_memory_mb:.1f}")
        console.print(t)
        shapes = {Path(m.path).name: m.input_shapes for m in self.models}
        console.print(f"inputs: {shapes}  (× first = p50 of the first model ÷ p50 of this one; > 1 is faster)")
        for m in self.models:
            if m.node_placement:
                parts = "; ".join(f"{p}: " + ", ".join(f"{op}×{c}" for op, c in ops.items()) for p, ops in m.node_placement.items())
                console.print(f"[dim]{Path(m.path).name} node placement — {parts}[/]")
            for w in m.warnings:
                console.print(f"[yellow]warning[/] {Path(m.path).name}: {w}")


def _console() -> Any:
    """stdout console; wide when not a terminal (CI logs), so tables do not wrap."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=140)


def _g(v: float) -> str:
    """4 significant digits, no exponent for the usual ranges."""
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.3g}"


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def environment() -> dict[str, Any]:
    """Where a measurement was taken (quote it with every number)."""
    return {"onnxruntime": ort.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(), "system": platform.system()}


@dataclass
class _Prepared:
    path: str
    model: onnx.ModelProto
    feeds: Feeds
    session: Any
    runner: Callable[[], None]
    memory_mb: float
    warnings: list[str]


def _load_checked(path: str | os.PathLike[str]) -> onnx.ModelProto:
    return load_model(path, load_external_data=False)


def prepare_models(
    paths: Sequence[str | os.PathLike[str]],
    *,
    providers: Sequence[str],
    device_id: int = 0,
    threads: int | None,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: str | os.PathLike[str] | None = None,
    warmup: int = 5,
    spinning: bool | None = None,
    seed: int = 0,
    extra_models: Sequence[tuple[str, bytes | str]] = (),
) -> list[_Prepared]:
    """Load every model, build feeds and sessions, run the per-model warm-up.

    ``extra_models`` are ``(label, model bytes or path)`` timed alongside (the gate's
    reference workload); they use their own generated feeds.
    """
    if spinning is None:
        spinning = len(paths) + len(extra_models) <= 1
    so_factory = lambda: session_options(threads=threads, spinning=spinning)  # noqa: E731
    out: list[_Prepared] = []
    for p in paths:
        model = _load_checked(p)
        feeds = make_feeds(model, batch=batch, shapes=shapes, data=data, seed=seed)
        rss0 = _rss_bytes()
        sess = open_session(str(p), providers, so_factory(), device_id)
        runner = make_runner(sess, feeds, sess.get_providers(), device_id)
        try:
            for _ in range(max(1, warmup)):
                runner()
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InvalidModelError(f"onnxruntime cannot run {p} on inputs {feed_shapes(feeds)}: {first}") from None
        mem = max(0, _rss_bytes() - rss0) / 2**20
        out.append(_Prepared(str(p), model, feeds, sess, runner, mem, ep_warnings(model, providers)))
    for label, src in extra_models:
        model = onnx.load_model_from_string(src) if isinstance(src, bytes) else onnx.load_model(src)
        feeds = make_feeds(model, seed=seed)
        sess = ort.InferenceSession(src, sess_options=so_factory(), providers=_provider_args(providers, device_id))
        runner = make_runner(sess, feeds, sess.get_providers(), device_id)
        for _ in range(max(1, warmup)):
            runner()
        out.append(_Prepared(label, model, feeds, sess, runner, 0.0, []))
    return out


def _paired_ratio(first: np.ndarray, this: np.ndarray) -> float:
    """Median over rounds of first_i / this_i (robust to drift between rounds)."""
    return float(np.exp(np.median(np.log(first) - np.log(this))))


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

    Returns:
        A `BenchResult`; ``to_dict()`` is the ``bench --json`` document.

    Raises:
        UsageError: Unknown/unavailable EP, bad shapes, bad counts.
        InvalidModelError: A model cannot be read or run.
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
    ep_name, device_id = _parse_ep(ep)
    providers = providers_for(ep_name)
    shape_map = parse_shape_specs(shapes)
    t0 = time.perf_counter()
    prepared = prepare_models(paths, providers=providers, device_id=device_id, threads=threads, batch=batch,
                              shapes=shape_map, data=data, warmup=warmup, seed=seed)
    for p in prepared:
        for w in p.warnings:
            log.warning("%s: %s", p.path, w)
    timer = InterleavedTimer([p.runner for p in prepared])
    timer.warmup(2)  # once more interleaved, so the first timed round is not the first switch
    ms = timed_rounds(timer, rounds=rounds, duration_s=duration_s, min_rounds=min_rounds, progress=progress)
    want_placement = placement if placement is not None else providers[0] != "CPUExecutionProvider"
    results: list[ModelBench] = []
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
        results.append(ModelBench(
            path=p.path, latency=stats, samples_ms=[float(x) for x in ms[:, j]], batch=batch_size,
            input_shapes=feed_shapes(p.feeds), size_bytes=model_size_bytes(p.path), host_memory_mb=p.memory_mb,
            ratio_to_first=first_p50 / stats.p50 if stats.p50 > 0 else float("inf"),
            paired_ratio_to_first=_paired_ratio(ms[:, 0], ms[:, j]), node_placement=place, warnings=list(p.warnings),
        ))
    return BenchResult(models=results, ep=ep, providers=list(prepared[0].session.get_providers()), threads=threads,
                       warmup=warmup, rounds=int(ms.shape[0]), seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------- compare API


@dataclass
class CompareResult:
    """Fidelity of a candidate against a reference, side by side with their speed."""

    reference: str
    candidate: str
    outputs: dict[str, OutputFidelity]
    overall: dict[str, Any]
    samples: int
    data: str
    labelled: bool
    bench: BenchResult | None

    @property
    def speedup(self) -> float | None:
        """Reference p50 ÷ candidate p50 (> 1: the candidate is faster)."""
        return self.bench.models[1].ratio_to_first if self.bench else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``compare --json`` document)."""
        d: dict[str, Any] = {
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "samples": self.samples,
            "labelled": self.labelled,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "overall": self.overall,
            "speedup": self.speedup,
        }
        if self.bench is not None:
            ref, cand = self.bench.models
            d.update({
                "ep": self.bench.ep, "providers": self.bench.providers, "threads": self.bench.threads,
                "rounds": self.bench.rounds,
                "latency_ms": {"reference": ref.latency.to_dict(), "candidate": cand.latency.to_dict()},
                "paired_speedup": cand.paired_ratio_to_first,
                "size_bytes": {"reference": ref.size_bytes, "candidate": cand.size_bytes},
                "warnings": cand.warnings,
                "node_placement": {"reference": ref.node_placement, "candidate": cand.node_placement},
            })
        return d

    def render(self, console: Any | None = None) -> None:
        """A rich table of per-output fidelity and the latency line."""
        from rich.table import Table

        console = console or _console()
        t = Table(title=f"{Path(self.candidate).name} vs {Path(self.reference).name} on {self.samples} samples ({self.data})",
                  title_justify="left")
        for col in ("output", "cosine", "max |diff|", "mean |diff|", "SNR dB", "top-1 agree", "accuracy ref → cand"):
            t.add_column(col, justify="left" if col == "output" else "right")
        for name, f in self.outputs.items():
            acc = (f"{f.accuracy_reference:.4f} → {f.accuracy_candidate:.4f}"
                   if f.accuracy_candidate is not None and f.accuracy_reference is not None else "–")
            t.add_row(name, f"{f.cosine:.6f}", f"{f.max_abs_diff:.3g}", f"{f.mean_abs_diff:.3g}", f"{f.snr_db:.1f}",
                      f"{f.top1_agreement:.4f}" if f.top1_agreement is not None else "–", acc)
        console.print(t)
        if self.bench is not None:
            ref, cand = self.bench.models
            console.print(f"latency p50 {ref.latency.p50:.3f} ms → {cand.latency.p50:.3f} ms: speedup ×{self.speedup:.3f} "
                          f"({self.bench.providers[0]}, threads={self.bench.threads or 'default'}, {self.bench.rounds} "
                          f"interleaved rounds, inputs {cand.input_shapes})")
            for w in cand.warnings:
                console.print(f"[yellow]warning[/]: {w}")


def _align_outputs(ref_names: list[str], cand_names: list[str]) -> dict[str, str]:
    """Candidate output name per reference output: same name, else same position."""
    if set(ref_names) <= set(cand_names):
        return {n: n for n in ref_names}
    if len(ref_names) == len(cand_names):
        return dict(zip(ref_names, cand_names))
    raise UsageError(f"outputs differ: reference {ref_names}, candidate {cand_names}")


def fidelity_on(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    providers: Sequence[str],
    device_id: int = 0,
    threads: int | None = None,
    data: str | os.PathLike[str] | None = None,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_samples: int = 512,
    seed: int = 0,
) -> tuple[dict[str, OutputFidelity], int, bool]:
    """Stream batches through both models (one session each) and accumulate fidelity.

    Returns:
        ``(per-output fidelity, samples seen, whether labels were present)``.
    """
    from onnxcomp.checking.metrics import FidelityAccumulator

    ref_model, cand_model = _load_checked(reference), _load_checked(candidate)
    so = lambda: session_options(threads=threads, spinning=False)  # noqa: E731
    rs = open_session(str(reference), providers, so(), device_id)
    cs = open_session(str(candidate), providers, so(), device_id)
    ref_names = [o.name for o in rs.get_outputs()]
    mapping = _align_outputs(ref_names, [o.name for o in cs.get_outputs()])
    if data is not None:
        calib = CalibrationData.from_source(data, ref_model, batch_size=batch)
        batches: Any = calib.iter_with_labels(max_samples=max_samples)
    else:
        # Two batches of 8 (where the batch dim is symbolic): enough samples for top-1 agreement
        # to mean something, cheap enough for a CI job.
        symbolic = any(s.shape and not isinstance(s.shape[0], int) for s in required_input_specs(ref_model))
        fb = batch or (8 if symbolic else None)
        batches = [(make_feeds(ref_model, batch=fb, shapes=shapes, seed=seed + i), None) for i in range(2)]
    accs: dict[str, FidelityAccumulator] = {}
    samples, labelled = 0, False
    cand_inputs = {i.name for i in cs.get_inputs()}
    for feeds, labels in batches:
        try:
            ro = rs.run(ref_names, feeds)
            co = dict(zip([o.name for o in cs.get_outputs()], cs.run(None, {k: v for k, v in feeds.items() if k in cand_inputs})))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InvalidModelError(f"onnxruntime cannot run the models on inputs {feed_shapes(feeds)}: {first}") from None
        labelled = labelled or labels is not None
        for name, r in zip(ref_names, ro):
            r, c = np.asarray(r), np.asarray(co[mapping[name]])
            if r.shape == c.shape and r.dtype.kind in "fiub" and r.size:
                accs.setdefault(name, FidelityAccumulator()).add(r, c, labels)
        samples += int(next(iter(feeds.values())).shape[0]) if feeds else 1
    if samples == 0:
        raise CalibrationDataError(f"{data} yielded no complete batch for the reference model")
    del cand_model
    return {k: a.result() for k, a in accs.items()}, samples, labelled


def compare(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    ep: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    shapes: Sequence[str] | Mapping[str, Sequence[int]] | None = None,
    max_samples: int = 512,
    speed: bool = True,
    rounds: int | None = None,
    duration_s: float = 5.0,
    warmup: int = 10,
    progress: ProgressFn | None = None,
    seed: int = 0,
) -> CompareResult:
    """Fidelity of ``candidate`` against ``reference`` plus their latency ratio.

    Fidelity (per output cosine, max/mean |diff|, SNR, top-1 agreement for ``[N, C]``
    float outputs, accuracy when ``data`` has a ``label`` array) is computed on up to
    ``max_samples`` samples of ``data`` — or on two generated batches — with both models
    running on ``ep``. Speed is `bench` of the pair, interleaved, on the first batch.

    Returns:
        A `CompareResult`; ``to_dict()`` is the ``compare --json`` document.
    """
    ep_name, device_id = _parse_ep(ep)
    providers = providers_for(ep_name)
    shape_map = parse_shape_specs(shapes)
    outputs, n, labelled = fidelity_on(reference, candidate, providers=providers, device_id=device_id, threads=threads,
                                       data=data, batch=batch, shapes=shape_map, max_samples=max_samples, seed=seed)
    result = None
    if speed:
        result = bench([reference, candidate], ep=ep, threads=threads, batch=batch, shapes=shape_map, data=data,
                       warmup=warmup, rounds=rounds, duration_s=duration_s, progress=progress, seed=seed)
    return CompareResult(reference=str(reference), candidate=str(candidate), outputs=outputs, overall=summarize(outputs),
                         samples=n, data=str(data) if data is not None else "generated", labelled=labelled, bench=result)
