"""Fuzzing the lossless preset with random valid graphs (hypothesis).

The generator builds NCHW float graphs [2, 4, 3, 3] from a pool of tensors: every new
node reads one or two tensors already in the pool (fan-out and residual joins happen
naturally), and the op mix is chosen so that each lossless pass has work: Identity,
Dropout and no-op Cast/Reshape/Transpose pairs (eliminate-identity), Constant-only
subgraphs (fold-constants), Conv → BatchNormalization (fold-batchnorm), duplicated
nodes (cse), and dead branches (dce).

Each example runs through ``onnxcomp.optimize`` with ``strict=True`` (a lossless pass
that drifts is an error, not a silent rollback) and the result is compared with the
input in onnxruntime. Examples are derandomized so CI sees the same graphs every run;
failures found so far are pinned as explicit regression tests at the bottom.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.checking.runtime import make_session, run

from .conftest import lossless_args

SHAPE = [2, 4, 3, 3]
C = SHAPE[1]
OPS = ("relu", "tanh", "sigmoid", "identity", "dropout", "add", "mul", "sub", "add_const", "mul_const",
       "const_subgraph", "conv", "conv_bn", "bn", "transpose_pair", "reshape_same", "cast_same", "duplicate", "dead",
       "shape_reshape", "mul_one", "add_zero", "concat_slice", "unsqueeze_squeeze", "expand_same", "gemm_path",
       "pad_zero", "duplicate_const", "shared_weight_bn", "where_const")


class _Builder:
    """Accumulates nodes/initializers with fresh names; `pool` holds live tensor names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.pool = ["x"]
        self.n = 0

    def fresh(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh("n"), **attrs))
        return out

    def const(self, arr: np.ndarray) -> str:
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(arr.astype(arr.dtype), name))
        return name

    def weight(self, shape: list[int], scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def bn(self, x: str) -> str:
        s = self.const(self.rng.uniform(0.5, 1.5, C).astype(np.float32))
        b = self.weight([C])
        m = self.weight([C])
        v = self.const(self.rng.uniform(0.5, 2.0, C).astype(np.float32))
        return self.node("BatchNormalization", [x, s, b, m, v])

    def add(self, op: str, a: str, b: str) -> None:
        r = self.rng
        if op in ("relu", "tanh", "sigmoid"):
            out = self.node(op.capitalize(), [a])
        elif op == "identity":
            out = self.node("Identity", [a])
        elif op == "dropout":
            out = self.node("Dropout", [a])
        elif op in ("add", "mul", "sub"):
            out = self.node(op.capitalize(), [a, b])
        elif op == "add_const":
            out = self.node("Add", [a, self.weight([C, 1, 1])])
        elif op == "mul_const":
            out = self.node("Mul", [a, self.weight([1, C, 1, 1])])
        elif op == "const_subgraph":
            k = self.node("Constant", [], value=numpy_helper.from_array(r.standard_normal([C, 1, 1]).astype(np.float32)))
            k2 = self.node("Mul", [k, self.weight([C, 1, 1])])
            k3 = self.node("Add", [k2, self.weight([1])])
            out = self.node("Add", [a, k3])
        elif op == "conv":
            out = self.node("Conv", [a, self.weight([C, C, 3, 3], 0.2), self.weight([C])], pads=[1, 1, 1, 1])
        elif op == "conv_bn":
            out = self.bn(self.node("Conv", [a, self.weight([C, C, 1, 1])]))
        elif op == "bn":
            out = self.bn(a)
        elif op == "transpose_pair":
            t = self.node("Transpose", [a], perm=[0, 2, 3, 1])
            out = self.node("Transpose", [t], perm=[0, 3, 1, 2])
        elif op == "reshape_same":
            out = self.node("Reshape", [a, self.const(np.array([0, *SHAPE[1:]], np.int64))])
        elif op == "cast_same":
            out = self.node("Cast", [a], to=TensorProto.FLOAT)
        elif op == "duplicate":
            d1 = self.node("Relu", [a])
            d2 = self.node("Relu", [a])  # same op, same input: CSE merges the two
            out = self.node("Add", [d1, d2])
        elif op == "shape_reshape":  # Shape of a static tensor: fold-constants folds it
            out = self.node("Reshape", [a, self.node("Shape", [a])])
        elif op == "mul_one":
            out = self.node("Mul", [a, self.const(np.ones([1], np.float32))])
        elif op == "add_zero":
            out = self.node("Add", [a, self.const(np.zeros([1, C, 1, 1], np.float32))])
        elif op == "concat_slice":
            cat = self.node("Concat", [a, b], axis=1)
            out = self.node("Slice", [cat, self.const(np.array([C], np.int64)), self.const(np.array([2 * C], np.int64)),
                                      self.const(np.array([1], np.int64))])
        elif op == "unsqueeze_squeeze":
            axes = self.const(np.array([0], np.int64))
            out = self.node("Squeeze", [self.node("Unsqueeze", [a, axes]), axes])
        elif op == "expand_same":
            out = self.node("Expand", [a, self.const(np.array([1, C, 1, 1], np.int64))])
        elif op == "gemm_path":
            flat = self.node("Flatten", [a], axis=1)
            k = C * SHAPE[2] * SHAPE[3]
            g = self.node("Gemm", [flat, self.weight([k, k], 0.1), self.weight([k])])
            out = self.node("Reshape", [g, self.const(np.array([0, C, SHAPE[2], SHAPE[3]], np.int64))])
        elif op == "pad_zero":
            out = self.node("Pad", [a, self.const(np.zeros(8, np.int64))])
        elif op == "duplicate_const":  # equal initializers under different names: CSE merges them
            v = self.rng.standard_normal([C, 1, 1]).astype(np.float32)
            out = self.node("Sub", [self.node("Add", [a, self.const(v)]), self.node("Mul", [b, self.const(v.copy())])])
        elif op == "shared_weight_bn":  # one weight, two Convs, BN after only one of them
            w = self.weight([C, C, 1, 1])
            out = self.node("Add", [self.bn(self.node("Conv", [a, w])), self.node("Conv", [b, w])])
        elif op == "where_const":
            mask = self.const(self.rng.integers(0, 2, [1, C, 1, 1]).astype(bool))
            out = self.node("Where", [mask, a, b])
        elif op == "dead":
            self.node("Neg", [a])  # never used: DCE removes it
            return
        else:  # pragma: no cover - the strategy only draws from OPS
            raise AssertionError(op)
        self.pool.append(out)


@st.composite
def graphs(draw) -> onnx.ModelProto:
    """A random valid model: 1-12 ops over a tensor pool, 1-2 outputs, batch fixed or ``N``."""
    seed = draw(st.integers(0, 2**16))
    shape = (["N"] if draw(st.booleans()) else SHAPE[:1]) + SHAPE[1:]
    b = _Builder(np.random.default_rng(seed))
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(OPS))
        a = b.pool[draw(st.integers(0, len(b.pool) - 1))]
        c = b.pool[draw(st.integers(0, len(b.pool) - 1))]
        b.add(op, a, c)
    outs = [b.pool[-1]]
    if len(b.pool) > 2 and draw(st.booleans()):
        extra = b.pool[draw(st.integers(1, len(b.pool) - 2))]
        if extra not in outs:
            outs.append(extra)
    if outs == ["x"]:
        outs = [b.node("Identity", ["x"])]
    # Graph outputs get fixed names through a final Identity so their names are stable.
    final = []
    for i, name in enumerate(outs):
        b.nodes.append(helper.make_node("Identity", [name], [f"y{i}"], name=f"out{i}"))
        final.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, shape))
    g = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], final, b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _passes() -> dict:
    args = lossless_args()
    if args[:1] == ["--preset"]:
        return {"preset": "lossless"}
    return {"passes": [a for a in args if a != "-p"]}


def check_lossless(model: onnx.ModelProto) -> onnx.ModelProto:
    """Optimize strictly; assert a valid model with the same interface and outputs."""
    result, report = onnxcomp.optimize(model, strict=True, **_passes())
    onnx.checker.check_model(result, full_check=True)
    assert [o.name for o in result.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in result.graph.input] == [i.name for i in model.graph.input]
    assert [o.type for o in result.graph.output] == [o.type for o in model.graph.output]
    symbolic = model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_param")
    ref_sess, got_sess = make_session(model, optimize=False), make_session(result, optimize=False)
    for batch in (2, 3) if symbolic else (SHAPE[0],):
        feeds = {"x": np.random.default_rng(batch).standard_normal([batch, *SHAPE[1:]]).astype(np.float32)}
        ref, got = run(ref_sess, feeds), run(got_sess, feeds)
        for name, r in ref.items():
            np.testing.assert_allclose(got[name], r, rtol=1e-4, atol=1e-4, err_msg=f"{name} at batch {batch}")
    assert not [w for w in report.warnings if w.startswith("rolled back")]
    return result


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_lossless_preset_preserves_random_graphs(model: onnx.ModelProto) -> None:
    check_lossless(model)


# -------------------------------------------------------- pinned regressions
def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPE) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_fuzz_generator_is_not_trivial() -> None:
    """Guard against a generator that stopped producing work for the passes."""
    rng = np.random.default_rng(0)
    b = _Builder(rng)
    for op in OPS:
        b.add(op, b.pool[-1], b.pool[0])
    ops = {n.op_type for n in b.nodes}
    assert {"Identity", "Dropout", "Constant", "BatchNormalization", "Conv", "Transpose", "Reshape", "Cast", "Shape",
            "Gemm", "Concat", "Slice", "Where", "Pad", "Expand"} <= ops


def test_regression_graph_output_read_by_another_node() -> None:
    """An output that is also an intermediate (fan-out from an output tensor)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal([C, 1, 1]).astype(np.float32), "w")
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y0"]),
             helper.make_node("Add", ["y0", "w"], ["y1"])]
    check_lossless(_model(nodes, [w], ["y0", "y1"]))


def test_regression_identity_straight_to_output() -> None:
    check_lossless(_model([helper.make_node("Dropout", ["x"], ["d"]), helper.make_node("Identity", ["d"], ["y0"])], [], ["y0"]))
