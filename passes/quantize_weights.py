"""``quantize-weights``: block-wise 4-/8-bit weight-only quantization (RTN, GPTQ, AWQ).

Every MatMul/Gemm with a constant 2-D float weight of at least ``min_weight_size`` elements
(and, with ``embeddings``, every Gather from a constant table) gets its weight quantized in
blocks of ``block_size`` input channels, one scale (and zero point unless ``symmetric``)
per block and output channel. Activations stay float.

* ``algorithm=rtn``: round to nearest; no data needed.
* ``algorithm=gptq``: per layer, error-compensating column-by-column rounding with the
  input Hessian ``XᵀX`` streamed from the calibration data (`onnxcomp.quantization.gptq`).
* ``algorithm=awq``: per-input-channel scales searched on streamed activation statistics
  (`onnxcomp.quantization.awq`), folded into the producing norm/MatMul or applied by an
  inserted ``Mul``; then round to nearest.

``format=matmulnbits`` writes onnxruntime's ``com.microsoft`` ``MatMulNBits`` and
``GatherBlockQuantized``; ``format=qdq`` writes standard ``DequantizeLinear`` (opset 21,
block-wise) in front of the unchanged node, for other runtimes (the model's opset is raised
to 21 when lower).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.errors import UsageError
from onnxcomp.ir import default_opset, unique_namer
from onnxcomp.quantization import (
    apply_input_scale,
    collect_moments,
    emit_matmulnbits,
    emit_qdq,
    find_weight_sites,
    gptq,
    layer_error,
    rtn,
    search_awq_scales,
)

QDQ_OPSET = 21  # block-wise DequantizeLinear and int4/uint4 need opset 21
#: Ops whose semantics change between opsets < 21 and 21; the qdq format declines them
#: rather than raising the opset under them.
OPSET_SENSITIVE = {"GridSample"}


@dataclass(frozen=True, kw_only=True)
class QuantizeWeightsOptions(PassOptions):
    """Options of `quantize-weights`."""

    bits: int = field(default=4, metadata={"help": "weight bits: 4 or 8"})
    block_size: int = field(default=32, metadata={"help": "input channels per scale: a power of two in 16..256"})
    symmetric: bool = field(default=False, metadata={"help": "symmetric blocks (no zero points); else asymmetric"})
    algorithm: Literal["rtn", "gptq", "awq"] = field(
        default="rtn", metadata={"help": "rtn (no data), gptq or awq (both need --calibration-data)"}
    )
    format: Literal["matmulnbits", "qdq"] = field(
        default="matmulnbits", metadata={"help": "onnxruntime MatMulNBits/GatherBlockQuantized, or block-wise DequantizeLinear (opset 21)"}
    )
    accuracy_level: int = field(default=0, metadata={"help": "MatMulNBits compute type: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "glob patterns over node and weight names to keep float"})
    min_weight_size: int = field(default=1024, metadata={"help": "weights with fewer elements stay float"})
    embeddings: bool = field(default=True, metadata={"help": "also quantize Gather from constant tables (embeddings)"})
    damp: float = field(default=0.01, metadata={"help": "gptq: damping, fraction of mean diag(XᵀX)"})
    act_order: bool = field(default=True, metadata={"help": "gptq: quantize input channels by decreasing activation energy"})
    awq_grid: int = field(default=20, metadata={"help": "awq: grid points for the scale exponent in [0, 1)"})
    calibration_batches: int | None = field(default=None, metadata={"help": "use at most this many calibration batches"})

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise UsageError(f"bits must be 4 or 8, got {self.bits}")
        if not 16 <= self.block_size <= 256 or self.block_size & (self.block_size - 1):
            raise UsageError(f"block_size must be a power of two in 16..256, got {self.block_size}")
        if not 0 <= self.accuracy_level <= 4:
            raise UsageError("accuracy_level must be in 0..4")
        if self.min_weight_size < 0:
            raise UsageError("min_weight_size must be >= 0")
        if not 0.0 < self.damp < 1.0:
            raise UsageError("damp must be in (0, 1)")
        if self.awq_grid < 1:
            raise UsageError("awq_grid must be >= 1")
        if self.calibration_batches is not None and self.calibration_batches < 1:
            raise UsageError("calibration_batches must be >= 1")


@register_pass("quantize-weights")
class QuantizeWeights(Pass[QuantizeWeightsOptions]):
    """Block-wise 4/8-bit weight-only quantization of MatMul/Gemm/embedding weights (RTN, GPTQ, AWQ)."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        o = self.options
        if o.algorithm != "rtn" and ctx.calibration is None:
            raise UsageError(f"quantize-weights algorithm={o.algorithm} needs --calibration-data (or use algorithm=rtn)")
        sites = find_weight_sites(
            graph, min_weight_size=o.min_weight_size, exclude=o.exclude, embeddings=o.embeddings, block_size=o.block_size
        )
        if not sites:
            ctx.logger.info("quantize-weights: no eligible MatMul/Gemm/Gather weight (min_weight_size=%d)", o.min_weight_size)
            return PassResult(modified=False, stats={"weights_quantized": 0, "note": "no eligible weight"})
        if o.format == "qdq":
            bad = sorted({n.op for n in graph.nodes if n.op in OPSET_SENSITIVE})
            if bad and default_opset(graph) < QDQ_OPSET:
                raise UsageError(f"quantize-weights format=qdq raises the opset to {QDQ_OPSET}, which changes {', '.join(bad)}; convert the model first")
        bytes_before = bytes_after = 0
        layers = [s for s in sites if s.kind != "gather"]
        moments = {}
        if o.algorithm != "rtn" and layers:
            widths = {s.activation.name: s.w_nk().shape[1] for s in layers}
            moments = collect_moments(ctx.to_model(graph), self._batches(ctx), widths, progress=ctx.progress)
        scales: dict[int, np.ndarray] = {}
        extra: dict[str, object] = {}
        if o.algorithm == "awq":
            scales, extra = self._awq(graph, layers, moments)
        name = unique_namer(graph, prefix="wq")
        errs = []
        for i, site in enumerate(sites):
            ctx.progress(f"quantize-weights: {i + 1}/{len(sites)} {site.node.name}")
            w = site.w_nk()
            bytes_before += w.nbytes
            s = scales.get(id(site.node))
            if s is not None:
                w = w * s[None, :]
            if o.algorithm == "gptq" and site.kind != "gather":
                h = moments[site.activation.name].hessian
                bq = gptq(w, h, bits=o.bits, block_size=o.block_size, symmetric=o.symmetric, damp=o.damp, act_order=o.act_order)
                ref = rtn(w, o.bits, o.block_size, o.symmetric)
                errs.append((layer_error(w, bq.dequantize(), h), layer_error(w, ref.dequantize(), h)))
            else:
                bq = rtn(w, o.bits, o.block_size, o.symmetric)
            node_name = name(site.node.name or site.kind)
            if o.format == "matmulnbits":
                bytes_after += emit_matmulnbits(graph, site, bq, accuracy_level=o.accuracy_level, name=node_name)
            else:
                bytes_after += emit_qdq(graph, site, bq, name=node_name)
        self._set_opsets(graph, o.format)
        graph.cleanup()
        if errs:
            extra["gptq_error_vs_rtn"] = round(float(sum(e for e, _ in errs) / max(sum(r for _, r in errs), 1e-30)), 4)
        stats = {
            "algorithm": o.algorithm,
            "format": o.format,
            "weights_quantized": len(sites),
            "embeddings_quantized": sum(s.kind == "gather" for s in sites),
            "weight_bytes_before": bytes_before,
            "weight_bytes_after": bytes_after,
            **extra,
        }
        return PassResult(modified=True, stats=stats)

    def _batches(self, ctx: PassContext) -> Iterator[dict[str, np.ndarray]]:
        assert ctx.calibration is not None
        for i, feeds in enumerate(ctx.calibration):
            if self.options.calibration_batches is not None and i >= self.options.calibration_batches:
                return
            yield feeds

    def _awq(self, graph: gs.Graph, layers: list, moments: dict) -> tuple[dict[int, np.ndarray], dict[str, object]]:
        """Search one scale vector per shared layer input, then move ``1/s`` onto that input."""
        o = self.options
        groups: dict[str, list] = {}
        for s in layers:
            groups.setdefault(s.activation.name, []).append(s)
        plans = []
        for x_name, members in groups.items():
            m = moments[x_name]
            s, alpha, _ = search_awq_scales(
                [t.w_nk() for t in members], m.hessian, m.abs_mean, bits=o.bits, block_size=o.block_size, symmetric=o.symmetric, grid=o.awq_grid
            )
            if alpha > 0:
                plans.append((members, s))
        how: dict[str, int] = {"norm": 0, "matmul": 0, "mul": 0}
        name = unique_namer(graph, prefix="awq")
        out: dict[int, np.ndarray] = {}
        for members, s in plans:
            x = members[0].activation
            how[apply_input_scale(graph, x, [t.node for t in members], 1.0 / s, name("awq"))] += 1
            for t in members:
                out[id(t.node)] = s
        return out, {"awq_scaled_inputs": len(plans), "awq_folded": how["norm"] + how["matmul"], "awq_inserted_mul": how["mul"]}

    @staticmethod
    def _set_opsets(graph: gs.Graph, fmt: str) -> None:
        """Import com.microsoft (matmulnbits) or raise the default opset to 21 (qdq)."""
        imports = list(graph.import_domains or [onnx.helper.make_opsetid("", default_opset(graph))])
        if fmt == "matmulnbits":
            if not any(d.domain == "com.microsoft" for d in imports):
                imports.append(onnx.helper.make_opsetid("com.microsoft", 1))
        elif default_opset(graph) < QDQ_OPSET:
            graph.opset = QDQ_OPSET
            imports = [d for d in imports if d.domain not in ("", "ai.onnx")] + [onnx.helper.make_opsetid("", QDQ_OPSET)]
        graph.import_domains = imports
