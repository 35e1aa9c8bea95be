"""The knowledge-distillation training loop (needs the ``torch`` extra).

The student (an `OnnxModule`) is trained against precomputed teacher outputs with::

    L = α·CE(y, s)  +  (1 − α)·T²·KL(softmax(t/T) ‖ softmax(s/T))  +  β·Σ_f MSE(s_f, t_f) / mean(t_f²)

``s``/``t`` are student/teacher logits, ``y`` hard labels (without labels the CE term is
dropped and the KL term gets weight 1), ``s_f``/``t_f`` matched intermediate tensors.
The T² factor keeps the KL gradients' scale independent of the temperature (Hinton et
al., 2015); dividing each feature MSE by the teacher's mean square makes β scale-free.
An output that is not a ``[batch, classes]`` matrix is matched by the same normalised
MSE instead of KL.

Training data and teacher outputs are held in memory (cap them with ``max_samples``);
a seeded split holds out ``val_fraction`` of the samples for early stopping, and the
weights of the best validation epoch are restored at the end. Runs are deterministic for
a seed: ``torch.manual_seed``, deterministic algorithms, and a seeded data order.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from onnxcomp.recovery.torch_graph import OnnxModule


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of `distill` (see the ``distill`` pass options for meanings)."""

    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    #: The model's fixed batch size (None: any batch runs). Each batch of ``batch_size``
    #: samples then runs as micro-batches of exactly this size with their gradients summed
    #: (one optimizer step per batch, as without a fixed batch); the split and the batches
    #: are multiples of it, and a ragged rest is skipped.
    micro_batch: int | None = None
    temperature: float = 4.0
    alpha: float = 0.5
    beta: float = 0.0
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    patience: int = 5
    seed: int = 0
    threads: int | None = 1


@dataclass
class DistillResult:
    """What training did.

    Attributes:
        epochs_run: Epochs actually run (early stopping may cut them short).
        best_epoch: The epoch whose weights were kept (0 = the untrained student).
        history: Per epoch: train loss, val loss, val KL (T=1), val top-1 agreement.
        initial: The same validation metrics before training.
    """

    epochs_run: int = 0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None = None) -> Iterator[None]:
    """Seed torch, force deterministic kernels (and a thread count); restore all afterwards.

    Small models train fastest single-threaded: intra-op threads cost more in
    synchronisation than they save, and much more on a busy machine.
    """
    prev = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev)
            torch.set_num_threads(prev_threads)


def _is_logits(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.shape[1] > 1


def _nmse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)


def _output_loss(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    if not _is_logits(t):
        return _nmse(s, t)
    log_ps = F.log_softmax(s / temperature, dim=1)
    log_pt = F.log_softmax(t / temperature, dim=1)
    return temperature**2 * F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")


def distill(
    student: OnnxModule,
    inputs: dict[str, np.ndarray],
    teacher: dict[str, np.ndarray],
    *,
    output: str,
    features: tuple[str, ...] = (),
    labels: np.ndarray | None = None,
    config: DistillConfig = DistillConfig(),
    progress: Callable[[str], None] | None = None,
) -> DistillResult:
    """Train ``student`` in place to match ``teacher``; keep the best validation weights.

    Args:
        student: The trainable student.
        inputs: Graph inputs, samples on axis 0.
        teacher: Teacher tensors for the same samples: ``output`` and each of
            ``features`` (already restricted to the channels the student kept).
        output: The student output to distil (a graph output name).
        features: Intermediate tensors matched by the feature term.
        labels: Hard labels (``[N]`` int) or None.
        config: Hyper-parameters.
        progress: Called with one status line per epoch.

    Returns:
        A `DistillResult`.
    """
    cfg = config
    n = len(next(iter(inputs.values())))
    result = DistillResult()
    with deterministic(cfg.seed, cfg.threads):
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(n, generator=gen)
        n_val = min(n - 1, round(n * cfg.val_fraction)) if cfg.val_fraction > 0 and n > 1 else 0
        if cfg.micro_batch:
            m = cfg.micro_batch
            n_val = max(m, n_val // m * m) if n_val and n >= 2 * m else 0
        val_idx, train_idx = order[:n_val], order[n_val:]
        x_all = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        t_all = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in teacher.items()}
        y_all = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
        use_ce = y_all is not None and cfg.alpha > 0 and _is_logits(t_all[output])
        w_kl = (1.0 - cfg.alpha) if use_ce else 1.0
        capture = tuple(features) if cfg.beta > 0 else ()

        def loss_of(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = student({k: v[idx] for k, v in x_all.items()}, capture=capture)
            s, t = out[output], t_all[output][idx]
            loss = w_kl * _output_loss(s, t, cfg.temperature)
            if use_ce:
                assert y_all is not None
                loss = loss + cfg.alpha * F.cross_entropy(s, y_all[idx])
            for f in capture:
                loss = loss + cfg.beta * _nmse(out[f], t_all[f][idx])
            return loss, s

        def batches(idx: torch.Tensor) -> Iterator[torch.Tensor]:
            last = len(idx) - len(idx) % cfg.micro_batch if cfg.micro_batch else len(idx)
            for start in range(0, last, cfg.batch_size):
                yield idx[start : min(start + cfg.batch_size, last)]

        def parts(batch: torch.Tensor) -> Iterator[torch.Tensor]:
            step = cfg.micro_batch or len(batch)
            for start in range(0, len(batch), step):
                yield batch[start : start + step]

        def evaluate() -> dict[str, float]:
            idx = val_idx if n_val else train_idx
            student.eval()
            losses, kls, agree, count = 0.0, 0.0, 0.0, 0
            with torch.no_grad():
                for b in (part for batch in batches(idx) for part in parts(batch)):
                    loss, s = loss_of(b)
                    t = t_all[output][b]
                    losses += float(loss) * len(b)
                    if _is_logits(t):
                        kls += float(_output_loss(s, t, 1.0)) * len(b)
                        agree += float((s.argmax(1) == t.argmax(1)).sum())
                    else:
                        kls += float(_nmse(s, t)) * len(b)
                    count += len(b)
            student.train()
            return {"val_loss": losses / count, "val_kl": kls / count, "val_top1_agreement": agree / count if _is_logits(t_all[output]) else math.nan}

        params = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = max(1, cfg.epochs * -(-len(train_idx) // cfg.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        result.initial = evaluate()
        best = result.initial["val_loss"]
        best_state = copy.deepcopy(student.state_dict())
        stale = 0
        for epoch in range(1, cfg.epochs + 1):
            student.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            total, seen = 0.0, 0
            for b in batches(perm):
                opt.zero_grad(set_to_none=True)
                for part in parts(b):
                    loss, _ = loss_of(part)
                    (loss * (len(part) / len(b))).backward()  # the batch's mean loss, summed by parts
                    total += float(loss.detach()) * len(part)
                opt.step()
                sched.step()
                seen += len(b)
            metrics = {"epoch": float(epoch), "train_loss": total / max(seen, 1), **evaluate()}
            result.history.append(metrics)
            result.epochs_run = epoch
            if progress is not None:
                agree = metrics["val_top1_agreement"]
                tail = f", top-1 agreement {agree:.2%}" if not math.isnan(agree) else ""
                progress(f"distill epoch {epoch}/{cfg.epochs}: loss {metrics['train_loss']:.4f}, val KL {metrics['val_kl']:.4f}{tail}")
            if metrics["val_loss"] < best - 1e-7:
                best, best_state, stale, result.best_epoch = metrics["val_loss"], copy.deepcopy(student.state_dict()), 0, epoch
            else:
                stale += 1
                if n_val and stale >= cfg.patience:
                    break
        student.load_state_dict(best_state)
        student.eval()
    return result
