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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.errors import UsageError
from onnxcomp.graph_utils import RANDOM_OPS, constant_nbytes, has_subgraph, peek_values, is_graph_output, is_standard, replace_uses, toposort
from onnxcomp.pass_api import Pass, PassContext, PassOptions, PassResult, register_pass


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
    arr = np.ascontiguousarray(arr)
    return ("value", arr.dtype.str, arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).digest())


def _attr_key(v: Any) -> Any:
    """A hashable, value-based key for an attribute value."""
    if isinstance(v, gs.Constant):
        return _value_key(peek_values(v))
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
class EliminateCommonSubexpressions(Pass):
    """Merge duplicate nodes (same op, attributes and inputs) and duplicate constants."""

    lossless = True
    Options = CSEOptions

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts: CSEOptions = self.options  # type: ignore[assignment]
        constants_merged = self._merge_constants(graph, opts.max_constant_bytes)
        nodes_merged = self._merge_nodes(graph)
        modified = bool(constants_merged or nodes_merged)
        if modified:
            graph.cleanup(remove_unused_graph_inputs=False)
            toposort(graph, recurse_subgraphs=False)
        return PassResult(modified=modified, stats={"nodes_merged": nodes_merged, "constants_merged": constants_merged})

    @staticmethod
    def _merge_constants(graph: gs.Graph, max_bytes: int) -> int:
        # Bucket by (dtype, shape) from metadata first: only constants that share both can
        # be equal, so most weights are never loaded or hashed.
        buckets: dict[tuple, list[gs.Constant]] = {}
        for t in graph.tensors().values():
            if not isinstance(t, gs.Constant) or not t.outputs or is_graph_output(graph, t):
                continue
            if constant_nbytes(t) > max_bytes:
                continue
            buckets.setdefault((str(t.dtype), tuple(t.shape)), []).append(t)
        merged = 0
        for members in buckets.values():
            if len(members) < 2:
                continue
            canonical: dict[tuple, gs.Constant] = {}
            for t in members:
                arr = peek_values(t)
                if arr.dtype == object:
                    continue
                first = canonical.setdefault(_value_key(arr), t)
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
