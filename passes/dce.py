"""``dce``: dead-code elimination.

Removes nodes whose outputs reach no graph output (recursively inside If/Loop/Scan
bodies, whose own outputs are kept), and opset imports no node uses any more. Unused
initializers and value_info disappear with them: export writes only tensors the
remaining graph references.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassContext, PassResult, register_pass
from onnxcomp.ir import count_nodes, remove_dead_nodes


def _used_domains(graph: gs.Graph) -> set[str]:
    used: set[str] = set()
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.nodes:
            used.add(node.domain or "")
            stack.extend(a for a in node.attrs.values() if isinstance(a, gs.Graph))
    for f in graph.functions:
        used.add(f.domain or "")
        stack.append(f)
        while stack:
            g = stack.pop()
            for node in g.nodes:
                used.add(node.domain or "")
    return used


@register_pass("dce")
class EliminateDeadCode(Pass):
    """Remove nodes that no output depends on, and unused opset imports."""

    lossless = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = count_nodes(graph)
        remove_dead_nodes(graph)  # recurses into If/Loop/Scan bodies and functions when there are any
        removed = before - count_nodes(graph)
        dropped = 0
        if graph.import_domains is not None:
            used = _used_domains(graph)
            keep = [d for d in graph.import_domains if (d.domain or "") in used or d.domain in ("", "ai.onnx")]
            dropped = len(graph.import_domains) - len(keep)
            if dropped:
                graph.import_domains = keep
        return PassResult(modified=bool(removed or dropped), stats={"nodes_removed": removed, "opsets_removed": dropped})
