"""Weightless checks: skeletons for the checker, borrowed weights for onnxruntime, export."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from testutil import conv_model

from onnxcomp.checking.checker import check_structure
from onnxcomp.checking.runtime import make_session, run
from onnxcomp.checking.verify import Verifier
from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.ir.weightless import (
    MIN_STRIPPED_BYTES,
    RuntimeParts,
    runtime_parts,
    structure_skeleton,
)


def _big_conv_model() -> onnx.ModelProto:
    """conv_model with a weight large enough to be stripped (and a small bias that is not)."""
    model = conv_model()
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 3, 3, 3)).astype(np.float32)  # 6912 bytes
    assert w.nbytes >= MIN_STRIPPED_BYTES
    b = rng.standard_normal(64).astype(np.float32)
    del model.graph.initializer[:]
    model.graph.initializer.extend([onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 64
    onnx.checker.check_model(model, full_check=True)
    return model


def test_runtime_parts_strip_large_weights_and_match_a_plain_session() -> None:
    model = _big_conv_model()
    parts = runtime_parts(model)
    assert parts.names == ["w"]  # the 256-byte bias stays inline
    assert len(parts.model_bytes) < model.ByteSize() - 6000
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    expected = plain.run(None, {"x": x})[0]
    got = run(make_session(model, optimize=False), {"x": x})["y"]
    np.testing.assert_array_equal(got, expected)


def _matmul_model(transposed: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """``y = x @ w`` (or ``x @ Transpose(w)``) with a weight large enough to be lent."""
    w = np.random.default_rng(3).standard_normal((32, 32)).astype(np.float32)
    nodes = [onnx.helper.make_node("MatMul", ["x", "wt" if transposed else "w"], ["y"])]
    if transposed:
        nodes.insert(0, onnx.helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]))
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])], [onnx.numpy_helper.from_array(w, "w")],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), w


def test_lent_weights_are_read_in_place_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxcomp.checking.runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "IN_PLACE_BYTES", 0)  # a small weight: large ones are read in place
    model, w = _matmul_model(transposed=False)
    parts = runtime_parts(model)
    assert parts.names == ["w"]
    lent = w.copy()  # writable (the parts' own array views the proto's bytes)
    x = np.ones((1, 32), np.float32)
    sess = make_session(RuntimeParts(parts.model_bytes, ["w"], [lent]), optimize=True, one_shot=True)
    np.testing.assert_allclose(run(sess, {"x": x})["y"], x @ w, rtol=1e-5, atol=1e-4)
    # The session computes from the lent array itself: a change to it shows in the output
    # (a copy made at session creation would not see it).
    lent *= 2.0
    np.testing.assert_allclose(run(sess, {"x": x})["y"], x @ (2.0 * w), rtol=1e-5, atol=1e-4)


def test_a_session_whose_optimizer_reads_a_lent_weight_falls_back_to_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime's constant folding evaluates Transpose(w): it must read w's values,
    # which a weight lent in place does not give it; the session is built the copying way.
    import onnxcomp.checking.runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "IN_PLACE_BYTES", 0)
    model, w = _matmul_model(transposed=True)
    x = np.arange(32, dtype=np.float32)[None]
    for optimize in (False, True):
        got = run(make_session(runtime_parts(model), optimize=optimize), {"x": x})["y"]
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-3)


def test_runtime_parts_reject_a_payload_that_does_not_match_its_shape() -> None:
    model = _big_conv_model()
    w = model.graph.initializer[0]
    w.raw_data = w.raw_data[:-4]
    with pytest.raises(onnx.checker.ValidationError, match="holds 6908 bytes"):
        runtime_parts(model)


def test_structure_skeleton_keeps_the_checker_strict() -> None:
    model = _big_conv_model()
    skeleton = structure_skeleton(model)
    assert [t.name for t in skeleton.graph.initializer] == ["b"]
    assert "w" in [i.name for i in skeleton.graph.input]
    check_structure(model, full=True)  # a valid model passes
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[1] = "missing"
    with pytest.raises(Exception, match="missing"):
        check_structure(broken, full=True)
    # A shape error involving a stripped weight is still found by full-check shape inference.
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    wrong.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8
    with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
        check_structure(wrong, full=True)


def test_structure_skeleton_of_an_old_ir_model_does_not_duplicate_inputs() -> None:
    model = _big_conv_model()
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [64, 3, 3, 3]))
    skeleton = structure_skeleton(model)
    assert [i.name for i in skeleton.graph.input].count("w") == 1
    check_structure(model, full=True)


def test_export_matches_graphsurgeon_and_never_renames_the_input_tensors() -> None:
    model = _big_conv_model()
    graph, meta = to_graph(model)
    reference = gs.export_onnx(graph.copy(), do_type_check=False)
    out = to_model(graph, meta)
    key = sorted((t.name, t.SerializeToString()) for t in out.graph.initializer)
    assert key == sorted((t.name, t.SerializeToString()) for t in reference.graph.initializer)
    # Renaming a lazily loaded constant must rename the export only, not the input model.
    next(t for t in graph.tensors().values() if t.name == "w").name = "w_renamed"
    out = to_model(graph, meta)
    assert "w_renamed" in [t.name for t in out.graph.initializer]
    assert [t.name for t in model.graph.initializer] == ["w", "b"]
    # A constant computed by a pass (numpy values) exports with its values.
    graph.nodes[0].inputs[2] = gs.Constant("b_new", np.arange(64, dtype=np.float32))
    out = to_model(graph, meta)
    exported = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(exported["b_new"], np.arange(64, dtype=np.float32))
    onnx.checker.check_model(out, full_check=True)


def test_background_reference_run_gives_the_same_outputs() -> None:
    model = _big_conv_model()
    feeds = [{"x": np.ones((1, 3, 8, 8), np.float32)}]
    eager = Verifier(model, feeds).reference_outputs
    background = Verifier(model, feeds)
    background.prefetch()
    background.prefetch()  # idempotent
    np.testing.assert_array_equal(background.reference_outputs[0]["y"], eager[0]["y"])
    background.close()
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    v = Verifier(broken, feeds)
    v.prefetch()
    assert v.unverifiable is not None and "cannot run the input model" in v.unverifiable


@pytest.mark.parametrize("small", [True, False])
def test_candidate_overlaps_a_running_reference_only_for_small_inputs(monkeypatch: pytest.MonkeyPatch, small: bool) -> None:
    import threading

    import onnxcomp.checking.verify as verify_mod

    model = _big_conv_model()
    feeds = [{"x": np.ones((1, 3, 8, 8), np.float32)}]
    if not small:
        monkeypatch.setattr(verify_mod, "OVERLAP_BYTES", 0)
    v = Verifier(model, feeds)
    release = threading.Event()
    real_compute = v._compute

    def slow_reference() -> None:
        release.wait(timeout=30)
        real_compute()

    monkeypatch.setattr(v, "_compute", slow_reference)
    v.prefetch()  # the reference run now blocks until released
    started = threading.Event()
    box: dict = {}

    def check() -> None:
        wait = v.start_evaluate(model)
        started.set()
        box["result"] = wait()

    checker = threading.Thread(target=check)
    checker.start()
    # A small input's candidate starts (and finishes) while the reference still blocks;
    # a large one's waits for the reference first.
    assert started.wait(timeout=5 if small else 0.5) is small
    release.set()
    checker.join(timeout=30)
    outs, err = box["result"]
    assert err is None
    np.testing.assert_array_equal(outs[0]["y"], v.reference_outputs[0]["y"])
    v.close()


def test_candidate_of_an_input_that_cannot_run_is_not_a_failure() -> None:
    import onnxcomp

    model = _big_conv_model()
    model.graph.node[0].domain = "custom.unknown"  # a custom op: the input itself cannot run
    model.opset_import.append(onnx.helper.make_opsetid("custom.unknown", 1))
    model.graph.node.append(onnx.helper.make_node("Identity", ["y"], ["z"]))
    model.graph.output[0].name = "z"
    out, report = onnxcomp.optimize(model, allow_unverified=True)
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu"]  # the Identity went, nothing rolled back
    assert not any("rolled back" in w for w in report.warnings)


def test_a_reference_run_nobody_needs_stops_after_its_session(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxcomp.checking.verify as verify_mod

    model = _big_conv_model()
    v = Verifier(model, [{"x": np.ones((1, 3, 8, 8), np.float32)}])
    runs: list[int] = []
    real_make, real_run = verify_mod.make_session, verify_mod.run

    def make_after_close(*args: object, **kwargs: object) -> object:
        v._closing.wait(timeout=30)  # the pipeline ends while the session is being built
        return real_make(*args, **kwargs)

    def counting_run(*args: object, **kwargs: object) -> object:
        runs.append(1)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(verify_mod, "make_session", make_after_close)
    monkeypatch.setattr(verify_mod, "run", counting_run)
    v.prefetch()
    v.close()
    assert runs == [] and v._outputs is None and v._unverifiable is None
