"""End to end on the small trained digits CNN: prune hard, then recover (skips without models/torch)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
models = pytest.importorskip("models")

import onnxcomp
from onnxcomp.pipeline.registry import registered_passes

pytestmark = pytest.mark.skipif("prune-channels" not in registered_passes(), reason="prune-channels not available")


def _acc(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("digits")
    model = onnx.load(models.digits.onnx_path(small=True))
    test = np.load(models.digits.test_split_npz(d / "test.npz"))
    train_path = models.digits.train_split_npz(d / "train.npz")
    x_train = np.load(train_path)["input"]
    calib = {"input": x_train[np.random.default_rng(0).choice(len(x_train), 192, replace=False)]}
    pruned, _ = onnxcomp.optimize(model, ["prune-channels:ratio=0.5"], verify="final")
    return model, pruned, test["input"], test["label"], calib, train_path


def test_reconstruct_recovers_most_of_the_lost_accuracy(digits) -> None:
    model, pruned, x, y, calib, _ = digits
    base, lost = _acc(model, x, y), _acc(pruned, x, y)
    assert base - lost > 0.1  # pruning half the channels really hurts
    out, report = onnxcomp.optimize(model, ["prune-channels:ratio=0.5", "reconstruct"], calibration_data=calib)
    row = next(r for r in report.passes if r.name == "reconstruct")
    assert row.modified and row.stats["layers_refit"] >= 3
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in pruned.graph.node]
    assert _acc(out, x, y) - lost > 0.6 * (base - lost)


def test_distill_leaves_structure_and_closes_the_gap(digits) -> None:
    model, pruned, x, y, calib, train_path = digits
    out, report = onnxcomp.optimize(
        model, ["prune-channels:ratio=0.5", "distill:epochs=4,lr=3e-3,max_samples=768"], calibration_data=calib, train_data=str(train_path)
    )
    row = next(r for r in report.passes if r.name == "distill")
    assert row.stats["labels"] is True
    assert [(n.op_type, list(n.input)) for n in out.graph.node] == [(n.op_type, list(n.input)) for n in pruned.graph.node]
    assert sorted((t.name, tuple(t.dims)) for t in out.graph.initializer) == sorted(
        (t.name, tuple(t.dims)) for t in pruned.graph.initializer
    )
    base, lost = _acc(model, x, y), _acc(pruned, x, y)
    assert _acc(out, x, y) - lost > 0.8 * (base - lost)
