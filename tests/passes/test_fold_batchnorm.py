"""Tests of `fold-batchnorm`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from lossless_testutil import assert_same_outputs, ops, run_pass
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.ir.convert import to_graph, to_model
from onnxcomp.pipeline.pass_api import PassContext
from onnxcomp.pipeline.registry import instantiate

RNG = np.random.default_rng(0)


def _bn_params(c: int, prefix: str = "bn") -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), f"{prefix}_g"),
        numpy_helper.from_array(RNG.standard_normal(c).astype(np.float32), f"{prefix}_b"),
        numpy_helper.from_array(RNG.standard_normal(c).astype(np.float32), f"{prefix}_m"),
        numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), f"{prefix}_v"),
    ]


def _model(nodes, inits, x_shape, y_shape, opset: int = 17, extra_outputs=()) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape), *extra_outputs],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _bn(inp: str, out: str = "y", prefix: str = "bn") -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [inp] + [f"{prefix}_{s}" for s in "gbmv"], [out], epsilon=1e-3)


def test_conv_without_bias_absorbs_bn_and_shared_weight_is_cloned() -> None:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        _bn("c"),
        helper.make_node("Conv", ["x", "w"], ["y2"], pads=[1, 1, 1, 1]),  # shares w
    ]
    m = _model(nodes, [w, *_bn_params(4)], [1, 3, 5, 5], [1, 4, 5, 5],
               extra_outputs=[helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, 5, 5])])
    w_before = numpy_helper.to_array(m.graph.initializer[0]).copy()
    out, res = run_pass(m, "fold-batchnorm")
    assert res.modified and res.stats == {"folded": 1, "decomposed": 0, "bias_folded": 0}
    assert ops(out) == {"Conv": 2}
    assert out.graph.node[0].output[0] == "y" or out.graph.node[1].output[0] == "y"
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(inits["w"], w_before)  # the shared weight is untouched
    assert len(inits) == 3  # w, w', b'
    np.testing.assert_array_equal(numpy_helper.to_array(m.graph.initializer[0]), w_before)
    assert_same_outputs(m, out)


def test_grouped_conv_transpose() -> None:
    # ConvTranspose weight [Cin, Cout/g, k, k] with group 2: Cin=4, Cout=6.
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 2, 2)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.standard_normal(6).astype(np.float32), "b")
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=2, strides=[2, 2]), _bn("c")]
    m = _model(nodes, [w, b, *_bn_params(6)], [1, 4, 3, 3], [1, 6, 6, 6])
    out, res = run_pass(m, "fold-batchnorm")
    assert res.stats["folded"] == 1 and ops(out) == {"ConvTranspose": 1}
    assert_same_outputs(m, out, atol=1e-4, rtol=1e-4)


def test_gemm_trans_b_with_bias_and_matmul_2d() -> None:
    wt = numpy_helper.from_array(RNG.standard_normal((5, 3)).astype(np.float32), "wt")
    c = numpy_helper.from_array(RNG.standard_normal(5).astype(np.float32), "cb")
    nodes = [helper.make_node("Gemm", ["x", "wt", "cb"], ["g"], transB=1, alpha=0.5, beta=2.0), _bn("g")]
    m = _model(nodes, [wt, c, *_bn_params(5)], [2, 3], [2, 5])
    out, res = run_pass(m, "fold-batchnorm")
    assert res.stats["folded"] == 1 and ops(out) == {"Gemm": 1}
    assert_same_outputs(m, out, atol=1e-4, rtol=1e-4)

    w = numpy_helper.from_array(RNG.standard_normal((3, 5)).astype(np.float32), "w")
    m2 = _model([helper.make_node("MatMul", ["x", "w"], ["mm"]), _bn("mm")], [w, *_bn_params(5)], [2, 3], [2, 5])
    out2, res2 = run_pass(m2, "fold-batchnorm")
    assert res2.stats["folded"] == 1 and ops(out2) == {"Gemm": 1}
    assert_same_outputs(m2, out2, atol=1e-4, rtol=1e-4)


def test_matmul_3d_is_not_folded_but_decomposed_on_request() -> None:
    # [B, T, K] @ [K, N] -> [B, T, N]: BN normalises axis 1 (T), MatMul's channel is N.
    w = numpy_helper.from_array(RNG.standard_normal((3, 4)).astype(np.float32), "w")
    m = _model([helper.make_node("MatMul", ["x", "w"], ["mm"]), _bn("mm")], [w, *_bn_params(5)], [2, 5, 3], [2, 5, 4])
    _, res0 = run_pass(m, "fold-batchnorm")
    assert not res0.modified  # by default a BN with nothing to fold into stays one node
    out, res = run_pass(m, "fold-batchnorm", decompose=True)
    assert res.stats == {"folded": 0, "decomposed": 1, "bias_folded": 0}
    assert ops(out) == {"MatMul": 1, "Mul": 1, "Add": 1}
    assert_same_outputs(m, out, atol=1e-4, rtol=1e-4)


def test_conv_output_read_elsewhere_is_not_folded() -> None:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "bnout"), helper.make_node("Add", ["c", "bnout"], ["y"])]
    m = _model(nodes, [w, *_bn_params(4)], [1, 3, 2, 2], [1, 4, 2, 2])
    out, res = run_pass(m, "fold-batchnorm", decompose=True)
    assert res.stats["folded"] == 0 and res.stats["decomposed"] == 1
    assert ops(out)["Conv"] == 1 and "BatchNormalization" not in ops(out)
    assert_same_outputs(m, out, atol=1e-5, rtol=1e-5)
    out2, res2 = run_pass(m, "fold-batchnorm")
    assert not res2.modified and ops(out2)["BatchNormalization"] == 1


def test_bn_with_non_constant_stats_or_training_outputs_is_left_alone() -> None:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "bn_g", "bn_b", "bn_m", "bn_v"], ["y", "rm", "rv"], training_mode=1),
    ]
    m = _model(nodes, [w, *_bn_params(4)], [2, 3, 2, 2], [2, 4, 2, 2],
               extra_outputs=[helper.make_tensor_value_info("rm", TensorProto.FLOAT, [4]),
                              helper.make_tensor_value_info("rv", TensorProto.FLOAT, [4])])
    out, res = run_pass(m, "fold-batchnorm")
    assert not res.modified and ops(out)["BatchNormalization"] == 1


def test_bn_writing_graph_output_keeps_output_name_after_folding() -> None:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c")], [w, *_bn_params(4)], [1, 3, 2, 2], [1, 4, 2, 2])
    out, _ = run_pass(m, "fold-batchnorm")
    assert [n.op_type for n in out.graph.node] == ["Conv"] and out.graph.node[0].output[0] == "y"
    assert out.graph.output[0].name == "y"


def test_bias_add_folds_into_conv_and_gemm_and_2d_matmul() -> None:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    t = numpy_helper.from_array(RNG.standard_normal((4, 1, 1)).astype(np.float32), "t")
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["t", "c"], ["y"])], [w, t], [1, 3, 2, 2], [1, 4, 2, 2])
    out, res = run_pass(m, "fold-batchnorm")
    assert res.stats["bias_folded"] == 1 and ops(out) == {"Conv": 1} and out.graph.node[0].output[0] == "y"
    assert_same_outputs(m, out)

    wm = numpy_helper.from_array(RNG.standard_normal((3, 5)).astype(np.float32), "wm")
    tb = numpy_helper.from_array(RNG.standard_normal((1, 5)).astype(np.float32), "tb")
    m2 = _model([helper.make_node("MatMul", ["x", "wm"], ["mm"]), helper.make_node("Add", ["mm", "tb"], ["y"])], [wm, tb], [2, 3], [2, 5])
    out2, res2 = run_pass(m2, "fold-batchnorm")
    assert res2.stats["bias_folded"] == 1 and ops(out2) == {"Gemm": 1}
    assert_same_outputs(m2, out2)


def test_bias_add_that_broadcasts_or_is_per_element_is_not_folded() -> None:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    t = numpy_helper.from_array(RNG.standard_normal((1, 4, 2, 2)).astype(np.float32), "t")  # per element
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "t"], ["y"])], [w, t], [1, 3, 2, 2], [1, 4, 2, 2])
    assert not run_pass(m, "fold-batchnorm")[1].modified
    assert not run_pass(m, "fold-batchnorm", bias=False)[1].modified


def test_nd_matmul_bias_becomes_gemm_only_when_it_saves_nodes() -> None:
    # Q/K/V style: three Linear layers on one [1, 4, 3] input, each read by a Reshape.
    inits, nodes = [], []
    for i in range(3):
        inits += [numpy_helper.from_array(RNG.standard_normal((3, 6)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(RNG.standard_normal(6).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Reshape", [f"a{i}", "shp"], [f"r{i}"])]
    inits.append(numpy_helper.from_array(np.array([1, 4, 2, 3], np.int64), "shp"))
    nodes += [helper.make_node("Add", ["r0", "r1"], ["s"]), helper.make_node("Add", ["s", "r2"], ["y"])]
    m = _model(nodes, inits, [1, 4, 3], [1, 4, 2, 3])
    out, res = run_pass(m, "fold-batchnorm")
    assert res.stats["bias_folded"] == 3
    assert ops(out) == {"Reshape": 4, "Gemm": 3, "Add": 2}  # 11 -> 9 nodes
    assert_same_outputs(m, out)

    # A single Linear whose output goes to a non-Reshape: would cost two Reshapes; declined.
    single = _model([helper.make_node("MatMul", ["x", "w0"], ["m0"]), helper.make_node("Add", ["m0", "b0"], ["y"])],
                    inits[:2], [1, 4, 3], [1, 4, 6])
    assert not run_pass(single, "fold-batchnorm")[1].modified


def test_bn_inside_if_branch_is_left_alone() -> None:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    params = _bn_params(4)
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "a")], "t", [],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 2, 2])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["b"])], "e", [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 2, 2])],
    )
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])],
        [w, *params],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    out, res = run_pass(m, "fold-batchnorm")
    assert not res.modified
    then_out = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in then_out.node] == ["Conv", "BatchNormalization"]


def _scale_bias(params: list[onnx.TensorProto], eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    g, b, mu, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
    s = g / np.sqrt(var + eps)
    return s, b - mu * s


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_folded_weights_are_the_float64_products_rounded_once(dtype: type) -> None:
    # W' = W·s computed in float64 and rounded once to the weight dtype, bit for bit,
    # for Conv (channel = axis 0) and grouped ConvTranspose (channel inside axis 1).
    tp = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for op, w_shape, group, c, y_shape in (("Conv", (4, 3, 3, 3), 1, 4, [1, 4, 1, 1]), ("ConvTranspose", (4, 3, 2, 2), 2, 6, [1, 6, 4, 4])):
        w = RNG.standard_normal(w_shape).astype(dtype)
        params = _bn_params(c)
        for p in params:
            p.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(p).astype(dtype), p.name))
        x_shape = [1, w_shape[0] if op == "ConvTranspose" else w_shape[1], 3, 3]
        g = helper.make_graph(
            [helper.make_node(op, ["x", "w"], ["c"], group=group), _bn("c")], "g",
            [helper.make_tensor_value_info("x", tp, x_shape)], [helper.make_tensor_value_info("y", tp, y_shape)],
            [numpy_helper.from_array(w, "w"), *params],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        out, res = run_pass(m, "fold-batchnorm")
        assert res.stats["folded"] == 1
        s, _ = _scale_bias(params)
        if op == "Conv":
            expect = (w.astype(np.float64) * s.reshape(-1, 1, 1, 1)).astype(dtype)
        else:
            view = w.astype(np.float64).reshape(group, w_shape[0] // group, w_shape[1], *w_shape[2:])
            expect = (view * s.reshape(group, 1, w_shape[1], 1, 1)).reshape(w_shape).astype(dtype)
        folded = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name != "w" and t.dims == list(w_shape))
        assert folded.dtype == dtype
        np.testing.assert_array_equal(folded, expect)


def test_bias_add_fold_decides_from_weight_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    # Folding a bias Add into Conv/MatMul needs the weight's dtype and shape only: the
    # weights (a transformer's largest tensors) are never loaded for it.
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    t = numpy_helper.from_array(RNG.standard_normal((4, 1, 1)).astype(np.float32), "t")
    conv = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "t"], ["y"])], [w, t], [1, 3, 2, 2], [1, 4, 2, 2])
    wm = numpy_helper.from_array(RNG.standard_normal((3, 5)).astype(np.float32), "w")
    tb = numpy_helper.from_array(RNG.standard_normal(5).astype(np.float32), "tb")
    matmul = _model([helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "tb"], ["y"])], [wm, tb], [2, 3], [2, 5])
    real = numpy_helper.to_array

    def guarded(tensor: onnx.TensorProto, *args: object) -> np.ndarray:
        assert tensor.name != "w", "the weight's payload was loaded"
        return real(tensor, *args)

    for m, op in ((conv, "Conv"), (matmul, "Gemm")):
        graph, meta = to_graph(m)
        with monkeypatch.context() as patch:
            patch.setattr(numpy_helper, "to_array", guarded)
            res = instantiate("fold-batchnorm").run(graph, PassContext(original_model=m, meta=meta))
        assert res.stats["bias_folded"] == 1
        graph.cleanup()
        assert [n.op for n in graph.nodes] == [op]
        assert_same_outputs(m, to_model(graph, meta))


def test_conv_absorbs_a_following_per_channel_scale_and_shift() -> None:
    # Caffe-style Scale layer after a Conv: Mul by [C,1,1], Add of [C,1,1].
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    s = numpy_helper.from_array(RNG.uniform(-2, 2, (4, 1, 1)).astype(np.float32), "s")
    t = numpy_helper.from_array(RNG.standard_normal((4, 1, 1)).astype(np.float32), "t")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])]
    m = _model(nodes, [w, s, t], [1, 3, 5, 5], [1, 4, 5, 5])
    out, res = run_pass(m, "fold-batchnorm")
    assert res.stats["bias_folded"] == 2 and ops(out) == {"Conv": 1}
    assert_same_outputs(m, out, atol=1e-5, rtol=1e-5)


def test_unfoldable_bn_absorbs_scale_and_shift_but_a_broadcasting_mul_is_left() -> None:
    # BN after a graph input (nothing to fold into) stays one node and takes the Mul/Add.
    s = numpy_helper.from_array(RNG.uniform(-2, 2, (4, 1, 1)).astype(np.float32), "s")
    t = numpy_helper.from_array(RNG.standard_normal((4, 1, 1)).astype(np.float32), "t")
    nodes = [_bn("x", "n"), helper.make_node("Mul", ["n", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])]
    m = _model(nodes, [*_bn_params(4), s, t], [1, 4, 3, 3], [1, 4, 3, 3])
    out, res = run_pass(m, "fold-batchnorm")
    assert ops(out) == {"BatchNormalization": 1} and res.stats["decomposed"] == 0
    assert_same_outputs(m, out, atol=1e-5, rtol=1e-5)
    # A per-position (not per-channel) Mul changes every element differently: it stays.
    p = numpy_helper.from_array(RNG.standard_normal((1, 4, 3, 3)).astype(np.float32), "s")
    m2 = _model(nodes[:2] + [helper.make_node("Identity", ["m"], ["y"])], [*_bn_params(4), p], [1, 4, 3, 3], [1, 4, 3, 3])
    out2, _ = run_pass(m2, "fold-batchnorm")
    assert ops(out2)["Mul"] == 1
