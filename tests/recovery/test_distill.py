"""``distill``: knowledge distillation into the ONNX weights."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")

from onnxcomp.passes.distill import Distill, DistillOptions

from onnxcomp.errors import UsageError
from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.pipeline.registry import instantiate

from .conftest import conv_net, make_ctx


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _kl(t: np.ndarray, s: np.ndarray) -> float:
    lt = t - np.log(np.exp(t - t.max(1, keepdims=True)).sum(1, keepdims=True)) - t.max(1, keepdims=True)
    ls = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    return float((np.exp(lt) * (lt - ls)).sum(1).mean())


def _pair(rng: np.random.Generator, noise: float = 0.4):
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(6).astype(np.float32) * 0.1
    w2 = rng.standard_normal((6, 6, 3, 3)).astype(np.float32) * 0.3
    b2 = rng.standard_normal(6).astype(np.float32) * 0.1
    fc = rng.standard_normal((5, 6)).astype(np.float32) * 2
    fcb = np.zeros(5, np.float32)
    teacher = conv_net(w1, b1, w2, b2, fc=fc, fc_b=fcb)
    noisy = lambda a: (a + noise * rng.standard_normal(a.shape) * a.std()).astype(np.float32)
    student = conv_net(noisy(w1), b1, noisy(w2), b2, fc=noisy(fc), fc_b=fcb)
    return teacher, student


def _structure(model: onnx.ModelProto) -> list:
    nodes = [(n.op_type, tuple(n.input), tuple(n.output), tuple(a.SerializeToString() for a in n.attribute)) for n in model.graph.node]
    inits = sorted((t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer)
    return [nodes, inits, [i.SerializeToString() for i in model.graph.input], [o.SerializeToString() for o in model.graph.output]]


def test_distill_reduces_kl_and_keeps_structure(rng: np.random.Generator) -> None:
    teacher, student = _pair(rng)
    x = rng.standard_normal((256, 3, 6, 6)).astype(np.float32)
    x_test = rng.standard_normal((128, 3, 6, 6)).astype(np.float32)
    kl_before = _kl(_logits(teacher, x_test), _logits(student, x_test))

    graph, meta = to_graph(student)
    ctx = make_ctx(teacher, student, {"x": x[:16]}, train={"x": x})
    result = Distill(DistillOptions(epochs=8, lr=1e-2, batch_size=32, temperature=2.0, refit=False)).run(graph, ctx)
    assert result.modified
    assert result.stats["labels"] is False
    assert result.stats["val_kl_after"] < result.stats["val_kl_before"]
    out = to_model(graph, meta)
    onnx.checker.check_model(out, full_check=True)
    assert _structure(out) == _structure(student)
    kl_after = _kl(_logits(teacher, x_test), _logits(out, x_test))
    assert kl_after < 0.5 * kl_before


def test_distill_is_deterministic_and_uses_labels(rng: np.random.Generator) -> None:
    teacher, student = _pair(rng)
    x = rng.standard_normal((96, 3, 6, 6)).astype(np.float32)
    labels = _logits(teacher, x).argmax(1).astype(np.int64)
    weights = []
    for _ in range(2):
        graph, meta = to_graph(student)
        ctx = make_ctx(teacher, student, {"x": x[:8]}, train={"x": x, "label": labels})
        res = Distill(DistillOptions(epochs=2, lr=5e-3, batch_size=32, seed=3, refit=False)).run(graph, ctx)
        assert res.stats["labels"] is True
        weights.append({t.name: numpy_helper.to_array(t) for t in to_model(graph, meta).graph.initializer})
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        np.testing.assert_array_equal(weights[0][k], weights[1][k])


def test_feature_term_restricted_to_kept_channels(rng: np.random.Generator) -> None:
    """A pruned feature tensor is matched against the teacher's kept channels only."""
    teacher, _ = _pair(rng, noise=0.0)
    t_w = {t.name: numpy_helper.to_array(t) for t in teacher.graph.initializer}
    keep = np.array([0, 2, 3, 5], np.int64)
    student = conv_net(t_w["w1"][keep] * 1.3, t_w["b1"][keep], t_w["w2"][:, keep], t_w["b2"], fc=t_w["fc_w"], fc_b=t_w["fc_b"])
    kept = {"w1": (0, keep), "b1": (0, keep), "h": (1, keep), "r": (1, keep), "w2": (1, keep)}
    x = rng.standard_normal((64, 3, 6, 6)).astype(np.float32)
    graph, _ = to_graph(student)
    ctx = make_ctx(teacher, student, {"x": x}, kept=kept)
    res = Distill(DistillOptions(epochs=2, lr=1e-2, beta=1.0, features=("h",), refit=False)).run(graph, ctx)
    assert res.modified
    # Without the pruning record the channel counts differ (4 vs 6): a clear error.
    graph, _ = to_graph(student)
    with pytest.raises(UsageError, match="feature 'h'"):
        Distill(DistillOptions(epochs=1, beta=1.0, features=("h",), refit=False)).run(graph, make_ctx(teacher, student, {"x": x}))


def test_refit_first_starts_training_near_the_teacher(rng: np.random.Generator) -> None:
    teacher, student = _pair(rng)
    x = rng.standard_normal((128, 3, 6, 6)).astype(np.float32)
    graph, meta = to_graph(student)
    res = Distill(DistillOptions(epochs=1)).run(graph, make_ctx(teacher, student, {"x": x}, train={"x": x}))
    assert res.modified and res.stats["layers_refit"] >= 1
    plain = Distill(DistillOptions(epochs=1, refit=False)).run(to_graph(student)[0], make_ctx(teacher, student, {"x": x}, train={"x": x}))
    # The least-squares start is far closer to the teacher than the noisy student.
    assert res.stats["val_kl_before"] < 0.5 * plain.stats["val_kl_before"]
    x_test = rng.standard_normal((64, 3, 6, 6)).astype(np.float32)
    assert _kl(_logits(teacher, x_test), _logits(to_model(graph, meta), x_test)) < _kl(_logits(teacher, x_test), _logits(student, x_test))


def test_refit_uses_training_data_without_calibration(rng: np.random.Generator) -> None:
    teacher, student = _pair(rng)
    x = rng.standard_normal((64, 3, 6, 6)).astype(np.float32)
    graph, _ = to_graph(student)
    ctx = make_ctx(teacher, student, {"x": x}, train={"x": x})
    ctx.calibration = None
    res = Distill(DistillOptions(epochs=1)).run(graph, ctx)
    assert res.stats["layers_refit"] >= 1
    assert ctx.calibration is None  # the context is left as it was


def test_falls_back_to_calibration_with_warning(rng: np.random.Generator, caplog: pytest.LogCaptureFixture) -> None:
    teacher, student = _pair(rng)
    x = rng.standard_normal((32, 3, 6, 6)).astype(np.float32)
    graph, _ = to_graph(student)
    with caplog.at_level(logging.WARNING, logger="onnxcomp"):
        res = Distill(DistillOptions(epochs=1)).run(graph, make_ctx(teacher, student, {"x": x}))
    assert res.stats["samples"] == 32
    assert "no --train-data" in caplog.text


def test_options_validated() -> None:
    with pytest.raises(UsageError, match="alpha"):
        instantiate("distill:alpha=2")
    with pytest.raises(UsageError, match="features"):
        instantiate("distill:beta=1")
    opts = instantiate("distill:epochs=3,features=[a,b],beta=0.5").options
    assert opts.features == ("a", "b") and opts.epochs == 3


def test_module_imports_without_torch_and_run_says_how_to_install() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import onnxcomp.passes.distill as d\n"
        "from onnxcomp.errors import UsageError\n"
        "try:\n"
        "    d.Distill().run(None, None)\n"
        "except UsageError as e:\n"
        "    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MSG distill needs PyTorch: pip install 'onnxcomp[torch]'" in out
