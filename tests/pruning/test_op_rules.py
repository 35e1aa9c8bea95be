"""One tiny graph per op family between two convs: the group passes through and slicing is exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_rules import X, assert_exact, groups_of

C = 8


def _const(b, name, arr, dtype=np.float32):
    return b.w(name, values=np.asarray(arr, dtype=dtype))


def through_bn(b, h):
    p = [b.w(f"bn{i}", C) for i in range(3)] + [_const(b, "bnv", np.abs(b.rng.standard_normal(C)) + 0.5)]
    return b.node("BatchNormalization", [h, *p], ["bn"])


def through_instancenorm(b, h):
    return b.node("InstanceNormalization", [h, b.w("s", C), b.w("bb", C)], ["inorm"])


def through_activations(b, h):
    h = b.node("Clip", [h, _const(b, "lo", 0.0), _const(b, "hi", 6.0)], ["clip"])
    h = b.node("Sigmoid", [h], ["sig"])
    return b.node("LeakyRelu", [h], ["lrelu"], alpha=0.1)


def through_pools(b, h):
    h = b.node("MaxPool", [h], ["mp"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.node("AveragePool", [h], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def through_pad_resize(b, h):
    h = b.node("Pad", [h, _const(b, "pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)], ["pad"])
    return b.node("Resize", [h, "", _const(b, "scales", [1, 1, 0.75, 0.75])], ["rs"], mode="nearest")


def through_broadcast_consts(b, h):
    h = b.node("PRelu", [h, b.w("slope", C, 1, 1)], ["prelu"])
    h = b.node("Mul", [h, b.w("scale", 1, C, 1, 1)], ["mul"])
    return b.node("Add", [h, _const(b, "scalar", 0.5)], ["add"])


def through_layout(b, h):
    h = b.node("Transpose", [h], ["nhwc"], perm=[0, 2, 3, 1])
    h = b.node("Transpose", [h], ["nchw"], perm=[0, 3, 1, 2])
    # LayerNorm over H, W only: the channel axis is outside the normalized block.
    h = b.node("LayerNormalization", [h, b.w("lns", 6, 6), b.w("lnb", 6, 6)], ["ln"], axis=2)
    h = b.node("Unsqueeze", [h, _const(b, "ax0", [0], np.int64)], ["unsq"])
    return b.node("Squeeze", [h, _const(b, "ax0b", [0], np.int64)], ["sq"])


def through_qdq(b, h):
    h = b.node("QuantizeLinear", [h, _const(b, "qs", 0.05), _const(b, "qz", 0, np.uint8)], ["q"])
    return b.node("DequantizeLinear", [h, "qs", "qz"], ["dq"])


def through_cast(b, h):
    h = b.node("Cast", [h], ["c16"], to=onnx.TensorProto.FLOAT16)
    return b.node("Cast", [h], ["c32"], to=onnx.TensorProto.FLOAT)


def through_convtranspose(b, h):
    w = b.w("ct.w", C, C, 2, 2)  # [Cin, Cout, k, k]
    h = b.node("ConvTranspose", [h, w, b.w("ct.b", C)], ["ct"], strides=[2, 2])
    return b.node("MaxPool", [h], ["down"], kernel_shape=[2, 2], strides=[2, 2])


@pytest.mark.parametrize("chain", [
    through_bn, through_instancenorm, through_activations, through_pools, through_pad_resize,
    through_broadcast_consts, through_layout, through_qdq, through_cast, through_convtranspose,
], ids=lambda f: f.__name__)
def test_pass_through(builder, chain):
    b = builder
    h = b.conv("x", "c1", 4, C)
    h = chain(b, h)
    b.conv(h, "c2", C, 3)
    m = b.model({"x": [1, 4, 6, 6]}, {"c2": [1, 3, 6, 6]})
    g = groups_of(m)["c1.w"]
    assert g.prunable, g.frozen
    # ConvTranspose ends the group at its input channels (W is [Cin, Cout, k, k]).
    assert (("ct.w", 0) if chain is through_convtranspose else ("c2.w", 1)) in g.members
    assert_exact(m, X)


def test_layernorm_over_the_channel_axis_couples_its_parameters(builder):
    b = builder
    h = b.conv("x", "c1", 4, C)
    h = b.node("Transpose", [h], ["nhwc"], perm=[0, 2, 3, 1])
    b.node("LayerNormalization", [h, b.w("lns", C), b.w("lnb", C)], ["ln"], axis=-1)
    b.node("MatMul", ["ln", b.w("proj", C, 3)], ["y"])
    m = b.model({"x": [1, 4, 6, 6]}, {"y": [1, 6, 6, 3]})
    g = groups_of(m)["c1.w"]
    assert g.prunable and {("lns", 0), ("lnb", 0), ("proj", 0), ("ln", 3)} <= set(g.members)


def test_reduce_keepdims_0_then_gemm(builder):
    b = builder
    h = b.conv("x", "c1", 4, C)
    h = b.node("ReduceMean", [h, _const(b, "axes", [2, 3], np.int64)], ["gap"], keepdims=0)
    b.node("Gemm", [h, b.w("fc.w", 5, C), b.w("fc.b", 5)], ["y"], transB=1)
    m = b.model({"x": [1, 4, 6, 6]}, {"y": [1, 5]}, opset=18)
    g = groups_of(m)["c1.w"]
    assert g.prunable and ("fc.w", 1) in g.members
    assert_exact(m, X)


def test_reduction_over_channels_freezes(builder):
    b = builder
    h = b.conv("x", "c1", 4, C)
    b.node("ReduceSum", [h, _const(b, "axes", [1], np.int64)], ["y"], keepdims=1)
    m = b.model({"x": [1, 4, 6, 6]}, {"y": [1, 1, 6, 6]})
    g = groups_of(m)["c1.w"]
    assert not g.prunable and any("reduces over the channel axis" in r for r in g.frozen)


def test_softmax_over_channels_freezes(builder):
    b = builder
    h = b.conv("x", "c1", 4, C)
    h = b.node("Softmax", [h], ["sm"], axis=1)
    b.conv(h, "c2", C, 3)
    m = b.model({"x": [1, 4, 6, 6]}, {"c2": [1, 3, 6, 6]})
    assert not groups_of(m)["c1.w"].prunable


def test_graph_output_in_the_middle_freezes(builder):
    b = builder
    h = b.conv("x", "c1", 4, C)
    b.node("Relu", [h], ["feat"])
    b.conv("feat", "c2", C, 3)
    m = b.model({"x": [1, 4, 6, 6]}, {"c2": [1, 3, 6, 6], "feat": [1, C, 6, 6]})
    g = groups_of(m)["c1.w"]
    assert not g.prunable and "reaches graph output 'feat'" in g.frozen
