"""`GateResult`: what the gate measured and decided, as JSON, Markdown and a console line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onnxcomp.perf.gate_stats import LatencyDecision, SlowdownEstimate, Verdict
from onnxcomp.perf.machine import environment
from onnxcomp.perf.render import default_console


@dataclass
class GateResult:
    """Everything the gate measured and decided; ``exit_code`` is 0 (pass) or 1 (regression)."""

    mode: Literal["paired", "baseline-record"]
    baseline: str
    candidate: str
    max_slowdown: float
    estimate: SlowdownEstimate
    latency: LatencyDecision
    verdict: Verdict
    reasons: list[str]
    ep: str
    providers: list[str]
    threads: int | None
    rounds: int
    looks: int
    seconds: float
    input_shapes: dict[str, list[int]]
    latency_ms: dict[str, dict[str, float | int]]
    min_cosine: float | None = None
    fidelity: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 regression."""
        return 0 if self.verdict == "pass" else 1

    def to_dict(self) -> dict[str, Any]:
        """The ``gate --json`` document."""
        return {
            "verdict": self.verdict, "exit_code": self.exit_code, "mode": self.mode, "reasons": self.reasons,
            "baseline": self.baseline, "candidate": self.candidate,
            "max_slowdown": self.max_slowdown, **self.estimate.to_dict(),
            "decided_by": self.latency.decided_by, "latency_verdict": self.latency.verdict,
            "min_cosine": self.min_cosine, "fidelity": self.fidelity,
            "ep": self.ep, "providers": self.providers, "threads": self.threads, "input_shapes": self.input_shapes,
            "rounds": self.rounds, "looks": self.looks, "seconds": self.seconds, "latency_ms": self.latency_ms,
            "warnings": self.warnings, "environment": environment(),
        }

    def to_markdown(self) -> str:
        """A summary for a CI job page (``$GITHUB_STEP_SUMMARY``)."""
        icon = "✅ PASS" if self.verdict == "pass" else "❌ REGRESSION"
        e = self.estimate
        lines = [
            f"### onnxcomp gate: {icon}",
            "",
            f"`{Path(self.candidate).name}` vs `{Path(self.baseline).name}` ({self.mode})",
            "",
            "| check | measured | bound | result |",
            "|---|---|---|---|",
            f"| latency slowdown (median of paired ratios) | {100 * e.slowdown:+.2f}% "
            f"({e.confidence:.0%} CI {100 * e.low:+.2f}% … {100 * e.high:+.2f}%) | ≤ {100 * self.max_slowdown:.1f}% "
            f"| {'pass' if self.latency.verdict == 'pass' else '**regression**'} ({self.latency.decided_by}) |",
        ]
        if self.min_cosine is not None and self.fidelity is not None:
            cos = self.fidelity.get("cosine")
            ok = cos is not None and cos >= self.min_cosine
            lines.append(f"| output cosine (worst output) | {cos:.6f} | ≥ {self.min_cosine} | {'pass' if ok else '**regression**'} |")
        lines += [
            "",
            f"{self.rounds} interleaved rounds in {self.seconds:.1f} s on {self.providers[0]}, "
            f"threads={self.threads or 'default'}, inputs {self.input_shapes}.",
        ]
        if self.latency_ms:
            lines.append("p50 latency: " + ", ".join(f"{k} {v['p50']:.3f} ms" for k, v in self.latency_ms.items()) + ".")
        for r in self.reasons:
            lines.append(f"- {r}")
        for w in self.warnings:
            lines.append(f"- ⚠️ {w}")
        return "\n".join(lines) + "\n"

    def render(self, console: Any | None = None) -> None:
        """One verdict line plus the reasons."""
        console = console or default_console()
        color = "green" if self.verdict == "pass" else "red"
        e = self.estimate
        console.print(f"[bold {color}]{self.verdict.upper()}[/]: slowdown {100 * e.slowdown:+.2f}% "
                      f"({e.confidence:.0%} CI {100 * e.low:+.2f}% … {100 * e.high:+.2f}%, threshold {100 * self.max_slowdown:.1f}%; "
                      f"{self.rounds} rounds, {self.seconds:.1f} s, {self.providers[0]}, threads={self.threads or 'default'})")
        for r in self.reasons:
            console.print(f"  {r}")
        for w in self.warnings:
            console.print(f"  [yellow]warning[/]: {w}")
