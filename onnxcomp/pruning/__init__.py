"""Structured channel pruning: dependency analysis, importance, allocation and slicing.

* `deps`: channel groups (coupled (tensor, axis) sets with index mappings) — an analysis
  other passes can reuse (`analyze`, `analyze_model`; inside a pass,
  `channel_groups(graph, ctx)` caches it).
* `rules`: the per-op coupling rules, keyed by (domain, op_type, opset range).
* `importance`: l1, l2, bn, wanda, random (`group_scores`).
* `allocate`: uniform / global allocation with ``round_to`` and floors.
* `apply`: slicing weights and shape constants in place (names kept): `kept_positions`,
  `apply_kept`.
* `record`: what ``prune-channels`` kept (`PruneRecord`), for later passes and replay.

Passes import these names from ``onnxcomp.pruning`` itself.
"""

from onnxcomp.pruning.allocate import allocate
from onnxcomp.pruning.apply import apply_kept, kept_positions
from onnxcomp.pruning.deps import AnalysisContext, ChannelGroup, Member, analyze, analyze_model, channel_groups, infer_shapes
from onnxcomp.pruning.importance import group_scores
from onnxcomp.pruning.indexmap import IndexMap
from onnxcomp.pruning.record import GroupKept, PruneRecord

__all__ = [
    "AnalysisContext",
    "ChannelGroup",
    "GroupKept",
    "IndexMap",
    "Member",
    "PruneRecord",
    "allocate",
    "analyze",
    "analyze_model",
    "apply_kept",
    "channel_groups",
    "group_scores",
    "infer_shapes",
    "kept_positions",
]
