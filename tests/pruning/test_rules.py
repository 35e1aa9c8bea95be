"""Per-op coupling rules on tiny graphs: index mappings, frozen groups, exact slicing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from exactness import run, zeroed_and_pruned

from onnxcomp.pruning.deps import analyze, infer_shapes
from onnxcomp.pruning.indexmap import contract, expand, shift
from onnxcomp.pruning.rules import (
    RULES,
    conv_rule,
    expand_rule,
    lookup,
    registered_ops,
    reshape_rule,
    slice_rule,
    softmax_rule,
    softmax_rule_v1,
    unary_rule,
)


def groups_of(model: onnx.ModelProto):
    graph = gs.import_onnx(model)
    return {g.root[0]: g for g in analyze(graph, infer_shapes(model))}


def member(group, name, axis):
    m = group.members[(name, axis)]
    order = np.argsort(m.src * 10000 + m.pos)
    return m.src[order], m.pos[order]


def assert_exact(model: onnx.ModelProto, feeds: dict, ratio: float = 0.5) -> dict:
    ref, pruned, kept = zeroed_and_pruned(model, ratio=ratio)
    onnx.checker.check_model(pruned, full_check=True)
    a, b = run(ref, feeds), run(pruned, feeds)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert kept, "nothing was pruned"
    return kept


X = {"x": np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)}


def test_index_maps():
    src, pos = np.array([0, 1, 2]), np.array([0, 1, 2])
    assert shift(1, 3, 5)(src, pos)[1].tolist() == [6, 7]
    assert expand(2)(src, pos)[1].tolist() == [0, 1, 2, 3, 4, 5]
    assert expand(2)(src, pos)[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert contract(2)(np.arange(4), np.arange(4))[1].tolist() == [0, 0, 1, 1]


def test_registry_lookup_respects_opset_range():
    assert lookup("", "Softmax", 13) is not lookup("", "Softmax", 11)
    assert lookup("", "Conv", 17) is not None
    assert lookup("com.example", "Conv", 17) is None
    assert lookup("", "NoSuchOp", 17) is None


def test_every_rule_family_is_reachable_from_the_rules_module():
    """The families live in rules_linear / rules_pointwise / rules_layout; importing
    onnxcomp.pruning.rules alone must register all of them, with their opset ranges."""
    assert lookup("", "Conv", 17) is conv_rule
    assert lookup("ai.onnx", "Relu", 17) is unary_rule
    assert lookup("", "Reshape", 5) is reshape_rule
    assert lookup("", "Slice", 9) is None and lookup("", "Slice", 10) is slice_rule
    assert lookup("", "Expand", 7) is None and lookup("", "Expand", 8) is expand_rule
    assert lookup("", "Softmax", 12) is softmax_rule_v1 and lookup("", "Softmax", 13) is softmax_rule
    assert {("", "Gemm"), ("", "Add"), ("", "ReduceMean"), ("", "Concat"), ("", "Shape")} <= set(registered_ops())
    assert registered_ops() == RULES.ops()


def test_conv_relu_conv_couples_out_and_in_channels(builder):
    b = builder
    h = b.conv("x", "c1", 4, 8)
    h = b.node("Relu", [h], ["r1"])
    b.conv(h, "c2", 8, 3)
    m = b.model({"x": [1, 4, 6, 6]}, {"c2": [1, 3, 6, 6]})
    gs_ = groups_of(m)
    g = gs_["c1.w"]
    assert g.prunable and g.size == 8
    assert set(g.members) == {("c1.w", 0), ("c1.b", 0), ("c1", 1), ("r1", 1), ("c2.w", 1)}
    assert "reaches graph output 'c2'" in gs_["c2.w"].frozen
    kept = assert_exact(m, X)
    assert kept["c2.w"][1].size == 4 and kept["c1.w"][0].size == 4


def test_concat_offsets(builder):
    b = builder
    a = b.conv("x", "ca", 4, 3)
    c = b.conv("x", "cb", 4, 5)
    b.node("Concat", [a, c], ["cat"], axis=1)
    b.conv("cat", "c3", 8, 2)
    m = b.model({"x": [1, 4, 6, 6]}, {"c3": [1, 2, 6, 6]})
    gs_ = groups_of(m)
    src, pos = member(gs_["ca.w"], "c3.w", 1)
    assert pos.tolist() == [0, 1, 2] and src.tolist() == [0, 1, 2]
    src, pos = member(gs_["cb.w"], "c3.w", 1)
    assert pos.tolist() == [3, 4, 5, 6, 7] and src.tolist() == [0, 1, 2, 3, 4]
    kept = assert_exact(m, X)
    assert kept["cat"][1].size == kept["ca"][1].size + kept["cb"][1].size


def test_split_ranges_and_constant_rewrite(builder):
    b = builder
    h = b.conv("x", "c1", 4, 8)
    sp = b.w("split", 2, values=np.array([3, 5], dtype=np.int64))
    b.node("Split", [h, sp], ["s0", "s1"], axis=1)
    b.conv("s0", "c2", 3, 2)
    b.conv("s1", "c3", 5, 2)
    b.node("Add", ["c2", "c3"], ["y"])
    m = b.model({"x": [1, 4, 6, 6]}, {"y": [1, 2, 6, 6]})
    g = groups_of(m)["c1.w"]
    src, pos = member(g, "c3.w", 1)
    assert src.tolist() == [3, 4, 5, 6, 7] and pos.tolist() == [0, 1, 2, 3, 4]
    assert_exact(m, X)


def test_slice_range_mapping(builder):
    b = builder
    h = b.conv("x", "c1", 4, 8)
    st, en, ax = (b.w(n, 1, values=np.array([v], dtype=np.int64)) for n, v in (("st", 2), ("en", 6), ("ax", 1)))
    b.node("Slice", [h, st, en, ax], ["sl"])
    b.conv("sl", "c2", 4, 2)
    m = b.model({"x": [1, 4, 6, 6]}, {"c2": [1, 2, 6, 6]})
    g = groups_of(m)["c1.w"]
    src, pos = member(g, "c2.w", 1)
    assert src.tolist() == [2, 3, 4, 5] and pos.tolist() == [0, 1, 2, 3]
    assert_exact(m, X)


def test_flatten_reshape_to_gemm_is_channel_block(builder):
    b = builder
    h = b.conv("x", "c1", 4, 6)
    shp = b.w("shp", 2, values=np.array([1, 6 * 36], dtype=np.int64))
    b.node("Reshape", [h, shp], ["flat"])
    w = b.w("fc.w", 6 * 36, 3)
    b.node("MatMul", ["flat", w], ["y"])
    m = b.model({"x": [1, 4, 6, 6]}, {"y": [1, 3]})
    g = groups_of(m)["c1.w"]
    src, pos = member(g, "fc.w", 0)
    assert pos.size == 6 * 36 and np.array_equal(src, pos // 36)
    kept = assert_exact(m, X)
    assert kept["fc.w"][0].size == 3 * 36


def test_depthwise_couples_in_and_out_and_updates_group(builder):
    b = builder
    h = b.conv("x", "c1", 4, 8, k=1)
    h = b.conv(h, "dw", 8, 8, group=8)
    b.conv(h, "c3", 8, 2, k=1)
    m = b.model({"x": [1, 4, 6, 6]}, {"c3": [1, 2, 6, 6]})
    gs_ = groups_of(m)
    g = gs_["c1.w"]
    assert ("dw.w", 0) in g.members and ("c3.w", 1) in g.members and "dw.w" not in gs_
    assert_exact(m, X)


def test_grouped_conv_freezes(builder):
    b = builder
    h = b.conv("x", "c1", 4, 8, k=1)
    b.conv(h, "gc", 8, 4, group=2)
    m = b.model({"x": [1, 4, 6, 6]}, {"gc": [1, 4, 6, 6]})
    g = groups_of(m)["c1.w"]
    assert not g.prunable and any("grouped Conv" in r for r in g.frozen)


def test_unknown_op_freezes_with_reason(builder):
    b = builder
    h = b.conv("x", "c1", 4, 8)
    b.node("MyOp", [h], ["u"], domain="com.example")
    b.conv("u", "c2", 8, 2)
    m = b.model({"x": [1, 4, 6, 6]}, {"c2": [1, 2, 6, 6]}, extra_opsets=("com.example",))
    g = groups_of(m)["c1.w"]
    assert not g.prunable
    assert any("MyOp" in r and "no pruning rule" in r for r in g.frozen)


def test_residual_add_shares_indices_across_skip(builder):
    b = builder
    h = b.conv("x", "c1", 4, 8)
    r = b.node("Relu", [h], ["r1"])
    h2 = b.conv(r, "c2", 8, 8)
    s = b.node("Add", [h2, r], ["add"])
    bias = b.w("bc", 8, 1, 1)
    b.node("Mul", [s, bias], ["scaled"])
    b.conv("scaled", "c3", 8, 2)
    m = b.model({"x": [1, 4, 6, 6]}, {"c3": [1, 2, 6, 6]})
    gs_ = groups_of(m)
    g = gs_["c1.w"]
    assert "c2.w" not in gs_  # c2's output channels joined c1's group through the Add
    assert {("c2.w", 0), ("c1.w", 0), ("bc", 0), ("c3.w", 1)} <= set(g.members)
    kept = assert_exact(m, X)
    assert np.array_equal(kept["c1.w"][0], kept["c2.w"][0])


def test_heads_reshape_prunes_whole_heads(builder):
    """[B, S, H*D] -> [B, S, H, D] with an explicit head count: whole heads, constant rewritten."""
    b = builder
    hdim, heads, seq = 4, 3, 5
    q = b.node("MatMul", ["x", b.w("wq", 6, heads * hdim)], ["q"])
    v = b.node("MatMul", ["x", b.w("wv", 6, heads * hdim)], ["v"])
    shp = b.w("shp", 4, values=np.array([1, seq, heads, hdim], dtype=np.int64))
    q4 = b.node("Transpose", [b.node("Reshape", [q, shp], ["q4"])], ["qt"], perm=[0, 2, 1, 3])
    v4 = b.node("Transpose", [b.node("Reshape", [v, shp], ["v4"])], ["vt"], perm=[0, 2, 1, 3])
    kt = b.node("Transpose", [q4], ["kt"], perm=[0, 1, 3, 2])
    sc = b.node("Softmax", [b.node("MatMul", [q4, kt], ["sc0"])], ["sc"], axis=-1)
    o = b.node("MatMul", [sc, v4], ["o"])
    ot = b.node("Transpose", [o], ["ot"], perm=[0, 2, 1, 3])
    merged = b.node("Reshape", [ot, b.w("shp2", 3, values=np.array([1, seq, heads * hdim], dtype=np.int64))], ["merged"])
    b.node("MatMul", [merged, b.w("wo", heads * hdim, 6)], ["y"])
    m = b.model({"x": [1, seq, 6]}, {"y": [1, seq, 6]})
    g = groups_of(m)["wq"]
    assert g.prunable and len(g.units) == heads and g.unit_size == hdim
    assert ("wv", 1) in g.members and ("wo", 0) in g.members
    feeds = {"x": np.random.default_rng(0).standard_normal((1, seq, 6)).astype(np.float32)}
    ref, pruned, kept = zeroed_and_pruned(m, ratio=0.34)
    assert kept["wq"][1].size == 2 * hdim and kept["wo"][0].size == 2 * hdim
    onnx.checker.check_model(pruned, full_check=True)
    np.testing.assert_allclose(run(ref, feeds)[0], run(pruned, feeds)[0], rtol=1e-4, atol=1e-5)
    shapes = [numpy_v for numpy_v in (onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer) if numpy_v.dtype == np.int64]
    assert any(s.tolist() == [1, seq, 2, hdim] for s in shapes)


def test_concat_built_reshape_target_is_cloned_and_rewritten(builder):
    """Dynamic batch: Reshape(h, Concat(Shape(h)[0:1], [C*H*W])) — the explicit piece is rewritten
    on a private copy of the Concat, and a run-time piece on the pruned axis would freeze."""
    b = builder
    h = b.conv("x", "c1", 4, 6)
    b.node("Shape", [h], ["shp_n"], start=0, end=1)
    b.node("Concat", ["shp_n", b.w("flat_len", 1, values=np.array([6 * 36], dtype=np.int64))], ["target"], axis=0)
    b.node("Reshape", [h, "target"], ["flat"])
    b.node("MatMul", ["flat", b.w("fc.w", 6 * 36, 3)], ["y"])
    m = b.model({"x": ["N", 4, 6, 6]}, {"y": ["N", 3]}, opset=17)
    g = groups_of(m)["c1.w"]
    assert g.prunable, g.frozen
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    ref, pruned, kept = zeroed_and_pruned(m)
    onnx.checker.check_model(pruned, full_check=True)
    np.testing.assert_allclose(run(ref, feeds)[0], run(pruned, feeds)[0], rtol=1e-4, atol=1e-5)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert [v.tolist() for k, v in consts.items() if k.startswith("target_")] == [[3 * 36]]

    # The same with the feature count read from another (unpruned) tensor at run time: frozen.
    b2 = type(builder)()
    h = b2.conv("x", "c1", 4, 6)
    b2.node("Shape", [h], ["shp_n"], start=0, end=1)
    b2.node("Shape", ["z"], ["shp_f"], start=1, end=2)
    b2.node("Concat", ["shp_n", "shp_f"], ["target"], axis=0)
    b2.node("Reshape", [h, "target"], ["flat"])
    b2.node("MatMul", ["flat", b2.w("fc.w", 6 * 36, 3)], ["y"])
    m2 = b2.model({"x": ["N", 4, 6, 6], "z": [1, 6 * 36]}, {"y": ["N", 3]})
    assert not groups_of(m2)["c1.w"].prunable


def test_packed_qkv_split_prunes_whole_heads(builder):
    """GPT-style packed projection: x @ W_qkv -> Split(q, k, v) -> heads; one unit per head."""
    b = builder
    hdim, heads, seq = 2, 3, 4
    hd = heads * hdim
    qkv = b.node("MatMul", ["x", b.w("wqkv", 6, 3 * hd)], ["qkv"])
    b.node("Split", [qkv, b.w("sizes", 3, values=np.array([hd] * 3, dtype=np.int64))], ["q", "k", "v"], axis=-1)
    shp = b.w("shp", 4, values=np.array([1, seq, heads, hdim], dtype=np.int64))
    q4 = b.node("Transpose", [b.node("Reshape", ["q", shp], ["q4"])], ["qt"], perm=[0, 2, 1, 3])
    k4 = b.node("Transpose", [b.node("Reshape", ["k", shp], ["k4"])], ["kt"], perm=[0, 2, 3, 1])
    v4 = b.node("Transpose", [b.node("Reshape", ["v", shp], ["v4"])], ["vt"], perm=[0, 2, 1, 3])
    sc = b.node("Softmax", [b.node("MatMul", [q4, k4], ["sc0"])], ["sc"], axis=-1)
    ot = b.node("Transpose", [b.node("MatMul", [sc, v4], ["o"])], ["ot"], perm=[0, 2, 1, 3])
    merged = b.node("Reshape", [ot, b.w("shp2", 3, values=np.array([1, seq, -1], dtype=np.int64))], ["merged"])
    b.node("MatMul", [merged, b.w("wo", hd, 6)], ["y"])
    m = b.model({"x": [1, seq, 6]}, {"y": [1, seq, 6]})
    g = groups_of(m)["wqkv"]
    assert g.prunable and len(g.units) == heads and g.unit_size == 3 * hdim
    feeds = {"x": np.random.default_rng(0).standard_normal((1, seq, 6)).astype(np.float32)}
    ref, pruned, kept = zeroed_and_pruned(m, ratio=0.34)
    onnx.checker.check_model(pruned, full_check=True)
    assert kept["wqkv"][1].size == 3 * 2 * hdim and kept["wo"][0].size == 2 * hdim
    np.testing.assert_allclose(run(ref, feeds)[0], run(pruned, feeds)[0], rtol=1e-4, atol=1e-5)
    sizes = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer if t.name.startswith("sizes")}
    assert list(sizes.values()) == [[2 * hdim] * 3]
