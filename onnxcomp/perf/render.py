"""Console output of the perf results: the rich console and number formatting."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def default_console() -> Console:
    """stdout console; wide when not a terminal (CI logs), so tables do not wrap."""
    from rich.console import Console  # rich only when something is printed

    return Console() if sys.stdout.isatty() else Console(width=140)


def fmt_g(v: float) -> str:
    """4 significant digits, no exponent for the usual ranges."""
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.3g}"


def human_bytes(n: int) -> str:
    """``n`` bytes in GB/MB/kB with one decimal (plain bytes below 1 kB)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
