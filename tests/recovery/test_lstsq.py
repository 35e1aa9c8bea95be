"""Streamed normal equations and im2col patches."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.recovery.lstsq import (
    ConvGeometry,
    NormalEquations,
    conv_patches,
    conv_targets,
)


def _ort_conv(x: np.ndarray, w: np.ndarray, **attrs) -> np.ndarray:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "strides, dilations, pads, group",
    [([1, 1], [1, 1], [1, 1, 1, 1], 1), ([2, 1], [1, 2], [0, 1, 2, 0], 2), ([2, 2], [2, 2], [2, 2, 2, 2], 4)],
)
def test_patches_times_weights_is_the_conv(strides, dilations, pads, group) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((8, 4 // group, 3, 2)).astype(np.float32)
    y = _ort_conv(x, w, strides=strides, dilations=dilations, pads=pads, group=group)
    geo = ConvGeometry(kernel=(3, 2), strides=tuple(strides), dilations=tuple(dilations), pads=tuple(pads), group=group)
    p = conv_patches(x, geo)  # [G, M, F]
    wg = w.reshape(group, 8 // group, -1).transpose(0, 2, 1)  # [G, F, Cout/G]
    np.testing.assert_allclose(np.matmul(p, wg), conv_targets(y, group), atol=1e-4)
    # Subsampled rows stay aligned between features and targets.
    pos = np.array([0, 3, p.shape[1] - 1])
    np.testing.assert_allclose(np.matmul(conv_patches(x, geo, pos), wg), conv_targets(y, group, pos), atol=1e-4)


def test_streamed_ridge_matches_direct_solution() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5))
    w_true = rng.standard_normal((5, 3))
    y = x @ w_true + 0.7 + 0.01 * rng.standard_normal((300, 3))
    eq = NormalEquations(features=5, outputs=3)
    for chunk in np.array_split(np.arange(300), 7):  # streamed in uneven batches
        eq.add(x[chunk], y[chunk])
    sol = eq.solve(ridge=0.0)[0]
    direct = np.linalg.lstsq(np.hstack([x, np.ones((300, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(sol, direct, atol=1e-8)
    # The residual computed from the sums equals the one computed from the data.
    res = ((np.hstack([x, np.ones((300, 1))]) @ sol - y) ** 2).sum() / (y**2).sum()
    assert eq.residual(sol[None]) == pytest.approx(res, rel=1e-6)
    # Ridge shrinks the weights but not the (unregularised) intercept's role.
    shrunk = eq.solve(ridge=10.0)[0]
    assert np.linalg.norm(shrunk[:5]) < np.linalg.norm(sol[:5])
    assert eq.residual(shrunk[None]) > eq.residual(sol[None])


def test_dead_feature_does_not_break_the_solve() -> None:
    x = np.random.default_rng(2).standard_normal((50, 3))
    x[:, 1] = 0.0  # a pruned-to-zero channel
    eq = NormalEquations(features=3, outputs=1, bias=False)
    eq.add(x, x[:, :1] * 2.0)
    sol = eq.solve(ridge=0.0)[0]
    assert np.isfinite(sol).all()
    np.testing.assert_allclose(sol[:, 0], [2.0, 0.0, 0.0], atol=1e-6)


def test_stratified_positions_spread_the_budget_over_samples() -> None:
    from onnxcomp.recovery.lstsq import stratified_positions

    rng = np.random.default_rng(0)
    assert stratified_positions(4, 10, 40, rng) is None  # everything fits
    pos = stratified_positions(4, 100, 40, rng)
    assert pos is not None and len(pos) == 40
    assert np.all(np.diff(pos) > 0)
    assert np.bincount(pos // 100, minlength=4).tolist() == [10, 10, 10, 10]
