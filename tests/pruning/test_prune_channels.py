"""The ``prune-channels`` pass end to end: options, ratio 0, its record, reference models, inspect."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import Builder
from exactness import run, zeroed_and_pruned

import onnxcomp
from onnxcomp.checking.calibration import generate_inputs
from onnxcomp.errors import UsageError
from onnxcomp.pipeline.registry import instantiate


def tiny_cnn() -> onnx.ModelProto:
    b = Builder(seed=3)
    h = b.conv("x", "c1", 3, 16)
    h = b.node("Relu", [h], ["r1"])
    h = b.conv(h, "c2", 16, 16)
    h = b.node("Add", [h, "r1"], ["add"])
    h = b.node("GlobalAveragePool", [h], ["gap"])
    h = b.node("Flatten", [h], ["flat"], axis=1)
    b.node("Gemm", [h, b.w("fc.w", 4, 16), b.w("fc.b", 4)], ["y"], transB=1)
    return b.model({"x": [1, 3, 8, 8]}, {"y": [1, 4]})


FEEDS = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_options_are_validated():
    with pytest.raises(UsageError):
        instantiate("prune-channels:ratio=0.99")
    with pytest.raises(UsageError):
        instantiate("prune-channels:criterion=nope")
    p = instantiate("prune-channels:ratio=0.5,round_to=8,exclude=[/layer1/*,fc*],allocation=global")
    assert p.options.exclude == ("/layer1/*", "fc*") and p.options.round_to == 8


def test_ratio_zero_is_identity():
    m = tiny_cnn()
    out, report = onnxcomp.optimize(m, passes=["prune-channels:ratio=0"])
    np.testing.assert_array_equal(run(m, FEEDS)[0], run(out, FEEDS)[0])
    assert not report.passes[0].modified


def test_wanda_without_calibration_is_a_usage_error():
    from onnxcomp.ir.convert import to_graph
    from onnxcomp.pipeline.pass_api import PassContext

    m = tiny_cnn()
    graph, meta = to_graph(m)
    ctx = PassContext(original_model=m, meta=meta)
    with pytest.raises(UsageError, match="calibration"):
        instantiate("prune-channels:criterion=wanda").run(graph, ctx)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random", "wanda"])
def test_criteria_prune_half_and_keep_interface(criterion):
    m = tiny_cnn()
    out, report = onnxcomp.optimize(m, passes=[f"prune-channels:ratio=0.5,criterion={criterion}"], calibration_data="random")
    onnx.checker.check_model(out, full_check=True)
    w = {t.name: t for t in out.graph.initializer}
    assert list(w["c1.w"].dims) == [8, 3, 3, 3] and list(w["fc.w"].dims) == [4, 8]
    assert run(out, FEEDS)[0].shape == (1, 4)
    stats = report.passes[0].stats
    assert stats["params_after"] < stats["params_before"]  # (no value_info here: FLOPs unknown)


def test_record_contract_and_exclude():
    from onnxcomp.ir.convert import to_graph
    from onnxcomp.pipeline.pass_api import PassContext
    from onnxcomp.pruning import PruneRecord

    m = tiny_cnn()
    graph, meta = to_graph(m)
    ctx = PassContext(original_model=m, meta=meta)
    res = instantiate("prune-channels:ratio=0.25").run(graph, ctx)
    assert res.modified and res.stats["per_group"]
    record = ctx.records.get(PruneRecord)
    assert record is not None
    for name in ("c1", "r1", "c2", "add", "gap", "flat", "c1.w", "c2.w", "fc.w"):
        axis, idx = record.channels(name)
        assert idx.dtype == np.int64 and idx.size == 12, name
    assert record.channels("fc.w")[0] == 1 and record.channels("c1")[0] == 1
    assert np.array_equal(record.channels("c1")[1], record.channels("c2")[1])  # residual: same indices
    assert set(record.tensors["c2.w"]) == {0, 1}
    assert record.channels("x") is None  # the graph input is never pruned
    # One group (c1, c2 and the residual Add) lost 4 of 16 channels; its record says which stayed.
    (group,) = record.groups
    assert group.size == 16 and group.kept.size == 12
    assert np.array_equal(np.union1d(group.kept, group.removed), np.arange(16))
    assert not group.kept.flags.writeable  # records are immutable
    assert res.stats["per_group"] == {group.root[0]: "16->12"}

    for pattern in ("n_c2", "c1.*"):  # a node name, or a weight name
        graph, meta = to_graph(m)
        res = instantiate(f"prune-channels:ratio=0.5,exclude=[{pattern}]").run(graph, PassContext(original_model=m, meta=meta))
        assert res.stats["groups_pruned"] == 0, pattern


def test_global_allocation_keeps_a_floor_and_uneven_ratios():
    from onnxcomp.pruning.allocate import allocate
    from onnxcomp.pruning.deps import ChannelGroup

    groups = [ChannelGroup(i, (f"w{i}", 0), 20, units=[np.array([k]) for k in range(20)]) for i in range(2)]
    # Scores are normalized per group (mean), as Torch-Pruning does: what counts is how
    # unevenly a group's channels matter. Group 0 has 15 near-useless channels.
    scores = {0: np.array([0.01] * 15 + [1.0] * 5), 1: np.linspace(5.0, 10.0, 20)}
    removed = allocate(groups, scores, ratio=0.5, allocation="global")
    assert removed[0].size == 15 and removed[1].size == 5
    removed = allocate(groups, {0: np.array([0.01] * 19 + [1.0]), 1: np.linspace(5.0, 10.0, 20)}, ratio=0.5, allocation="global")
    assert removed[0].size == 18  # the 10 % floor keeps 2 of 20
    uni = allocate(groups, scores, ratio=0.5, allocation="uniform", round_to=8)
    assert uni[0].size == 20 - 8 and uni[0].tolist() == list(range(12))  # lowest scores go first


def test_round_to_and_global_allocation():
    m = tiny_cnn()
    out, _ = onnxcomp.optimize(m, passes=["prune-channels:ratio=0.3,round_to=8"])
    assert [t.dims[0] for t in out.graph.initializer if t.name == "c1.w"] == [8]
    out, report = onnxcomp.optimize(m, passes=["prune-channels:ratio=0.5,allocation=global"])
    onnx.checker.check_model(out, full_check=True)
    assert report.passes[0].stats["channels_after"] < report.passes[0].stats["channels_before"]


def test_inspect_lists_groups_and_frozen_reasons(tmp_path):
    from onnxcomp.cli import main

    p = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), p)
    res = CliRunner().invoke(main, ["inspect", str(p), "--json", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    assert "prunable" in res.output and "frozen" in res.output
    data = json.loads((tmp_path / "g.json").read_text())
    by_root = {g["root"]: g for g in data["groups"]}
    assert by_root["c1.w[axis 0]"]["prunable"] and by_root["c1.w[axis 0]"]["channels"] == 16
    assert any("graph output 'y'" in r for r in by_root["fc.w[axis 0]"]["frozen_by"])
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["inspect", str(p), "--ratio", "0.5", "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    plan = {g["root"]: g.get("channels_after") for g in json.loads((tmp_path / "d.json").read_text())["groups"]}
    assert plan["c1.w[axis 0]"] == 8 and plan["fc.w[axis 0]"] == 4


# ----------------------------------------------------------------------------- reference models


# Each reference model is exported once per worker, so each gets a single test.


def _assert_exact_when_readers_zeroed(m: onnx.ModelProto) -> None:
    ref, pruned, kept = zeroed_and_pruned(m, ratio=0.5)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = generate_inputs(m)
    for a, b in zip(run(ref, feeds), run(pruned, feeds)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert len(kept) > 10


def test_resnet_with_batchnorm(small_models):
    """Exact slicing across skip connections with BatchNorm kept, then the pass end to end."""
    m = onnx.load(small_models["resnet18_bn"])
    _assert_exact_when_readers_zeroed(m)
    out, report = onnxcomp.optimize(m, passes=["prune-channels:ratio=0.5,criterion=bn"])
    onnx.checker.check_model(out, full_check=True)
    stats = report.passes[0].stats
    assert stats["groups_pruned"] >= 8 and stats["flops_after"] < 0.45 * stats["flops_before"]
    bn = [n for n in out.graph.node if n.op_type == "BatchNormalization"]
    assert bn, "BatchNorm nodes stay (sliced), they are not folded by this pass"
    feeds = generate_inputs(m)
    assert run(out, feeds)[0].shape == run(m, feeds)[0].shape


def test_bert_prunes_heads_and_ffn(small_models):
    m = onnx.load(small_models["bert"])
    _assert_exact_when_readers_zeroed(m)
    out, report = onnxcomp.optimize(m, passes=["prune-channels:ratio=0.3"])
    onnx.checker.check_model(out, full_check=True)

    def enc(model):
        return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name.startswith("val_") or "layers." in t.name)

    assert enc(out) < 0.75 * enc(m)
    feeds = generate_inputs(m)
    for a, b in zip(run(m, feeds), run(out, feeds)):
        assert a.shape == b.shape


def test_a_group_never_loses_every_channel():
    from onnxcomp.pruning.allocate import allocate
    from onnxcomp.pruning.deps import ChannelGroup

    four = ChannelGroup(0, ("w0", 0), 4, units=[np.array([k]) for k in range(4)])
    heads = ChannelGroup(1, ("w1", 1), 8, units=[np.arange(4), np.arange(4, 8)])
    single = ChannelGroup(2, ("w2", 0), 3, units=[np.arange(3)])  # one unit: refused outright
    assert not single.prunable
    scores = {0: np.ones(4), 1: np.ones(8), 2: np.ones(3)}
    removed = allocate([four, heads, single], scores, ratio=0.95)
    assert removed[0].size == 3 and removed[1].size == 4 and 2 not in removed
    removed = allocate([four], scores, ratio=0.95, min_channels=3)
    assert removed[0].size == 1
