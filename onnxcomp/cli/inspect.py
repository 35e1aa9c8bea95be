"""``onnxcomp inspect MODEL``: the channel groups ``prune-channels`` would work on.

Lists every group (root weight, channels, units — e.g. heads —, coupled tensors) and,
for frozen groups, which op or graph boundary froze them. ``--json`` writes the same
facts as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    from rich.markup import escape
    from rich.table import Table

    from onnxcomp.errors import UsageError

    if not model.exists():
        raise UsageError(f"no such file: {model}")
    rows = group_rows(model, tuple(exclude), ratio, round_to)
    table = Table(title=f"channel groups of {model.name}")
    for col in ("id", "root node", "root weight", "name", "channels", "units", "tensors", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        units = f"{r['units']}" + (f" x {r['unit_size']}" if r["unit_size"] > 1 else "")
        channels = str(r["channels"]) + (f" -> {r['channels_after']}" if "channels_after" in r else "")
        if r["prunable"]:
            status = "prunable"
        elif r["frozen_by"]:
            status = "frozen: " + ("; ".join(r["frozen_by"]) if all_reasons else r["frozen_by"][0]
                                   + (f" (+{len(r['frozen_by']) - 1} more)" if len(r["frozen_by"]) > 1 else ""))
        else:
            status = "single unit"
        table.add_row(str(r["id"]), escape(r["root_node"]), escape(r["root"]), escape(r["label"] if r["label"] != r["root"].rsplit("[", 1)[0] else ""), channels,
                      units, str(r["tensors"]), escape(status))
    Console().print(table)
    n_ok = sum(r["prunable"] for r in rows)
    click.echo(f"{len(rows)} groups, {n_ok} prunable, {len(rows) - n_ok} frozen")
    if json_out is not None:
        json_out.write_text(json.dumps({"model": str(model), "groups": rows}, indent=2))


COMMANDS = [inspect]
