"""The pruning record: typed, immutable, and replayable on the graph the pass pruned."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import Builder

from onnxcomp.ir import to_graph, to_model
from onnxcomp.pipeline.pass_api import PassContext
from onnxcomp.pipeline.registry import instantiate
from onnxcomp.pruning import GroupKept, PruneRecord, analyze, apply_kept, infer_shapes, kept_positions


def branchy_cnn() -> onnx.ModelProto:
    """Residual Add, a Concat of two groups, then GAP -> Flatten -> Gemm."""
    b = Builder(seed=5)
    h = b.conv("x", "c1", 3, 8)
    r = b.node("Relu", [h], ["r1"])
    h = b.conv(r, "c2", 8, 8)
    h = b.node("Add", [h, r], ["add"])
    side = b.conv(h, "c3", 8, 6)
    h = b.node("Concat", [h, side], ["cat"], axis=1)
    h = b.conv(h, "c4", 14, 10)
    h = b.node("GlobalAveragePool", [h], ["gap"])
    h = b.node("Flatten", [h], ["flat"], axis=1)
    b.node("Gemm", [h, b.w("fc.w", 3, 10), b.w("fc.b", 3)], ["y"], transB=1)
    return b.model({"x": [1, 3, 8, 8]}, {"y": [1, 3]})


def _prune(model: onnx.ModelProto, options: str) -> tuple[gs.Graph, PruneRecord]:
    graph, meta = to_graph(model)
    ctx = PassContext(original_model=model, meta=meta, seed=0)
    assert instantiate(f"prune-channels:{options}").run(graph, ctx).modified
    record = ctx.records.get(PruneRecord)
    assert record is not None
    return graph, record


def _replay(model: onnx.ModelProto, record: PruneRecord) -> tuple[gs.Graph, dict[str, dict[int, np.ndarray]]]:
    """Prune ``model`` again from the record alone, with the pruning building blocks."""
    graph, meta = to_graph(model)
    graph.fold_constants().cleanup()  # what the pass does before its analysis (exact)
    shapes = infer_shapes(to_model(graph.copy(), meta))
    groups = analyze(graph, shapes)
    kept, tensors = kept_positions(groups, record.removed_by_group(groups), shapes)
    apply_kept(graph, kept, tensors, shapes)
    return graph, kept


def _assert_same_graph(a: gs.Graph, b: gs.Graph) -> None:
    def nodes(g: gs.Graph) -> list[tuple]:
        return [(n.op, n.name, [t.name for t in n.inputs], [t.name for t in n.outputs], n.attrs) for n in g.nodes]

    def constants(g: gs.Graph) -> dict[str, np.ndarray]:
        return {name: np.asarray(t.values) for name, t in g.tensors().items() if isinstance(t, gs.Constant)}

    assert nodes(a) == nodes(b)
    ca, cb = constants(a), constants(b)
    assert ca.keys() == cb.keys()
    for name in ca:
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)
        assert ca[name].dtype == cb[name].dtype, name
    va = {t.name: (t.shape, t.dtype) for t in a.tensors().values() if isinstance(t, gs.Variable)}
    vb = {t.name: (t.shape, t.dtype) for t in b.tensors().values() if isinstance(t, gs.Variable)}
    assert va == vb


def _assert_replays(model: onnx.ModelProto, options: str) -> PruneRecord:
    pruned, record = _prune(model, options)
    replayed, kept = _replay(model, record)
    # The consequence recorded is the one the decision gives ...
    assert kept.keys() == record.tensors.keys()
    for name, axes in kept.items():
        assert axes.keys() == record.tensors[name].keys(), name
        for axis, idx in axes.items():
            np.testing.assert_array_equal(idx, record.tensors[name][axis], err_msg=f"{name}[{axis}]")
    # ... and replaying it gives the very graph the pass produced.
    _assert_same_graph(pruned, replayed)
    return record


@pytest.mark.parametrize("options", ["ratio=0.5", "ratio=0.3,criterion=random,allocation=global"])
def test_record_replays_on_the_input_graph(options: str) -> None:
    record = _assert_replays(branchy_cnn(), options)
    roots = [g.root for g in record.groups]
    assert ("c1.w", 0) in roots and ("c3.w", 0) in roots and ("c4.w", 0) in roots
    for group in record.groups:
        assert np.all(np.diff(group.kept) > 0) and 0 < group.kept.size < group.size


def test_record_replays_attention_heads(small_models) -> None:
    """Heads and FFN neurons (reshape targets rewritten) replay the same way."""
    record = _assert_replays(onnx.load(small_models["bert"]), "ratio=0.3")
    assert any(g.size > len(g.kept) for g in record.groups)


def test_record_is_immutable_and_checks_its_graph() -> None:
    record = PruneRecord(groups=(GroupKept(("w", 0), 4, np.array([0, 2])),), tensors={"w": {0: np.array([0, 2])}})
    assert record.groups[0].removed.tolist() == [1, 3]
    entry = record.channels("w")
    assert entry is not None and entry[0] == 0 and entry[1].dtype == np.int64
    assert record.channels("other") is None
    with pytest.raises(ValueError):
        record.tensors["w"][0][0] = 1  # read-only indices
    with pytest.raises(TypeError):
        record.tensors["v"] = {}  # type: ignore[index]
    graph, _ = to_graph(branchy_cnn())
    groups = analyze(graph, infer_shapes(branchy_cnn()))
    with pytest.raises(ValueError, match="different graph"):
        record.removed_by_group(groups)  # no group grows from "w"
