"""``prune-channels``: structured channel pruning with dependency tracking.

Channels are removed in *groups* of coupled axes (see `onnxcomp.pruning.deps`): a Conv's
output channels together with its bias, the BatchNorm after it, the next Conv's input
channels, every branch joined by a residual Add, Concat/Split offsets, Flatten blocks,
and, in transformers, whole attention heads (Q/K/V columns, output-projection rows) and
FFN neurons. Groups that reach a graph input or output, or an op without a pruning rule,
are frozen, so the model's interface never changes.

Contract with later passes (e.g. ``reconstruct``, ``distill``): after pruning,
``ctx.records.get(onnxcomp.pruning.PruneRecord)`` says what each pruned group kept and,
for every sliced tensor (activations and initializers keep their names), which positions
of each sliced axis survived, as indices into the model as it was before this pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.errors import PassError, UsageError
from onnxcomp.ir import consumer_map, graph_cost
from onnxcomp.pruning import GroupKept, PruneRecord, allocate, apply_kept, channel_groups, group_scores, kept_positions


@dataclass(frozen=True, kw_only=True)
class PruneChannelsOptions(PassOptions):
    """Options of ``prune-channels``."""

    ratio: float = field(default=0.3, metadata={"help": "fraction of channels (units) removed per group, 0-0.95"})
    criterion: Literal["l1", "l2", "bn", "wanda", "random"] = field(
        default="l1", metadata={"help": "importance: weight magnitude, BatchNorm |gamma|, |W|·‖X‖ (needs calibration) or random"}
    )
    allocation: Literal["uniform", "global"] = field(
        default="uniform", metadata={"help": "same ratio in every group, or rank channels across groups"}
    )
    round_to: int = field(default=1, metadata={"help": "kept channel counts are multiples of this (e.g. 8, 16)"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "glob patterns over node or weight names (e.g. 'layer4.*') whose groups are left whole"})
    min_channels: int = field(default=1, metadata={"help": "fewest channels a group keeps"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 0.95:
            raise UsageError(f"ratio must be within 0..0.95, got {self.ratio}")
        if self.round_to < 1:
            raise UsageError(f"round_to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise UsageError(f"min_channels must be >= 1, got {self.min_channels}")


@register_pass("prune-channels")
class PruneChannels(Pass[PruneChannelsOptions]):
    """Remove whole channels, FFN neurons and attention heads in dependency-coupled groups."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        o = self.options
        if o.criterion == "wanda" and ctx.calibration is None:
            raise UsageError("prune-channels: criterion 'wanda' needs calibration data (--calibration-data PATH or 'random')")
        if o.ratio == 0:
            return PassResult(modified=False, stats={"groups_pruned": 0})
        # Constant subgraphs (e.g. a bias built by Expand(Shape(W))) would otherwise
        # freeze groups; folding them is exact.
        n_nodes = len(graph.nodes)
        try:
            graph.fold_constants().cleanup()
        except Exception as e:  # folding is an optimization of the analysis only
            ctx.logger.debug("prune-channels: constant folding skipped: %s", e)
        folded = len(graph.nodes) != n_nodes
        if folded:  # analyses cached by earlier passes describe the unfolded graph
            ctx.invalidate_analyses()
        before = graph_cost(graph)
        groups, shapes = channel_groups(graph, ctx, o.exclude)
        prunable = [g for g in groups if g.prunable]
        ctx.progress(f"prune-channels: {len(groups)} groups, {len(prunable)} prunable")
        # The graph before slicing: wanda's statistics, and the teacher of recovery passes.
        model = ctx.to_model(graph)
        consumers = consumer_map(graph)
        scores = group_scores(o.criterion, prunable, consumers, rng=ctx.rng, model=model, calibration=ctx.calibration)
        removed = allocate(prunable, scores, ratio=o.ratio, allocation=o.allocation, round_to=o.round_to, min_channels=o.min_channels)
        if not removed:
            stats = {"groups": len(groups), "groups_pruned": 0, "groups_frozen": len(groups) - len(prunable)}
            return PassResult(modified=folded, stats=stats)
        try:
            kept, tensors = kept_positions(groups, removed, shapes)
            counts = apply_kept(graph, kept, tensors, shapes)
        except ValueError as e:
            raise PassError(f"prune-channels: {e}") from e
        after = graph_cost(graph)
        by_id = {g.id: g for g in groups}
        per_group = {by_id[i].root[0]: (by_id[i].size, by_id[i].size - int(r.size)) for i, r in removed.items()}
        # For later passes: the decision (root channels each group kept) and its
        # consequence (positions each sliced tensor kept).
        decided = tuple(
            GroupKept(g.root, g.size, np.setdiff1d(np.arange(g.size, dtype=np.int64), removed[g.id]))
            for g in groups
            if g.id in removed
        )
        ctx.records.put(PruneRecord(groups=decided, tensors=kept, source=model))
        ch_before = sum(g.size for g in prunable)
        ch_after = ch_before - sum(int(r.size) for r in removed.values())
        stats = {
            "groups": len(groups),
            "groups_pruned": len(removed),
            "groups_frozen": sum(1 for g in groups if g.frozen),
            "channels_before": ch_before,
            "channels_after": ch_after,
            "params_before": before.params,
            "params_after": after.params,
            "flops_before": before.flops,
            "flops_after": after.flops,
            "per_group": {k: f"{a}->{b}" for k, (a, b) in per_group.items()},
            **counts,
        }
        return PassResult(modified=True, stats=stats)
