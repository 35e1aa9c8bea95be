"""What ``prune-channels`` decided, kept for later passes of the run: `PruneRecord`.

The pass stores one with ``ctx.records.put(record)``; ``reconstruct`` and ``distill`` read
it with ``ctx.records.get(PruneRecord)`` to compare the pruned model's tensors with the
teacher's on the channels that survived.

The record is *replayable*: on the graph the pass analysed (its input, after the exact
constant folding the pass does first), `PruneRecord.removed_by_group` turns the recorded
decision back into `allocate`'s form, and `kept_positions` + `apply_kept` then redo the
same slicing (see ``tests/pruning/test_prune_record.py``).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.pruning.deps import AxisKey, ChannelGroup


def _frozen_indices(values: Iterable[int] | np.ndarray) -> np.ndarray:
    """An int64 copy of ``values`` that cannot be written to (records are immutable)."""
    out = np.array(values, dtype=np.int64, copy=True)
    out.setflags(write=False)
    return out


# eq=False: the fields hold numpy arrays, whose ``==`` is element-wise, so a generated
# ``__eq__`` would raise; records are compared by identity.
@dataclass(frozen=True, eq=False)
class GroupKept:
    """The root channels one pruned channel group kept.

    Attributes:
        root: ``(weight name, axis)`` the group grew from (`ChannelGroup.root`); an
            analysis of the same input graph finds the same group by it.
        size: Root channels of the group before pruning.
        kept: Kept root channels, ascending (read-only int64 array).
    """

    root: AxisKey
    size: int
    kept: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "kept", _frozen_indices(self.kept))

    @property
    def removed(self) -> np.ndarray:
        """Removed root channels, ascending (the complement of ``kept``)."""
        return np.setdiff1d(np.arange(self.size, dtype=np.int64), self.kept)


@dataclass(frozen=True, eq=False)
class PruneRecord:
    """What ``prune-channels`` kept, relative to the graph it analysed.

    Tensors keep their names when pruned, so every entry names a tensor of both the
    model before and the model after the pass.

    Attributes:
        groups: The pruned channel groups in analysis order (groups left whole are absent):
            the decision itself, enough to replay the pruning.
        tensors: ``{tensor name: {axis: kept positions}}`` for every sliced axis of every
            activation (node output) and initializer: the decision's consequence.
            Positions are ascending int64 indices into the tensor *before* pruning; a
            Conv weight that lost output and input channels has two axes.
        source: The model the pass analysed, before slicing (None when not kept). Recovery
            passes use it as the teacher: its tensor names are the pruned model's, whereas
            the run's input may name them differently (``fold-batchnorm`` keeps a Conv's
            output name, which in the input names the tensor *before* the BatchNorm).
    """

    groups: tuple[GroupKept, ...]
    tensors: Mapping[str, Mapping[int, np.ndarray]]
    source: onnx.ModelProto | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        frozen = {
            name: types.MappingProxyType({int(axis): _frozen_indices(idx) for axis, idx in axes.items()})
            for name, axes in self.tensors.items()
        }
        object.__setattr__(self, "tensors", types.MappingProxyType(frozen))

    def channels(self, name: str) -> tuple[int, np.ndarray] | None:
        """The lowest sliced axis of tensor ``name`` and its kept positions (None: not sliced).

        For activations (one sliced axis, the channel axis) this is all there is to know;
        a weight sliced on several axes reports its lowest one (a Conv weight: axis 0,
        the output channels).
        """
        axes = self.tensors.get(name)
        if not axes:
            return None
        axis = min(axes)
        return axis, axes[axis]

    def removed_by_group(self, groups: Iterable[ChannelGroup]) -> dict[int, np.ndarray]:
        """The recorded decision in `allocate`'s form: group id -> removed root channels.

        Args:
            groups: An analysis (`analyze`) of the graph the pass analysed.

        Raises:
            ValueError: A recorded group is not in ``groups`` or has another size (the
                analysis is of a different graph).
        """
        by_root = {g.root: g for g in groups}
        removed: dict[int, np.ndarray] = {}
        for entry in self.groups:
            group = by_root.get(entry.root)
            if group is None or group.size != entry.size:
                raise ValueError(f"no channel group of {entry.size} channels grows from {entry.root}: a different graph?")
            removed[group.id] = entry.removed
        return removed
