"""``onnxcomp inspect MODEL``: the channel groups ``prune-channels`` would work on.

Lists every group (root weight, channels, units — e.g. heads —, coupled tensors) and,
for frozen groups, which op or graph boundary froze them. ``--json`` writes the same
facts as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from onnxcomp.cli.common import handle_errors


def group_rows(model_path: Path, exclude: tuple[str, ...] = (), ratio: float | None = None, round_to: int = 1) -> list[dict]:
    """Channel groups of a model file as JSON-friendly dicts.

    Args:
        model_path: The ONNX model.
        exclude: Node-name / weight-name glob patterns (matching groups are reported frozen).
        ratio: If given, also plan a uniform ``l1`` pruning at this ratio (a dry run)
            and report ``channels_after`` per group.
        round_to: ``round_to`` of that plan.

    Returns:
        One dict per group: ``id``, ``root``, ``root_node``, ``label``, ``channels``,
        ``units``, ``unit_size``, ``tensors``, ``params``, ``prunable``, ``frozen_by``.
    """
    from onnxcomp.io.files import load_model
    from onnxcomp.pruning.deps import analyze_model

    _graph, groups = analyze_model(load_model(model_path), exclude=exclude)
    removed: dict = {}
    if ratio is not None:
        from onnxcomp.pruning.allocate import allocate
        from onnxcomp.pruning.importance import magnitude_scores

        prunable = [g for g in groups if g.prunable]
        removed = allocate(prunable, {g.id: magnitude_scores(g, 1) for g in prunable}, ratio=ratio, round_to=round_to)
    rows = []
    for g in groups:
        rows.append({
            "id": g.id,
            "root": f"{g.root[0]}[axis {g.root[1]}]",
            "root_node": g.root_node,
            "label": g.label,
            "channels": g.size,
            "units": len(g.units),
            "unit_size": g.unit_size,
            "tensors": len(g.members),
            "params": [f"{m.tensor.name}[{m.axis}]" for m in g.params()],
            "prunable": g.prunable,
            "frozen_by": list(g.frozen),
        })
        if ratio is not None:
            rows[-1]["channels_after"] = g.size - int(removed[g.id].size) if g.id in removed else g.size
    return rows


#: Widest the status column gets (it wraps at words inside).
_STATUS_WIDTH = 24


def _status(r: dict, all_reasons: bool) -> str:
    if r["prunable"]:
        return "prunable"
    if r["frozen_by"]:
        more = len(r["frozen_by"]) - 1
        return "frozen: " + ("; ".join(r["frozen_by"]) if all_reasons else r["frozen_by"][0] + (f" (+{more} more)" if more else ""))
    return "single unit"


def groups_table(rows: list[dict], title: str, console: Any, all_reasons: bool = False) -> Any:
    """The groups as a rich table that fits ``console``'s width.

    One group per row; its names take at most three lines of one column: the label
    (the weight's name in the source framework, when the exporter kept it), the root
    weight with its axis, and the root node, each shortened in the middle when too long
    (the JSON output has them whole).
    """
    from rich.markup import escape

    from onnxcomp.perf.render import elide_middle, fit_table, table

    def names(r: dict) -> list[str]:
        weight = r["root"].rsplit("[", 1)[0]
        lines = [r["label"]] if r["label"] and r["label"] != weight else []
        return [*lines, r["root"], f"node {r['root_node']}"]

    def build(width: int) -> Any:
        t = table(title, console)
        t.add_column("id", justify="right", no_wrap=True)
        t.add_column("group", no_wrap=True)
        t.add_column("channels", justify="right", no_wrap=True)
        t.add_column("units", justify="right", no_wrap=True)
        t.add_column("tensors", justify="right", no_wrap=True)
        t.add_column("status", max_width=_STATUS_WIDTH)
        for r in rows:
            first, *rest = [escape(elide_middle(n, width)) for n in names(r)]
            cell = "\n".join([first, *(f"[dim]{n}[/]" for n in rest)])
            units = f"{r['units']}" + (f" x {r['unit_size']}" if r["unit_size"] > 1 else "")
            channels = str(r["channels"]) + (f" -> {r['channels_after']}" if "channels_after" in r else "")
            t.add_row(str(r["id"]), cell, channels, units, str(r["tensors"]), escape(_status(r, all_reasons)))
        t.caption = escape("group: label, root weight [axis], root node"
                           + (" (shortened with …; --json has them whole)" if width < longest else ""))
        t.caption_justify = "left"
        return t

    longest = max((len(n) for r in rows for n in names(r)), default=1)
    return fit_table(build, console, longest, min_width=20)


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--exclude", multiple=True, help="Node-name glob pattern to leave whole (repeatable).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the groups as JSON.")
@click.option("--all-reasons", is_flag=True, help="Show every freezing reason, not just the first.")
@click.option("--ratio", type=click.FloatRange(0.0, 0.95), default=None,
              help="Dry run: show channels kept per group by prune-channels at this ratio (uniform, l1).")
@click.option("--round-to", type=click.IntRange(1), default=1, show_default=True, help="round_to of the dry run.")
@handle_errors
def inspect(model: Path, exclude: tuple[str, ...], json_out: Path | None, all_reasons: bool, ratio: float | None,
            round_to: int) -> None:
    """List the channel groups of MODEL that prune-channels would prune, and what froze the rest."""
    from rich.console import Console

    from onnxcomp.errors import UsageError
    from onnxcomp.io.outputs import check_output_paths, write_text_atomic

    if not model.exists():
        raise UsageError(f"no such file: {model}")
    check_output_paths([("--json", json_out)], protect=[model])
    rows = group_rows(model, tuple(exclude), ratio, round_to)
    console = Console()
    console.print(groups_table(rows, f"channel groups of {model.name}", console, all_reasons))
    n_ok = sum(r["prunable"] for r in rows)
    click.echo(f"{len(rows)} groups, {n_ok} prunable, {len(rows) - n_ok} frozen")
    if json_out is not None:
        write_text_atomic(json_out, json.dumps({"model": str(model), "groups": rows}, indent=2))


COMMANDS = [inspect]
