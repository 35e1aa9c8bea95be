"""Measurements of the benchmark: model cost, fidelity against FP32, interleaved latency.

* Cost: file size on disk, parameters and FLOPs from onnxcomp's shared cost model
  (`onnxcomp.ir.cost.model_cost`: FLOPs = 2·MACs of Conv/ConvTranspose/Gemm/MatMul; integer
  kernels such as MatMulInteger/ConvInteger/QLinear* are *not* counted, so a model that
  uses them is flagged ``flops_partial``).
* Fidelity: `onnxcomp.perf.comparison.fidelity_on` streams held-out batches through FP32 and the
  candidate (one session each) and accumulates cosine, max/mean |diff|, SNR, top-1
  agreement and — when the data has labels (digits) — accuracy of both.
* Latency: `onnxcomp.bench` of FP32 plus every variant that ran, interleaved in one
  process (A B C …, then reversed), same inputs, same thread count; ratios to FP32's p50.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite_config import ModelSetting, SuiteConfig

#: Ops whose FLOPs onnxcomp's cost model does not count.
_UNCOUNTED_INT_OPS = ("MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul")


@dataclass
class Cost:
    """Size and compute of one ONNX file."""

    size_bytes: int
    params: int
    flops: int
    nodes: int
    flops_partial: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "params": self.params, "flops": self.flops, "nodes": self.nodes,
                "flops_partial": self.flops_partial}


def cost_of(path: Path) -> Cost:
    """`Cost` of the model at ``path`` (external data included in the size)."""
    import onnx

    from onnxcomp.ir.cost import model_cost
    from onnxcomp.perf.machine import model_size_bytes

    model = onnx.load(str(path))
    c = model_cost(model)
    partial = any(n.op_type in _UNCOUNTED_INT_OPS for n in model.graph.node)
    return Cost(model_size_bytes(path), int(c.params), int(c.flops), int(c.nodes), partial)


@dataclass
class Fidelity:
    """Fidelity of a candidate against FP32 on held-out data (worst output)."""

    cosine: float
    max_abs_diff: float
    snr_db: float
    samples: int
    top1_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy: float | None = None
    per_output: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fidelity_of(reference: Path, candidate: Path, setting: ModelSetting, eval_npz: Path, config: SuiteConfig
                ) -> Fidelity:
    """Fidelity of ``candidate`` against ``reference`` on ``eval_npz``.

    Raises:
        onnxcomp.errors.OnnxcompError: A model cannot be loaded or run on the data.
    """
    from onnxcomp.checking.metrics import summarize
    from onnxcomp.checking.runtime import resolve_providers
    from onnxcomp.perf.comparison import fidelity_on

    outs, n, _ = fidelity_on(reference, candidate, providers=resolve_providers(config.ep), threads=config.threads,
                             data=eval_npz, batch=setting.batch, max_samples=setting.eval_samples, seed=config.seed)
    if not outs:
        # fidelity_on skips outputs whose shapes differ: nothing comparable is a broken model.
        raise ValueError("no output of the candidate has the reference's shape (the tool changed the outputs)")
    s = summarize(outs)
    return Fidelity(
        cosine=float(s["cosine"]),
        max_abs_diff=float(s["max_abs_diff"]),
        snr_db=float(s["snr_db"]),
        samples=n,
        top1_agreement=s.get("top1_agreement"),
        accuracy_reference=s.get("accuracy_reference"),
        accuracy=s.get("accuracy_candidate"),
        per_output={k: v.to_dict() for k, v in outs.items()},
    )


@dataclass
class Timing:
    """Interleaved latency of one variant (ratios are to the FP32 model of the same run)."""

    p50_ms: float
    p90_ms: float
    latency_ratio: float
    paired_latency_ratio: float
    rounds: int
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def time_interleaved(paths: list[Path], setting: ModelSetting, eval_npz: Path, config: SuiteConfig
                     ) -> tuple[list[Timing], dict[str, Any]]:
    """Time ``paths`` (FP32 first) interleaved in this process with `onnxcomp.bench`.

    ``latency_ratio`` is p50 ÷ FP32 p50 (< 1: faster than FP32); ``paired_latency_ratio``
    is the median over rounds of the per-round ratio (robust to drift within the run).

    Returns:
        One `Timing` per path, and the measurement conditions (EP, providers, threads,
        rounds, input shapes).

    Raises:
        onnxcomp.errors.OnnxcompError: A model cannot be loaded or run.
    """
    from onnxcomp.perf.benchmark import bench

    res = bench([str(p) for p in paths], ep=config.ep, threads=config.threads, batch=setting.batch, data=eval_npz,
                warmup=config.warmup, duration_s=config.duration_s, min_rounds=config.min_rounds,
                placement=False, seed=config.seed)
    out = [
        Timing(
            p50_ms=m.latency.p50,
            p90_ms=m.latency.p90,
            latency_ratio=1.0 / m.ratio_to_first if m.ratio_to_first else float("inf"),
            paired_latency_ratio=1.0 / m.paired_ratio_to_first if m.paired_ratio_to_first else float("inf"),
            rounds=res.rounds,
            # Per-round samples (same round order for every variant) let the findings
            # bootstrap whether two variants really differ (see suite_findings).
            samples_ms=[round(x, 4) for x in m.samples_ms],
        )
        for m in res.models
    ]
    conditions = {"ep": res.ep, "providers": res.providers, "threads": res.threads, "warmup": res.warmup,
                  "rounds": res.rounds, "input_shapes": res.models[0].input_shapes, "seconds": round(res.seconds, 2)}
    return out, conditions
