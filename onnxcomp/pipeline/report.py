"""The optimize report: one row per pass plus final verification, as JSON and as a table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PassRecord:
    """One pass run (a pass inside a fixed-point group appears once per iteration)."""

    name: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    flops_before: int = 0
    flops_after: int = 0
    lossless: bool = True
    stats: dict[str, Any] = field(default_factory=dict)
    rolled_back: bool = False
    note: str = ""
    fidelity: dict[str, Any] | None = None


@dataclass
class Report:
    """Everything an optimize run measured (see ``--report`` in the README)."""

    input: str | None = None
    output: str | None = None
    passes: list[PassRecord] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Time spent checking and verifying (export, onnx.checker, onnxruntime on the
    #: verification data, the metrics; the final verification too), included in
    #: ``seconds``; the passes' own time is in ``passes[].seconds``.
    check_seconds: float = 0.0
    onnxcomp_version: str = ""
    seed: int = 0
    #: Result vs input speed when ``optimize`` timed them (`onnxcomp.perf.speed_check`).
    speed: dict[str, Any] | None = None

    @property
    def degraded(self) -> bool:
        """A lossy result whose worst cosine fell below the fidelity floor."""
        return bool(self.verification.get("degraded", False))

    @property
    def changed(self) -> bool:
        """Whether any pass changed the model (and was kept)."""
        return any(r.modified for r in self.passes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the contract keys (``passes``, ``verification``, ``degraded``)."""
        return {
            "onnxcomp_version": self.onnxcomp_version,
            "input": self.input,
            "output": self.output,
            "seed": self.seed,
            "seconds": round(self.seconds, 4),
            "check_seconds": round(self.check_seconds, 4),
            "passes": [asdict(p) for p in self.passes],
            "verification": self.verification,
            "degraded": self.degraded,
            "warnings": self.warnings,
            "speed": self.speed,
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON (atomically)."""
        from onnxcomp.io.outputs import write_text_atomic

        write_text_atomic(path, json.dumps(json_safe(self.to_dict()), indent=2, default=json_default, allow_nan=False))

    def render(self, console: Any | None = None) -> None:
        """Print the passes that changed something and the verification (rich).

        Laid out for 80 columns: one row per change with its deltas (nodes, parameters,
        megabytes) and, for lossy passes, the worst cosine; full pass names (never cut);
        the totals and the verification on their own lines. A run that changed nothing
        says so in words.
        """
        from rich import box
        from rich.console import Console
        from rich.table import Table

        console = console or Console(stderr=True)
        rows = [r for r in self.passes if r.modified or r.rolled_back or r.note]
        if not any(r.modified for r in rows):
            lossless = all(r.lossless for r in self.passes)
            console.print("no change: the model is already clean" if lossless else "no change: no pass changed the model")
            for r in rows:  # rolled back or declined, with the reason
                console.print(f"  {r.name}: {'rolled back: ' if r.rolled_back else ''}{r.note}")
        else:
            table = Table(title="onnxcomp passes", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            width = max(len(r.name) for r in rows)
            table.add_column("pass", no_wrap=True, min_width=max(4, width))
            for col in ("s", "nodes", "params", "MB", "cosine"):
                table.add_column(col, justify="right", no_wrap=True)
            table.add_column("note", overflow="fold", ratio=1)
            for r in rows:
                cos = (r.fidelity or {}).get("cosine")
                note = f"rolled back: {r.note}" if r.rolled_back else r.note
                table.add_row(
                    r.name,
                    f"{r.seconds:.2f}",
                    _delta(r.nodes_after - r.nodes_before, str),
                    _delta(r.params_after - r.params_before, _human),
                    _delta(round((r.bytes_after - r.bytes_before) / 1e6, 1), lambda x: f"{x:.1f}"),
                    f"{cos:.4f}" if cos is not None else "",
                    note,
                )
            console.print(table)
            first, last = self.passes[0], self.passes[-1]
            console.print(
                f"nodes {first.nodes_before} → {last.nodes_after}, params {_human(first.params_before)} → "
                f"{_human(last.params_after)}, size {first.bytes_before / 1e6:.1f} → {last.bytes_after / 1e6:.1f} MB"
            )
        self._render_verification(console)

    def _render_verification(self, console: Any) -> None:
        v = self.verification
        if v.get("verified") is False:
            console.print(f"[yellow]not verified:[/] {v.get('reason', '')}")
            return
        if not v:
            return
        data = v.get("data", "")
        if v.get("identical_to_input"):
            console.print(f"verified on {data}: identical to the input")
            return
        worst = v.get("worst") or {}
        line = f"verified on {data}: cosine {v.get('cosine', float('nan')):.6f}"
        if worst.get("where"):
            line += f" (worst: {worst['where']})"
        line += f", max |diff| {v.get('max_abs_diff', float('nan')):.3g}"
        if "top1_agreement" in v:
            line += f", top-1 agreement {v['top1_agreement']:.4f}"
        if "accuracy_candidate" in v:
            line += f", accuracy {v['accuracy_reference']:.4f} → {v['accuracy_candidate']:.4f}"
        if "perplexity" in v:
            line += f", perplexity {v['perplexity']['reference']:.3f} → {v['perplexity']['candidate']:.3f}"
        console.print(line)
        if v.get("degraded"):
            console.print(f"[bold red]degraded:[/] {worst.get('where', '')} has cosine {v.get('cosine', float('nan')):.4f}, "
                          f"below the fidelity floor {v.get('floor', 0):g}")


def _delta(d: float, fmt: Any) -> str:
    """A signed change ("−12", "+3", "0")."""
    if d == 0:
        return "0"
    return ("+" if d > 0 else "−") + fmt(abs(d))


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def json_safe(o: Any) -> Any:
    """Replace non-finite floats by None (strict JSON has no NaN/Infinity), recursively."""
    import math

    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def json_default(o: Any) -> Any:
    """`json.dumps` default: numpy scalars and arrays as plain Python values."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
