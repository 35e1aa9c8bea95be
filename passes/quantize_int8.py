"""``quantize-int8``: post-training INT8 quantization with calibration.

Two schemes, chosen per model by ``mode`` (``auto`` picks by graph shape):

* ``static`` (CNNs): QDQ placement by the per-op rules in `onnxcomp.quantization.rules`,
  activation ranges from streamed calibration statistics (`collect`, `calibrators`),
  int8 per-channel symmetric weights, int32 biases with ``s_b = s_x * s_w``. onnxruntime
  fuses ``DQ -> Conv -> Q`` into QLinearConv etc.
* ``dynamic`` (transformers): MatMuls with constant weights become
  ``DynamicQuantizeLinear -> MatMulInteger`` (activation range measured per batch at run
  time); LayerNorm, Softmax, GELU and the attention products stay float. SmoothQuant scale
  migration (`smoothquant`) first moves activation outlier channels into the weights.

Before planning, the pass runs the lossless cleanups placement depends on (`PREPARE`):
raw exports compute Clip bounds with ``Constant`` nodes and keep BatchNormalization
between a Conv and its activation, which would leave float ops between DQ and Q that
onnxruntime cannot fuse. Models below opset 13 (per-channel DequantizeLinear) are
converted with ``onnx.version_converter`` first, checked, and the conversion is reported.

Accuracy control: ``exclude`` keeps named nodes / op types float; when the quantized model
misses ``target_cosine`` (or ``target_max_abs``) on a few calibration batches, the other
calibrators are tried first (`repair_calibration`: better ranges cost no speed); a model
that then meets the target and misses only ``target_margin`` stays all 8-bit; otherwise a
per-layer-group sensitivity analysis ranks layers and the most sensitive go back to float
until the target is met (`sensitivity`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassContext, PassOptions, PassResult, get_pass, register_pass
from onnxcomp.checking import OutputStore, make_session, run
from onnxcomp.errors import UsageError
from onnxcomp.ir import default_opset, remove_dead_nodes, to_graph, toposort
from onnxcomp.quantization import (
    CALIBRATORS,
    DYNAMIC_RULES,
    STATIC_RULES,
    ActivationSamples,
    Evaluator,
    QParams,
    QuantPlan,
    RuleOptions,
    Score,
    TensorStats,
    activation_qparams,
    apply_smoothing,
    build_plan,
    calibrate_range,
    collect_stats,
    fallback,
    find_sites,
    fold_weights,
    layer_costs,
    layer_error_energy,
    materialize,
    ranked_fallback,
    smoothing_scales,
    weight_params,
    weight_qparams,
)

NEEDS_DATA = "quantize-int8 needs --calibration-data (an .npz, a folder of them, or 'random')"

#: Opset the QDQ form needs (per-channel DequantizeLinear ``axis``).
QDQ_OPSET = 13

#: Float outputs kept from the calibration session to score candidates: at most
#: ``eval_batches`` batches and this many bytes (at least one batch). Image models stay far
#: below it; a 256-token window of an LM's logits is 50 MB, so five windows are kept (with
#: two, SmolLM2's all-8-bit model scored 0.9915 and was kept, held-out 0.9825; with five it
#: missed the aim and three layers went float, held-out 0.9895).
REFERENCE_BYTES = 256 << 20

#: The lossless cleanups run before planning (registered passes, run as the manager would
#: run them): Constant nodes become initializers (Clip bounds), BatchNormalization folds
#: into its Conv, identities and dead nodes go. Repeated until none changes the graph.
PREPARE = ("eliminate-identity", "fold-constants", "fold-batchnorm", "dce")


@dataclass(frozen=True, kw_only=True)
class QuantizeInt8Options(PassOptions):
    """Options of `quantize-int8`."""

    mode: Literal["auto", "static", "dynamic"] = field(
        default="auto", metadata={"help": "static QDQ (CNNs), dynamic activation MatMuls (transformers), or auto by graph"}
    )
    calibrator: Literal["minmax", "percentile", "entropy", "mse"] = field(
        default="minmax", metadata={"help": "how activation ranges are chosen from calibration statistics"}
    )
    percentile: float = field(default=99.999, metadata={"help": "percentile for calibrator=percentile"})
    per_channel: bool = field(default=True, metadata={"help": "per-output-channel weight scales"})
    activation_type: Literal["uint8", "int8"] = field(default="uint8", metadata={"help": "activation integer type (static)"})
    symmetric: bool = field(default=False, metadata={"help": "symmetric activation ranges (static)"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "node names or op types to keep float"})
    target_cosine: float | None = field(
        default=0.99, metadata={"help": "worst-output cosine to reach; layers fall back to float until met (none: off)"}
    )
    target_max_abs: float | None = field(default=None, metadata={"help": "worst-output max |error| to stay under"})
    target_margin: float = field(
        default=0.2,
        metadata={"help": "fraction of the error budget 1-target_cosine held back on the (in-sample, optimistic) scoring batches"},
    )
    smoothquant_alpha: float | None = field(
        default=None, metadata={"help": "dynamic mode: SmoothQuant migration strength in [0, 1] (none: 0.5; 0 disables)"}
    )
    calibration_batches: int | None = field(default=None, metadata={"help": "use at most this many calibration batches"})
    eval_batches: int = field(default=4, metadata={"help": "calibration batches used to score candidates"})
    max_sensitivity_groups: int = field(default=48, metadata={"help": "cap on per-layer sensitivity candidates"})
    max_fallback: int = field(default=16, metadata={"help": "cap on layer groups returned to float"})
    quantize_activation_matmul: bool = field(
        default=False, metadata={"help": "static mode: also quantize activation x activation MatMuls (often slower on CPU)"}
    )
    min_weight_size: int = field(default=16384, metadata={"help": "dynamic mode: skip MatMuls with smaller weights"})
    quantize_embeddings: bool = field(default=True, metadata={"help": "int8 tables for Gather from constant embeddings"})
    quantize_depthwise: bool = field(
        default=False, metadata={"help": "static mode: also quantize depthwise convs (onnxruntime's int8 kernel is slower on CPU)"}
    )
    concat_range_ratio: float = field(
        default=10.0,
        metadata={"help": "static mode: a Concat whose input ranges differ more than this stays float (no shared scale)"},
    )

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            raise UsageError(f"calibrator must be one of {', '.join(CALIBRATORS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError("percentile must be in (50, 100]")
        if self.target_cosine is not None and not -1.0 <= self.target_cosine <= 1.0:
            raise UsageError("target_cosine must be in [-1, 1] (or none)")
        if not 0.0 <= self.target_margin < 1.0:
            raise UsageError("target_margin must be in [0, 1)")
        if self.target_max_abs is not None and self.target_max_abs < 0:
            raise UsageError("target_max_abs must be >= 0")
        if self.smoothquant_alpha is not None and not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise UsageError("smoothquant_alpha must be in [0, 1]")
        if self.calibration_batches is not None and self.calibration_batches < 1:
            raise UsageError("calibration_batches must be >= 1")
        for name in ("eval_batches", "max_sensitivity_groups"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        if self.max_fallback < 0 or self.min_weight_size < 0:
            raise UsageError("max_fallback and min_weight_size must be >= 0")
        if not self.concat_range_ratio >= 1.0:
            raise UsageError("concat_range_ratio must be >= 1")


def upgrade_opset(graph: gs.Graph, ctx: PassContext, target: int) -> None:
    """Convert ``graph`` (in place) to opset ``target`` with ``onnx.version_converter``.

    The conversion runs on the exported ModelProto (the converter's only input) and is
    checked twice before the graph is replaced: ``onnx.checker`` with shape inference, and
    the converted model's outputs against the original's on the first calibration batch.
    Any failure is a one-line refusal naming the opsets; the graph is then untouched.
    """
    before = default_opset(graph)
    model = ctx.to_model(graph)
    what = f"quantize-int8 needs opset >= {target}; converting this model from opset {before} with onnx.version_converter"
    try:
        converted = onnx.version_converter.convert_version(model, target)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeError, ValidationError, ...
        raise UsageError(f"{what} failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    if ctx.calibration is not None:
        feeds = next(iter(ctx.calibration.first_batches(1)), None)
        if feeds is not None:
            want = run(make_session(model), feeds)
            got = run(make_session(converted), feeds)
            for k, ref in want.items():
                ref = np.asarray(ref)
                if ref.dtype.kind == "f" and not np.allclose(ref, got[k], rtol=1e-3, atol=1e-4, equal_nan=True):
                    raise UsageError(f"{what} changed output {k!r} (max |diff| {float(np.max(np.abs(ref - got[k]))):.3g})")
    new, _ = to_graph(converted)
    graph.nodes, graph.inputs, graph.outputs = new.nodes, new.inputs, new.outputs
    graph.opset, graph.import_domains = new.opset, new.import_domains


def prepare(graph: gs.Graph, ctx: PassContext, max_sweeps: int = 4) -> list[str]:
    """Run the `PREPARE` cleanups on ``graph`` until none changes it; the names of those that did."""
    changed: list[str] = []
    passes = [get_pass(name)() for name in PREPARE]
    for _ in range(max_sweeps):
        sweep = False
        for p in passes:
            if p.run(graph, ctx).modified:
                remove_dead_nodes(graph)
                toposort(graph)
                sweep = True
                if p.name not in changed:
                    changed.append(p.name)
        if not sweep:
            break
    return changed


def is_transformer_like(graph: gs.Graph) -> bool:
    """LayerNorm/Softmax present and constant-weight MatMuls outnumber convolutions."""
    ops = [n.op for n in graph.nodes]
    attn = ops.count("LayerNormalization") + ops.count("Softmax")
    mm = sum(1 for n in graph.nodes if n.op == "MatMul" and isinstance(n.inputs[1], gs.Constant))
    return attn > 0 and mm >= ops.count("Conv")


def repair_calibration(
    stats: dict[str, TensorStats],
    ranges: dict[str, tuple[float, float]],
    score: Score,
    candidate: Callable[[set[str]], onnx.ModelProto],
    evaluator: Evaluator,
    o: QuantizeInt8Options,
    aim: float | None,
) -> tuple[str, dict[str, tuple[float, float]], Score]:
    """Score the all-8-bit model under each other calibrator; the best one (calibrator, ranges, score).

    Clipping ranges (percentile, mse, entropy) often recover what min/max loses to one
    outlier, at no speed cost, so they are tried before any layer goes float. Stops at the
    first that meets ``aim``. ``candidate`` reads the ranges through ``ranges`` (mutated in
    place); on return ``ranges`` holds the winner's.
    """

    def key(s: Score) -> tuple[bool, float, float]:
        return (s.meets(aim, o.target_max_abs), s.cosine if aim is not None else 0.0, -s.max_abs)

    best = (o.calibrator, dict(ranges), score)
    for name in CALIBRATORS:
        if name == o.calibrator:
            continue
        ranges.clear()
        ranges.update({k: calibrate_range(v, name, percentile=o.percentile) for k, v in stats.items()})
        s = evaluator.score(candidate(set()))
        if key(s) > key(best[2]):
            best = (name, dict(ranges), s)
        if s.meets(aim, o.target_max_abs):
            break
    ranges.clear()
    ranges.update(best[1])
    return best[0], ranges, best[2]


@register_pass("quantize-int8")
class QuantizeInt8(Pass[QuantizeInt8Options]):
    """INT8 post-training quantization (static QDQ or dynamic MatMul) with calibration."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        o = self.options
        calibration = ctx.calibration
        if calibration is None:
            raise UsageError(NEEDS_DATA)
        prepared: dict[str, object] = {}
        opset = default_opset(graph)
        if opset < QDQ_OPSET:
            upgrade_opset(graph, ctx, QDQ_OPSET)
            prepared["opset_converted"] = f"{opset} -> {QDQ_OPSET}"
            ctx.logger.warning("quantize-int8: converted opset %d → %d for QDQ (onnx.version_converter, outputs checked)", opset, QDQ_OPSET)
            opset = QDQ_OPSET
        cleaned = prepare(graph, ctx)
        if cleaned:
            prepared["cleanup_passes"] = cleaned
        transformer = is_transformer_like(graph)
        mode = o.mode if o.mode != "auto" else ("dynamic" if transformer else "static")
        ops_excluded = set(o.exclude)
        # The dynamic scheme (transformers) streams the data one sample at a time: an LM's
        # sample is a window whose exposed activations and logits are ~150 MB (256 tokens
        # of a 135M decoder), and a batch of 8 held them all at once. Its statistics are
        # maxima, which do not depend on the batching; candidates are scored per sample, as
        # deployed. Batch counts (calibration_batches, eval_batches) keep their meaning.
        source = calibration.rebatched(1) if mode == "dynamic" else calibration
        per_batch = max(1, calibration.batch_size // source.batch_size)
        limit = None if o.calibration_batches is None else o.calibration_batches * per_batch

        def data() -> Iterator[dict[str, np.ndarray]]:
            for i, feeds in enumerate(source):
                if limit is not None and i >= limit:
                    return
                yield feeds

        def skip(excluded_layers: set[str]) -> Callable[[gs.Node], bool]:
            def f(n: gs.Node) -> bool:
                return n.name in ops_excluded or n.op in ops_excluded or n.name in excluded_layers

            return f

        rule_opts = RuleOptions(
            per_channel=o.per_channel, quantize_activation_matmul=o.quantize_activation_matmul,
            min_weight_size=o.min_weight_size, concat_range_ratio=o.concat_range_ratio,
            quantize_depthwise=o.quantize_depthwise,
        )
        registry = DYNAMIC_RULES if mode == "dynamic" else STATIC_RULES
        if not o.quantize_embeddings:
            ops_excluded.add("Gather")
        probe = build_plan(graph, registry, rule_opts, opset=opset, skip=skip(set()))
        if not (probe.layers or probe.activations or probe.weights or probe.dynamic or probe.gathers):
            return PassResult(modified=bool(prepared), stats={"mode": mode, "layers_quantized": 0, **prepared})

        ranges: dict[str, tuple[float, float]] = {}
        checking = o.target_cosine is not None or o.target_max_abs is not None
        # The calibration session also yields the float outputs of the first batches (within
        # a byte budget): candidates are scored against them, no second float session. They
        # are kept in files (`OutputStore`) and read back one batch at a time: an LM's are
        # 256 MB of logits, held beside every candidate session otherwise.
        kept: list[dict] = []
        references = OutputStore(Path(tempfile.gettempdir())) if checking else None
        keep_outputs = o.eval_batches * per_batch if checking else 0
        stats: dict = {}
        smoothed = 0
        energies: dict[str, float] = {}
        if mode == "dynamic":
            # SmoothQuant: a lossless rescaling, applied once before any candidate is built,
            # so every candidate shares it. The one float session runs the input as it is
            # (weights left in its file stay there): channel maxima, reference outputs, and
            # samples of every layer input for the per-layer error ranking of the fallback.
            alpha = o.smoothquant_alpha if o.smoothquant_alpha is not None else 0.5
            sites = find_sites(probe.dynamic) if alpha > 0 else []
            names = [s.tensor.name for s in sites]
            samples = ActivationSamples() if checking and names else None
            if names or checking:
                channel = collect_stats(
                    ctx.to_model(graph), data(), names, channel_stats=names, progress=ctx.progress,
                    max_batches=None if names else keep_outputs, keep_outputs=keep_outputs, kept=kept,
                    keep_bytes=REFERENCE_BYTES, samples=samples, outputs_to=references,
                )
                scales = smoothing_scales(sites, channel, alpha)
                # Deferred: the rescaled weights stay Mul(w, s) over the (lazily loaded)
                # originals until a candidate quantizes them, not 400 MB of new arrays.
                smoothed = apply_smoothing(graph, sites, scales, defer=True)
                if smoothed:
                    probe = build_plan(graph, registry, rule_opts, opset=opset, skip=skip(set()))
                if samples is not None:
                    inputs = {n.name: site.tensor.name for site in sites for n in site.layers}
                    energies = layer_error_energy(probe.dynamic, inputs, samples, scales=scales, per_channel=o.per_channel)
                del samples
        else:
            # Tensors sharing a weight's scale (8-bit embedding Gather) need no statistics.
            groups = probe.shared.groups()
            need = [
                a for a in probe.activations if not any(m in probe.weights for m in groups.get(probe.shared.find(a), [a]))
            ]
            if need or checking:
                # Histograms also when checking: a missed target first tries the other
                # calibrators on the same statistics (`repair_calibration`), no second pass.
                hist = o.calibrator != "minmax" or checking
                stats = collect_stats(
                    ctx.to_model(graph), data(), need, histogram=hist, progress=ctx.progress,
                    max_batches=None if need else keep_outputs, keep_outputs=keep_outputs, kept=kept,
                    keep_bytes=REFERENCE_BYTES, outputs_to=references,
                )
                ranges = {k: calibrate_range(v, o.calibrator, percentile=o.percentile) for k, v in stats.items()}

        inserted: dict[str, int] = {}

        def quantize_into(g: gs.Graph, excluded_layers: set[str]) -> QuantPlan:
            plan = build_plan(g, registry, rule_opts, opset=opset, skip=skip(excluded_layers), ranges=ranges)
            tensors = g.tensors()
            wp = weight_params(plan, tensors)
            acts = self._activation_params(plan, ranges, tensors, o)
            inserted.update(materialize(g, plan, acts, wp).as_dict())
            if mode == "dynamic" and fold_weights(g, probe.layers):  # SmoothQuant's deferred weights of float layers
                remove_dead_nodes(g)
            return plan

        built: dict[frozenset[str], tuple[gs.Graph, QuantPlan]] = {}

        def candidate(excluded_layers: set[str]) -> Any:
            # Only the latest candidate is kept (it may become the result), and dropped
            # before the next is built: one set of quantized weights in memory at a time.
            built.clear()
            g = graph.copy()
            plan = quantize_into(g, excluded_layers)
            built[frozenset(excluded_layers)] = (g, plan)
            return ctx.export(g)  # a `Candidate`: its weights are lent to onnxruntime, not copied

        excluded_layers: set[str] = set()
        extra: dict[str, object] = {}
        if checking:
            evaluator = Evaluator(None, [k["feeds"] for k in kept], references)
            # The scoring batches are also the calibration batches, so their cosine
            # overestimates unseen data a little: hold back part of the error budget
            # (0.99 with the default 0.2 aims at 0.992).
            aim = None if o.target_cosine is None else o.target_cosine + o.target_margin * (1.0 - o.target_cosine)
            score = evaluator.score(candidate(set()))
            calibrator = o.calibrator
            if not score.meets(aim, o.target_max_abs) and stats:
                # Better ranges cost no speed; float layers do. Try them first.
                calibrator, _, score = repair_calibration(stats, ranges, score, candidate, evaluator, o, aim)
                built.clear()  # the last candidate built may not be the best one
            near_miss = score.meets(o.target_cosine, o.target_max_abs)
            extra.update(calibrator=calibrator, estimated_cosine=round(score.cosine, 6), target_met=near_miss)
            # Speed-aware fallback: float layers are bought only when the best all-8-bit
            # candidate misses the target itself. Missing only the margin (the allowance
            # for scoring on calibration batches) does not justify a float island: it
            # costs its integer kernel and a DQ/Q pair at each border for certain, while
            # the held-out verification reports the real figure either way.
            if near_miss and not score.meets(aim, o.target_max_abs):
                ctx.logger.info(
                    "quantize-int8: cosine %.4f on the scoring batches meets target_cosine but not its margin (%.4f); "
                    "no layer kept float", score.cosine, aim if aim is not None else float("nan"),
                )
            elif not near_miss and energies:
                # Dynamic MatMuls: ranked by their own error (`layer_error_energy`) per unit of
                # compute, no scan: a float layer costs its integer kernel's gain in proportion
                # to its compute (an LM's output projection is 30x a block's projection). At
                # most as many layers as max_fallback sensitivity groups would hold.
                costs = layer_costs(graph, probe.layers)
                order = sorted(energies, key=lambda n: -energies[n] / max(costs.get(n, 1.0), 1e-12))
                per_group = math.ceil(len(probe.layers) / min(o.max_sensitivity_groups, len(probe.layers)))
                fb = ranked_fallback(
                    order, candidate, evaluator, target_cosine=aim, target_max_abs=o.target_max_abs,
                    max_layers=o.max_fallback * per_group, progress=ctx.progress, costs=costs,
                )
            elif not near_miss:
                fb = fallback(
                    probe.layers, candidate, evaluator, target_cosine=aim, target_max_abs=o.target_max_abs,
                    max_groups=o.max_sensitivity_groups, max_fallback=o.max_fallback, progress=ctx.progress,
                    costs=layer_costs(graph, probe.layers),
                )
            if not near_miss:
                excluded_layers = fb.excluded
                extra.update(
                    estimated_cosine=round(fb.score.cosine, 6), target_met=fb.met, candidates=fb.candidates + 1,
                    float_compute_share=round(fb.float_share, 4),
                )
                if not fb.met:
                    ctx.logger.warning(
                        "quantize-int8: fidelity target not met after %d layers fell back (cosine %.4f)", len(excluded_layers), fb.score.cosine
                    )
                elif excluded_layers:
                    # Said, not only counted: float layers cost speed (and Q/DQ pairs around them).
                    ctx.logger.warning(
                        "quantize-int8: %d of %d layers (%.0f%% of their compute) kept float to meet the fidelity target "
                        "(cosine %.4f, worst output and channel); target_cosine=none quantizes them all",
                        len(excluded_layers), len(probe.layers), 100 * fb.float_share, fb.score.cosine,
                    )
        reuse = built.get(frozenset(excluded_layers))
        if reuse is not None:
            # The last candidate scored is the answer: adopt it instead of rebuilding.
            g, plan = reuse
            graph.nodes, graph.inputs, graph.outputs = g.nodes, g.inputs, g.outputs
        else:
            plan = quantize_into(graph, excluded_layers)
        if plan.float_concats:
            ctx.logger.info(
                "quantize-int8: %d Concat(s) kept float, their input ranges are more than %gx apart: %s",
                len(plan.float_concats), o.concat_range_ratio, ", ".join(plan.float_concats[:5]),
            )
        stats_out = {
            "mode": mode,
            "layers_quantized": len(plan.layers),
            "layers_float": len(excluded_layers),
            "activations_quantized": len(plan.activations),
            "weights_quantized": len(plan.weights) + len(plan.gathers),
            "dynamic_matmuls": len(plan.dynamic),
            "smoothed_norms": smoothed,
            "activations_folded": inserted.get("activations_folded", 0),
            "concats_float": len(plan.float_concats),
            **prepared,
            **extra,
        }
        changed = bool(plan.activations or plan.weights or plan.dynamic or plan.gathers) or smoothed > 0 or bool(prepared)
        return PassResult(modified=changed, stats=stats_out)

    @staticmethod
    def _activation_params(
        plan: QuantPlan, ranges: dict[str, tuple[float, float]], tensors: dict[str, gs.Tensor], o: QuantizeInt8Options
    ) -> dict[str, QParams]:
        """Resolve shared-scale groups: union of member ranges, or the weight's scale."""
        groups = plan.shared.groups()
        out: dict[str, QParams] = {}
        for name in plan.activations:
            members = groups.get(plan.shared.find(name), [name])
            wname = next((m for m in members if m in plan.weights), None)
            if wname is not None:
                out[name] = weight_qparams(np.asarray(tensors[wname].values), None)
                continue
            known = [ranges[m] for m in members if m in ranges]
            lo = min((r[0] for r in known), default=0.0)
            hi = max((r[1] for r in known), default=0.0)
            out[name] = activation_qparams(lo, hi, dtype=o.activation_type, symmetric=o.symmetric)
        return out
