"""results.png: latency ratio (x) against fidelity (y), one panel per model.

One marker per tool/preset (same marker and colour in every panel); onnxcomp presets are
filled, peers hollow; FP32 is the black star at ratio 1. Up and to the left is better, so
the Pareto front is read at a glance. Failed tools have no point (they are in the table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from suite_findings import fidelity_name, fidelity_value, latency_ratio, measured

_MARKERS = "osD^vP<>Xph*"
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939")


def _styles(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    keys = [k for k in dict.fromkeys(r["tool"] for r in rows) if k != "fp32"]
    return {k: (_MARKERS[i % len(_MARKERS)], _COLORS[i % len(_COLORS)]) for i, k in enumerate(keys)}


def plot(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Write the plot for a benchmark document.

    Args:
        doc: The ``results.json`` document.
        path: Destination PNG.

    Returns:
        ``path``, or None when no model has a measured row.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    rows = list(doc.get("rows", []))
    models = [m["name"] for m in doc.get("models", []) if any(measured(r) for r in rows if r["model"] == m["name"])]
    if not models:
        return None
    styles = _styles(rows)
    labels = {r["tool"]: r["label"] for r in rows}
    families = {r["tool"]: r["family"] for r in rows}
    ncols = 2 if len(models) == 4 else min(3, len(models))  # 2×2 reads better than 3+1
    nrows = math.ceil(len(models) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        mrows = [r for r in rows if r["model"] == model and measured(r)]
        kind = fidelity_name(mrows)
        for r in mrows:
            x, y = latency_ratio(r), fidelity_value(r)
            if r["tool"] == "fp32":
                ax.scatter([x], [y], marker="*", s=180, color="black", zorder=3)
                continue
            marker, color = styles[r["tool"]]
            filled = r["family"] == "onnxcomp"
            ax.scatter([x], [y], marker=marker, s=70, zorder=3, linewidths=1.6,
                       facecolors=color if filled else "none", edgecolors=color)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(model)
        ax.set_xlabel("latency ÷ FP32 (p50, lower is faster)")
        ax.set_ylabel("test accuracy" if kind == "accuracy" else "cosine to FP32")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="*", color="black", ls="", markersize=12, label="FP32")]
    for key, (marker, color) in styles.items():
        filled = families.get(key) == "onnxcomp"
        handles.append(plt.Line2D([], [], marker=marker, ls="", markersize=8, markeredgewidth=1.6,
                                  markerfacecolor=color if filled else "none", markeredgecolor=color,
                                  label=labels.get(key, key)))
    legend_cols = min(2 * ncols, len(handles))  # about two entries fit under each panel
    fig.legend(handles=handles, loc="lower center", ncol=legend_cols, frameon=False, bbox_to_anchor=(0.5, 0.0))
    env = doc.get("environment", {})
    cfg = doc.get("config", {})
    fig.suptitle(f"onnxcomp (filled) vs peers (hollow) — {env.get('cpu', '?')}, {cfg.get('ep', 'cpu')} EP, "
                 f"{cfg.get('threads')} threads", fontsize=10)
    legend_inches = 0.28 * math.ceil(len(handles) / legend_cols) + 0.15
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
