"""Helpers for the lossless-pass tests (importable as `lossless_testutil`)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser

from onnxcomp.checking.calibration import generate_inputs
from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.pipeline.pass_api import PassContext, PassResult
from onnxcomp.pipeline.registry import instantiate
from onnxcomp.checking.verify import evaluate


def parse(text: str) -> onnx.ModelProto:
    """Parse ONNX text and run the full checker on it."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def run_pass(model: onnx.ModelProto, name: str, **options: object) -> tuple[onnx.ModelProto, PassResult]:
    """Run one pass directly (no manager), clean up, export and full-check the result."""
    graph, meta = to_graph(model)
    ctx = PassContext(original_model=model, meta=meta)
    result = instantiate((name, dict(options))).run(graph, ctx)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = to_model(graph, meta)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def ops(model: onnx.ModelProto) -> collections.Counter:
    """Op-type counts of the main graph."""
    return collections.Counter(n.op_type for n in model.graph.node)


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict | None = None, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Both models give the same outputs (by name) in onnxruntime."""
    feeds = feeds if feeds is not None else generate_inputs(a, seed=0)
    ra, rb = evaluate(a, [feeds])[0], evaluate(b, [feeds])[0]
    assert list(ra) == list(rb)
    for k in ra:
        np.testing.assert_allclose(np.asarray(rb[k]), np.asarray(ra[k]), rtol=rtol, atol=atol, err_msg=k)
