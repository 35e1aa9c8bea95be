"""Contract tests for the pass manager: verification, rollback, errors, fixed points."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

import onnxcomp
from onnxcomp import Pass, PassResult, register_pass
from onnxcomp.errors import PassError, UnverifiedError, UsageError
from onnxcomp.pipeline.manager import ManagerOptions, PassManager, PipelineRun
from onnxcomp.pipeline.presets import pipeline_for
from onnxcomp.pipeline.steps import Pipeline, until_stable
from onnxcomp.pipeline.registry import instantiate, isolated_registry

from testutil import parse


def _register_helpers():
    """Register a family of test passes inside an isolated registry."""

    @register_pass("break-relu")
    class BreakRelu(Pass):
        """Lossless in name only: turns Relu into Sigmoid (changes outputs)."""

        lossless = True

        def run(self, graph, ctx):
            n = 0
            for node in graph.nodes:
                if node.op == "Relu":
                    node.op = "Sigmoid"
                    n += 1
            return PassResult(modified=n > 0)

    @register_pass("lossy-relu")
    class LossyRelu(Pass):
        """Same rewrite, declared lossy: accepted, with fidelity recorded."""

        def run(self, graph, ctx):
            for node in graph.nodes:
                if node.op == "Relu":
                    node.op = "Sigmoid"
                    return PassResult(modified=True)
            return PassResult(modified=False)

    @register_pass("explode")
    class Explode(Pass):
        """Raises."""

        def run(self, graph, ctx):
            raise RuntimeError("boom")

    @register_pass("liar")
    class Liar(Pass):
        """Changes the graph but says it did not."""

        lossless = True

        def run(self, graph, ctx):
            graph.nodes[0].op = "Sigmoid"
            return PassResult(modified=False)

    @register_pass("wrong-return")
    class WrongReturn(Pass):
        """Returns the wrong type."""

        def run(self, graph, ctx):
            return True

    @register_pass("invalid-graph")
    class InvalidGraph(Pass):
        """Produces a graph the checker rejects (unknown standard op)."""

        lossless = True

        def run(self, graph, ctx):
            graph.nodes[0].op = "NoSuchOp"
            return PassResult(modified=True)

    @register_pass("count-down")
    class CountDown(Pass):
        """Reports a change (truthfully: appends then removes nothing) a fixed number of times."""

        lossless = True
        calls = 0

        def run(self, graph, ctx):
            type(self).calls += 1
            if type(self).calls <= 2:
                # A real, output-preserving change: insert an Identity before the output.
                out = graph.outputs[0]
                src = out.inputs[0]
                mid = gs.Variable(f"mid{type(self).calls}", dtype=out.dtype, shape=out.shape)
                src.outputs = [mid]
                graph.nodes.append(gs.Node("Identity", inputs=[mid], outputs=[out]))
                return PassResult(modified=True)
            return PassResult(modified=False)


@pytest.fixture
def registry():
    with isolated_registry():
        _register_helpers()
        yield


def test_lossless_drift_is_rolled_back_with_warning(relu_model, registry) -> None:
    before = relu_model.SerializeToString()
    out, report = onnxcomp.optimize(relu_model, ["dce", "break-relu"])
    assert relu_model.SerializeToString() == before  # input untouched
    assert [n.op_type for n in out.graph.node] == ["Relu", "Identity"]  # dce kept, break-relu undone
    rec = report.passes[-1]
    assert rec.name == "break-relu" and rec.rolled_back and not rec.modified
    assert any("break-relu" in w and "'y'" in w for w in report.warnings)
    assert report.verification["within_tolerance"] is True


def test_strict_makes_drift_an_error_naming_passes(relu_model, registry) -> None:
    with pytest.raises(PassError) as exc:
        onnxcomp.optimize(relu_model, ["dce", "break-relu"], strict=True)
    msg = str(exc.value)
    assert "break-relu" in msg and "passes before it: dce" in msg and "'y'" in msg


def test_lossy_pass_kept_with_fidelity(relu_model, registry) -> None:
    out, report = onnxcomp.optimize(relu_model, ["lossy-relu"])
    assert "Sigmoid" in [n.op_type for n in out.graph.node]
    rec = report.passes[0]
    assert rec.modified and not rec.rolled_back and not rec.lossless
    assert rec.fidelity is not None and rec.fidelity["cosine"] < 0.999
    assert report.verification["cosine"] == pytest.approx(rec.fidelity["cosine"])
    assert "within_tolerance" not in report.verification  # not meaningful for a lossy pipeline


def test_lossless_after_lossy_is_checked_against_new_baseline(relu_model, registry) -> None:
    # A lossless change after a lossy pass must not be judged against the original outputs.
    p = instantiate("count-down")
    type(p).calls = 0
    out, report = onnxcomp.optimize(relu_model, ["lossy-relu", p])
    assert [(r.modified, r.rolled_back) for r in report.passes] == [(True, False), (True, False)]


def test_exception_is_wrapped_and_chained(relu_model, registry) -> None:
    with pytest.raises(PassError) as exc:
        onnxcomp.optimize(relu_model, ["dce", "explode"])
    assert "pass 'explode' failed: RuntimeError: boom" in str(exc.value)
    assert "passes before it: dce" in str(exc.value)
    assert isinstance(exc.value.__cause__, RuntimeError)


def test_untruthful_modified_is_caught(relu_model, registry) -> None:
    with pytest.raises(PassError, match="reported modified=False but changed the graph"):
        onnxcomp.optimize(relu_model, ["liar"])


def test_wrong_return_type(relu_model, registry) -> None:
    with pytest.raises(PassError, match="returned bool, not PassResult"):
        onnxcomp.optimize(relu_model, ["wrong-return"])


def test_invalid_result_rolled_back_or_strict_error(relu_model, registry) -> None:
    out, report = onnxcomp.optimize(relu_model, ["invalid-graph"])
    assert report.passes[0].rolled_back and "not valid ONNX" in report.warnings[0]
    assert [n.op_type for n in out.graph.node][0] == "Relu"
    with pytest.raises(PassError, match="not valid ONNX"):
        onnxcomp.optimize(relu_model, ["invalid-graph"], strict=True)


def test_fixed_point_group_repeats_until_no_change(relu_model, registry) -> None:
    p = instantiate("count-down")
    type(p).calls = 0
    manager = PassManager([until_stable(p, max_iterations=8)])
    out, report = manager.run(relu_model)
    assert [r.modified for r in report.passes] == [True, True, False]
    assert sum(n.op_type == "Identity" for n in out.graph.node) == 3


def test_fixed_point_group_bounded(relu_model, registry) -> None:
    p = instantiate("count-down")
    type(p).calls = 0
    _, report = PassManager([until_stable(p, max_iterations=1)]).run(relu_model)
    assert len(report.passes) == 1


def test_unverifiable_model_needs_allow_unverified() -> None:
    model = parse(
        """
        <ir_version: 8, opset_import: ["" : 17, "my.domain": 1]>
        g (float[2, 4] x) => (float[2, 4] y) {
          a = Identity(x)
          y = my.domain.Custom(a)
        }
        """
    )
    with pytest.raises(UnverifiedError, match="could not verify"):
        onnxcomp.optimize(model)  # eliminate-identity changes the graph
    out, report = onnxcomp.optimize(model, allow_unverified=True)
    assert report.verification["verified"] is False
    assert [n.domain for n in out.graph.node] == ["my.domain"]  # Identity gone, custom op kept
    # Nothing to change: the result is the input itself, identical by construction.
    same, report = onnxcomp.optimize(model, ["dce"])
    assert same is model and report.verification["identical_to_input"] is True


def test_report_contract_keys(relu_model) -> None:
    _, report = onnxcomp.optimize(relu_model, preset="lossless")
    d = report.to_dict()
    for row in d["passes"]:
        assert {"name", "seconds", "modified", "nodes_before", "nodes_after", "params_before", "params_after"} <= set(row)
    assert {"cosine", "max_abs_diff", "outputs"} <= set(d["verification"])
    assert {"cosine", "max_abs_diff"} <= set(d["verification"]["outputs"]["y"])


def test_build_pipeline_semantics() -> None:
    only = pipeline_for(None, ["dce"])
    assert [p.name for p in only.passes()] == ["dce"]
    default = pipeline_for(None, [])
    group = default.steps[0]
    assert isinstance(group, Pipeline) and group.until_stable and "dce" in group.outline()
    # a -p naming a pass of the preset overrides its options everywhere; others append
    tuned = pipeline_for("prune", ["prune-channels:ratio=0.25", "quantize-int8"])
    assert [p.options.ratio for p in tuned.passes() if p.name == "prune-channels"] == [0.25]
    assert tuned.outline()[1:] == ["prune-channels", tuned.outline()[0], "quantize-int8"]
    with pytest.raises(UsageError, match="unknown preset"):
        pipeline_for("nope", [])
    with pytest.raises(UsageError, match="unknown pass 'nope'; known passes: .*dce"):
        pipeline_for(None, ["nope"])


def test_nested_pipelines_run_inner_groups_to_a_fixed_point(relu_model, registry) -> None:
    p = instantiate("count-down")
    type(p).calls = 0
    inner = until_stable(p, max_iterations=8)
    _, report = PassManager(Pipeline((Pipeline((inner,)),))).run(relu_model)
    assert [r.modified for r in report.passes] == [True, True, False]


def test_verification_uses_calibration_data(conv_model) -> None:
    data = {"x": np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)}
    _, report = onnxcomp.optimize(conv_model, preset="lossless", calibration_data=data)
    assert report.verification["verified"] is True


def test_manager_options_verify_none_requires_allow(conv_model) -> None:
    with pytest.raises(UnverifiedError):
        onnxcomp.optimize(conv_model, verify="none")
    _, report = onnxcomp.optimize(conv_model, verify="none", allow_unverified=True)
    assert report.verification == {"verified": False, "reason": "verification disabled"}
    assert ManagerOptions().verify == "each"


def test_failing_group_is_replayed_and_only_the_culprit_rolled_back(relu_model, registry) -> None:
    # dce (good) and break-relu (bad) in one fixed-point group: the group-level check
    # fails, the replay checks each pass alone, keeps dce and rolls back break-relu.
    group = until_stable(instantiate("dce"), instantiate("break-relu"), max_iterations=4)
    out, report = PassManager([group]).run(relu_model)
    assert [n.op_type for n in out.graph.node] == ["Relu", "Identity"]
    rows = [(r.name, r.modified, r.rolled_back) for r in report.passes]
    assert rows[:2] == [("dce", True, False), ("break-relu", False, True)]
    assert any("rolled back pass 'break-relu'" in w for w in report.warnings)
    assert report.verification["within_tolerance"] is True


def test_good_group_is_checked_once(relu_model, registry, monkeypatch) -> None:
    group = until_stable(instantiate("dce"), max_iterations=4)
    manager = PassManager([group])
    calls = []
    original = PipelineRun._check
    monkeypatch.setattr(PipelineRun, "_check", lambda self, graph, lossless: calls.append(lossless) or original(self, graph, lossless))
    _, report = manager.run(relu_model)
    assert calls == [True]  # one check for the converged group
    assert [r.modified for r in report.passes] == [True, False]


def test_reading_weights_is_not_a_change(conv_model, registry) -> None:
    @register_pass("read-weights")
    class ReadWeights(Pass):
        """Reads every constant (loading lazy values) and changes nothing."""

        lossless = True

        def run(self, graph, ctx):
            total = sum(float(np.asarray(t.values).sum()) for t in graph.tensors().values() if isinstance(t, gs.Constant))
            assert np.isfinite(total)
            return PassResult(modified=False)

    _, report = onnxcomp.optimize(conv_model, ["read-weights"])
    assert report.passes[0].modified is False


def test_a_large_inputs_reference_run_comes_before_a_lossy_pass(relu_model, registry, monkeypatch) -> None:
    import onnxcomp.checking.verify as verify_mod

    monkeypatch.setattr(verify_mod, "OVERLAP_BYTES", -1)  # every input counts as large
    order: list[str] = []
    compute = verify_mod.Verifier._compute
    monkeypatch.setattr(verify_mod.Verifier, "_compute", lambda self: (order.append("reference"), compute(self))[1])

    @register_pass("recorded-lossy-relu")
    class RecordedLossyRelu(Pass):
        """Relu -> Sigmoid, noting when it runs."""

        def run(self, graph, ctx):
            order.append("pass")
            graph.nodes[0].op = "Sigmoid"
            return PassResult(modified=True)

    # The reference run comes first, on top of the graph alone, not of what the pass leaves.
    _, report = onnxcomp.optimize(relu_model, ["recorded-lossy-relu"])
    assert order == ["reference", "pass"] and report.verification["verified"]
