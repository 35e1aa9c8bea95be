"""``reconstruct``: training-free accuracy recovery by layer-wise least squares.

After pruning, every Conv / Gemm / MatMul whose input lost channels (and every layer
downstream of one) sees different activations than in the original model. For such a
layer with student input ``X̃`` (the *pruned* model's activation, with earlier layers
already refit) and teacher output ``Y`` (the original model's activation of the same
tensor, restricted to the output channels pruning kept), the pass solves the ridge
problem::

    W', b' = argmin ||X̃ W + b − Y||² + λ||W||²        (closed form, see `lstsq`)

-- feature distillation in closed form, one layer at a time. Because ``X̃`` comes from
the pruned model itself, each refit absorbs the errors of everything upstream instead of
compounding them.

Cost: layers are grouped into *stages* (a layer's stage = 1 + the largest stage of a
refit layer upstream of it); layers in one stage do not feed each other, so one student
session per stage serves all of them. Sessions: 1 teacher + ``#stages`` students; each
stage streams the calibration batches once, accumulating ``XᵀX``/``XᵀY`` (never the
activations). Large feature maps are row-subsampled (``max_rows``).

Which output channels of the teacher a layer must reproduce comes from the
``prune-channels`` artifact (``ctx.artifacts["prune-channels"]["kept"]``). With an
explicit ``teacher`` model and no artifact, a layer is refit only when its output has as
many channels as the teacher's tensor of the same name (layers whose outputs were pruned
are skipped and counted in ``layers_skipped``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.errors import UsageError
from onnxcomp.pipeline.pass_api import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.recovery.activations import TensorTap, merged_batches
from onnxcomp.recovery.layers import LinearLayer, match_layer
from onnxcomp.recovery.lstsq import NormalEquations
from onnxcomp.ir.graph import toposort

PRUNE_ARTIFACT = "prune-channels"


@dataclass(frozen=True, kw_only=True)
class ReconstructOptions(PassOptions):
    """Options of ``reconstruct``."""

    ridge: float = field(default=1e-3, metadata={"help": "ridge strength relative to mean(diag(XᵀX))"})
    scope: Literal["downstream", "pruned", "all"] = field(
        default="downstream",
        metadata={"help": "layers to refit: touched by pruning and everything after them / only touched / every layer"},
    )
    max_samples: Optional[int] = field(default=None, metadata={"help": "calibration samples used (default: all)"})
    max_rows: int = field(default=8192, metadata={"help": "regression rows per layer per batch (spatial subsampling)"})
    teacher: Optional[str] = field(default=None, metadata={"help": "teacher ONNX path (default: the model the run started from)"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "node names never refit"})

    def __post_init__(self) -> None:
        if not self.ridge >= 0.0:
            raise UsageError(f"ridge must be >= 0, got {self.ridge}")
        if self.max_samples is not None and self.max_samples < 1:
            raise UsageError(f"max_samples must be >= 1, got {self.max_samples}")
        if self.max_rows < 1:
            raise UsageError(f"max_rows must be >= 1, got {self.max_rows}")


@dataclass
class _Job:
    """One layer being refit: where its target comes from and its running sums."""

    layer: LinearLayer
    kept: np.ndarray | None  # teacher output channels to match (None: all)
    eq: NormalEquations


def _opset(graph: gs.Graph) -> int:
    return int(graph.opset or 13)


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input}
    names.update(o for n in model.graph.node for o in n.output)
    return names


def _downstream(graph: gs.Graph, seeds: set[str]) -> set[str]:
    """Names of tensors reachable from ``seeds`` (one linear walk over the sorted graph)."""
    reached = set(seeds)
    for node in graph.nodes:
        if any(t.name in reached for t in node.inputs if t.name):
            reached.update(t.name for t in node.outputs)
    return reached


def _stages(graph: gs.Graph, layers: dict[int, LinearLayer]) -> list[list[LinearLayer]]:
    """Group refit layers so that no layer depends on another one of its stage."""
    level: dict[str, int] = defaultdict(int)
    stages: dict[int, list[LinearLayer]] = defaultdict(list)
    for node in graph.nodes:
        lvl = max((level[t.name] for t in node.inputs if t.name), default=0)
        layer = layers.get(id(node))
        if layer is not None:
            stages[lvl].append(layer)
            lvl += 1
        for t in node.outputs:
            level[t.name] = lvl
    return [stages[k] for k in sorted(stages)]


def _teacher_channels(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Static shapes of the teacher's tensors (after shape inference), by name."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are only a consistency check here
        inferred = model
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim)
    return out


@register_pass("reconstruct")
class Reconstruct(Pass):
    """Refit pruned layers by least squares to the original model's activations (no training)."""

    lossless = False
    Options = ReconstructOptions

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts: ReconstructOptions = self.options  # type: ignore[assignment]
        if ctx.calibration is None:
            raise UsageError("reconstruct needs calibration data (--calibration-data PATH)")
        if getattr(ctx.calibration, "generated", False):
            ctx.logger.warning("reconstruct: calibration data is random; refit layers will fit noise statistics")
        if opts.teacher is not None:
            from onnxcomp.io.files import load_model

            teacher = load_model(opts.teacher)
        else:
            teacher = ctx.original_model
        kept_map: dict[str, tuple[int, np.ndarray]] = dict(ctx.artifacts.get(PRUNE_ARTIFACT, {}).get("kept", {}))

        toposort(graph)
        teacher_tensors = _tensor_names(teacher)
        teacher_shapes = _teacher_channels(teacher)
        opset = _opset(graph)

        if opts.scope == "all" or not kept_map:
            region: set[str] | None = None
        else:
            region = _downstream(graph, set(kept_map))
        exclude = set(opts.exclude)

        layers: dict[int, LinearLayer] = {}
        jobs: dict[int, _Job] = {}
        skipped = 0
        for node in graph.nodes:
            layer = match_layer(node, opset)
            if layer is None or node.name in exclude:
                continue
            # A layer needs a refit when its *input* changed: its input channels were
            # pruned ("pruned") or anything upstream was ("downstream"). A layer whose
            # outputs alone were sliced still computes exactly the kept teacher channels.
            if opts.scope == "pruned" and kept_map and layer.x not in kept_map:
                continue
            if region is not None and layer.x not in region:
                continue
            if layer.y not in teacher_tensors:
                skipped += 1
                continue
            kept = self._kept(layer, kept_map, teacher_shapes)
            if kept is False:
                skipped += 1
                continue
            layers[id(node)] = layer
            jobs[id(node)] = _Job(layer, kept if isinstance(kept, np.ndarray) else None,
                                  NormalEquations(layer.features, layer.outputs // layer.groups, layer.groups, layer.bias))

        if not layers:
            ctx.logger.info("reconstruct: no layer to refit")
            return PassResult(modified=False, stats={"layers_refit": 0, "layers_skipped": skipped})

        stages = _stages(graph, layers)
        targets = [j.layer.y for j in jobs.values()]
        teacher_tap = TensorTap(teacher, targets)
        refit = kept_old = 0
        err_before: list[float] = []
        err_after: list[float] = []
        for si, stage in enumerate(stages):
            ctx.progress(f"reconstruct: stage {si + 1}/{len(stages)} ({len(stage)} layer(s))")
            student_tap = TensorTap(ctx.to_model(graph), [layer.x for layer in stage])
            stage_jobs = [jobs[id(layer.node)] for layer in stage]
            for feeds in merged_batches(ctx.calibration, teacher, max_samples=opts.max_samples):
                s_out = student_tap(feeds)
                t_out = teacher_tap.run_subset(feeds, [j.layer.y for j in stage_jobs])
                for job in stage_jobs:
                    self._accumulate(job, s_out[job.layer.x], t_out[job.layer.y], ctx.rng, opts.max_rows)
            for job in stage_jobs:
                old = job.layer.current()
                new = job.eq.solve(opts.ridge)
                before, after = job.eq.residual(old), job.eq.residual(new)
                # Never make a layer worse on its own calibration objective (e.g. when the
                # ridge is too strong for very few samples), and leave layers that already
                # match (relative error < 1e-7: float noise) untouched.
                if before - after > max(1e-6 * before, 1e-7):
                    job.layer.assign(new)
                    refit += 1
                else:
                    kept_old += 1
                err_before.append(before)
                err_after.append(min(before, after))
                ctx.logger.debug("reconstruct %s: rel. error %.4g -> %.4g", job.layer.node.name, before, after)
        stats = {
            "layers_refit": refit,
            "layers_unchanged": kept_old,
            "layers_skipped": skipped,
            "stages": len(stages),
            "rel_error_before": round(float(np.mean(err_before)), 6),
            "rel_error_after": round(float(np.mean(err_after)), 6),
        }
        return PassResult(modified=refit > 0, stats=stats)

    @staticmethod
    def _kept(layer: LinearLayer, kept_map: dict[str, tuple[int, np.ndarray]],
              teacher_shapes: dict[str, tuple[int | None, ...]]) -> np.ndarray | bool:
        """Teacher channels the layer's output must match: indices, True (all) or False (unknown)."""
        entry = kept_map.get(layer.y)
        shape = teacher_shapes.get(layer.y)
        if entry is not None:
            axis, idx = entry
            rank = len(shape) if shape else None
            out_axis = layer.out_axis if layer.out_axis >= 0 or rank is None else rank + layer.out_axis
            if (rank is not None and axis % rank != out_axis) or (rank is None and axis not in (layer.out_axis, 1)):
                return False  # pruned along an axis that is not this layer's channel axis
            if len(idx) != layer.outputs:
                return False
            return np.asarray(idx, dtype=np.int64)
        if shape is not None:
            c = shape[layer.out_axis]
            if c is not None and c != layer.outputs:
                # Output was pruned but we do not know which channels survived.
                return False
        return True

    @staticmethod
    def _accumulate(job: _Job, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, max_rows: int) -> None:
        layer = job.layer
        if job.kept is not None:
            y = np.take(y, job.kept, axis=layer.out_axis)
        if y.shape[layer.out_axis] != layer.outputs:
            # Only reachable when the teacher's shapes were unknown before running it.
            raise UsageError(
                f"reconstruct: teacher tensor {layer.y!r} has {y.shape[layer.out_axis]} channels but the student's has "
                f"{layer.outputs}, and no prune-channels record says which were kept (exclude={layer.node.name!r} skips it)"
            )
        m = layer.rows(x)
        positions = None
        if m > max_rows:
            positions = np.sort(rng.choice(m, size=max_rows, replace=False))
        job.eq.add(layer.design(x, positions), layer.targets(y, positions))
