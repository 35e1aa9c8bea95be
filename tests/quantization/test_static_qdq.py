"""Static QDQ placement: structure per op rule, biases, shared scales, onnxruntime fusion."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant_testutil import calib, conv_relu_concat_model, cosine, make_model, ops, optimized_ops, outputs, run_pass


@pytest.fixture(scope="module")
def quantized():
    model = conv_relu_concat_model()
    q, res = run_pass(model, calib(model), target_cosine=None)
    return model, q, res


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_conv_relu_gets_q_after_relu_not_between(quantized):
    _, q, res = quantized
    assert res.modified and res.stats["mode"] == "static"
    prod = _producers(q)
    quantized_tensors = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    for n in q.graph.node:
        if n.op_type == "Relu":
            assert prod[n.input[0]].op_type == "Conv"  # Relu reads the Conv directly
            assert n.input[0] not in quantized_tensors  # no Q between Conv and Relu
            assert n.output[0] in quantized_tensors  # the Q follows the Relu
    assert "x" in quantized_tensors  # the graph input feeding conv1


def test_weights_int8_per_channel_and_bias_int32(quantized):
    _, q, _ = quantized
    prod, inits = _producers(q), _inits(q)
    conv1 = next(n for n in q.graph.node if n.op_type == "Conv" and len(n.input) == 3 and "w1" in prod[n.input[1]].input[0])
    wdq, bdq = prod[conv1.input[1]], prod[conv1.input[2]]
    assert wdq.op_type == bdq.op_type == "DequantizeLinear"
    assert inits[wdq.input[0]].dtype == np.int8
    assert {a.name: a.i for a in wdq.attribute}.get("axis") == 0
    sw = inits[wdq.input[1]]
    assert sw.shape == (8,)
    assert inits[bdq.input[0]].dtype == np.int32
    xdq = prod[conv1.input[0]]
    sx = inits[xdq.input[1]]
    np.testing.assert_allclose(inits[bdq.input[1]], sx * sw, rtol=1e-6)
    b = numpy_helper.to_array(next(t for t in conv_relu_concat_model().graph.initializer if t.name == "b1"))
    np.testing.assert_allclose(inits[bdq.input[0]] * inits[bdq.input[1]], b, atol=float((sx * sw).max()))


def test_concat_inputs_and_output_share_one_scale(quantized):
    _, q, _ = quantized
    prod, inits = _producers(q), _inits(q)
    cat = next(n for n in q.graph.node if n.op_type == "Concat")
    scales = [float(inits[prod[i].input[1]]) for i in cat.input]
    qout = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == cat.output[0])
    scales.append(float(inits[qout.input[1]]))
    assert len(set(scales)) == 1 and all(prod[i].op_type == "DequantizeLinear" for i in cat.input)


def test_pass_through_ops_share_the_input_scale(quantized):
    _, q, _ = quantized
    prod, inits = _producers(q), _inits(q)
    for op in ("MaxPool", "Reshape"):
        node = next(n for n in q.graph.node if n.op_type == op)
        dq_in = prod[node.input[0]]
        q_out = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0])
        assert float(inits[dq_in.input[1]]) == float(inits[q_out.input[1]])


def test_gemm_weight_per_output_channel(quantized):
    _, q, _ = quantized
    prod, inits = _producers(q), _inits(q)
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    wdq = prod[gemm.input[1]]
    assert {a.name: a.i for a in wdq.attribute}.get("axis") == 0  # transB=1: rows are outputs
    assert inits[wdq.input[1]].shape == (10,)
    assert inits[prod[gemm.input[2]].input[0]].dtype == np.int32


def test_numerics_close_to_float(quantized):
    model, q, _ = quantized
    feeds = {"x": calib(model, n=1, seed=7)["x"]}
    assert cosine(outputs(model, feeds)[0], outputs(q, feeds)[0]) > 0.99


def test_onnxruntime_fuses_into_integer_kernels(quantized):
    _, q, _ = quantized
    fused = optimized_ops(q)
    # conv1/conv2 (+Relu) and the Gemm run on integer kernels; the Relus fold into the Qs.
    # (conv3 behind the shared-DQ MaxPool stays FusedConv in onnxruntime 1.32, as with
    # onnxruntime's own quantize_static on this graph, which fuses even fewer.)
    assert fused["QLinearConv"] >= 2 and fused["QGemm"] == 1 and fused["QLinearConcat"] == 1
    assert fused["Relu"] == 0


def test_exclude_by_op_type_and_node_name():
    model = conv_relu_concat_model()
    q, res = run_pass(model, calib(model), exclude=("Gemm", "conv2"), target_cosine=None)
    fused = optimized_ops(q)
    assert fused["QGemm"] == 0 and fused["Gemm"] + fused["FusedGemm"] >= 1
    prod = _producers(q)
    conv2 = next(n for n in q.graph.node if n.op_type == "Conv" and prod.get(n.input[1]) is None)
    assert conv2.input[1] == "w2"  # float weight kept


def _softmax_only():
    return make_model(
        [helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=-1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        {},
    )


def test_must_not_fire_without_quantizable_ops():
    model = _softmax_only()
    q, res = run_pass(model, calib(model), target_cosine=None)
    assert not res.modified
    assert ops(q) == ops(model)


def test_must_not_fire_on_dynamic_conv_weight():
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="c")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        {},
    )
    q, res = run_pass(model, calib(model), target_cosine=None)
    assert not res.modified and "QuantizeLinear" not in ops(q)


def test_add_of_two_activations_and_embedding_gather():
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="emb"),
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Add", ["c", "x"], ["y"], name="add"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]), helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4]), helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3, 8])],
        {"table": rng.standard_normal((50, 8)).astype(np.float32), "w": rng.standard_normal((2, 2, 1, 1)).astype(np.float32)},
    )
    data = {"x": rng.standard_normal((4, 2, 4, 4)).astype(np.float32), "ids": rng.integers(0, 50, (4, 3))}

    class _Reader:  # an onnxruntime-style CalibrationDataReader through the API
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= 4:
                return None
            self.i += 1
            return {"x": data["x"][self.i - 1 : self.i], "ids": data["ids"][self.i - 1 : self.i]}

    q, res = run_pass(model, _Reader(), target_cosine=None)
    prod, inits = _producers(q), _inits(q)
    gather = next(n for n in q.graph.node if n.op_type == "Gather")
    # int8 table read directly by the Gather; only the gathered rows are dequantized.
    assert inits[gather.input[0]].dtype == np.int8
    assert [n.op_type for n in q.graph.node if gather.output[0] in n.input] == ["DequantizeLinear"]
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert all(prod[i].op_type == "DequantizeLinear" for i in add.input)
    assert optimized_ops(q)["QLinearAdd"] == 1
    feeds = {"x": data["x"][:1], "ids": data["ids"][:1]}
    ref, got = outputs(model, feeds), outputs(q, feeds)
    assert cosine(ref[1], got[1]) > 0.999 and cosine(ref[0], got[0]) > 0.99


def _split_sigmoid_model() -> onnx.ModelProto:
    """Conv -> Split -> (Conv, SiLU Conv) -> Concat -> Conv -> Sigmoid -> y (a C2f block and a
    detector head's class-score Sigmoid, in miniature)."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
        "sizes": np.array([4, 4], dtype=np.int64),
        "w2": (rng.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32),
        "w3": (rng.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32),
        "w4": (rng.standard_normal((2, 8, 1, 1)) * 0.3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Split", ["r1", "sizes"], ["s0", "s1"], name="split", axis=1),
        helper.make_node("Conv", ["s0", "w2"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["s1", "w3"], ["c3"], name="conv3"),
        helper.make_node("Sigmoid", ["c3"], ["g3"], name="sig3"),
        helper.make_node("Mul", ["c3", "g3"], ["m3"], name="silu3"),
        helper.make_node("Concat", ["c2", "m3"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w4"], ["c4"], name="conv4"),
        helper.make_node("Sigmoid", ["c4"], ["y"], name="head_sigmoid"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        inits,
    )


def test_split_passes_8bit_data_through_and_onnxruntime_drops_its_qdq():
    model = _split_sigmoid_model()
    q, _ = run_pass(model, calib(model), target_cosine=None)
    prod = _producers(q)
    split = next(n for n in q.graph.node if n.op_type == "Split")
    assert prod[split.input[0]].op_type == "DequantizeLinear"
    consumers = {i: n for n in q.graph.node for i in n.input}
    qs = [consumers[o] for o in split.output]
    assert all(c.op_type == "QuantizeLinear" for c in qs)
    inits = _inits(q)
    dq_in = prod[split.input[0]]
    assert all(inits[c.input[1]] == inits[dq_in.input[1]] for c in qs)  # one scale through the Split
    fused = optimized_ops(q)
    # Before: DQ -> Split -> Q, Q (a float Split between integer convs).
    assert fused["QLinearConv"] == 4 and fused["DequantizeLinear"] <= 1 and fused["QuantizeLinear"] <= 1


def test_sigmoid_8bit_only_when_an_integer_op_reads_it():
    model = _split_sigmoid_model()
    q, _ = run_pass(model, calib(model), target_cosine=None)
    fused = optimized_ops(q)
    assert fused["QLinearSigmoid"] == 1 and fused["QLinearMul"] == 1  # the SiLU
    head = next(n for n in q.graph.node if n.name == "head_sigmoid")
    assert head.op_type == "Sigmoid" and _producers(q)[head.input[0]].op_type == "DequantizeLinear"
    assert "y" not in {o for n in q.graph.node if n.op_type == "QuantizeLinear" for o in n.input}
