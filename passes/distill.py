"""``distill``: recover accuracy by knowledge distillation from the original model.

The current (e.g. pruned) graph is turned into a trainable PyTorch module whose
parameters are the graph's weight initializers (`onnxcomp.recovery.torch_graph`), trained
against the teacher -- the model ``prune-channels`` started from (else the run's input),
or ``teacher=PATH`` -- with::

    L = α·CE(labels) + (1 − α)·T²·KL(teacher_T ‖ student_T) + β·feature MSE

(see `onnxcomp.recovery.distill_loop`), and the trained values are written back into the
same initializers: the graph structure is unchanged, only weight values move.

Data: ``ctx.train_data`` (``--train-data``; an extra ``label`` array gives hard labels),
else the calibration data with a warning. Teacher outputs are computed once, in one
onnxruntime session. Feature tensors are matched by name; when pruning sliced a feature
tensor, the teacher's copy is restricted to the kept channels (the pruning record,
`onnxcomp.pruning.PruneRecord`). Needs the ``torch`` extra; this module imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import (
    CalibrationData,
    Pass,
    PassContext,
    PassOptions,
    PassResult,
    load_model,
    register_pass,
)
from onnxcomp.checking import required_input_specs
from onnxcomp.errors import UsageError
from onnxcomp.pruning import PruneRecord
from onnxcomp.recovery import RefitSettings, TensorTap, reconstruct, teacher_for

_NO_TORCH = "distill needs PyTorch: pip install 'onnxcomp[torch]'"


@dataclass(frozen=True, kw_only=True)
class DistillOptions(PassOptions):
    """Options of ``distill``."""

    epochs: int = field(default=20, metadata={"help": "training epochs (upper bound: early stopping)"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate (cosine-annealed to 0)"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    temperature: float = field(default=4.0, metadata={"help": "softmax temperature T of the KL term"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the hard-label CE term (needs labels)"})
    beta: float = field(default=0.0, metadata={"help": "weight of the feature MSE term"})
    features: tuple[str, ...] = field(default=(), metadata={"help": "intermediate tensor names matched by the feature term"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    val_fraction: float = field(default=0.1, metadata={"help": "held-out fraction for early stopping"})
    patience: int = field(default=5, metadata={"help": "epochs without validation improvement before stopping"})
    max_samples: int | None = field(default=None, metadata={"help": "cap on training samples held in memory"})
    seed: int | None = field(default=None, metadata={"help": "training seed (default: the run's seed)"})
    output: str | None = field(default=None, metadata={"help": "graph output to distil (default: the first)"})
    refit: bool = field(
        default=True,
        metadata={"help": "start from the least-squares layer refit of `reconstruct` (cheap, closed form)"},
    )
    threads: int = field(default=1, metadata={"help": "torch intra-op threads (1 is fastest for small models)"})
    teacher: str | None = field(default=None, metadata={"help": "teacher ONNX path (default: the model before prune-channels, else the run's input)"})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.temperature > 0:
            raise UsageError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.beta < 0:
            raise UsageError(f"beta must be >= 0, got {self.beta}")
        if self.beta > 0 and not self.features:
            raise UsageError("beta > 0 needs feature tensor names (features=[a,b])")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.patience < 1:
            raise UsageError(f"patience must be >= 1, got {self.patience}")
        if self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if self.max_samples is not None and self.max_samples < 2:
            raise UsageError(f"max_samples must be >= 2, got {self.max_samples}")


def _load_data(ctx: PassContext, max_samples: int | None, fixed: int | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    data = ctx.train_data
    if data is None:
        if ctx.calibration is None:
            raise UsageError("distill needs training data (--train-data PATH) or calibration data")
        ctx.logger.warning("distill: no --train-data given; training on the calibration data")
        data = ctx.calibration
    feeds: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    has_labels = True
    for batch, y in data.iter_with_labels(max_samples):
        for k, v in batch.items():
            feeds.setdefault(k, []).append(v)
        if y is None:
            has_labels = False
        else:
            labels.append(y)
    if not feeds:
        if fixed is not None:  # the data's batches are cut to the fixed size; a rest is dropped
            raise UsageError(f"distill: the training data has no complete batch of the model's fixed batch size {fixed}")
        raise UsageError("distill: the training data is empty")
    inputs = {k: np.concatenate(v) for k, v in feeds.items()}
    return inputs, (np.concatenate(labels).reshape(-1) if has_labels and labels else None)


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    """The model's fixed batch size (None: symbolic): every batch it runs must have it.

    Exports with a fixed batch often bake it into Reshape shapes too, so neither
    onnxruntime nor the torch interpreter can run another one.
    """
    fixed = {s.batch_dim for s in required_input_specs(model) if isinstance(s.batch_dim, int) and s.batch_dim > 0}
    if len(fixed) > 1:
        raise UsageError(f"distill: the model's inputs have different fixed batch sizes {sorted(fixed)}")
    return fixed.pop() if fixed else None


def _teacher_outputs(teacher: onnx.ModelProto, inputs: dict[str, np.ndarray], names: list[str], batch: int) -> dict[str, np.ndarray]:
    tap = TensorTap(teacher, names)
    n = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n, batch):
        out = tap({k: v[start : start + batch] for k, v in inputs.items()})
        for k in names:
            parts[k].append(out[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _restrict(name: str, t: np.ndarray, student_shape: tuple, record: PruneRecord | None) -> np.ndarray:
    """The teacher's tensor restricted to the channels the student kept."""
    entry = record.channels(name) if record is not None else None
    if entry is not None:
        axis, idx = entry
        t = np.take(t, np.asarray(idx, dtype=np.int64), axis=axis)
    if t.shape[1:] != tuple(student_shape[1:]):
        raise UsageError(
            f"distill: feature {name!r} has shape {t.shape[1:]} in the teacher but {tuple(student_shape[1:])} in the "
            "student, and no pruning record says which channels were kept"
        )
    return t


@register_pass("distill")
class Distill(Pass[DistillOptions]):
    """Train the weights by knowledge distillation from the original model (torch extra)."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        try:
            import torch
        except ImportError:
            raise UsageError(_NO_TORCH) from None
        from onnxcomp.recovery import (  # need torch: imported here
            DistillConfig,
            OnnxModule,
            distill,
        )

        record = ctx.records.get(PruneRecord)
        teacher = load_model(opts.teacher) if opts.teacher is not None else teacher_for(record, ctx.original_model)
        module = OnnxModule(ctx.to_model(graph))  # fails early, naming unsupported ops
        if not module.trainable_names:
            return PassResult(modified=False, stats={"params_trained": 0})
        output = opts.output or module.output_names[0]
        if output not in module.output_names:
            raise UsageError(f"distill: {output!r} is not a graph output; outputs: {', '.join(module.output_names)}")
        teacher_names = {o for n in teacher.graph.node for o in n.output} | {o.name for o in teacher.graph.output}
        missing = [f for f in (output, *opts.features) if f not in teacher_names]
        if missing:
            raise UsageError(f"distill: tensor(s) not in the teacher model: {', '.join(missing)}")
        # Data and batch size are settled before any expensive work (refit, teacher, training).
        fixed = _fixed_batch(ctx.to_model(graph))
        # A fixed batch B: batches of batch_size rounded to a multiple of B, run B at a time.
        batch_size = max(fixed, opts.batch_size // fixed * fixed) if fixed else opts.batch_size
        if fixed is not None and batch_size != opts.batch_size:
            ctx.logger.info("distill: the model's batch dimension is fixed at %d; batches of %d samples", fixed, batch_size)
        inputs, labels = _load_data(ctx, opts.max_samples, fixed)
        n = len(next(iter(inputs.values())))
        needed = max(2, fixed or 0)
        if n < needed:
            why = f" (one batch of the model's fixed batch size {fixed})" if fixed and fixed >= 2 else ""
            raise UsageError(f"distill needs at least {needed} training samples{why}; the data has {n}")
        refit_stats: dict = {}
        if opts.refit:
            refit_stats = self._refit(graph, ctx, teacher, record)
            if refit_stats.get("layers_refit"):
                module = OnnxModule(ctx.to_model(graph))

        ctx.progress(f"distill: teacher outputs for {n} samples")
        names = [output, *(opts.features if opts.beta > 0 else ())]
        targets = _teacher_outputs(teacher, inputs, names, fixed or max(opts.batch_size, 64))
        if opts.beta > 0:
            with torch.no_grad():
                probe = module({k: torch.from_numpy(v[: fixed or 1]) for k, v in inputs.items()}, capture=opts.features)
            for f in opts.features:
                targets[f] = _restrict(f, targets[f], tuple(probe[f].shape), record)

        cfg = DistillConfig(
            epochs=opts.epochs, lr=opts.lr, batch_size=batch_size, micro_batch=fixed, temperature=opts.temperature, alpha=opts.alpha,
            beta=opts.beta, weight_decay=opts.weight_decay, val_fraction=opts.val_fraction, patience=opts.patience,
            seed=ctx.seed if opts.seed is None else opts.seed, threads=opts.threads,
        )
        before = module.export_initializers()
        result = distill(module, inputs, targets, output=output, features=opts.features if opts.beta > 0 else (),
                         labels=labels, config=cfg, progress=ctx.progress)
        after = module.export_initializers()
        changed = {k: v for k, v in after.items() if not np.array_equal(v, before[k])}
        if changed:
            consts = {t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant)}
            for name, value in changed.items():
                const = consts[name]
                const.values = value.astype(np.asarray(const.values).dtype)
        last = result.history[-1] if result.history else {}
        best = result.history[result.best_epoch - 1] if result.best_epoch else result.initial
        stats = {
            "layers_refit": refit_stats.get("layers_refit", 0),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "samples": n,
            "batch_size": batch_size,
            "labels": labels is not None,
            "params_trained": len(changed),
            "val_kl_before": round(result.initial.get("val_kl", float("nan")), 6),
            "val_kl_after": round(best.get("val_kl", float("nan")), 6),
            "val_top1_agreement": round(best.get("val_top1_agreement", float("nan")), 6),
            "final_train_loss": round(last.get("train_loss", float("nan")), 6),
        }
        return PassResult(modified=bool(changed) or bool(refit_stats.get("layers_refit")), stats=stats)

    @staticmethod
    def _refit(graph: gs.Graph, ctx: PassContext, teacher: onnx.ModelProto, record: PruneRecord | None) -> dict:
        """Run the ``reconstruct`` refit first (default settings): training then starts
        near the teacher.

        After heavy pruning the student's logits are far from the teacher's (top-1 can be
        at chance); the closed-form refit recovers most of the gap in seconds, so the
        gradient steps go into the last bit of accuracy instead of re-learning scale.
        It fits on the calibration data, else on the training data.
        """
        data: CalibrationData | None = ctx.calibration if ctx.calibration is not None else ctx.train_data
        if data is None:
            return {}
        return reconstruct(graph, data, teacher, record=record, settings=RefitSettings(), ctx=ctx)
