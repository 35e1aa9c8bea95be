"""Control flow with a known outcome: an ``If`` whose condition is a constant.

``If(cond)`` runs ``then_branch`` when ``cond`` is true, else ``else_branch``; both are
graphs without inputs whose nodes may read any outer-scope value. When ``cond`` is a
constant, the If *is* its taken branch: `inline_if` moves that branch's nodes into the
graph holding the If and wires the If's outputs to the branch's outputs. graphsurgeon
represents an outer-scope value read inside a body by the very tensor object of the outer
graph, so moved nodes keep reading what they read; names stay unique because ONNX names
are unique across a model's scopes (the branch's own tensors keep their names, the If's
outputs keep theirs).

The If's output *tensors* survive (a graph output, or a value read by name in a later
body, keeps its name): the branch node that produced a branch output is made to write
the If's output instead. Only when a branch output is not produced by a branch node (it
is a constant, an outer value, or an output repeated) is it forwarded: readers of the If
output read it directly, or, for a graph output, an ``Identity`` writes it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir.graph import constant_value, is_graph_output, is_standard, iter_graphs, replace_uses


def taken_branch(node: gs.Node) -> gs.Graph | None:
    """The branch a standard ``If`` node always takes (its condition is a constant), or None."""
    if node.op != "If" or not is_standard(node) or not node.inputs or any(not t.name for t in node.outputs):
        return None
    cond = constant_value(node.inputs[0])
    if cond is None or cond.size != 1:
        return None
    branch = node.attrs.get("then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch")
    if not isinstance(branch, gs.Graph) or len(branch.outputs) != len(node.outputs):
        return None
    return branch


def inline_if(graph: gs.Graph, node: gs.Node, branch: gs.Graph) -> None:
    """Replace If ``node`` of ``graph`` by the nodes of ``branch`` (see the module docstring).

    The caller sorts ``graph`` afterwards (moved nodes are appended).
    """
    branch_nodes = list(branch.nodes)
    produced = {id(t): n for n in branch_nodes for t in n.outputs}
    outs = list(node.outputs)
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if n is not node]
    claimed: dict[int, gs.Tensor] = {}  # branch output -> the If output now holding its value
    forwards: list[tuple[gs.Tensor, gs.Tensor]] = []
    for o, b in zip(outs, branch.outputs):
        producer = produced.get(id(b))
        if producer is not None and id(b) not in claimed:
            # The producer writes o directly; readers of b (in the branch and bodies nested
            # in it) read o.
            claimed[id(b)] = o
            _rewire_inside(branch, b, o)
            idx = next(i for i, t in enumerate(producer.outputs) if t is b)
            producer.outputs[idx] = o
            continue
        forwards.append((o, claimed.get(id(b), b)))
    graph.nodes.extend(branch_nodes)
    branch.nodes.clear()
    for o, source in forwards:
        if is_graph_output(graph, o):
            graph.nodes.append(gs.Node("Identity", name=f"{o.name}__inlined", inputs=[source], outputs=[o]))
        else:
            replace_uses(o, source)


def _rewire_inside(branch: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every node of ``branch`` and of its nested bodies read ``new`` instead of ``old``."""
    for g in iter_graphs(branch):
        for n in g.nodes:
            for i, t in enumerate(n.inputs):
                if t is old:
                    n.inputs[i] = new
