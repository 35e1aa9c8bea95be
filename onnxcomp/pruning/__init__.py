"""Structured channel pruning: dependency analysis, importance, allocation and slicing.

* `deps`: channel groups (coupled (tensor, axis) sets with index mappings) — an analysis
  other passes can reuse (`analyze`, `analyze_model`; inside a pass,
  `onnxcomp.passes.prune_channels.channel_groups(graph, ctx)` caches it).
* `rules`: the per-op coupling rules, keyed by (domain, op_type, opset range).
* `importance`: l1, l2, bn, wanda, random.
* `allocate`: uniform / global allocation with ``round_to`` and floors.
* `apply`: slicing weights and shape constants in place (names kept).
"""

from onnxcomp.pruning.deps import ChannelGroup, Member, analyze, analyze_model, infer_shapes
from onnxcomp.pruning.indexmap import IndexMap

__all__ = ["ChannelGroup", "IndexMap", "Member", "analyze", "analyze_model", "infer_shapes"]
