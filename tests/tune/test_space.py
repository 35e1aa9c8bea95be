"""The search space follows the model and the registry; configurations become pipelines."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tune_testutil import classifier

from onnxcomp import NoOptions, Pass, PassResult, register_pass
from onnxcomp.pipeline.registry import isolated_registry
from onnxcomp.pipeline.steps import Pipeline
from onnxcomp.tune.space import derive_space, describe, pipeline_of, preset_configs


def attention_block() -> onnx.ModelProto:
    """x[N,T,16] -> MatMul q/k -> Softmax -> MatMul v -> LayerNorm (a transformer-like graph, opset 17)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(np.ones(16, np.float32), "g"), numpy_helper.from_array(np.zeros(16, np.float32), "b")]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]),
        helper.make_node("LayerNormalization", ["a", "g", "b"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cnn_and_transformer_get_different_spaces() -> None:
    cnn = derive_space(classifier(), train_data=False)
    assert cnn.prunable and not cnn.transformer
    assert cnn.quant_modes[:2] == ("none", "static") and "distill" not in cnn.recoveries
    assert "random" not in cnn.criteria and "l1" in cnn.criteria
    attn = derive_space(attention_block(), train_data=False)
    assert attn.transformer and attn.quant_modes[1] == "dynamic"
    assert derive_space(classifier(), train_data=True).recoveries == ("none", "reconstruct", "distill")


def test_weight_only_quantization_joins_when_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxcomp.tune import space

    real = space.registered_passes

    def without_int4() -> dict:
        return {k: v for k, v in real().items() if k != "quantize-weights"}

    with isolated_registry():
        if "quantize-weights" not in real():  # the pass is optional: stand in for it

            @register_pass("quantize-weights")
            class FakeInt4(Pass[NoOptions]):
                """A stand-in for the 4-bit weight-only pass."""

                def run(self, graph, ctx) -> PassResult:
                    return PassResult(modified=False)

        assert "int4-weights" in derive_space(attention_block(), train_data=False).quant_modes
        assert "int4-weights" not in derive_space(classifier(), train_data=False).quant_modes
        monkeypatch.setattr(space, "registered_passes", without_int4)
        assert "int4-weights" not in derive_space(attention_block(), train_data=False).quant_modes


def test_presets_are_configurations_of_the_space() -> None:
    space = derive_space(classifier(), train_data=True)
    presets = preset_configs(space)
    assert set(presets) == {"int8", "prune", "prune-recover", "prune-distill-int8"}
    pipe = pipeline_of(presets["prune-recover"])
    names = [p if isinstance(p, str) else p.name for p in pipe.passes()]
    assert names[names.index("prune-channels") + 1] == "reconstruct"
    assert isinstance(pipe.steps[-1], Pipeline)  # the cleanup group after pruning
    int8 = pipeline_of({"quant": "static", "quant.calibrator": "entropy", "quant.fallback": 0})
    quant = list(int8.passes())[-1]
    assert quant.name == "quantize-int8" and quant.options.calibrator == "entropy" and quant.options.target_cosine is None
    assert describe(presets["prune-distill-int8"]).startswith("prune 0.3")


def test_spread_covers_the_space_and_is_asked_as_given() -> None:
    import optuna

    from onnxcomp.tune.space import spread_configs, suggest

    space = derive_space(classifier(), train_data=True)
    spread = spread_configs(space)
    presets = list(preset_configs(space).values())
    assert not any(c in presets for c in spread)  # a preset is a trial already
    assert len({describe(c) for c in spread}) == len(spread)  # no configuration twice
    # Every calibrator alone, light and heavy pruning, with and without INT8 and recovery.
    assert {c.get("quant.calibrator") for c in spread if not c["prune"]} >= set(space.calibrators)
    ratios = {c["prune.ratio"] for c in spread if c["prune"]}
    assert min(ratios) <= 0.1 and max(ratios) >= 0.95
    # The fast end: heavy ratios with channels not rounded up, recovered, also with INT8.
    fast = [c for c in spread if c["prune"] and c["prune.round_to"] == 1]
    assert {c["prune.ratio"] for c in fast} >= {0.9, 0.95} and {c["quant"] != "none" for c in fast} == {False, True}
    assert {(c["quant"] != "none", c["recover"]) for c in spread if c["prune"] and c["prune.ratio"] >= 0.5} == {
        (False, "distill"), (True, "distill")}  # unrecovered copies compute the same, worse: left out
    # Every criterion and allocation is tried, at light and heavy ratios.
    for option, values in (("prune.criterion", space.criteria), ("prune.allocation", space.allocations)):
        for light in (True, False):
            assert {c[option] for c in spread if c["prune"] and (c["prune.ratio"] < 0.5) == light} == set(values)
    # Enqueued, each is asked back unchanged (a value outside the sampler's grid would not be).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for c in spread:
        study.enqueue_trial(c)
    assert [suggest(study.ask(), space) for _ in spread] == spread


def test_compute_digest_ignores_values_not_structure(tmp_path) -> None:
    from onnxcomp.api import optimize
    from onnxcomp.tune.trial import compute_digest, model_digest

    rng = np.random.default_rng(0)
    for name in ("c", "e"):
        np.savez(tmp_path / f"{name}.npz", x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))

    def int8(calibrator: str, per_channel: bool) -> onnx.ModelProto:
        config = {"quant": "static", "quant.calibrator": calibrator, "quant.per_channel": per_channel, "quant.fallback": 0}
        return optimize(classifier(), pipeline_of(config), calibration_data=tmp_path / "c.npz",
                        eval_data=tmp_path / "e.npz", speed_check=False)[0]

    minmax, entropy, per_tensor = int8("minmax", True), int8("entropy", True), int8("minmax", False)
    # Two calibrators: other scales (other bytes), the same kernels on the same shapes.
    assert model_digest(minmax) != model_digest(entropy)
    assert compute_digest(minmax) == compute_digest(entropy)
    # Per-tensor weights have other scale shapes: another computation.
    assert compute_digest(minmax) != compute_digest(per_tensor)
