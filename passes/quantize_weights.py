"""``quantize-weights``: block-wise 4-/8-bit weight-only quantization (RTN, GPTQ, AWQ).

Every MatMul/Gemm with a constant 2-D float weight of at least ``min_weight_size`` elements
(and, with ``embeddings``, every Gather from a constant table) gets its weight quantized in
blocks of ``block_size`` input channels, one scale (and zero point unless ``symmetric``)
per block and output channel. Tables and the tied output projections that read them
(``x @ Transpose(table)``) get ``embedding_bits``. Activations stay float, except in
``MatMulNBits`` with ``accuracy_level`` 4 (int8 compute: the default for 8-bit weights).

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

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.checking import fidelity, make_session, paired_perplexity, run, summarize
from onnxcomp.errors import UsageError
from onnxcomp.ir import default_opset, remove_dead_nodes, unique_namer
from onnxcomp.quantization import (
    InputMoments,
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
    accuracy_level: int | None = field(
        default=None,
        metadata={"help": "MatMulNBits compute type: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8; "
                          "none: 0 for 4-bit weights, 4 for 8-bit ones (onnxruntime's CPU kernel is fast for 8 bits only in int8)"},
    )
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "glob patterns over node and weight names to keep float"})
    min_weight_size: int = field(default=1024, metadata={"help": "weights with fewer elements stay float"})
    embeddings: bool = field(default=True, metadata={"help": "also quantize Gather from constant tables (embeddings)"})
    embedding_bits: int = field(
        default=8,
        metadata={"help": "bits of embedding tables and of tied output projections that read them (4 or 8): "
                          "the table feeds the residual stream, the projection makes the logits"},
    )
    damp: float = field(default=0.01, metadata={"help": "gptq: damping, fraction of mean diag(XᵀX)"})
    act_order: bool = field(default=True, metadata={"help": "gptq: quantize input channels by decreasing activation energy"})
    awq_grid: int = field(default=20, metadata={"help": "awq: grid points for the scale exponent in [0, 1)"})
    calibration_batches: int | None = field(default=None, metadata={"help": "use at most this many calibration batches"})
    target_cosine: float | None = field(
        default=None, metadata={"help": "mixed precision: worst-output cosine to reach on calibration batches (none: off)"}
    )
    target_perplexity_increase: float | None = field(
        default=None, metadata={"help": "mixed precision, causal LMs: relative perplexity increase to stay under (0.05 = 5%)"}
    )
    eval_batches: int = field(default=4, metadata={"help": "mixed precision: calibration batches used to score candidates"})

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise UsageError(f"bits must be 4 or 8, got {self.bits}")
        if self.embedding_bits not in (4, 8):
            raise UsageError(f"embedding_bits must be 4 or 8, got {self.embedding_bits}")
        if not 16 <= self.block_size <= 256 or self.block_size & (self.block_size - 1):
            raise UsageError(f"block_size must be a power of two in 16..256, got {self.block_size}")
        if self.accuracy_level is not None and not 0 <= self.accuracy_level <= 4:
            raise UsageError("accuracy_level must be in 0..4")
        if self.min_weight_size < 0:
            raise UsageError("min_weight_size must be >= 0")
        if not 0.0 < self.damp < 1.0:
            raise UsageError("damp must be in (0, 1)")
        if self.awq_grid < 1:
            raise UsageError("awq_grid must be >= 1")
        if self.calibration_batches is not None and self.calibration_batches < 1:
            raise UsageError("calibration_batches must be >= 1")
        if self.target_cosine is not None and not -1.0 <= self.target_cosine <= 1.0:
            raise UsageError("target_cosine must be in [-1, 1] (or none)")
        if self.target_perplexity_increase is not None and self.target_perplexity_increase < 0:
            raise UsageError("target_perplexity_increase must be >= 0 (or none)")
        if self.eval_batches < 1:
            raise UsageError("eval_batches must be >= 1")


@register_pass("quantize-weights")
class QuantizeWeights(Pass[QuantizeWeightsOptions]):
    """Block-wise 4/8-bit weight-only quantization of MatMul/Gemm/embedding weights (RTN, GPTQ, AWQ)."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        o = self.options
        if o.algorithm != "rtn" and ctx.calibration is None:
            raise UsageError(f"quantize-weights algorithm={o.algorithm} needs --calibration-data (or use algorithm=rtn)")
        mixed = o.target_cosine is not None or o.target_perplexity_increase is not None
        if mixed and ctx.calibration is None:
            raise UsageError("quantize-weights target_cosine/target_perplexity_increase need --calibration-data")
        sites = self._sites(graph)
        if not sites:
            ctx.logger.info("quantize-weights: no eligible MatMul/Gemm/Gather weight (min_weight_size=%d)", o.min_weight_size)
            return PassResult(modified=False, stats={"weights_quantized": 0, "note": "no eligible weight"})
        if o.format == "qdq":
            bad = sorted({n.op for n in graph.nodes if n.op in OPSET_SENSITIVE})
            if bad and default_opset(graph) < QDQ_OPSET:
                raise UsageError(f"quantize-weights format=qdq raises the opset to {QDQ_OPSET}, which changes {', '.join(bad)}; convert the model first")
        layers = [s for s in sites if s.kind != "gather"]
        moments: dict[str, InputMoments] = {}
        if (o.algorithm != "rtn" or mixed) and layers:
            moments = self._moments(graph, ctx, layers)
        extra: dict[str, object] = {}
        if moments:
            rows = min(m.rows for m in moments.values())
            widest = max(m.xtx.shape[0] for m in moments.values())
            extra["calibration_tokens"] = rows
            if o.algorithm == "gptq" and rows < widest:
                # XᵀX then has rank < K: GPTQ fits the calibration subspace and can lose to RTN.
                ctx.logger.warning("quantize-weights: gptq saw %d calibration tokens, fewer than the widest layer input (%d)", rows, widest)
        scales: dict[int, np.ndarray] = {}
        float_model = ctx.to_model(graph) if mixed else None
        inputs = [s.activation.name for s in sites]  # the statistics' keys, before AWQ rewires
        if o.algorithm == "awq":
            scales, extra = self._awq(graph, sites, moments)
            sites = self._sites(graph)  # same order: folds only add nodes at the end
        # Float weights are kept only where a later step reads them again: mixed precision
        # may emit a site at other bits (from AWQ's scaled copy, which the file does not
        # hold). Otherwise one is in memory at a time (models over 2 GB; AWQ on a 135M LM
        # kept 540 MB of scaled copies nothing read).
        keep = mixed
        # Without mixed precision nothing reads a site again: each is written at once, so
        # its unpacked codes (and an AWQ-scaled float copy) live only until then.
        name = None if mixed else unique_namer(graph, prefix="wq")
        weights: list[np.ndarray | None] = []
        quants, sensitivity, errs = [], [], []
        bytes_before = bytes_after = 0
        last_reader = {x: i for i, x in enumerate(inputs)}
        h_input, h_shared = None, None
        for i, site in enumerate(sites):
            w = self._scaled(site, scales.get(i))
            weights.append(w if keep else None)
            bytes_before += w.nbytes
            ctx.progress(f"quantize-weights: {i + 1}/{len(sites)} {site.node.name}")
            h = None
            if site.kind != "gather" and inputs[i] in moments:
                if h_input != inputs[i]:  # layers sharing an input (q/k/v) are consecutive
                    h_input, h_shared = inputs[i], moments[inputs[i]].hessian
                h = h_shared
                if last_reader[inputs[i]] == i:  # its last reader: free the sums (400 MB in all on a 135M LM)
                    del moments[inputs[i]]
            if h is not None and i in scales:  # the layer now reads x / s
                h = h / np.outer(scales[i], scales[i])
            if o.algorithm == "gptq" and h is not None:
                bits = self._site_bits(site)
                bq = gptq(w, h, bits=bits, block_size=o.block_size, symmetric=o.symmetric, damp=o.damp, act_order=o.act_order)
                errs.append((layer_error(w, bq.dequantize(), h), layer_error(w, rtn(w, bits, o.block_size, o.symmetric).dequantize(), h)))
            else:
                bq = rtn(w, self._site_bits(site), o.block_size, o.symmetric)
            if name is not None:
                bytes_after += self._emit_site(graph, site, bq, name)
                continue
            quants.append(bq)
            if mixed:  # relative output error of this layer alone: the order in which layers get more bits
                d = w - bq.dequantize()
                if h is None:  # an embedding table: relative weight error
                    sensitivity.append(float(np.sum(d * d) / max(float(np.sum(w * w)), 1e-30)))
                else:
                    sensitivity.append(layer_error(w, w - d, h) / max(layer_error(w, np.zeros_like(w), h), 1e-30))
        if errs:
            extra["gptq_error_vs_rtn"] = round(float(sum(e for e, _ in errs) / max(sum(r for _, r in errs), 1e-30)), 4)
        precision = self._initial_precision(sites)
        if mixed:
            assert float_model is not None
            precision, mp_stats = self._mixed_precision(graph, ctx, float_model, quants, weights, sensitivity)
            extra.update(mp_stats)
            bytes_after = self._emit(graph, sites, quants, weights, precision)
        else:
            self._finish(graph)
        tied = [p for s, p in zip(sites, precision) if s.tied]
        if tied:  # 0 = left float by mixed precision
            extra["tied_projection_bits"] = max(tied)
        stats = {
            "algorithm": o.algorithm,
            "format": o.format,
            "weights_quantized": sum(p > 0 for p in precision),
            "embeddings_quantized": sum(s.kind == "gather" and p > 0 for s, p in zip(sites, precision)),
            "weight_bytes_before": int(bytes_before),
            "weight_bytes_after": bytes_after,
            **extra,
        }
        return PassResult(modified=True, stats=stats)

    def _initial_precision(self, sites: list) -> list[int]:
        return [self._site_bits(s) for s in sites]

    def _site_bits(self, site) -> int:
        """``bits``, or ``embedding_bits`` (never fewer) for tables and the tied projections reading them.

        A tied output projection makes the logits from the same table; on a real 135M decoder
        RTN gave +32.7 % perplexity with it at 4 bits, +22.1 % at 8 (`bench/RESULTS_int4_real.md`).
        """
        o = self.options
        return max(o.bits, o.embedding_bits) if site.kind == "gather" or site.tied else o.bits

    def _accuracy_level(self, bits: int) -> int:
        """The MatMulNBits ``accuracy_level`` of a ``bits``-bit weight.

        Unset: fp32 compute (0) for 4 bits; int8 compute (4) for 8 bits, since onnxruntime's
        CPU kernel for 8-bit weights with fp32 compute was 50x slower on a 576 x 49,152
        projection (and decoding 3x slower end to end) than with int8 compute.
        """
        if self.options.accuracy_level is not None:
            return self.options.accuracy_level
        return 4 if bits == 8 else 0

    def _sites(self, graph: gs.Graph) -> list:
        o = self.options
        return find_weight_sites(graph, min_weight_size=o.min_weight_size, exclude=o.exclude, embeddings=o.embeddings, block_size=o.block_size)

    @staticmethod
    def _scaled(site, s: np.ndarray | None) -> np.ndarray:
        w = site.w_nk()
        return w if s is None else w * s[None, :]

    def _emit(self, graph: gs.Graph, sites: list, quants: list, weights: list, precision: list[int]) -> int:
        """Write every site at its precision (``bits``, 8, or 0 = left float); returns the new bytes."""
        o = self.options
        name = unique_namer(graph, prefix="wq")
        nbytes = 0
        for site, bq, w, bits in zip(sites, quants, weights, precision):
            if w is None and bits != bq.bits:
                w = site.w_nk()  # not kept (no AWQ scale, see run): read it again
            if bits == 0:
                nbytes += w.nbytes  # stays float (any AWQ scale was already moved onto its input)
                if not np.array_equal(w, site.w_nk()):
                    self._replace_weight(site, w)
                continue
            if bits != bq.bits:
                bq = rtn(w, bits, o.block_size, o.symmetric)
            nbytes += self._emit_site(graph, site, bq, name)
        self._finish(graph)
        return nbytes

    def _emit_site(self, graph: gs.Graph, site, bq, name) -> int:
        """Replace one site by its quantized node(s); returns the new bytes."""
        node_name = name(site.node.name or site.kind)
        if self.options.format == "matmulnbits":
            return emit_matmulnbits(graph, site, bq, accuracy_level=self._accuracy_level(bq.bits), name=node_name)
        return emit_qdq(graph, site, bq, name=node_name)

    def _finish(self, graph: gs.Graph) -> None:
        """After the last site: the opset imports the format needs, replaced nodes removed."""
        self._set_opsets(graph, self.options.format)
        graph.cleanup()

    @staticmethod
    def _replace_weight(site, w_nk: np.ndarray) -> None:
        """A float weight that keeps its AWQ-scaled values (its input was divided by s)."""
        values = w_nk if site.node_reads_nk else np.ascontiguousarray(w_nk.T)
        if site.tied:  # feed the MatMul its own [K, N] copy; the table stays for the Gather
            site.node.inputs[site.weight_index] = gs.Constant(site.weight.name + "_awq", np.ascontiguousarray(w_nk.T))
        else:
            site.node.inputs[site.weight_index] = gs.Constant(site.weight.name + "_awq", values.astype(np.float32))

    def _mixed_precision(
        self, graph: gs.Graph, ctx: PassContext, float_model: onnx.ModelProto, quants: list, weights: list, sensitivity: list[float]
    ) -> tuple[list[int], dict[str, object]]:
        """Raise the most sensitive layers to 8 bits, then to float, until the target holds.

        Layers are ranked once by their own relative output error (from ``XᵀX``, no extra
        runs); each round doubles how many of them are raised and scores one candidate model
        on the calibration batches (a handful of sessions in all, never one per layer).
        """
        o = self.options
        feeds = [f for _, f in zip(range(o.eval_batches), self._batches(ctx))]
        ref_sess = make_session(float_model, optimize=True)
        ref = [run(ref_sess, f) for f in feeds]
        del ref_sess

        def score(precision: list[int]) -> tuple[float, float | None]:
            g = graph.copy()
            self._emit(g, self._sites(g), quants, weights, precision)
            sess = make_session(ctx.to_model(g), optimize=True)
            outs = [run(sess, f) for f in feeds]
            cos = float(summarize(fidelity(ref, outs))["cosine"])
            ppl = paired_perplexity(float_model, feeds, ref, outs)
            return cos, None if ppl is None else float(ppl["increase"])

        def ok(result: tuple[float, float | None]) -> bool:
            cos, inc = result
            if o.target_cosine is not None and cos < o.target_cosine:
                return False
            return o.target_perplexity_increase is None or inc is None or inc <= o.target_perplexity_increase

        order = [int(i) for i in np.argsort(-np.asarray(sensitivity), kind="stable")]
        n = len(order)
        precision = self._initial_precision(self._sites(graph))
        result = score(precision)
        rounds = 1
        for to_bits in [8, 0] if o.bits == 4 else [0]:  # first 8 bits, then float
            k = 1
            while not ok(result):
                k = min(k, n)
                top = set(order[:k])
                trial = [to_bits if i in top else p for i, p in enumerate(precision)]
                result, rounds = score(trial), rounds + 1
                if ok(result) or k == n:
                    precision = trial
                    break
                k *= 2
        if not ok(result):
            ctx.logger.warning("quantize-weights: fidelity target not met (cosine %.4f) even with every layer raised", result[0])
        stats: dict[str, object] = {
            "estimated_cosine": round(result[0], 6), "target_met": ok(result), "candidates": rounds,
            "layers_8bit": sum(p == 8 for p in precision) if o.bits == 4 else 0, "layers_float": sum(p == 0 for p in precision),
        }
        if result[1] is not None:
            stats["estimated_perplexity_increase"] = round(result[1], 6)
        return precision, stats

    def _moments(self, graph: gs.Graph, ctx: PassContext, layers: list) -> dict[str, InputMoments]:
        """``XᵀX`` and mean ``|x|`` of every layer input, streamed one calibration sample at a time.

        The session computes the layer inputs and nothing else: onnxruntime runs every node
        of a graph whatever outputs are asked for, and a decoder's output projection (8 x
        256 x 49,152 float logits per batch of a 135M LM) feeds no layer input. One sample
        per run holds one sample's activations; the sums do not depend on the batching.
        ``calibration_batches`` still counts the data's own batches.
        """
        assert ctx.calibration is not None
        widths = {s.activation.name: s.weight.shape[1 if s.transposed else 0] for s in layers}  # no weight read
        g = graph.copy()
        tensors, graph_inputs = g.tensors(), {t.name for t in g.inputs}
        outputs = [tensors[n] for n in widths if n not in graph_inputs]
        if outputs:  # else every layer reads a graph input: no run at all (see stream_tensors)
            for t in outputs:
                t.dtype = t.dtype or np.float32  # float layer inputs (find_weight_sites)
            g.outputs = outputs
            remove_dead_nodes(g)
        source = ctx.calibration.rebatched(1)
        per_batch = max(1, ctx.calibration.batch_size // source.batch_size)
        limit = None if self.options.calibration_batches is None else self.options.calibration_batches * per_batch
        return collect_moments(ctx.to_model(g), itertools.islice(source, limit), widths, progress=ctx.progress)

    def _batches(self, ctx: PassContext) -> Iterator[dict[str, np.ndarray]]:
        assert ctx.calibration is not None
        for i, feeds in enumerate(ctx.calibration):
            if self.options.calibration_batches is not None and i >= self.options.calibration_batches:
                return
            yield feeds

    def _awq(self, graph: gs.Graph, sites: list, moments: dict) -> tuple[dict[int, np.ndarray], dict[str, object]]:
        """Search one scale vector per shared layer input, then move ``1/s`` onto that input.

        Returns the scales by site index and the stats.
        """
        o = self.options
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(sites):
            if s.kind != "gather":
                groups.setdefault(s.activation.name, []).append(i)
        plans = []
        for x_name, members in groups.items():
            m = moments[x_name]
            s, alpha, _ = search_awq_scales(
                [sites[i].w_nk() for i in members], m.hessian, m.abs_mean, bits=o.bits, block_size=o.block_size, symmetric=o.symmetric, grid=o.awq_grid
            )
            if alpha > 0:
                plans.append((members, s))
        how: dict[str, int] = {"norm": 0, "matmul": 0, "mul": 0}
        name = unique_namer(graph, prefix="awq")
        out: dict[int, np.ndarray] = {}
        for members, s in plans:
            x = sites[members[0]].activation
            how[apply_input_scale(graph, x, [sites[i].node for i in members], 1.0 / s, name("awq"))] += 1
            for i in members:
                out[i] = s
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
