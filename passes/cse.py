"""``cse``: common-subexpression elimination.

Two nodes compute the same value when they have the same (domain, op_type), the same
attributes and the *same* inputs. Inputs are compared by identity after canonicalising
constants: constants up to ``max_constant_bytes`` are keyed by (dtype, shape, bytes), so
two initializers holding equal values (exporters duplicate small shape constants a lot)
first merge into one, and the nodes reading them then become identical too.

Linear time: one walk in topological order with a hash map from node key to the first
node seen with that key; since inputs are rewired to canonical tensors before later
nodes are visited, chains of duplicates collapse in the same walk.

Never merged: random ops (each RandomNormal draws its own sample), nodes with subgraph
attributes, custom-domain ops (their determinism is unknown).

Graph outputs keep distinct names: a duplicate whose output is a graph output survives
as the kept copy (the earlier twin's readers are moved to it) unless both twins feed
graph outputs, in which case both stay — dropping one would need an Identity, which
costs the node we would have saved.

Subgraphs: only the main graph is deduplicated; If/Loop/Scan bodies are left alone on
purpose (body nodes can read outer-scope values and must stay inside their body; merging
across scopes would be wrong and merging within one body saves little).
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxcomp import Pass, PassContext, PassOptions, PassResult, register_pass
from onnxcomp.errors import UsageError
from onnxcomp.ir import (
    RANDOM_OPS,
    cleanup_after_rewrite,
    constant_nbytes,
    has_subgraph,
    is_graph_output,
    is_standard,
    peek_values,
    replace_uses,
    tensor_map,
    toposort,
)


@dataclass(frozen=True, kw_only=True)
class CSEOptions(PassOptions):
    """Options of `cse`."""

    max_constant_bytes: int = field(
        default=1 << 20, metadata={"help": "constants up to this size are compared by value (larger ones by identity)"}
    )

    def __post_init__(self) -> None:
        if self.max_constant_bytes < 0:
            raise UsageError("max_constant_bytes must be >= 0")


def _value_key(arr: np.ndarray) -> tuple:
    """A value-based key: (dtype, shape, digest of the payload)."""
    arr = np.ascontiguousarray(arr)
    return ("value", arr.dtype.str, arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).digest())


#: Bytes taken from each end of a payload by `_sample_key`.
_SAMPLE_BYTES = 64


def _sample_key(arr: np.ndarray) -> tuple:
    """A cheap key that equal arrays share: (dtype, shape, first and last payload bytes).

    ``arr`` must be C-contiguous. Distinct weights of one shape almost always differ in
    their first bytes, so this separates them without reading (or hashing) the rest.
    """
    raw = arr.reshape(-1).view(np.uint8)
    if raw.size <= 2 * _SAMPLE_BYTES:
        return (arr.dtype.str, arr.shape, raw.tobytes())
    return (arr.dtype.str, arr.shape, raw[:_SAMPLE_BYTES].tobytes(), raw[-_SAMPLE_BYTES:].tobytes())


#: Sample keys of lazily loaded payloads by payload object. Such a payload is a weight of
#: the input model and never changes, while a fixed-point loop runs `cse` once per sweep
#: over the same weights; loading a weight again (a copy out of the protobuf) cost more
#: than the rest of the pass. Entries go with their payload object.
_LAZY_SAMPLE_KEYS: weakref.WeakKeyDictionary[LazyValues, tuple | None] = weakref.WeakKeyDictionary()


def _payload(t: gs.Constant) -> np.ndarray | None:
    """The C-contiguous value of ``t``, or None when it holds Python objects (strings)."""
    arr = np.ascontiguousarray(peek_values(t, readonly=True))
    return None if arr.dtype == object else arr


def _constant_sample_key(t: gs.Constant) -> tuple | None:
    """`_sample_key` of ``t``'s value; None for payloads of Python objects (never merged)."""
    raw = t._values
    if isinstance(raw, LazyValues) and raw in _LAZY_SAMPLE_KEYS:
        return _LAZY_SAMPLE_KEYS[raw]
    arr = _payload(t)
    key = None if arr is None else _sample_key(arr)
    if isinstance(raw, LazyValues):
        _LAZY_SAMPLE_KEYS[raw] = key
    return key


def _attr_key(v: Any) -> Any:
    """A hashable, value-based key for an attribute value."""
    if isinstance(v, gs.Constant):
        return _value_key(peek_values(v, readonly=True))
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, np.ndarray):
        return _value_key(v)
    if isinstance(v, float) and v != v:  # NaN != NaN: compare by repr
        return ("nan",)
    if isinstance(v, (int, float, str, bytes, bool, type(None), np.generic)):
        return (type(v).__name__, v)
    return ("id", id(v))  # unknown attribute kinds never match anything but themselves


@register_pass("cse")
class EliminateCommonSubexpressions(Pass[CSEOptions]):
    """Merge duplicate nodes (same op, attributes and inputs) and duplicate constants."""

    lossless = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = self.options
        constants_merged = self._merge_constants(graph, opts.max_constant_bytes)
        nodes_merged = self._merge_nodes(graph)
        modified = bool(constants_merged or nodes_merged)
        if modified:
            # Merged-away nodes go now; the manager's cleanup drops constants left unused.
            cleanup_after_rewrite(graph)
            toposort(graph, recurse_subgraphs=False)
        return PassResult(modified=modified, stats={"nodes_merged": nodes_merged, "constants_merged": constants_merged})

    @staticmethod
    def _merge_constants(graph: gs.Graph, max_bytes: int) -> int:
        # Bucket by (dtype, shape) from metadata first: only constants that share both can
        # be equal, so most weights are never loaded. Within a bucket, a sample of each
        # payload (its first and last bytes) splits off the constants that cannot be equal,
        # so only near-certain duplicates (and small constants) have their payload hashed.
        outputs = {id(t) for t in graph.outputs}
        buckets: dict[tuple, list[gs.Constant]] = {}
        for t in tensor_map(graph).values():
            if not isinstance(t, gs.Constant) or not t.outputs or id(t) in outputs:
                continue
            if constant_nbytes(t) > max_bytes:
                continue
            buckets.setdefault((str(t.dtype), tuple(t.shape)), []).append(t)
        merged = 0
        for members in buckets.values():
            if len(members) < 2:
                continue
            by_sample: dict[tuple, list[gs.Constant]] = {}
            for t in members:
                key = _constant_sample_key(t)
                if key is not None:
                    by_sample.setdefault(key, []).append(t)
            # Within one sample group members keep their bucket order, so the first of
            # several equal constants stays canonical, as without the sampling. Values are
            # loaded again here rather than kept from sampling: a bucket can hold many weights.
            for group in by_sample.values():
                if len(group) < 2:
                    continue
                canonical: dict[tuple, gs.Constant] = {}
                for t in group:
                    first = canonical.setdefault(_value_key(peek_values(t, readonly=True)), t)
                    if first is not t:
                        replace_uses(t, first)
                        merged += 1
        return merged

    @staticmethod
    def _merge_nodes(graph: gs.Graph) -> int:
        toposort(graph, recurse_subgraphs=False)
        seen: dict[tuple, gs.Node] = {}
        merged = 0
        for node in list(graph.nodes):
            if not node.outputs or not is_standard(node) or node.op in RANDOM_OPS or has_subgraph(node):
                continue
            key = (
                node.domain or "",
                node.op,
                tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items())),
                tuple(id(t) if t.name or isinstance(t, gs.Constant) else "" for t in node.inputs),
                len(node.outputs),
            )
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            mine_out = [is_graph_output(graph, t) for t in node.outputs]
            first_out = [is_graph_output(graph, t) for t in first.outputs]
            if not any(mine_out):
                keep, drop = first, node
            elif not any(first_out) and (len(node.outputs) == 1):
                # The later twin names a graph output: keep it, move the earlier twin's readers.
                keep, drop = node, first
                seen[key] = node
            else:
                continue
            for t_drop, t_keep in zip(drop.outputs, keep.outputs):
                if t_drop.name:
                    replace_uses(t_drop, t_keep)
            drop.inputs.clear()
            drop.outputs.clear()
            merged += 1
        return merged
