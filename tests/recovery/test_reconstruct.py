"""``reconstruct``: closed-form layer refit after pruning."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxcomp.passes.reconstruct import Reconstruct, ReconstructOptions

import onnxcomp
from onnxcomp.errors import UsageError
from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.pipeline.registry import instantiate
from onnxcomp.pruning import PruneRecord
from onnxcomp.recovery import RefitSettings, reconstruct

from .conftest import conv_net, make_ctx


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _duplicate_channel_pair(rng: np.random.Generator, fc: bool = False):
    """Teacher whose conv1 channel 3 duplicates channel 0, and its pruned student.

    Dropping channel 3 loses nothing that conv2 cannot express: refitting conv2 (add
    W2[:, 3] onto W2[:, 0]) reproduces the teacher exactly.
    """
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(4).astype(np.float32)
    w1[3], b1[3] = w1[0], b1[0]
    w2 = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b2 = rng.standard_normal(5).astype(np.float32)
    fcw = rng.standard_normal((3, 5)).astype(np.float32) if fc else None
    fcb = rng.standard_normal(3).astype(np.float32) if fc else None
    teacher = conv_net(w1, b1, w2, b2, fc=fcw, fc_b=fcb)
    keep = np.array([0, 1, 2], dtype=np.int64)
    student = conv_net(w1[keep], b1[keep], w2[:, keep], b2, fc=fcw, fc_b=fcb)
    kept = {"w1": (0, keep), "b1": (0, keep), "h": (1, keep), "r": (1, keep), "w2": (1, keep)}
    return teacher, student, kept


def test_refit_recovers_exactly_reconstructible_layer(rng: np.random.Generator) -> None:
    teacher, student, kept = _duplicate_channel_pair(rng)
    x = rng.standard_normal((64, 3, 6, 6)).astype(np.float32)
    before = np.abs(_run(student, x) - _run(teacher, x)).max()
    assert before > 0.5  # pruning really hurt

    graph, meta = to_graph(student)
    ctx = make_ctx(teacher, student, {"x": x}, kept=kept)
    result = Reconstruct(ReconstructOptions(ridge=0.0)).run(graph, ctx)
    assert result.modified
    assert result.stats["layers_refit"] == 1  # conv2 only: conv1's input was not pruned
    out = to_model(graph, meta)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in student.graph.node]
    x_test = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x_test), _run(teacher, x_test), atol=2e-3, rtol=1e-3)
    assert result.stats["rel_error_after"] < 1e-8


def test_refit_through_manager_with_gemm_downstream(rng: np.random.Generator) -> None:
    """Stages: conv2 first, then the Gemm sees conv2's refit output (downstream scope)."""
    teacher, student, kept = _duplicate_channel_pair(rng, fc=True)
    x = rng.standard_normal((64, 3, 6, 6)).astype(np.float32)
    graph, meta = to_graph(student)
    ctx = make_ctx(teacher, student, {"x": x}, kept=kept)
    result = Reconstruct(ReconstructOptions(ridge=0.0)).run(graph, ctx)
    assert result.stats["steps"] == 3  # teacher inputs, then one block per depth level
    assert result.stats["layers_refit"] + result.stats["layers_unchanged"] == 2
    out = to_model(graph, meta)
    np.testing.assert_allclose(_run(out, x[:8]), _run(teacher, x[:8]), atol=2e-3, rtol=1e-3)


def test_teacher_option_without_artifact_refits_perturbed_layers(rng: np.random.Generator, tmp_path) -> None:
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(4).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    teacher = conv_net(w1, b1, w2, None)
    # Student: noisy conv2, no bias (reconstruct adds one).
    student = conv_net(w1, b1, w2 + 0.3 * rng.standard_normal(w2.shape).astype(np.float32), None)
    tpath = tmp_path / "teacher.onnx"
    onnx.save(teacher, tpath)
    x = rng.standard_normal((48, 3, 6, 6)).astype(np.float32)
    out, report = onnxcomp.optimize(student, [f"reconstruct:teacher={tpath},ridge=0"], calibration_data={"x": x})
    row = report.passes[0]
    assert row.modified and row.stats["layers_refit"] == 1
    assert len(out.graph.initializer) == len(student.graph.initializer) + 1  # the new conv2 bias
    np.testing.assert_allclose(_run(out, x[:4]), _run(teacher, x[:4]), atol=2e-3, rtol=1e-3)


def test_grouped_conv_refit(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b1 = np.zeros(4, np.float32)
    w2 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)  # group=2
    b2 = rng.standard_normal(4).astype(np.float32)
    teacher = conv_net(w1, b1, w2, b2, group2=2)
    student = conv_net(w1, b1, w2 * 0.5, b2 * 0, group2=2)
    x = rng.standard_normal((32, 2, 6, 6)).astype(np.float32)
    graph, meta = to_graph(student)
    result = Reconstruct(ReconstructOptions(ridge=0.0, scope="all")).run(graph, make_ctx(teacher, student, {"x": x}))
    assert result.stats["layers_refit"] == 1  # conv2; conv1 is already exact
    np.testing.assert_allclose(_run(to_model(graph, meta), x[:4]), _run(teacher, x[:4]), atol=2e-3, rtol=1e-3)


def test_does_not_fire_when_student_equals_teacher(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    model = conv_net(w1, np.zeros(4, np.float32), w2, np.zeros(2, np.float32))
    x = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    graph, _ = to_graph(model)
    # ridge > 0 pulls the fit off the already-perfect weights: the guard keeps them.
    result = Reconstruct(ReconstructOptions(ridge=0.1)).run(graph, make_ctx(model, model, {"x": x}))
    assert not result.modified
    assert result.stats["layers_refit"] == 0


def test_skips_pruned_output_without_artifact(rng: np.random.Generator) -> None:
    teacher, student, _ = _duplicate_channel_pair(rng)
    x = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    graph, _ = to_graph(student)
    # No artifact: conv1's output has 3 channels but the teacher's has 4 -> unknown mapping.
    result = Reconstruct(ReconstructOptions(scope="all")).run(graph, make_ctx(teacher, student, {"x": x}))
    assert result.stats["layers_skipped"] == 1


def test_needs_calibration(rng: np.random.Generator) -> None:
    teacher, student, _ = _duplicate_channel_pair(rng)
    graph, _ = to_graph(student)
    ctx = make_ctx(teacher, student, {"x": np.zeros((1, 3, 6, 6), np.float32)})
    ctx.calibration = None
    with pytest.raises(UsageError, match="calibration"):
        Reconstruct().run(graph, ctx)


def test_options_validated() -> None:
    with pytest.raises(UsageError):
        instantiate("reconstruct:ridge=-1")
    assert instantiate("reconstruct:scope=all,max_rows=10").options.max_rows == 10


def test_pass_defaults_are_the_refit_defaults() -> None:
    """``distill`` refits with `RefitSettings()`: the same defaults the pass documents."""
    assert ReconstructOptions().settings() == RefitSettings()
    opts = ReconstructOptions(ridge=0.5, scope="pruned", blocks=2, max_samples=7, max_rows=9, exclude=("a",), teacher="t.onnx")
    assert opts.settings() == RefitSettings(ridge=0.5, scope="pruned", blocks=2, max_samples=7, max_rows=9, exclude=("a",))


def test_function_takes_its_data_and_record_as_arguments(rng: np.random.Generator) -> None:
    """The refit itself needs no calibration in the context: what the pass does, the plain
    function does with the data and record it is given (how ``distill`` calls it)."""
    teacher, student, kept = _duplicate_channel_pair(rng, fc=True)
    x = rng.standard_normal((48, 3, 6, 6)).astype(np.float32)
    by_pass, meta = to_graph(student)
    ctx = make_ctx(teacher, student, {"x": x}, kept=kept)
    expected = Reconstruct(ReconstructOptions(ridge=0.0)).run(by_pass, ctx).stats

    direct, _ = to_graph(student)
    other = make_ctx(teacher, student, {"x": x}, kept=kept)
    data, record = other.calibration, other.records.get(PruneRecord)
    other.calibration = None
    stats = reconstruct(direct, data, teacher, record=record, settings=RefitSettings(ridge=0.0), ctx=other)
    assert stats == expected and stats["layers_refit"] >= 1
    assert other.calibration is None
    for a, b in zip(to_model(by_pass, meta).graph.initializer, to_model(direct, meta).graph.initializer):
        assert a == b


def _mlp(w1: np.ndarray, w2: np.ndarray, fc: np.ndarray) -> onnx.ModelProto:
    """x[N, S, 4] -> MatMul -> Relu -> MatMul -> Flatten -> Gemm (transB, no C) -> y."""
    from onnx import numpy_helper

    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 4] x) => (float[N, 3] y) {
        h = MatMul (x, w1)
        r = Relu (h)
        m = MatMul (r, w2)
        f = Flatten <axis = 1> (m)
        y = Gemm <transB = 1, alpha = 2.0> (f, fc)
    }
    """)
    model.graph.initializer.extend([numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                                    numpy_helper.from_array(fc, "fc")])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_matmul_and_gemm_without_bias(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((4, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 5)).astype(np.float32)
    fc = rng.standard_normal((3, 10)).astype(np.float32)
    teacher = _mlp(w1, w2, fc)
    student = _mlp(w1, w2 * 0.5, fc + 0.3)
    x = rng.standard_normal((64, 2, 4)).astype(np.float32)
    graph, meta = to_graph(student)
    result = Reconstruct(ReconstructOptions(ridge=0.0, scope="all")).run(graph, make_ctx(teacher, student, {"x": x}))
    assert result.stats["layers_refit"] == 2 and result.stats["steps"] == 4
    out = to_model(graph, meta)
    onnx.checker.check_model(out, full_check=True)
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm")
    assert len(gemm.input) == 3  # the fitted intercept became Gemm's C
    xt = rng.standard_normal((8, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(out, xt), _run(teacher, xt), atol=2e-3, rtol=1e-3)


def test_exclude_and_pruned_scope(rng: np.random.Generator) -> None:
    teacher, student, kept = _duplicate_channel_pair(rng, fc=True)
    x = rng.standard_normal((32, 3, 6, 6)).astype(np.float32)
    graph, _ = to_graph(student)
    res = Reconstruct(ReconstructOptions(exclude=("conv2", "fc"))).run(graph, make_ctx(teacher, student, {"x": x}, kept=kept))
    assert not res.modified and res.stats["layers_refit"] == 0
    # scope=pruned: only conv2 (whose input channels were pruned), not the Gemm after it.
    graph, _ = to_graph(student)
    res = Reconstruct(ReconstructOptions(scope="pruned", ridge=0.0)).run(graph, make_ctx(teacher, student, {"x": x}, kept=kept))
    assert res.stats["steps"] == 2 and res.stats["layers_refit"] == 1


def _bn_net(rng: np.random.Generator, width: int = 8) -> onnx.ModelProto:
    """x -> (Conv -> BatchNorm -> Relu) x 3 -> GlobalAveragePool -> Flatten -> Gemm -> y (random weights)."""
    from onnx import helper, numpy_helper

    nodes, inits, prev, cin = [], [], "x", 3
    for i in range(3):
        inits += [
            numpy_helper.from_array((rng.standard_normal((width, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), f"g{i}"),
            numpy_helper.from_array(rng.normal(0.2, 0.1, width).astype(np.float32), f"b{i}"),
            numpy_helper.from_array(rng.normal(0, 0.3, width).astype(np.float32), f"m{i}"),
            numpy_helper.from_array(rng.uniform(0.5, 2.0, width).astype(np.float32), f"v{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"], name=f"bn{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev, cin = f"r{i}", width
    inits += [numpy_helper.from_array(rng.standard_normal((4, width)).astype(np.float32), "fc"),
              numpy_helper.from_array(np.zeros(4, np.float32), "fcb")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "bn_net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _rel_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.square(candidate - reference).sum() / np.square(reference).sum())


def test_prune_recover_after_batchnorm_folding_beats_pruning_on_unseen_data(rng: np.random.Generator) -> None:
    """fold-batchnorm keeps each Conv's output name, which in the run's input names the tensor
    *before* its BatchNorm: the refit must take its targets from the model pruning started
    from (`PruneRecord.source`), not from the run's input."""
    model = _bn_net(rng)
    calib = {"x": rng.standard_normal((96, 3, 8, 8)).astype(np.float32)}
    unseen = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    pruned, _ = onnxcomp.optimize(model, ["prune-channels:ratio=0.5"], preset="prune", calibration_data=calib)
    recovered, report = onnxcomp.optimize(model, ["prune-channels:ratio=0.5"], preset="prune-recover", calibration_data=calib)
    stats = next(r for r in report.passes if r.name == "reconstruct").stats
    assert stats["layers_refit"] >= 2
    reference = _run(model, unseen)
    assert _rel_error(reference, _run(recovered, unseen)) < 0.5 * _rel_error(reference, _run(pruned, unseen))


def _wide(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x[N, 1, 16] -> MatMul -> Relu -> MatMul -> y[N, 1, 8]."""
    from onnx import numpy_helper

    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 1, 16] x) => (float[N, 1, 8] y) {
        h = MatMul (x, w1)
        r = Relu (h)
        y = MatMul (r, w2)
    }
    """)
    model.graph.initializer.extend([numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return model


def test_refit_is_never_kept_when_it_hurts_held_out_samples(rng: np.random.Generator) -> None:
    """The hidden units pruning removed are not a linear function of the kept ones, and 32
    fitting rows of 32 features are too few for a free fit: with ``ridge`` near 0 it
    interpolates noise, and the held-out samples reject it (the pruned weights stay).
    With the ridge chosen on the held-out samples the refit generalises."""
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w2 = rng.standard_normal((64, 8)).astype(np.float32)
    keep = np.arange(32)
    teacher, student = _wide(w1, w2), _wide(w1[:, keep], w2[keep])
    kept = {"w1": (1, keep), "h": (2, keep), "r": (2, keep), "w2": (0, keep)}
    x = rng.standard_normal((40, 1, 16)).astype(np.float32)  # batches of 1: one in five held out
    unseen = rng.standard_normal((512, 1, 16)).astype(np.float32)
    reference = _run(teacher, unseen)
    pruned_error = _rel_error(reference, _run(student, unseen))
    errors = {}
    for ridge in (1e-6, None):
        graph, meta = to_graph(student)
        ctx = make_ctx(teacher, student, {"x": x}, kept=kept, batch_size=1)
        stats = Reconstruct(ReconstructOptions(ridge=ridge)).run(graph, ctx).stats
        assert stats["held_out_samples"] == 8
        assert stats["cosine_after"] >= stats["cosine_pruned"]  # the headline verification reports
        errors[ridge] = (stats["layers_refit"], _rel_error(reference, _run(to_model(graph, meta), unseen)))
    assert errors[1e-6] == (0, pytest.approx(pruned_error))
    assert errors[None][0] == 1 and errors[None][1] < 0.9 * pruned_error


def test_tap_runs_only_the_prefix_it_needs() -> None:
    from onnxcomp.recovery.activations import expose

    model = _mlp(np.ones((4, 6), np.float32), np.ones((6, 5), np.float32), np.ones((3, 10), np.float32))
    cut = expose(model, ["r"])
    assert [n.op_type for n in cut.graph.node] == ["MatMul", "Relu"]
    assert sorted(t.name for t in cut.graph.initializer) == ["w1"]


def test_teacher_runs_once_and_row_budget_does_not_grow_with_calibration(rng: np.random.Generator, monkeypatch) -> None:
    """One teacher session whatever the number of steps, and each layer's regression rows
    are a fixed budget: four times the calibration data, about the same rows."""
    from onnxcomp.recovery import refit
    from onnxcomp.recovery.lstsq import NormalEquations

    teacher, student, kept = _duplicate_channel_pair(rng, fc=True)
    sessions: list[onnx.ModelProto] = []
    real_tap = refit.TensorTap

    def counting_tap(model, names, **kw):
        sessions.append(model)
        return real_tap(model, names, **kw)

    rows: list[int] = []
    real_add = NormalEquations.add

    def counting_add(self, x, y):
        rows.append(x.shape[-2])
        real_add(self, x, y)

    monkeypatch.setattr(refit, "TensorTap", counting_tap)
    monkeypatch.setattr(NormalEquations, "add", counting_add)
    totals = []
    for n in (40, 160):
        sessions.clear()
        rows.clear()
        x = rng.standard_normal((n, 3, 6, 6)).astype(np.float32)
        graph, _ = to_graph(student)
        stats = Reconstruct(ReconstructOptions(max_rows=300, blocks=2)).run(graph, make_ctx(teacher, student, {"x": x}, kept=kept)).stats
        assert stats["steps"] == 3
        assert sum(m is teacher for m in sessions) == 1
        totals.append(sum(rows))
    # 160 samples hold 4x the positions of 40; the rows used grow only by the rounding up
    # to whole rows per sample (at least one from each).
    assert totals[0] > 0 and totals[1] < 1.5 * totals[0]


def test_fidelity_guard_never_lowers_the_headline() -> None:
    from onnxcomp.recovery.refit_job import Fidelity

    pruned = Fidelity(cosine=0.5, output_cosine=0.9)
    assert not Fidelity(0.49, 0.99).beats(pruned)  # whole output better, worst channel worse: rejected
    assert Fidelity(0.6, 0.8).beats(pruned)
    assert Fidelity(0.5, 0.95).beats(pruned)
    assert not Fidelity(0.5, 0.9).beats(pruned)
