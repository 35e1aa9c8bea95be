"""What ``tune`` optimises for: a metric scored on the evaluation data, and the budget.

Metrics (higher is better internally; `Metric.display` turns a score back):

* ``cosine``: the worst cosine between candidate and original outputs, per output and
  per channel (`onnxcomp.checking.metrics`, the measure ``--min-cosine`` uses everywhere);
  the original scores 1.
* ``accuracy``: top-1 of the first output against the ``label`` array of the eval data,
  as a fraction (0.005 = half a point).
* ``perplexity``: exp of the mean next-token cross-entropy of the first output (logits
  ``[N, T, V]``) against ``label`` (``[N, T]`` token ids; without it, ``input_ids``
  shifted by one). Lower is better; scored as its negative.
* ``MODULE:FUNCTION`` (a dotted module or a ``.py`` file, imported like a plugin):
  ``f(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> float``, called
  once with every eval sample's outputs and the eval data (inputs and ``label``), higher
  is better unless the function has ``higher_is_better = False``.

The evaluation data is read once per process (`EvalSet`, at most `MAX_EVAL_SAMPLES`
samples) and the original's outputs on it are computed once; no pass ever sees it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import onnx

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.checking.metrics import FidelityAccumulator, summarize
from onnxcomp.checking.perplexity import PerplexityAccumulator
from onnxcomp.checking.runtime import make_session, run
from onnxcomp.errors import UsageError, one_line
from onnxcomp.pipeline.plugins import load_plugin

#: Eval samples scored per candidate (like ``compare``).
MAX_EVAL_SAMPLES = 512

BUILTIN = ("cosine", "accuracy", "perplexity")


@dataclass(frozen=True)
class Metric:
    """A named metric; ``function`` is set for a custom one."""

    name: str
    higher_is_better: bool = True
    function: Callable[..., float] | None = None

    def display(self, score: float) -> float:
        """The metric's own value from the internal higher-is-better score."""
        return score if self.higher_is_better else -score


def load_metric(spec: str) -> Metric:
    """``cosine``, ``accuracy``, ``perplexity`` or ``MODULE:FUNCTION``.

    Raises:
        UsageError: An unknown name, a module that cannot be imported, a missing function.
    """
    if spec in BUILTIN:
        return Metric(spec, higher_is_better=spec != "perplexity")
    module, sep, fname = spec.rpartition(":")
    if not sep or not module or not fname.isidentifier():
        raise UsageError(f"--metric {spec!r}: expected cosine, accuracy, perplexity or MODULE:FUNCTION")
    fn = getattr(load_plugin(module), fname, None)
    if not callable(fn):
        raise UsageError(f"--metric {spec!r}: {module} has no function {fname!r}")
    return Metric(spec, higher_is_better=bool(getattr(fn, "higher_is_better", True)), function=fn)


class EvalSet:
    """The evaluation data of a tune, loaded once, with the original's outputs on it."""

    def __init__(self, source: Any, model: onnx.ModelProto, metric: Metric, *, providers: list[str],
                 threads: int | None, seed: int = 0) -> None:
        self.metric = metric
        data = CalibrationData.from_source(source, model, seed=seed, role="eval")
        self.description = data.description
        self.batches = list(data.iter_with_labels(max_samples=MAX_EVAL_SAMPLES))
        if not self.batches:
            raise UsageError(f"--eval-data {source}: no complete batch for this model")
        self.labels = None if any(lab is None for _, lab in self.batches) else np.concatenate([lab for _, lab in self.batches])
        if metric.name in ("accuracy",) and self.labels is None:
            raise UsageError(f"--metric accuracy needs a 'label' array in --eval-data {source}")
        self.merged = data.merge([b for b, _ in self.batches])
        self.providers, self.threads = providers, threads
        self.reference = self._outputs(model)
        self.names = list(self.reference[0])
        self.original = self.score_outputs(self.reference)

    def _outputs(self, model: onnx.ModelProto | bytes) -> list[dict[str, np.ndarray]]:
        session = make_session(model, providers=self.providers, threads=self.threads, spinning=False)
        return [run(session, feeds) for feeds, _ in self.batches]

    def data_dict(self) -> dict[str, np.ndarray]:
        """The eval inputs (and ``label``) as one dict: what a custom metric receives."""
        out = dict(self.merged)
        if self.labels is not None:
            out["label"] = self.labels
        return out

    def score(self, model: onnx.ModelProto | bytes) -> tuple[float, float]:
        """``(score, worst cosine)`` of a candidate on the eval data."""
        outs = self._outputs(model)
        return self.score_outputs(outs), self.cosine(outs)

    def score_details(self, model: onnx.ModelProto | bytes) -> tuple[float, float, dict[str, float]]:
        """`score`, and for ``accuracy`` the `paired_accuracy` facts."""
        outs = self._outputs(model)
        extra = self.paired_accuracy(outs) if self.metric.name == "accuracy" else {}
        return self.score_outputs(outs), self.cosine(outs), extra

    def cosine(self, outs: list[dict[str, np.ndarray]]) -> float:
        """Worst cosine per output and per channel against the original's outputs."""
        accs: dict[str, FidelityAccumulator] = {}
        for ref, cand in zip(self.reference, outs):
            for name in self.names:
                r, c = np.asarray(ref[name]), np.asarray(cand.get(name, np.empty(0)))
                if r.shape == c.shape and r.dtype.kind in "fiub" and r.size:
                    accs.setdefault(name, FidelityAccumulator(None, name)).add(r, c)
                elif r.size:
                    return -1.0  # an output lost or reshaped: as far from the original as it gets
        return float(summarize({k: a.result() for k, a in accs.items()})["cosine"])

    def top1(self, outs: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Top-1 class per eval sample of the first output (``[N, classes]``)."""
        first = np.concatenate([np.asarray(o[self.names[0]]) for o in outs])
        return first.reshape(first.shape[0], -1).argmax(axis=1)

    def paired_accuracy(self, outs: list[dict[str, np.ndarray]]) -> dict[str, float]:
        """How a candidate's accuracy differs from the original's, sample by sample.

        ``top1_changed``: samples whose top-1 class changed; ``drop_stderr``: the standard
        error of the accuracy drop from the paired per-sample differences. A drop measured
        on few changed samples is a firm number; one that is the balance of many gained and
        lost samples may not hold on other data (the budget is judged on the drop plus
        `Budget.z` of these errors, ``drop_bound`` in the report).
        """
        assert self.labels is not None
        ref, cand, labels = self.top1(self.reference), self.top1(outs), self.labels.reshape(-1)
        diff = (ref == labels).astype(np.float64) - (cand == labels)
        n = len(diff)
        return {"top1_changed": int(np.sum(ref != cand)),
                "drop_stderr": float(np.std(diff, ddof=1) / math.sqrt(n)) if n > 1 else 0.0}

    def score_outputs(self, outs: list[dict[str, np.ndarray]]) -> float:
        """The metric (higher is better) of these per-batch outputs."""
        name = self.metric.name
        if name == "cosine":
            return self.cosine(outs)
        joined = {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in self.names if all(k in o for o in outs)}
        first = joined.get(self.names[0])
        if name == "accuracy":
            assert self.labels is not None and first is not None
            return float(np.mean(self.top1(outs) == self.labels.reshape(-1)))
        if name == "perplexity":
            return -self._perplexity(first)
        assert self.metric.function is not None
        try:
            value = float(self.metric.function(joined, self.data_dict()))
        except Exception as e:  # noqa: BLE001 - the user's function: any failure is bad input
            raise UsageError(f"--metric {name} raised {type(e).__name__}: {one_line(e, 200)}") from None
        if not math.isfinite(value):
            raise UsageError(f"--metric {name} returned {value}, not a finite number")
        return value if self.metric.higher_is_better else -value

    def _perplexity(self, logits: np.ndarray | None) -> float:
        if logits is None or logits.ndim != 3:
            raise UsageError("--metric perplexity needs logits [N, T, V] as the model's first output")
        if self.labels is not None:
            targets, lg = self.labels.reshape(logits.shape[:2]), logits
        elif "input_ids" in self.merged:
            targets, lg = self.merged["input_ids"][:, 1:], logits[:, :-1]
        else:
            raise UsageError("--metric perplexity needs a 'label' array or an 'input_ids' input in --eval-data")
        acc = PerplexityAccumulator()
        acc.add_targets(lg, targets)
        return acc.perplexity


#: Default ``--confidence``: one-sided 95 %.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Budget:
    """The user's budget: an absolute drop of the metric, or a cosine floor (or both).

    ``confidence``: where the drop has a paired per-sample standard error (``accuracy``:
    each eval sample right or wrong for the original and the candidate), a candidate is
    within ``max_drop`` only when the one-sided upper confidence bound of its drop,
    ``drop + z * stderr``, is. A tune picks the fastest of many candidates, and the
    fastest of those that pass on a point estimate is the one most likely to have passed
    by luck (on digits: a student 0.0022 *better* than FP32 on validation lost three
    test images, bench/MEASUREMENTS.md#tune). 0.5 gives the point estimate (z = 0).
    A cosine floor is judged as measured: it is a worst case already.
    """

    max_drop: float | None = None
    min_cosine: float | None = None
    confidence: float = CONFIDENCE

    def __post_init__(self) -> None:
        if self.max_drop is None and self.min_cosine is None:
            raise UsageError("give a budget: --max-drop X (absolute drop of the metric) or --min-cosine Y")
        if self.max_drop is not None and not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise UsageError(f"--max-drop must be a finite number >= 0 (got {self.max_drop})")
        if not 0.5 <= self.confidence < 1:
            raise UsageError(f"--confidence must be within [0.5, 1) (got {self.confidence})")

    @property
    def z(self) -> float:
        """Standard errors added to a drop (one-sided normal quantile of ``confidence``)."""
        return NormalDist().inv_cdf(self.confidence)

    def drop_bound(self, original: float, score: float, stderr: float | None) -> float:
        """The drop the budget is judged on: measured, plus ``z`` standard errors when known."""
        return (original - score) + (self.z * stderr if stderr is not None else 0.0)

    def violation(self, original: float, score: float, cosine: float, stderr: float | None = None) -> float:
        """How far a candidate is outside the budget (<= 0: within it); ``stderr``: the
        paired standard error of the drop, when the metric has one (see the class doc)."""
        parts = []
        if self.max_drop is not None:
            parts.append(self.drop_bound(original, score, stderr) - self.max_drop)
        if self.min_cosine is not None:
            parts.append(self.min_cosine - cosine)
        return max(parts)

    def describe(self, metric: Metric) -> str:
        """``accuracy drop <= 0.005`` / ``cosine >= 0.99``."""
        parts = []
        if self.max_drop is not None:
            parts.append(f"{metric.name} {'drop' if metric.higher_is_better else 'rise'} <= {self.max_drop:g}")
            if self.confidence > 0.5 and metric.name == "accuracy":  # the metric with paired per-sample errors
                parts[-1] += f" (upper {self.confidence:.0%} bound)"
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return " and ".join(parts)


def is_file_source(source: Any) -> bool:
    """A data source that names a file (shippable to another machine)."""
    return isinstance(source, (str, os.PathLike)) and os.path.isfile(source)
