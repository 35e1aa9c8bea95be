"""One layer's streamed refit (`RefitJob`) and the model's held-out output error (`OutputError`).

The orchestration -- which layers, which data, in which order -- is `onnxcomp.recovery.refit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import UsageError
from onnxcomp.recovery.activations import BATCH_SAMPLES
from onnxcomp.recovery.layers import LinearLayer
from onnxcomp.recovery.lstsq import NormalEquations

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

    def accumulate(self, x: np.ndarray, y: np.ndarray, held: bool, rng: np.random.Generator, max_rows: int) -> None:
        """Add one batch: input ``x``, teacher output ``y`` (all channels), to ``fit`` or ``held``."""
        layer = self.layer
        if self.kept is not None:
            y = np.take(y, self.kept, axis=layer.out_axis)
        if y.shape[layer.out_axis] != layer.outputs:
            # Only reachable when the teacher's shapes were unknown before running it.
            raise UsageError(
                f"reconstruct: teacher tensor {layer.y!r} has {y.shape[layer.out_axis]} channels but the student's has "
                f"{layer.outputs}, and no prune-channels record says which were kept (exclude={layer.node.name!r} skips it)"
            )
        # The row budget is per BATCH_SAMPLES samples (a batch of 1 gets its share, not
        # max_rows), and at least 2 rows per feature so wide layers stay determined.
        budget = max(max_rows, 2 * (layer.features + 1))
        cap = max(1, -(-budget * x.shape[0] // BATCH_SAMPLES))
        m = layer.rows(x)
        positions = None
        if m > cap:
            positions = np.sort(rng.choice(m, size=cap, replace=False))
        (self.held if held else self.fit).add(layer.design(x, positions), layer.targets(y, positions))

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
    """The ``(error, weights, ridge)`` of the best ridge in `RIDGE_GRID`, by descent from its middle.

    Held-out error is close to unimodal in the ridge, so walking to the better neighbour
    until none is better finds the grid's best in 3-4 solves instead of 5 (a solve costs
    ``F³``: the largest cost of a wide layer).
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


class OutputError:
    """Held-out error of the student's graph outputs against the teacher's, streamed.

    Per output and channel (axis 1; a [N] output is one channel): ``Σ(s − t)² / Σt²``;
    the value is the mean over channels and outputs, so an output part with large values
    (box coordinates beside class scores) does not hide the others.
    """

    def __init__(self) -> None:
        self.num: dict[str, np.ndarray] = {}
        self.den: dict[str, np.ndarray] = {}

    def add(self, student: dict[str, np.ndarray], teacher: dict[str, np.ndarray]) -> None:
        """Add one batch of outputs (by name; outputs of other shapes or non-float are skipped)."""
        for name, s in student.items():
            t = teacher.get(name)
            if t is None or s.shape != t.shape or s.dtype.kind != "f" or not s.size:
                continue
            axes = tuple(a for a in range(s.ndim) if a != 1) if s.ndim > 1 else None
            d = np.square(s.astype(np.float64) - t).sum(axis=axes)
            n = np.square(t.astype(np.float64)).sum(axis=axes)
            self.num[name] = self.num.get(name, 0.0) + d
            self.den[name] = self.den.get(name, 0.0) + n

    def value(self) -> float | None:
        """Mean relative squared error over output channels (None: nothing measured)."""
        errs = []
        for name, num in self.num.items():
            num, den = np.atleast_1d(num), np.atleast_1d(self.den[name])
            live = den > 1e-30
            errs.extend((num[live] / den[live]).tolist())
            errs.extend([0.0 if v == 0 else 1.0 for v in num[~live]])  # a zero target: exact or not
        return float(np.mean(errs)) if errs else None
