"""Console output of the perf results: the rich console, tables that fit, number formatting.

Tables must stay readable in an 80-column terminal (and in CI logs, which are wider):
numbers never wrap or get cut (``no_wrap`` columns), text columns give way instead — long
names are shortened in the middle (`elide_middle`, the distinctive end of a file or weight
name survives) — and below `NARROW_WIDTH` columns tables drop their vertical rules and
outer padding (`table`), which saves three characters per column.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: Consoles narrower than this get compact tables.
NARROW_WIDTH = 100


def default_console() -> Console:
    """stdout console; wide when not a terminal (CI logs), so tables do not wrap."""
    from rich.console import Console  # rich only when something is printed

    return Console() if sys.stdout.isatty() else Console(width=140)


def table(title: str, console: Console) -> Table:
    """A left-titled table; compact (no vertical rules, no outer padding) on a narrow console."""
    from rich import box
    from rich.table import Table

    if console.width < NARROW_WIDTH:
        return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    return Table(title=title, title_justify="left")


def fit_table(build: Callable[[int], Table], console: Console, longest: int, min_width: int = 12) -> Table:
    """The table ``build(width)`` makes, with its name column as wide as the console allows.

    ``build`` renders names with `elide_middle` at the width it is given; ``longest`` is
    the longest name. The width shrinks until the table's natural width fits the console
    (or names reach ``min_width``; then rich folds what is left).
    """
    from rich.measure import Measurement

    width = max(longest, 1)
    t = build(width)
    unbounded = console.options.update_width(10**6)  # measured against the console, rich clamps to it
    while width > min_width:
        over = Measurement.get(console, unbounded, t).maximum - console.width
        if over <= 0:
            break
        width = max(min_width, width - over)
        t = build(width)
    return t


def elide_middle(text: str, width: int) -> str:
    """``text`` at most ``width`` characters, cut in the middle with ``…`` (both ends kept)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + text[len(text) - tail:]


def fmt_g(v: float) -> str:
    """4 significant digits, no exponent for the usual ranges."""
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e4 or v == 0 else (f"{v:.0f}" if 1e4 <= abs(v) < 1e6 else f"{v:.3g}")


def human_bytes(n: int) -> str:
    """``n`` bytes in GB/MB/kB with one decimal (plain bytes below 1 kB)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
