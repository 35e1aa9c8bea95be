"""The outcome of a tune: trials, the Pareto front, the chosen model; as JSON, Markdown, PNG.

The Pareto front is over every completed trial (within the budget or not): the points
no other trial beats on both latency ratio (lower is better) and metric (higher is
better; for perplexity, lower). The chosen model is the fastest trial within the
budget (among equally fast ones, the one closest to the original, see `choose`).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxcomp.io.outputs import temp_prefix, write_text_atomic


@dataclass
class TrialPoint:
    """One finished trial."""

    number: int
    config: dict[str, Any]
    label: str
    preset: str | None
    result: dict[str, Any]

    @property
    def ok(self) -> bool:
        """The candidate was built and measured."""
        return "error" not in self.result

    @property
    def score(self) -> float:
        """The metric, higher is better."""
        return float(self.result["score"])

    @property
    def latency_ratio(self) -> float:
        """Candidate ÷ original latency (< 1: faster)."""
        return float(self.result["latency_ratio"])

    @property
    def within_budget(self) -> bool:
        """Built, measured, and within the budget."""
        return self.ok and bool(self.result.get("within_budget"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: number, configuration, label, preset and the measurements."""
        d = {"number": self.number, "configuration": self.config, "label": self.label, "preset": self.preset}
        d.update({k: v for k, v in self.result.items() if k != "score"})
        return d


def pareto(points: list[TrialPoint]) -> list[TrialPoint]:
    """The non-dominated measured points, fastest first (an O(n log n) sweep)."""
    ok = sorted((p for p in points if p.ok), key=lambda p: (p.latency_ratio, -p.score))
    front: list[TrialPoint] = []
    best = float("-inf")
    for p in ok:
        if p.score > best:
            front.append(p)
            best = p.score
    return front


def dominated_by(point: TrialPoint, others: list[TrialPoint]) -> bool:
    """Whether some other point is at least as good on both axes and better on one."""
    return any(o is not point and o.latency_ratio <= point.latency_ratio and o.score >= point.score
               and (o.latency_ratio < point.latency_ratio or o.score > point.score) for o in others)


#: Latency ratios within this fraction of the fastest are "equally fast" to `choose`:
#: the in-tune ratio of one model and `compare`'s re-timing of it differ by about this
#: much (digits: ×3.14 against ×3.02), so a faster ratio inside it is noise, not speed.
NEAR_EQUAL = 0.05


def choose(points: list[TrialPoint], near_equal: float = NEAR_EQUAL) -> TrialPoint | None:
    """The fastest point within the budget, among equally fast ones the closest to the original.

    Equally fast: a latency ratio within ``near_equal`` (relative) of the fastest point
    within the budget (`NEAR_EQUAL`, timing noise; candidates of one computation share a
    measurement, `onnxcomp.tune.search`, and tie exactly), and never slower than a preset
    within the budget. Among those: the one closest
    to the original (the higher cosine), then the better metric, then the faster, then
    the earlier trial (a preset before a search trial that built the same model). Every
    one of them met the budget on the eval data; the budget is a drop *relative to the
    original*, and the candidate that agrees most with the original is the one whose
    drop on other data stays nearest to what was measured, whereas a metric one or two
    samples better is within the eval set's noise (measured on digits: of two prune 0.9 +
    distill students timed as one computation, the one better by one validation image,
    at cosine 0.976, lost three test images; the other, at 0.987, none;
    bench/MEASUREMENTS.md#tune).
    """
    feasible = [p for p in points if p.within_budget]
    if not feasible:
        return None
    # Never slower than a preset within the budget: the tune is measured against them.
    cap = min([min(p.latency_ratio for p in feasible) * (1 + near_equal)]
              + [p.latency_ratio for p in feasible if p.preset])
    tied = [p for p in feasible if p.latency_ratio <= cap]
    return min(tied, key=lambda p: (-float(p.result.get("cosine", 0.0)), -p.score, p.latency_ratio, p.number))


def closest(points: list[TrialPoint]) -> TrialPoint | None:
    """The measured point nearest to the budget (smallest violation)."""
    ok = [p for p in points if p.ok]
    return min(ok, key=lambda p: (p.result["violation"], p.latency_ratio)) if ok else None


@dataclass
class TuneResult:
    """Everything a tune measured (the ``--report`` document is `to_dict`)."""

    model: str
    metric: str
    higher_is_better: bool
    budget: str
    original_metric: float
    eval_data: str
    ep: str
    threads: int | None
    storage: str
    study: str
    space: dict[str, Any]
    points: list[TrialPoint]
    seconds: float = 0.0
    #: Configurations the sampler asked again, skipped and replaced (not trials).
    duplicates_skipped: int = 0
    best: TrialPoint | None = None
    best_output: str | None = None
    best_report: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def front(self) -> list[TrialPoint]:
        """The Pareto front."""
        return pareto(self.points)

    def preset_points(self) -> list[TrialPoint]:
        """The presets' trials."""
        return [p for p in self.points if p.preset]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``pareto`` and ``trials`` first, then the run's facts and the chosen model."""
        front = self.front
        return {
            "pareto": [p.to_dict() for p in front],
            "trials": [p.to_dict() for p in self.points],
            # Presets are trials of the same run, so none can dominate the front; said, not assumed.
            "presets": {p.preset: {**p.to_dict(), "dominates_front": p.ok and any(
                dominated_by(f, [p]) for f in front if f is not p)} for p in self.preset_points()},
            "best": None if self.best is None else {**self.best.to_dict(), "output": self.best_output,
                                                     "report": self.best_report},
            "model": self.model,
            "metric": {"name": self.metric, "higher_is_better": self.higher_is_better, "original": self.original_metric,
                       "data": self.eval_data},
            "budget": self.budget,
            "latency": {"ratio": "candidate p50 / original p50, interleaved in one process (< 1: faster)",
                        "ep": self.ep, "threads": self.threads},
            "storage": self.storage,
            "study": self.study,
            "space": self.space,
            "seconds": round(self.seconds, 2),
            "duplicates_skipped": self.duplicates_skipped,
            "notes": self.notes,
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """The report, atomically."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    def markdown(self) -> str:
        """The Pareto front (and the presets) as a Markdown table."""
        name = self.metric.rpartition(":")[2]  # a custom metric by its function's name
        # The cosine column, unless the metric is the cosine itself.
        cos_head, cos_rule = ("", "") if self.metric == "cosine" else (" cosine |", "---:|")
        lines = [f"# tune: {Path(self.model).name}", "",
                 (f"Budget: {self.budget}; {name} of the original {self.original_metric:.6g} on {self.eval_data}; "
                  f"latency ratio = candidate ÷ original ({self.ep}, threads={self.threads or 'default'})."), "",
                 f"| trial | configuration | latency ratio | speedup | {name} |{cos_head} within budget | preset |",
                 f"|---:|---|---:|---:|---:|{cos_rule}:---:|---|"]
        chosen = self.best.number if self.best else None
        rows = self.front + [p for p in self.preset_points() if p not in self.front and p.ok]
        for p in rows:
            r = p.result
            mark = " **(chosen)**" if p.number == chosen else ""
            cos_cell = f" {r['cosine']:.5f} |" if cos_head else ""
            lines.append(f"| {p.number} | {p.label}{mark} | {p.latency_ratio:.3f} | ×{1 / p.latency_ratio:.2f} | "
                         f"{r['metric']:.6g} |{cos_cell} {'yes' if p.within_budget else 'no'} | {p.preset or ''} |")
        failed = [p for p in self.points if not p.ok]
        lines += ["", f"{len(self.points)} trials, {len(self.front)} on the Pareto front, {len(failed)} failed."]
        return "\n".join(lines) + "\n"

    def write_markdown(self, path: str | os.PathLike[str]) -> None:
        """The Markdown table, atomically."""
        write_text_atomic(path, self.markdown())

    def plot_png(self) -> bytes:
        """Every trial (metric vs latency ratio), the front, the presets and the budget, as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # the object API: no global pyplot state

        fig = Figure(figsize=(7.5, 5), dpi=110)
        ax = fig.add_subplot()
        ok = [p for p in self.points if p.ok]
        sign = 1 if self.higher_is_better else -1
        for feasible, color, label in ((True, "tab:blue", "within budget"), (False, "tab:gray", "outside budget")):
            pts = [p for p in ok if p.within_budget == feasible and not p.preset]
            if pts:
                ax.scatter([p.latency_ratio for p in pts], [sign * p.score for p in pts], c=color, s=22, alpha=0.7, label=label)
        front = self.front
        ax.step([p.latency_ratio for p in front], [sign * p.score for p in front], where="post", c="tab:blue", lw=1,
                label="Pareto front")
        for p in self.preset_points():
            if p.ok:
                ax.scatter([p.latency_ratio], [sign * p.score], marker="D", s=60, c="tab:orange", edgecolors="k", zorder=3)
                ax.annotate(p.preset, (p.latency_ratio, sign * p.score), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.scatter([1.0], [self.original_metric], marker="*", s=140, c="k", label="original", zorder=3)
        if self.best is not None:
            ax.scatter([self.best.latency_ratio], [sign * self.best.score], marker="o", s=160, facecolors="none",
                       edgecolors="tab:red", lw=2, label="chosen", zorder=4)
        ax.set_xlabel("latency ratio to the original (lower is faster)")
        ax.set_ylabel(self.metric)
        ax.set_title(f"tune {Path(self.model).name}: {self.budget}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def write_plot(self, path: str | os.PathLike[str]) -> None:
        """The PNG, atomically (temporary file beside it, then renamed)."""
        out = Path(path)
        tmp = out.with_name(f"{temp_prefix(out)}plot.tmp")
        try:
            tmp.write_bytes(self.plot_png())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
