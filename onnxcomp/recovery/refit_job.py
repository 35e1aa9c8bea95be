"""One layer's streamed refit (`RefitJob`) and a model state's held-out fidelity (`FidelityMeter`).

The orchestration -- which layers, which data, in which order -- is `onnxcomp.recovery.refit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxcomp.checking import FidelityAccumulator, summarize
from onnxcomp.errors import UsageError
from onnxcomp.recovery.layers import LinearLayer
from onnxcomp.recovery.lstsq import NormalEquations, stratified_positions

#: Relative ridge strengths tried per layer when none is given; the held-out samples pick one.
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)

#: The ridge used when no sample could be held out to choose one.
DEFAULT_RIDGE = 1e-3


@dataclass
class RefitJob:
    """One layer being refit: where its target and inputs come from, and its running sums.

    Attributes:
        layer: The layer.
        kept: Teacher output channels the layer must match (None: all).
        x_kept: Teacher input channels the student kept, as ``(axis, indices)`` from the
            pruning record; None: all of them; False: the teacher's input cannot be used.
        fit: Sums over the fitting samples.
        held: Sums over the held-out samples.
        rows: Per calibration batch: the sampled positions (None: all), the teacher's
            targets there and whether the batch is held out (see `take_targets`).
        ridge: The ridge the held-out samples chose the first time this layer was solved;
            later steps (the student's own inputs) reuse it instead of searching again:
            the search is most of a refit's solving time, and the inputs of a later step
            differ from the first step's by a pruning's worth, not by their conditioning.
    """

    layer: LinearLayer
    kept: np.ndarray | None
    x_kept: tuple[int, np.ndarray] | None | bool
    fit: NormalEquations
    held: NormalEquations
    ridge: float | None = None
    rows: dict[int, tuple[np.ndarray | None, np.ndarray, bool]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, layer: LinearLayer, kept: np.ndarray | None, x_kept: tuple[int, np.ndarray] | None | bool) -> RefitJob:
        """A job with empty sums."""
        job = cls(layer, kept, x_kept, NormalEquations(1, 1), NormalEquations(1, 1))
        job.reset()
        return job

    def reset(self) -> None:
        """Empty the sums (before a new pass over the data)."""
        layer = self.layer
        self.fit = NormalEquations(layer.features, layer.outputs // layer.groups, layer.groups, layer.bias)
        self.held = NormalEquations(layer.features, layer.outputs // layer.groups, layer.groups, layer.bias)

    @property
    def in_channels(self) -> int:
        """Input channels the layer reads (its input's channel axis)."""
        layer = self.layer
        if layer.geometry is None:
            return layer.features
        return layer.features // int(np.prod(layer.geometry.kernel)) * layer.groups

    def teacher_input(self, x: np.ndarray) -> np.ndarray | None:
        """The teacher's input ``x`` of the layer as the student sees it (kept channels), or
        None when it cannot be mapped (then the layer waits for the student-input steps)."""
        axis = 1 if self.layer.kind == "conv" else x.ndim - 1
        if isinstance(self.x_kept, tuple):
            rec_axis, idx = self.x_kept
            if rec_axis % x.ndim != axis:
                return None
            x = np.take(x, idx, axis=axis)
        return x if x.shape[axis] == self.in_channels else None

    def take_targets(self, index: int, y: np.ndarray, held: bool, rng: np.random.Generator, cap: int) -> None:
        """Keep batch ``index``'s regression targets: the teacher output ``y`` (all channels)
        at up to ``cap`` sampled positions, spread evenly over the batch's samples.

        The positions and targets are all `accumulate` needs of the teacher later, so the
        teacher runs once however many steps refit the layer; memory is bounded by the row
        budget (``cap`` summed over batches), not by the calibration set.
        """
        layer = self.layer
        if self.kept is not None:
            y = np.take(y, self.kept, axis=layer.out_axis)
        if y.shape[layer.out_axis] != layer.outputs:
            # Only reachable when the teacher's shapes were unknown before running it.
            raise UsageError(
                f"reconstruct: teacher tensor {layer.y!r} has {y.shape[layer.out_axis]} channels but the student's has "
                f"{layer.outputs}, and no prune-channels record says which were kept (exclude={layer.node.name!r} skips it)"
            )
        positions = stratified_positions(len(y), y.size // max(y.shape[layer.out_axis], 1) // max(len(y), 1), cap, rng)
        self.rows[index] = (positions, layer.targets(y, positions).astype(np.float32, copy=False), held)

    def accumulate(self, index: int, x: np.ndarray) -> None:
        """Add batch ``index``'s input ``x`` (teacher's or student's) against its kept targets."""
        positions, targets, held = self.rows[index]
        (self.held if held else self.fit).add(self.layer.design(x, positions), targets)

    def solve(self, ridge: float | None) -> tuple[np.ndarray | None, float, float]:
        """The refit of one layer from its sums: ``(new weights or None, error before, after)``.

        Errors are relative squared errors on the held-out samples (on the fitting samples
        when none was held out). The new weights come back only when they lower that error.
        """
        old = self.layer.current()
        if self.fit.samples == 0:
            return None, 0.0, 0.0
        judge = self.held if self.held.samples else self.fit

        def attempt(r: float) -> tuple[float, np.ndarray]:
            w = self.fit.solve(r)
            return judge.residual(w), w

        if ridge is not None:
            best_err, best = attempt(ridge)
        elif self.ridge is not None:
            best_err, best = attempt(self.ridge)
        elif self.held.samples:
            best_err, best, self.ridge = _ridge_search(attempt)
        else:
            best_err, best = attempt(DEFAULT_RIDGE)
        before = judge.residual(old)
        # Keep the old weights unless the refit really helps (relative error < 1e-7: float noise).
        if before - best_err > max(1e-6 * before, 1e-7):
            return best, before, best_err
        return None, before, before


def _ridge_search(evaluate: Callable[[float], tuple[float, np.ndarray]]) -> tuple[float, np.ndarray, float]:
    """The ``(error, weights, ridge)`` of the best ridge in `RIDGE_GRID`, by descent.

    Held-out error is close to unimodal in the ridge, so walking to the better neighbour
    until none is better finds the grid's best in a few solves instead of 5 (a solve costs
    ``F³``: the largest cost of a wide layer). It starts at the grid's middle, the most
    frequent choice (on YOLOv8n 35 of 63 layers; starting at the previous layer's choice
    instead took more solves, 3.65 per layer against 3.44).
    """
    seen: dict[int, tuple[float, np.ndarray]] = {}

    def at(i: int) -> float:
        if i not in seen:
            seen[i] = evaluate(RIDGE_GRID[i])
        return seen[i][0]

    i = len(RIDGE_GRID) // 2
    while True:
        best = min((j for j in (i - 1, i, i + 1) if 0 <= j < len(RIDGE_GRID)), key=at)
        if best == i:
            return (*seen[i], RIDGE_GRID[i])
        i = best


@dataclass(frozen=True)
class Fidelity:
    """A model state's fidelity on the held-out samples, as verification reports it.

    Attributes:
        cosine: The headline: the worst cosine over outputs and their channels
            (`onnxcomp.checking.summarize`).
        output_cosine: The worst whole-output cosine.
    """

    cosine: float
    output_cosine: float

    def beats(self, other: Fidelity) -> bool:
        """Whether this state may replace ``other``: its headline is not lower, and it raises
        the headline or, at an equal headline, the whole-output cosine."""
        if self.cosine < other.cosine:
            return False
        return self.cosine > other.cosine or self.output_cosine > other.output_cosine


class FidelityMeter:
    """Streams a student's graph outputs against the teacher's (`onnxcomp.checking`'s
    per-output, per-channel accumulators, with the default channel axes)."""

    def __init__(self) -> None:
        self.accs: dict[str, FidelityAccumulator] = {}

    def add(self, student: dict[str, np.ndarray], teacher: dict[str, np.ndarray]) -> None:
        """Add one batch of outputs (by name; outputs of other shapes or non-float are skipped)."""
        for name, s in student.items():
            t = teacher.get(name)
            if t is None or s.shape != t.shape or s.dtype.kind != "f" or not s.size:
                continue
            self.accs.setdefault(name, FidelityAccumulator(None, name)).add(t, s)

    def value(self) -> Fidelity | None:
        """The fidelity so far (None: nothing measured)."""
        if not self.accs:
            return None
        summary = summarize({name: acc.result() for name, acc in self.accs.items()})
        return Fidelity(float(summary["cosine"]), float(summary["output_cosine"]))
