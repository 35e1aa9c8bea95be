"""Training-free accuracy recovery by layer-wise least squares: `reconstruct`.

After pruning, every Conv / Gemm / MatMul whose input lost channels (and every layer
downstream of one) sees different activations than in the original model. For such a
layer with input ``X`` and teacher output ``Y`` (the original model's activation of the
same tensor, restricted to the output channels pruning kept), `reconstruct` solves the
ridge problem::

    W', b' = argmin ||X W + b − Y||² + λ||W||²        (closed form, see `lstsq`)

-- feature distillation in closed form, one layer at a time.

Steps. Each step is one pass over the calibration data with every activation it needs
tapped (one onnxruntime session per model and step); every layer's ``XᵀX`` / ``XᵀY``
are summed at once and the activations are never stored.

1. The teacher runs once. Each layer keeps the teacher's output at a fixed budget of
   sampled positions (``max_rows`` rows over all samples, the same number from each;
   `RefitJob.take_targets`): its regression targets for every step. Layers whose input
   the teacher can give (its channels the student kept) are fit on it: every layer
   starts from the best weights for ideal inputs, independently of the others.
2. Then ``blocks`` depth-ordered blocks are refit on the *student's* own input (the model
   as refit so far, earlier blocks included), so a layer also absorbs the remaining errors
   of the layers before it. Only the student's prefix up to the block runs.

Cost: one teacher pass, about ``(blocks + 1) / 2`` student passes and short held-out
passes; the products (``rows · F²`` per layer) and solves are bounded by the row budget,
so only the forward passes grow with the calibration size.

Held-out samples (one in five, see `split_batches`) guard against overfitting the
calibration set: per layer they choose the ridge (`refit_job.RIDGE_GRID`, relative to
mean(diag(XᵀX)), unless ``ridge`` is given) and a refit is kept only when it lowers the
layer's held-out error. After every step the model's held-out fidelity is measured with
the verification's metric (`refit_job.FidelityMeter`: the worst cosine over outputs and
their channels), and the step is undone unless it does not lower that headline
(`refit_job.Fidelity.beats`): the refit never leaves the model worse on held-out samples
than pruning alone did, by the number verification reports.

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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.ir import default_opset, dims_of, infer_shapes, toposort
from onnxcomp.recovery.activations import BATCH_SAMPLES, TensorTap, split_batches
from onnxcomp.recovery.layers import LinearLayer, match_layer
from onnxcomp.recovery.refit_job import DEFAULT_RIDGE, Fidelity, FidelityMeter, RefitJob

if typing.TYPE_CHECKING:
    from onnxcomp.checking.calibration import CalibrationData
    from onnxcomp.pruning.record import PruneRecord


@dataclass(frozen=True, kw_only=True)
class RefitSettings:
    """How `reconstruct` refits (the ``reconstruct`` pass's options, teacher aside).

    Attributes:
        ridge: Ridge strength relative to mean(diag(XᵀX)); None: chosen per layer from
            ``refit_job.RIDGE_GRID`` on the held-out calibration samples.
        scope: Layers to refit: those whose input changed because of pruning and
            everything after them (``downstream``), only those whose input channels were
            pruned (``pruned``), or every layer (``all``).
        blocks: Depth-ordered blocks in which the layers are refit on the student's own
            inputs, after the first pass that fits each one on the teacher's input (0: that
            first pass only).
        max_samples: Calibration samples used (None: all).
        max_rows: Regression rows per layer over all samples (the same number from each
            sample; at least 2 per feature).
        exclude: Node names never refit.
    """

    ridge: float | None = None
    scope: Literal["downstream", "pruned", "all"] = "downstream"
    blocks: int = 4
    max_samples: int | None = None
    max_rows: int = 2048
    exclude: tuple[str, ...] = ()


def teacher_for(record: PruneRecord | None, original: onnx.ModelProto) -> onnx.ModelProto:
    """The default teacher of a recovery pass: the model pruning started from when the run
    pruned (`PruneRecord.source`: the same tensor names as the pruned model), else
    ``original`` (the run's input)."""
    if record is not None and record.source is not None:
        return record.source
    return original


class RefitContext(Protocol):
    """What `reconstruct` needs of a pass context (`onnxcomp.PassContext` has it)."""

    rng: np.random.Generator
    logger: logging.Logger

    def to_model(self, graph: gs.Graph) -> onnx.ModelProto: ...

    def progress(self, message: str) -> None: ...



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


def _blocks(graph: gs.Graph, jobs: list[RefitJob], count: int) -> list[list[RefitJob]]:
    """Split ``jobs`` into at most ``count`` blocks of consecutive depth levels.

    A layer's level is 1 + the largest level of a refit layer upstream of it, so layers
    of one level never feed each other; a block spans about ``levels / count`` levels.
    """
    by_node = {id(j.layer.node): j for j in jobs}
    level: dict[str, int] = {}
    job_level: dict[int, int] = {}
    for node in graph.nodes:
        lvl = max((level.get(t.name, 0) for t in node.inputs if t.name), default=0)
        job = by_node.get(id(node))
        if job is not None:
            job_level[id(job)] = lvl
            lvl += 1
        for t in node.outputs:
            level[t.name] = lvl
    levels = max(job_level.values(), default=-1) + 1
    count = min(count, levels)
    if count <= 0:
        return []
    blocks: list[list[RefitJob]] = [[] for _ in range(count)]
    for job in jobs:
        blocks[job_level[id(job)] * count // levels].append(job)
    return [b for b in blocks if b]


def _select(graph: gs.Graph, teacher: onnx.ModelProto, record: PruneRecord | None, settings: RefitSettings,
            ) -> tuple[list[RefitJob], int]:
    """The layers to refit (as jobs) and how many candidates were skipped."""
    pruned = set(record.tensors) if record is not None else set()
    teacher_tensors = _tensor_names(teacher)
    teacher_shapes = _teacher_channels(teacher)
    opset = default_opset(graph)
    region = None if settings.scope == "all" or not pruned else _downstream(graph, pruned)
    exclude = set(settings.exclude)
    jobs: list[RefitJob] = []
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
        x_entry = record.channels(layer.x) if record is not None else None
        x_kept: tuple[int, np.ndarray] | None | bool = False if layer.x not in teacher_tensors else x_entry
        jobs.append(RefitJob.create(layer, kept if isinstance(kept, np.ndarray) else None, x_kept))
    return jobs, skipped


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
        calibration: The inputs both models are run on (one sample in five is held out).
        teacher: The model whose activations the layers are fit to.
        record: What pruning kept (None: match channels by count, see the module doc).
        settings: Scope, ridge, blocks and sampling of the refit.
        ctx: Export, random source (row subsampling), logging and progress.

    Returns:
        Stats for the report: ``layers_refit`` (layers whose weights changed),
        ``layers_skipped``, and when any layer was tried ``layers_unchanged``, ``steps``,
        ``steps_kept``, ``held_out_samples``, ``rel_error_before`` / ``rel_error_after``
        (mean per-layer held-out error) and ``cosine_pruned`` / ``cosine_after`` and
        ``output_cosine_pruned`` / ``output_cosine_after`` (the model's held-out headline
        and whole-output cosines, see `refit_job.Fidelity`).

    Raises:
        UsageError: A teacher tensor has another channel count than the student's and no
            record says which channels were kept.
    """
    if calibration.generated:
        ctx.logger.warning("reconstruct: calibration data is random; refit layers will fit noise statistics")
    toposort(graph)
    jobs, skipped = _select(graph, teacher, record, settings)
    if not jobs:
        ctx.logger.info("reconstruct: no layer to refit")
        return {"layers_refit": 0, "layers_skipped": skipped}

    outputs = [o.name for o in graph.outputs if o.name in _tensor_names(teacher)]
    from_teacher = [j for j in jobs if j.x_kept is not False]
    steps = _blocks(graph, jobs, settings.blocks)
    known = calibration.num_samples
    if known is not None and settings.max_samples is not None:
        known = min(known, settings.max_samples)
    per_rows = known or BATCH_SAMPLES  # the row budget is spread over this many samples

    def cap(job: RefitJob, samples: int) -> int:
        # At least 2 rows per feature, so wide layers stay determined.
        budget = max(settings.max_rows, 2 * (job.layer.features + 1))
        return max(1, -(-budget * samples // per_rows))

    # A state is each layer's inputs and attributes: `LinearLayer.assign` puts fresh
    # constants in, so restoring the saved lists restores the graph exactly.
    def snapshot(group: list[RefitJob]) -> list[tuple[RefitJob, list[gs.Tensor], dict[str, Any]]]:
        return [(j, list(j.layer.node.inputs), dict(j.layer.node.attrs)) for j in group]

    def restore(state: list[tuple[RefitJob, list[gs.Tensor], dict[str, Any]]]) -> None:
        for job, inputs, attrs in state:
            job.layer.node.inputs.clear()  # graphsurgeon lists keep tensor links in sync
            job.layer.node.inputs.extend(inputs)
            job.layer.node.attrs.clear()
            job.layer.node.attrs.update(attrs)

    def batches() -> Iterator[tuple[int, dict[str, np.ndarray], bool]]:
        for index, (feeds, held) in enumerate(split_batches(calibration, teacher, max_samples=settings.max_samples)):
            yield index, feeds, held

    initial = snapshot(jobs)
    # The teacher's outputs on the held-out samples (small; the inputs are re-read).
    held_targets: list[dict[str, np.ndarray]] = []
    fidelities: list[Fidelity | None] = []
    kept_steps: list[int] = []
    best: Fidelity | None = None

    def measure() -> Fidelity | None:
        """Held-out fidelity of the graph as it is now."""
        tap, meter = TensorTap(ctx.to_model(graph), outputs), FidelityMeter()
        held_feeds = (feeds for _, feeds, held in batches() if held)
        for feeds, target in zip(held_feeds, held_targets):
            meter.add(tap(feeds), target)
        return meter.value()

    def settle(step: int, state: list[tuple[RefitJob, list[gs.Tensor], dict[str, Any]]]) -> None:
        """Keep this step's refits only when held-out fidelity -- the headline verification
        reports -- does not fall (`Fidelity.beats`); else put its layers back as they were."""
        nonlocal best
        if not held_targets:
            kept_steps.append(step)
            return
        now = measure()
        fidelities.append(now)
        if now is not None and (best is None or now.beats(best)):
            best = now
            kept_steps.append(step)
        else:
            restore(state)
            ctx.logger.debug("reconstruct: step %d lowers held-out fidelity (%s vs %s); its refits are undone", step, now, best)

    per_layer: list[tuple[float, float]] = []

    def solve(active: list[RefitJob], step: int) -> None:
        for job in active:
            new, before, after = job.solve(settings.ridge)
            if new is not None:
                job.layer.assign(new)
            per_layer.append((before, after))
            ctx.logger.debug("reconstruct %s (step %d): held-out rel. error %.4g -> %.4g", job.layer.node.name, step, before, after)

    total = 1 + len(steps)
    # Step 1: the teacher, once. Every layer keeps its targets (sampled positions of the
    # teacher's output) for all steps, and the layers whose input the teacher can give are
    # fit on it; the held-out samples' teacher outputs are kept (they judge every state)
    # and the pruned state is measured on them.
    ctx.progress(f"reconstruct: step 1/{total} (teacher inputs, {len(from_teacher)} layers)")
    teacher_tap = TensorTap(teacher, [j.layer.y for j in jobs] + [j.layer.x for j in from_teacher] + outputs)
    pruned_tap = TensorTap(ctx.to_model(graph), outputs)
    pruned = FidelityMeter()
    held_samples = 0
    for index, feeds, held in batches():
        t_out = teacher_tap(feeds)
        samples = len(next(iter(feeds.values())))
        if held:
            held_samples += samples
            held_targets.append({o: t_out[o] for o in outputs})
            pruned.add(pruned_tap(feeds), held_targets[-1])
        for job in jobs:
            job.take_targets(index, t_out[job.layer.y], held, ctx.rng, cap(job, samples))
        for job in from_teacher:
            x = job.teacher_input(t_out[job.layer.x])
            if x is not None:
                job.accumulate(index, x)
        del t_out
    del teacher_tap, pruned_tap
    best = pruned.value() if held_targets else None
    fidelities.append(best)
    state = snapshot(from_teacher)
    solve(from_teacher, 1)
    settle(1, state)
    # Then the student, block by block in depth order: each block's layers see inputs
    # from the blocks before them, as kept; only the student's prefix up to a block runs,
    # and the teacher not at all (its targets were kept in step 1).
    for k, block in enumerate(steps, start=2):
        ctx.progress(f"reconstruct: step {k}/{total} (student inputs, {len(block)} layers)")
        student_tap = TensorTap(ctx.to_model(graph), [j.layer.x for j in block])
        for job in block:
            job.reset()
        for index, feeds, _ in batches():
            s_out = student_tap(feeds)
            for job in block:
                job.accumulate(index, s_out[job.layer.x])
        del student_tap
        state = snapshot(block)
        solve(block, k)
        settle(k, state)

    if not held_targets:
        ctx.logger.warning("reconstruct: too few calibration batches to hold any out; ridge %g, refits unchecked "
                           "on unseen samples", settings.ridge if settings.ridge is not None else DEFAULT_RIDGE)
    changed = sum(
        any(a is not b for a, b in zip(inputs, j.layer.node.inputs)) or len(inputs) != len(j.layer.node.inputs)
        for j, inputs, _ in initial
    )
    stats: dict[str, Any] = {
        "layers_refit": changed,
        "layers_unchanged": len(jobs) - changed,
        "layers_skipped": skipped,
        "steps": total,
        "steps_kept": kept_steps,
        "held_out_samples": held_samples,
        "rel_error_before": round(float(np.mean([b for b, _ in per_layer])), 6) if per_layer else 0.0,
        "rel_error_after": round(float(np.mean([a for _, a in per_layer])), 6) if per_layer else 0.0,
    }
    if fidelities and fidelities[0] is not None and best is not None:
        stats["cosine_pruned"] = round(fidelities[0].cosine, 6)
        stats["cosine_after"] = round(best.cosine, 6)
        stats["output_cosine_pruned"] = round(fidelities[0].output_cosine, 6)
        stats["output_cosine_after"] = round(best.output_cosine, 6)
    return stats
