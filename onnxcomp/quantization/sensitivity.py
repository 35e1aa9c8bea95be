"""Accuracy control: per-layer sensitivity and greedy fallback to float.

Each candidate is a whole model evaluated in ONE onnxruntime session on a few calibration
batches (never a session per node). The number of candidates is bounded:

* `fallback` (static QDQ): layers are cut into at most ``max_groups`` consecutive groups
  (topological order); candidate *g* quantizes only group *g*; its sensitivity is
  ``1 - cosine`` (worst output) against the float model. Groups then go back to float,
  most sensitive first, one candidate each, until the target holds or ``max_fallback``
  groups are float; then each of those groups but the last is tried 8-bit again (one
  candidate each, the most expensive first, by `layer_costs`) and stays 8-bit if the
  target still holds.
* `ranked_fallback` (dynamic MatMuls): the layers come ranked by a cheap per-layer error
  measure (`onnxcomp.quantization.proxy`) instead of a scan, and the fewest leading
  layers that meet the target are found by doubling and bisection (O(log) candidates).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxcomp.checking.metrics import FidelityAccumulator, summarize
from onnxcomp.checking.runtime import make_session, run
from onnxcomp.ir import static_shape
from onnxcomp.ir.candidate import Candidate
from onnxcomp.quantization.weightexpr import weight_shape


@dataclass(frozen=True)
class Score:
    """Fidelity of a candidate: worst cosine and worst max |error| over float outputs."""

    cosine: float
    max_abs: float

    def meets(self, target_cosine: float | None, target_max_abs: float | None) -> bool:
        if target_cosine is not None and self.cosine < target_cosine:
            return False
        return target_max_abs is None or self.max_abs <= target_max_abs


class Evaluator:
    """Reference outputs of the float model on fixed feeds; scores candidate models.

    A candidate runs feed by feed and each output is folded into the fidelity sums at once,
    so at most one feed's outputs of a candidate are alive, beside the references.
    """

    def __init__(
        self,
        reference: onnx.ModelProto | None,
        feeds: list[dict[str, np.ndarray]],
        reference_outputs: Sequence[dict[str, np.ndarray]] | None = None,
    ) -> None:
        """Args: the float model (or its outputs on ``feeds``, already computed: a list, or
        an `onnxcomp.checking.verify.OutputStore` read back one feed at a time) and the feeds."""
        self.feeds = feeds
        if reference_outputs is None:
            assert reference is not None
            sess = self._session(reference)
            # Copies: onnxruntime's output arrays would keep the session's arena alive.
            reference_outputs = [{k: np.array(v, copy=True) for k, v in run(sess, f).items()} for f in feeds]
        self.reference = reference_outputs
        self.sessions = 0

    @staticmethod
    def _session(model: onnx.ModelProto | Candidate) -> ort.InferenceSession:
        # Graph optimizations on: candidates are scored as they will run (fused integer
        # kernels round differently from the QDQ float simulation). One-shot: a few runs
        # never earn back prepacked copies of the weights or spinning threads.
        if isinstance(model, Candidate):
            return make_session(model.header_model, lent=model.lent_arrays(), optimize=True, one_shot=True)
        return make_session(model, optimize=True, one_shot=True)

    def score(self, model: onnx.ModelProto | Candidate) -> Score:
        """Worst cosine and largest max |error| of ``model`` against the reference.

        ``model`` may be a `Candidate`: its weights are lent to onnxruntime, not copied
        into a serialized model. The figures are the verification's own
        (`FidelityAccumulator`, `summarize`), so the fallback aims at exactly what the run
        reports: whatever granularity the headline uses (per output, per channel) decides
        which layers go back to float.
        """
        self.sessions += 1
        sess = self._session(model)
        accs: dict[str, FidelityAccumulator] = {}
        for feeds, r_out in zip(self.feeds, self.reference):
            c_out = run(sess, feeds)
            for k, r in r_out.items():
                r = np.asarray(r)
                if r.dtype.kind != "f" or not r.size:
                    continue
                accs.setdefault(k, FidelityAccumulator()).add(r, np.asarray(c_out[k]))
            del c_out
        del sess
        if not accs:
            return Score(1.0, 0.0)
        overall = summarize({k: a.result() for k, a in accs.items()})
        return Score(float(overall["cosine"]), float(overall["max_abs_diff"]))


def group_layers(layers: Sequence[str], max_groups: int) -> list[tuple[str, ...]]:
    """Cut ``layers`` (topological order) into at most ``max_groups`` consecutive groups."""
    if not layers:
        return []
    k = min(max_groups, len(layers))
    bounds = np.linspace(0, len(layers), k + 1).astype(int)
    return [tuple(layers[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def layer_costs(graph: gs.Graph, layers: Sequence[str]) -> dict[str, float]:
    """Relative compute of each layer: multiply-accumulates for Conv/Gemm/MatMul with a
    constant weight (output elements x weight elements per output channel), output
    elements for the rest (Add, Mul). A layer kept float loses its integer kernel's gain
    in proportion to this; unknown shapes count the weight size alone."""
    wanted = set(layers)
    out: dict[str, float] = {}
    for n in graph.nodes:
        if n.name not in wanted or not n.outputs:
            continue
        shape = static_shape(n.outputs[0])
        elems = float(np.prod(shape)) if shape else 1.0
        w = next((t for t in n.inputs[1:2] if isinstance(t, gs.Constant)), None)
        wshape = tuple(w.shape) if w is not None else weight_shape(n.inputs[1]) if n.op in ("MatMul", "Gemm") else None
        if wshape is None:
            out[n.name] = elems
            continue
        size = float(np.prod(wshape))
        channels = (shape[1] if n.op in ("Conv", "ConvTranspose") else shape[-1]) if shape and len(shape) > 1 else 0
        out[n.name] = elems * size / channels if channels else size
    return out


@dataclass
class FallbackResult:
    """Outcome of `fallback`: float layers, final score, candidates evaluated, and the
    share of the layers' compute (`layer_costs`) left float (0 when no costs were given)."""

    excluded: set[str]
    score: Score
    candidates: int
    met: bool
    float_share: float = 0.0


def fallback(
    layers: Sequence[str],
    build: Callable[[set[str]], onnx.ModelProto],
    evaluator: Evaluator,
    *,
    target_cosine: float | None,
    target_max_abs: float | None,
    max_groups: int = 48,
    max_fallback: int = 16,
    progress: Callable[[str], None] | None = None,
    costs: Mapping[str, float] | None = None,
) -> FallbackResult:
    """Sensitivity per layer group, then float fallback in order until the target holds.

    Args:
        layers: Quantized layer names in topological order.
        build: Model with every layer in the given set kept float.
        evaluator: Scores candidate models.
        target_cosine: Worst-output cosine to reach (None: no cosine target).
        target_max_abs: Worst-output max |error| to stay under (None: none).
        max_groups: Cap on sensitivity candidates.
        max_fallback: Cap on groups returned to float.
        progress: Status-line callback.
        costs: Relative compute per layer (`layer_costs`): groups that turned out not to
            be needed are re-tried 8-bit most expensive first, and the result reports the
            float share. None: least sensitive first.
    """
    groups = group_layers(layers, max_groups)
    all_layers = set(layers)
    sens: list[tuple[float, int]] = []
    for i, g in enumerate(groups):
        if progress:
            progress(f"sensitivity: group {i + 1}/{len(groups)}")
        s = evaluator.score(build(all_layers - set(g)))
        # Cosine first; max error breaks ties (and ranks when only a max-error target is set).
        sens.append((1.0 - s.cosine + (s.max_abs if target_cosine is None else 0.0), i))
    sens.sort(reverse=True)
    excluded: set[str] = set()
    score = Score(0.0, float("inf"))
    n = 0
    chosen: list[int] = []
    for _, i in sens[:max_fallback]:
        excluded |= set(groups[i])
        chosen.append(i)
        n += 1
        if progress:
            progress(f"fallback: {len(excluded)} layers float")
        score = evaluator.score(build(excluded))
        if score.meets(target_cosine, target_max_abs):
            # Sensitivity was measured one group at a time; errors add up differently
            # together, so some groups sent back early may not be needed once later ones
            # are float. Try re-quantizing each (least sensitive first): every group kept
            # 8-bit saves a float layer and its Q/DQ pairs. At most one candidate per group.
            def cost(j: int) -> float:
                return sum(costs.get(x, 0.0) for x in groups[j]) if costs else 0.0

            retry = sorted(chosen[:-1], key=cost, reverse=True) if costs else list(reversed(chosen[:-1]))
            for j in retry:
                trial = excluded - set(groups[j])
                if progress:
                    progress(f"fallback: re-quantizing, {len(trial)} layers float")
                s = evaluator.score(build(trial))
                n += 1
                if s.meets(target_cosine, target_max_abs):
                    excluded, score = trial, s
            return FallbackResult(excluded, score, len(groups) + n, True, _share(excluded, costs))
    return FallbackResult(excluded, score, len(groups) + n, False, _share(excluded, costs))


def ranked_fallback(
    order: Sequence[str],
    build: Callable[[set[str]], onnx.ModelProto | Candidate],
    evaluator: Evaluator,
    *,
    target_cosine: float | None,
    target_max_abs: float | None,
    max_layers: int,
    progress: Callable[[str], None] | None = None,
    costs: Mapping[str, float] | None = None,
) -> FallbackResult:
    """Float fallback along a ranking: the fewest leading layers of ``order`` (most harmful
    first, e.g. by `onnxcomp.quantization.proxy.layer_error_energy`) kept float that meet
    the target, for a model whose all-8-bit candidate misses it.

    Searched by doubling (1, 2, 4, ... leading layers float, at most ``max_layers``) up to
    the first candidate that meets the target, then by bisection between the last miss and
    that hit, to within an eighth of the hit: about 2 log2(k) candidates for k layers,
    where a scan of every layer group costs one candidate per group. Every answer is a
    candidate that was scored; the ranking only decides which are tried.
    """
    cap = min(max_layers, len(order))
    scores: dict[int, Score] = {}

    def meets(k: int) -> bool:
        if progress:
            progress(f"fallback: {k} ranked layers float")
        scores[k] = evaluator.score(build(set(order[:k])))
        return scores[k].meets(target_cosine, target_max_abs)

    miss, hit, k = 0, 0, 1  # 0 layers float (all 8-bit) is known to miss
    while k <= cap:
        if meets(k):
            hit = k
            break
        miss = k
        k = cap if k < cap < 2 * k else 2 * k
    if not hit:
        excluded = set(order[:miss])
        return FallbackResult(excluded, scores.get(miss, Score(0.0, float("inf"))), len(scores), False, _share(excluded, costs))
    while hit - miss > max(1, hit // 8):
        mid = (miss + hit) // 2
        if meets(mid):
            hit = mid
        else:
            miss = mid
    excluded = set(order[:hit])
    return FallbackResult(excluded, scores[hit], len(scores), True, _share(excluded, costs))


def _share(excluded: set[str], costs: Mapping[str, float] | None) -> float:
    total = sum(costs.values()) if costs else 0.0
    return sum(costs.get(x, 0.0) for x in excluded) / total if costs and total > 0 else 0.0
