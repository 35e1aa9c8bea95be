"""How many units each group loses, and which.

* ``uniform``: every prunable group loses ``round(ratio · units)`` of its lowest-scoring
  units.
* ``global``: unit scores are normalized by their group's mean, ranked across all
  groups, and the lowest are removed until ``ratio`` of all channels are gone; each
  group keeps at least ``floor`` of its units (and ``min_channels``).

In both, a group keeps at least one unit and ``min_channels`` channels; with
``round_to`` > 1 the kept channel count of single-channel-unit groups is rounded to a
multiple of ``round_to`` (hardware-friendly), never below ``round_to``. A group whose
decision would remove every unit is refused (left whole).
"""

from __future__ import annotations

import math

import numpy as np

from onnxcomp.pruning.deps import ChannelGroup

ALLOCATIONS = ("uniform", "global")


def _unit_scores(g: ChannelGroup, scores: np.ndarray) -> np.ndarray:
    return np.array([float(scores[u].mean()) for u in g.units])


def _keep_count(g: ChannelGroup, keep_units: int, min_channels: int, round_to: int) -> int:
    n = len(g.units)
    us = g.unit_size
    keep_units = max(keep_units, 1, math.ceil(min_channels / us))
    if round_to > 1 and us == 1:
        if n <= round_to:
            return n
        keep_units = max(round_to, int(round(keep_units / round_to)) * round_to)
    return min(n, keep_units)


def allocate(
    groups: list[ChannelGroup],
    scores: dict[int, np.ndarray],
    *,
    ratio: float,
    allocation: str = "uniform",
    round_to: int = 1,
    min_channels: int = 1,
    floor: float = 0.1,
) -> dict[int, np.ndarray]:
    """Decide the removed root channels of every prunable group.

    Args:
        groups: Groups of the analysis (frozen ones are skipped).
        scores: Group id -> score per root channel (higher = more important).
        ratio: Fraction of units (uniform) or channels (global) to remove.
        allocation: ``"uniform"`` or ``"global"``.
        round_to: Kept channel counts are multiples of this (single-channel units).
        min_channels: Fewest channels a group keeps.
        floor: Global allocation keeps at least this fraction of each group's units.

    Returns:
        Group id -> removed root channels (sorted); groups left whole are absent.
    """
    prunable = [g for g in groups if g.prunable]
    unit_scores = {g.id: _unit_scores(g, scores[g.id]) for g in prunable}
    keep: dict[int, int] = {}
    if allocation == "uniform":
        for g in prunable:
            n = len(g.units)
            keep[g.id] = _keep_count(g, n - int(round(ratio * n)), min_channels, round_to)
    elif allocation == "global":
        entries = []
        for g in prunable:
            us = unit_scores[g.id]
            norm = us / us.mean() if us.mean() > 0 else us
            for k, s in enumerate(norm):
                entries.append((float(s), g.id, k, len(g.units[k])))
        total = sum(e[3] for e in entries)
        target = ratio * total
        entries.sort()
        removed_units = {g.id: 0 for g in prunable}
        floors = {g.id: max(1, math.ceil(floor * len(g.units))) for g in prunable}
        by_id = {g.id: g for g in prunable}
        gone = 0
        for s, gid, _k, width in entries:
            if gone >= target:
                break
            if len(by_id[gid].units) - removed_units[gid] - 1 < floors[gid]:
                continue
            removed_units[gid] += 1
            gone += width
        for g in prunable:
            keep[g.id] = _keep_count(g, len(g.units) - removed_units[g.id], min_channels, round_to)
    else:
        raise ValueError(f"unknown allocation {allocation!r}")
    out: dict[int, np.ndarray] = {}
    for g in prunable:
        n, k = len(g.units), keep[g.id]
        if k >= n:
            continue
        if k <= 0:  # a group never loses every channel
            continue
        order = np.argsort(unit_scores[g.id], kind="stable")
        drop = order[: n - k]
        out[g.id] = np.sort(np.concatenate([g.units[i] for i in drop]))
    return out
