"""Tiny models for the bench/compare/gate tests (files on disk: the commands take paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def classifier(hidden: int = 64, classes: int = 10, *, repeat: int = 1, noise: float = 0.0, batch: int | str = "N",
               seed: int = 0) -> onnx.ModelProto:
    """x[batch, 16] → (MatMul → Relu) × repeat → MatMul → logits[batch, classes].

    ``repeat`` extra square layers make the model slower with the same interface;
    ``noise`` perturbs the weights (a fidelity regression).
    """
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng(seed + 100)
    inits, nodes = [], []

    def w(name: str, shape: tuple[int, ...]) -> None:
        a = rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[0])
        if noise:
            a = a + noise * a.std() * noise_rng.standard_normal(shape).astype(np.float32)
        inits.append(numpy_helper.from_array(a.astype(np.float32), name))

    w("w_in", (16, hidden))
    nodes += [helper.make_node("MatMul", ["x", "w_in"], ["h0"]), helper.make_node("Relu", ["h0"], ["a0"])]
    x = "a0"
    for i in range(repeat - 1):
        w(f"w{i}", (hidden, hidden))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i + 1}"]), helper.make_node("Relu", [f"h{i + 1}"], [f"a{i + 1}"])]
        x = f"a{i + 1}"
    w("w_out", (hidden, classes))
    nodes.append(helper.make_node("MatMul", [x, "w_out"], ["logits"]))
    g = helper.make_graph(nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


@pytest.fixture
def model_a(tmp_path: Path) -> Path:
    """A small classifier (a few microseconds per run)."""
    return save(classifier(), tmp_path / "a.onnx")


@pytest.fixture
def model_a_copy(tmp_path: Path, model_a: Path) -> Path:
    """A byte copy of `model_a`."""
    p = tmp_path / "a_copy.onnx"
    p.write_bytes(model_a.read_bytes())
    return p


@pytest.fixture
def model_slow(tmp_path: Path) -> Path:
    """Same interface as `model_a`, much more work (many wide layers): clearly slower."""
    return save(classifier(hidden=512, repeat=12), tmp_path / "slow.onnx")


@pytest.fixture
def model_noisy(tmp_path: Path) -> Path:
    """`model_a` with perturbed weights: same speed, low fidelity."""
    return save(classifier(noise=1.0), tmp_path / "noisy.onnx")


@pytest.fixture
def labelled_npz(tmp_path: Path) -> Path:
    """32 samples for `model_a` with labels = the reference model's own argmax."""
    import onnxruntime as ort

    x = np.random.default_rng(5).standard_normal((32, 16)).astype(np.float32)
    sess = ort.InferenceSession(classifier().SerializeToString(), providers=["CPUExecutionProvider"])
    labels = sess.run(None, {"x": x})[0].argmax(1)
    p = tmp_path / "data.npz"
    np.savez(p, x=x, label=labels)
    return p


@pytest.fixture
def make_classifier():
    """The `classifier` builder, for tests that need a variant."""
    return classifier


@pytest.fixture
def save_model():
    """`save(model, path) -> path`."""
    return save
