"""Training-free accuracy recovery by layer-wise least squares: `reconstruct`.

After pruning, every Conv / Gemm / MatMul whose input lost channels (and every layer
downstream of one) sees different activations than in the original model. For such a
layer with student input ``X̃`` (the *pruned* model's activation, with earlier layers
already refit) and teacher output ``Y`` (the original model's activation of the same
tensor, restricted to the output channels pruning kept), `reconstruct` solves the ridge
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

Which output channels of the teacher a layer must reproduce comes from the pruning
record (`onnxcomp.pruning.PruneRecord`). Without one (e.g. an explicit teacher in a
separate run), a layer is refit only when its output has as many channels as the
teacher's tensor of the same name (layers whose outputs were pruned are skipped and
counted in ``layers_skipped``).

Used by the ``reconstruct`` pass, and by ``distill`` as its starting point.
"""

from __future__ import annotations

import logging
import typing
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.errors import UsageError
from onnxcomp.ir import default_opset, dims_of, infer_shapes, toposort
from onnxcomp.recovery.activations import TensorTap, merged_batches
from onnxcomp.recovery.layers import LinearLayer, match_layer
from onnxcomp.recovery.lstsq import NormalEquations

if typing.TYPE_CHECKING:
    from onnxcomp.checking.calibration import CalibrationData
    from onnxcomp.pruning.record import PruneRecord


@dataclass(frozen=True, kw_only=True)
class RefitSettings:
    """How `reconstruct` refits (the ``reconstruct`` pass's options, teacher aside).

    Attributes:
        ridge: Ridge strength relative to mean(diag(XᵀX)).
        scope: Layers to refit: those whose input changed because of pruning and
            everything after them (``downstream``), only those whose input channels were
            pruned (``pruned``), or every layer (``all``).
        max_samples: Calibration samples used (None: all).
        max_rows: Regression rows per layer per batch (spatial subsampling).
        exclude: Node names never refit.
    """

    ridge: float = 1e-3
    scope: Literal["downstream", "pruned", "all"] = "downstream"
    max_samples: int | None = None
    max_rows: int = 8192
    exclude: tuple[str, ...] = ()


class RefitContext(Protocol):
    """What `reconstruct` needs of a pass context (`onnxcomp.PassContext` has it)."""

    rng: np.random.Generator
    logger: logging.Logger

    def to_model(self, graph: gs.Graph) -> onnx.ModelProto: ...

    def progress(self, message: str) -> None: ...


@dataclass
class _Job:
    """One layer being refit: where its target comes from and its running sums."""

    layer: LinearLayer
    kept: np.ndarray | None  # teacher output channels to match (None: all)
    eq: NormalEquations


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
    """Static shapes of the teacher's tensors (after shape inference), by name.

    Sizes only (a symbolic dim counts as unknown), of the tensors a layer can produce
    (value_info and graph outputs).
    """
    inferred = infer_shapes(model, data_prop=False)
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = dims_of(vi)
        if dims is not None:
            out[vi.name] = tuple(d if isinstance(d, int) else None for d in dims)
    return out


def _kept(layer: LinearLayer, record: PruneRecord | None,
          teacher_shapes: dict[str, tuple[int | None, ...]]) -> np.ndarray | bool:
    """Teacher channels the layer's output must match: indices, True (all) or False (unknown)."""
    entry = record.channels(layer.y) if record is not None else None
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


def reconstruct(
    graph: gs.Graph,
    calibration: CalibrationData,
    teacher: onnx.ModelProto,
    *,
    record: PruneRecord | None,
    settings: RefitSettings,
    ctx: RefitContext,
) -> dict[str, Any]:
    """Refit the layers of ``graph`` in place by least squares to ``teacher``'s activations.

    Args:
        graph: The student (e.g. pruned) graph; sorted, and its layer weights replaced.
        calibration: The inputs both models are run on.
        teacher: The model whose activations the layers are fit to.
        record: What pruning kept (None: match channels by count, see the module doc).
        settings: Scope, ridge and sampling of the refit.
        ctx: Export, random source (row subsampling), logging and progress.

    Returns:
        Stats for the report: ``layers_refit`` (refits kept: they lowered the layer's
        calibration error), ``layers_skipped``, and when any layer was tried
        ``layers_unchanged``, ``stages``, ``rel_error_before`` and ``rel_error_after``.

    Raises:
        UsageError: A teacher tensor has another channel count than the student's and no
            record says which channels were kept.
    """
    if calibration.generated:
        ctx.logger.warning("reconstruct: calibration data is random; refit layers will fit noise statistics")
    # Region seeds: every tensor pruning sliced (activations and weights alike).
    pruned = set(record.tensors) if record is not None else set()

    toposort(graph)
    teacher_tensors = _tensor_names(teacher)
    teacher_shapes = _teacher_channels(teacher)
    opset = default_opset(graph)

    if settings.scope == "all" or not pruned:
        region: set[str] | None = None
    else:
        region = _downstream(graph, pruned)
    exclude = set(settings.exclude)

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
        if settings.scope == "pruned" and pruned and layer.x not in pruned:
            continue
        if region is not None and layer.x not in region:
            continue
        if layer.y not in teacher_tensors:
            skipped += 1
            continue
        kept = _kept(layer, record, teacher_shapes)
        if kept is False:
            skipped += 1
            continue
        layers[id(node)] = layer
        jobs[id(node)] = _Job(layer, kept if isinstance(kept, np.ndarray) else None,
                              NormalEquations(layer.features, layer.outputs // layer.groups, layer.groups, layer.bias))

    if not layers:
        ctx.logger.info("reconstruct: no layer to refit")
        return {"layers_refit": 0, "layers_skipped": skipped}

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
        for feeds in merged_batches(calibration, teacher, max_samples=settings.max_samples):
            s_out = student_tap(feeds)
            t_out = teacher_tap.run_subset(feeds, [j.layer.y for j in stage_jobs])
            for job in stage_jobs:
                _accumulate(job, s_out[job.layer.x], t_out[job.layer.y], ctx.rng, settings.max_rows)
        for job in stage_jobs:
            old = job.layer.current()
            new = job.eq.solve(settings.ridge)
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
    return {
        "layers_refit": refit,
        "layers_unchanged": kept_old,
        "layers_skipped": skipped,
        "stages": len(stages),
        "rel_error_before": round(float(np.mean(err_before)), 6),
        "rel_error_after": round(float(np.mean(err_after)), 6),
    }
