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
    #: Time spent checking (export, onnx.checker, onnxruntime), included in ``seconds``.
    check_seconds: float = 0.0
    onnxcomp_version: str = ""
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the contract keys (``passes``, ``verification``)."""
        return {
            "onnxcomp_version": self.onnxcomp_version,
            "input": self.input,
            "output": self.output,
            "seed": self.seed,
            "seconds": round(self.seconds, 4),
            "check_seconds": round(self.check_seconds, 4),
            "passes": [asdict(p) for p in self.passes],
            "verification": self.verification,
            "warnings": self.warnings,
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON (atomically)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(json_safe(self.to_dict()), indent=2, default=json_default, allow_nan=False))
        os.replace(tmp, p)

    def render(self, console: Any | None = None) -> None:
        """Print a readable table of the passes and the verification (rich)."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console(stderr=True)
        table = Table(title="onnxcomp passes", title_justify="left")
        for col in ("pass", "changed", "time s", "nodes", "params", "MB", "note"):
            table.add_column(col, justify="right" if col not in ("pass", "note") else "left")
        for r in self.passes:
            if not r.modified and not r.rolled_back and not r.note:
                continue  # keep fixed-point iterations that did nothing out of the way
            table.add_row(
                r.name,
                "rolled back" if r.rolled_back else ("yes" if r.modified else "no"),
                f"{r.seconds:.2f}",
                f"{r.nodes_before} → {r.nodes_after}",
                f"{_human(r.params_before)} → {_human(r.params_after)}",
                f"{r.bytes_before / 1e6:.1f} → {r.bytes_after / 1e6:.1f}",
                r.note,
            )
        console.print(table)
        v = self.verification
        if v.get("verified") is False:
            console.print(f"[yellow]not verified:[/] {v.get('reason', '')}")
        elif v:
            console.print(
                f"verification vs input: cosine {v.get('cosine', float('nan')):.6f}, max |diff| {v.get('max_abs_diff', float('nan')):.3g}"
                + (f", top-1 agreement {v['top1_agreement']:.4f}" if "top1_agreement" in v else "")
                + (f", perplexity {v['perplexity']['reference']:.3f} → {v['perplexity']['candidate']:.3f}" if "perplexity" in v else "")
            )


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
