"""``onnxcomp inspect MODEL``: the channel groups ``prune-channels`` would work on.

Lists every group (root weight, channels, units — e.g. heads —, coupled tensors) and,
for frozen groups, which op or graph boundary froze them. ``--json`` writes the same
facts as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import onnx_graphsurgeon as gs

from onnxcomp.cli import handle_errors


def group_rows(model_path: Path, exclude: tuple[str, ...] = ()) -> list[dict]:
    """Channel groups of a model file as JSON-friendly dicts.

    Args:
        model_path: The ONNX model.
        exclude: Node-name glob patterns (groups touching them are reported frozen).

    Returns:
        One dict per group: ``id``, ``root``, ``channels``, ``units``, ``unit_size``,
        ``tensors``, ``params``, ``prunable``, ``frozen_by``.
    """
    from onnxcomp.graph_io import to_graph, to_model
    from onnxcomp.model_io import load_model
    from onnxcomp.pruning.deps import analyze, infer_shapes

    model = load_model(model_path)
    graph, meta = to_graph(model)
    try:  # same preparation as the pass: exact constant folding first
        graph.fold_constants().cleanup()
    except Exception:
        pass
    shapes = infer_shapes(to_model(graph.copy(), meta))
    rows = []
    for g in analyze(graph, shapes, exclude=exclude):
        rows.append({
            "id": g.id,
            "root": f"{g.root[0]}[axis {g.root[1]}]",
            "root_node": g.root_node,
            "channels": g.size,
            "units": len(g.units),
            "unit_size": g.unit_size,
            "tensors": len(g.members),
            "params": [f"{m.tensor.name}[{m.axis}]" for m in g.params()],
            "prunable": g.prunable,
            "frozen_by": list(g.frozen),
        })
    return rows


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--exclude", multiple=True, help="Node-name glob pattern to leave whole (repeatable).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the groups as JSON.")
@click.option("--all-reasons", is_flag=True, help="Show every freezing reason, not just the first.")
@handle_errors
def inspect(model: Path, exclude: tuple[str, ...], json_out: Path | None, all_reasons: bool) -> None:
    """List the channel groups of MODEL that prune-channels would prune, and what froze the rest."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from onnxcomp.errors import UsageError

    if not model.exists():
        raise UsageError(f"no such file: {model}")
    rows = group_rows(model, tuple(exclude))
    table = Table(title=f"channel groups of {model.name}")
    for col in ("id", "root node", "root weight", "channels", "units", "tensors", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        units = f"{r['units']}" + (f" x {r['unit_size']}" if r["unit_size"] > 1 else "")
        if r["prunable"]:
            status = "prunable"
        elif r["frozen_by"]:
            status = "frozen: " + ("; ".join(r["frozen_by"]) if all_reasons else r["frozen_by"][0]
                                   + (f" (+{len(r['frozen_by']) - 1} more)" if len(r["frozen_by"]) > 1 else ""))
        else:
            status = "single unit"
        table.add_row(str(r["id"]), escape(r["root_node"]), escape(r["root"]), str(r["channels"]), units, str(r["tensors"]),
                      escape(status))
    Console().print(table)
    n_ok = sum(r["prunable"] for r in rows)
    click.echo(f"{len(rows)} groups, {n_ok} prunable, {len(rows) - n_ok} frozen")
    if json_out is not None:
        json_out.write_text(json.dumps({"model": str(model), "groups": rows}, indent=2))


COMMANDS = [inspect]
