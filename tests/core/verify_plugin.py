"""Lossy test passes for the verification tests (loaded with ``--plugin``; not a test module)."""

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp import Pass, PassResult, register_pass


def _append(graph: gs.Graph, op: str, extra: list | None = None) -> None:
    """Route the first graph output through ``op`` (same shape)."""
    out = graph.outputs[0]
    inner = gs.Variable(out.name + "_inner", dtype=out.dtype, shape=out.shape)
    for node in list(graph.nodes):
        node.outputs = [inner if t is out else t for t in node.outputs]
    graph.nodes.append(gs.Node(op, inputs=[inner, *(extra or [])], outputs=[out]))


@register_pass("test-sqrt-output")
class SqrtOutput(Pass):
    """Take the square root of the output (NaN wherever it is negative)."""

    lossless = False

    def run(self, graph, ctx):
        _append(graph, "Sqrt")
        return PassResult(modified=True)


@register_pass("test-note-fit-data")
class NoteFitData(Pass):
    """Scale the output by 1.001 and record which calibration and training data the pass was given."""

    lossless = False

    def run(self, graph, ctx):
        _append(graph, "Mul", [gs.Constant("test_scale", np.array(1.001, np.float32))])
        def name(data):
            return data.description if data is not None else None

        return PassResult(modified=True, stats={"fit_data": name(ctx.calibration), "train_data": name(ctx.train_data)})
