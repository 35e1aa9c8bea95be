"""Tiny hostile or odd model files, one builder per case, shared by the reliability tests.

Every builder takes a fresh folder and returns the path of the model file to feed to
``onnxcomp optimize``. Builders write with plain ``onnx``/``open`` calls (never with
onnxcomp itself) so a bug in onnxcomp's writer cannot hide a bug in its reader.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR = 8


def parse(text: str, opset: int = OPSET, ir: int = IR, extra_opsets: str = "") -> onnx.ModelProto:
    """A model from ONNX text with the usual header."""
    return onnx.parser.parse_model(f'<ir_version: {ir}, opset_import: ["" : {opset}{extra_opsets}]>\n{text}')


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


RELU = "g (float[2,4] x) => (float[2,4] y) { t = Identity(x)\n y = Relu(t) }"


def relu_model() -> onnx.ModelProto:
    return parse(RELU)


def with_external(folder: Path, *, location: str | None = None, offset: int | None = None, length: int | None = None,
                  data_path: Path | None = None, write_data: bool = True) -> Path:
    """``y = x + W`` with W (4 floats = 16 bytes) stored as external data."""
    w = np.arange(4, dtype=np.float32)
    model = parse("g (float[4] x) => (float[4] y) { y = Add(x, W) }")
    t = numpy_helper.from_array(w, "W")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    loc = location if location is not None else "model.onnx.data"
    t.external_data.add(key="location", value=loc)
    if offset is not None:
        t.external_data.add(key="offset", value=str(offset))
    if length is not None:
        t.external_data.add(key="length", value=str(length))
    model.graph.initializer.append(t)
    if write_data:
        target = data_path if data_path is not None else folder / loc
        target.write_bytes(w.tobytes())
    return save(model, folder)


# ---------------------------------------------------------------------------- errors
def empty(d: Path) -> Path:
    (d / "model.onnx").write_bytes(b"")
    return d / "model.onnx"


def truncated(d: Path) -> Path:
    m = parse("g (float[2,4] x) => (float[2,4] y) { y = Add(x, W) }")
    m.graph.initializer.append(numpy_helper.from_array(np.ones((2, 4), np.float32), "W"))
    data = m.SerializeToString()
    (d / "model.onnx").write_bytes(data[: len(data) - 20])
    return d / "model.onnx"


def garbage(d: Path) -> Path:
    (d / "model.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return d / "model.onnx"


def text_file(d: Path) -> Path:
    (d / "model.onnx").write_text("this is not a model\n")
    return d / "model.onnx"


def lfs_pointer(d: Path) -> Path:
    (d / "model.onnx").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
    )
    return d / "model.onnx"


class _Boom:
    """Unpickling this would create a file: the test checks it never appears."""

    def __reduce__(self):
        return (open, (os.path.join(os.environ.get("ONNXCOMP_PICKLE_CANARY", "/nonexistent"), "pwned"), "w"))


def pickle_file(d: Path) -> Path:
    os.environ["ONNXCOMP_PICKLE_CANARY"] = str(d)
    (d / "model.onnx").write_bytes(pickle.dumps(_Boom(), protocol=4))
    return d / "model.onnx"


def pickle_proto2(d: Path) -> Path:
    (d / "model.onnx").write_bytes(pickle.dumps({"state_dict": [1, 2, 3]}, protocol=2))
    return d / "model.onnx"


def zip_checkpoint(d: Path) -> Path:
    with zipfile.ZipFile(d / "model.onnx", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return d / "model.onnx"


def missing_file(d: Path) -> Path:
    return d / "model.onnx"


def directory(d: Path) -> Path:
    (d / "model.onnx").mkdir()
    return d / "model.onnx"


def ir_too_new(d: Path) -> Path:
    m = relu_model()
    m.ir_version = 99
    return save(m, d)


def ir_too_old(d: Path) -> Path:
    m = relu_model()
    m.ir_version = 2
    return save(m, d)


def opset_too_new(d: Path) -> Path:
    m = relu_model()
    m.opset_import[0].version = 999
    return save(m, d)


def opset_zero(d: Path) -> Path:
    m = relu_model()
    m.opset_import[0].version = 0
    return save(m, d)


def no_opset_import(d: Path) -> Path:
    m = relu_model()
    del m.opset_import[:]
    return save(m, d)


def no_graph(d: Path) -> Path:
    m = onnx.ModelProto(ir_version=IR)
    m.opset_import.add(domain="", version=OPSET)
    return save(m, d)


def ext_missing(d: Path) -> Path:
    return with_external(d, write_data=False)


def ext_dotdot(d: Path) -> Path:
    inner = d / "inner"
    inner.mkdir()
    (d / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    with_external(inner, location="../secret.bin", write_data=False)
    return inner / "model.onnx"


def ext_absolute(d: Path) -> Path:
    (d / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    return with_external(d, location=str((d / "secret.bin").resolve()), write_data=False)


def ext_symlink(d: Path) -> Path:
    inner = d / "inner"
    inner.mkdir()
    (d / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    os.symlink(d / "secret.bin", inner / "w.bin")
    return with_external(inner, location="w.bin", write_data=False)


def ext_symlink_dir(d: Path) -> Path:
    inner = d / "inner"
    inner.mkdir()
    outside = d / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    os.symlink(outside, inner / "sub")
    return with_external(inner, location="sub/w.bin", write_data=False)


def ext_hardlink(d: Path) -> Path:
    inner = d / "inner"
    inner.mkdir()
    (d / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    os.link(d / "secret.bin", inner / "w.bin")
    return with_external(inner, location="w.bin", write_data=False)


def ext_offset_oob(d: Path) -> Path:
    return with_external(d, offset=1 << 40, length=16)


def ext_length_oob(d: Path) -> Path:
    return with_external(d, offset=0, length=1 << 33)


def ext_negative_offset(d: Path) -> Path:
    return with_external(d, offset=-8, length=16)


def ext_length_mismatch(d: Path) -> Path:
    """Length in range but not what the declared dims need (4 floats = 16 bytes)."""
    (d / "model.onnx.data").write_bytes(b"\0" * 64)
    return with_external(d, offset=0, length=8, write_data=False)


def ext_location_is_model(d: Path) -> Path:
    """External data pointing at the model file itself."""
    return with_external(d, location="model.onnx", offset=0, length=16, write_data=False)


def huge_declared_tensor(d: Path) -> Path:
    """dims [10**12] and no data: must be refused without allocating 4 TB."""
    m = parse("g (float[1] x) => (float[1] y) { y = Add(x, W) }")
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[10**12])
    m.graph.initializer.append(t)
    return save(m, d)


def huge_constant_attr(d: Path) -> Path:
    """A Constant node whose value tensor declares 2**40 elements with 4 bytes of data."""
    m = parse("g (float[1] x) => (float[1] y) { y = Add(x, c) }")
    t = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"\0\0\0\0")
    m.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value=t))
    return save(m, d)


def negative_dim_tensor(d: Path) -> Path:
    m = parse("g (float[1] x) => (float[1] y) { y = Add(x, W) }")
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[-1])
    m.graph.initializer.append(t)
    return save(m, d)


def deep_nesting(d: Path, depth: int = 20) -> Path:
    """If-inside-If, ``depth`` levels: refused by the nesting limit."""
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["o0"])], "b0", [],
                             [helper.make_tensor_value_info("o0", TensorProto.FLOAT, [1])])
    for i in range(1, depth):
        leaf = helper.make_graph([helper.make_node("Identity", ["x"], [f"l{i}"])], f"l{i}", [],
                                 [helper.make_tensor_value_info(f"l{i}", TensorProto.FLOAT, [1])])
        # One branch nests deeper, the other is a leaf: linear size, deep structure.
        node = helper.make_node("If", ["c"], [f"o{i}"], then_branch=body, else_branch=leaf)
        body = helper.make_graph([node], f"b{i}", [], [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, [1])])
    top = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=leaf)
    g = helper.make_graph([top], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                       helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR), d)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    key, n, varint = (number << 3) | 2, len(payload), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        varint += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([key]) + varint + payload


def protobuf_bomb(d: Path, depth: int = 500) -> Path:
    """Raw bytes nesting Graph > Node > Attribute > Graph ... far past any parser limit.

    Built by hand because the protobuf library itself refuses to create it.
    """
    graph = b""
    for _ in range(depth):
        attr = _field(1, b"then_branch") + _field(6, graph)  # AttributeProto.name, .g
        node = _field(4, b"If") + _field(5, attr)  # NodeProto.op_type, .attribute
        graph = _field(1, node)  # GraphProto.node
    header = b"\x08\x08" + _field(8, b"\x10\x11")  # ir_version 8, opset_import {version: 17}
    (d / "model.onnx").write_bytes(header + _field(7, graph))
    return d / "model.onnx"


def duplicate_names(d: Path) -> Path:
    m = parse("g (float[2,4] x) => (float[2,4] y) { t = Relu(x)\n t = Sigmoid(x)\n y = Add(t, t) }")
    return save(m, d)


def duplicate_initializer(d: Path) -> Path:
    m = parse("g (float[4] x) => (float[4] y) { y = Add(x, W) }")
    m.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "W"))
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.float32), "W"))
    return save(m, d)


def cycle(d: Path) -> Path:
    m = parse("g (float[4] x) => (float[4] y) { a = Add(x, b)\n b = Relu(a)\n y = Identity(b) }")
    return save(m, d)


def invalid_graph(d: Path) -> Path:
    """Parses, but uses an undefined tensor."""
    m = parse("g (float[4] x) => (float[4] y) { y = Add(x, nowhere) }")
    return save(m, d)


# ----------------------------------------------------------------- valid but odd
def unsorted(d: Path) -> Path:
    m = parse("g (float[2,4] x) => (float[2,4] y) { a = Relu(x)\n b = Identity(a)\n y = Add(b, a) }")
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    return save(m, d)


def initializer_as_input(d: Path) -> Path:
    m = parse("g (float[4] x, float[4] W) => (float[4] y) { t = Identity(W)\n y = Add(x, t) }")
    m.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "W"))
    return save(m, d)


def output_is_input(d: Path) -> Path:
    return save(parse("g (float[4] x) => (float[4] x, float[4] y) { y = Relu(x) }"), d)


def output_is_initializer(d: Path) -> Path:
    m = parse("g (float[4] x) => (float[4] y, float[4] W) { y = Add(x, W) }")
    m.graph.initializer.append(numpy_helper.from_array(np.arange(4, dtype=np.float32), "W"))
    return save(m, d)


def zero_nodes(d: Path) -> Path:
    return save(parse("g (float[4] x) => (float[4] x) { }"), d)


def if_outer_scope(d: Path) -> Path:
    then_g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [4])])
    else_g = helper.make_graph([helper.make_node("Identity", ["w"], ["e_mid"]), helper.make_node("Mul", ["x", "e_mid"], ["e_out"])],
                               "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [4])])
    nodes = [
        helper.make_node("Identity", ["W"], ["w"]),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                          [numpy_helper.from_array(np.arange(4, dtype=np.float32), "W"),
                           numpy_helper.from_array(np.array(0, np.float32), "zero")])
    return save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR), d)


def loop_outer_scope(d: Path) -> Path:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "W"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [4])],
    )
    nodes = [helper.make_node("Loop", ["n", "t", "x"], ["y"], body=body)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                          [numpy_helper.from_array(np.array(3, np.int64), "n"), numpy_helper.from_array(np.array(True), "t"),
                           numpy_helper.from_array(np.arange(4, dtype=np.float32), "W")])
    return save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR), d)


def scan_outer_scope(d: Path) -> Path:
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "xi"], ["s_mid"]), helper.make_node("Mul", ["s_mid", "W"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y_i"])],
        "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("xi", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("y_i", TensorProto.FLOAT, [4])],
    )
    nodes = [helper.make_node("Scan", ["s0", "x"], ["s_final", "ys"], body=body, num_scan_inputs=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                          [helper.make_tensor_value_info("s_final", TensorProto.FLOAT, [4]),
                           helper.make_tensor_value_info("ys", TensorProto.FLOAT, [3, 4])],
                          [numpy_helper.from_array(np.zeros(4, np.float32), "s0"),
                           numpy_helper.from_array(np.full(4, 0.5, np.float32), "W")])
    return save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR), d)


def local_function(d: Path) -> Path:
    text = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2,4] x) => (float[2,4] y) { t = local.AddRelu(x, x)
 y = Identity(t) }
<domain: "local", opset_import: ["" : 17]>
AddRelu (a, b) => (c) { s = Add(a, b)
 i = Identity(s)
 c = Relu(i) }
"""
    return save(onnx.parser.parse_model(text), d)


def sequence_output(d: Path) -> Path:
    return save(parse("g (float[2,4] x) => (seq(float[2,4]) s, float[2,4] y) { a = Identity(x)\n s = SequenceConstruct(a, x)\n y = Relu(a) }"), d)


def optional_input(d: Path) -> Path:
    text = "g (float[4] x) => (float[4] y) { o = Optional(x)\n h = OptionalHasElement(o)\n e = OptionalGetElement(o)\n y = Relu(e) }"
    return save(parse(text, opset=18), d)


def symbolic_dims(d: Path) -> Path:
    return save(parse("g (float[N,C] x) => (float[N,C] y) { t = Identity(x)\n s = Shape(x)\n r = Reshape(t, s)\n y = Relu(r) }"), d)


def gather_indices(d: Path) -> Path:
    m = parse("g (int64[B,3] ids) => (float[B,3,4] y) { e = Gather(E, ids)\n y = Identity(e) }")
    m.graph.initializer.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32), "E"))
    return save(m, d)


def random_op(d: Path) -> Path:
    """A seeded random op on a constant shape: must never be folded into a constant."""
    text = "g (float[2,4] x) => (float[2,4] y) { r = RandomNormal<shape = [2, 4], seed = 1.0>()\n z = Mul(r, zero)\n y = Add(x, z) }"
    m = parse(text)
    m.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    return save(m, d)


def nan_inf_weights(d: Path) -> Path:
    m = parse("g (float[4] x) => (float[4] y) { w = Identity(W)\n y = Add(x, w) }")
    m.graph.initializer.append(numpy_helper.from_array(np.array([np.nan, np.inf, -np.inf, 1.0], np.float32), "W"))
    return save(m, d)


def fp16_model(d: Path) -> Path:
    m = parse("g (float16[2,4] x) => (float16[2,4] y) { w = Identity(W)\n a = Add(x, w)\n y = Relu(a) }")
    m.graph.initializer.append(numpy_helper.from_array(np.linspace(-1, 1, 4).astype(np.float16), "W"))
    return save(m, d)


def bf16_model(d: Path) -> Path:
    m = parse("g (float[4] x) => (float[4] y) { w = Identity(W)\n wf = Cast<to = 1>(w)\n y = Add(x, wf) }")
    m.graph.initializer.append(helper.make_tensor("W", TensorProto.BFLOAT16, [4], [1.0, 2.0, -0.5, 0.25]))
    return save(m, d)


def shared_weights_bn(d: Path) -> Path:
    """Two Convs share one weight; only one is followed by BatchNorm."""
    rng = np.random.default_rng(0)
    text = """g (float[1,2,5,5] x) => (float[1,2,5,5] y1, float[1,2,5,5] y2) {
 c1 = Conv<pads = [1,1,1,1]>(x, W)
 y1 = BatchNormalization(c1, s, b, m, v)
 y2 = Conv<pads = [1,1,1,1]>(x, W)
}"""
    m = parse(text)
    for name, arr in [("W", rng.standard_normal((2, 2, 3, 3))), ("s", rng.uniform(0.5, 2, 2)), ("b", rng.standard_normal(2)),
                      ("m", rng.standard_normal(2)), ("v", rng.uniform(0.5, 2, 2))]:
        m.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
    return save(m, d)


def dropout_chain(d: Path) -> Path:
    return save(parse("g (float[2,4] x) => (float[2,4] y) { a = Dropout(x)\n b = Identity(a)\n c = Identity(b)\n y = Relu(c) }"), d)


def metadata_kept(d: Path) -> Path:
    m = relu_model()
    m.doc_string = "keep me"
    m.producer_name = "tests"
    m.metadata_props.add(key="author", value="reliability")
    return save(m, d)


def custom_op(d: Path) -> Path:
    text = "g (float[2,4] x) => (float[2,4] y) { a = Identity(x)\n b = custom.Frobnicate(a)\n y = Relu(b) }"
    return save(parse(text, extra_opsets=', "custom" : 1'), d)


def external_ok(d: Path) -> Path:
    return with_external(d)


@dataclass(frozen=True)
class Case:
    """One row of the hostile-input table.

    Attributes:
        name: Row id.
        build: Builder writing the model into a folder.
        expect: ``error`` (exit 2, nothing written), ``ok`` (verified output, same
            interface), or ``unverified`` (exit 1 unless ``--allow-unverified``).
        message: Substring the one-line error must contain (case-insensitive).
        args: Extra CLI arguments.
    """

    name: str
    build: Callable[[Path], Path]
    expect: str
    message: str = ""
    args: tuple[str, ...] = field(default_factory=tuple)


CASES: list[Case] = [
    Case("empty", empty, "error", "empty"),
    Case("truncated", truncated, "error", "not a valid onnx model"),
    Case("garbage", garbage, "error", "not a valid onnx model"),
    Case("text", text_file, "error", "not a valid onnx model"),
    Case("lfs-pointer", lfs_pointer, "error", "git lfs pointer"),
    Case("pickle", pickle_file, "error", "pickle"),
    Case("pickle-proto2", pickle_proto2, "error", "pickle"),
    Case("zip-checkpoint", zip_checkpoint, "error", "zip"),
    Case("missing-file", missing_file, "error", "no such file"),
    Case("directory", directory, "error", "not a file"),
    Case("ir-too-new", ir_too_new, "error", "ir version 99"),
    Case("ir-too-old", ir_too_old, "error", "ir version 2"),
    Case("opset-too-new", opset_too_new, "error", "opset 999"),
    Case("opset-zero", opset_zero, "error", "opset 0"),
    Case("no-opset-import", no_opset_import, "error", "opset_import"),
    Case("no-graph", no_graph, "error", "no graph"),
    Case("ext-missing", ext_missing, "error", "missing"),
    Case("ext-dotdot", ext_dotdot, "error", "escapes"),
    Case("ext-absolute", ext_absolute, "error", "absolute"),
    Case("ext-symlink", ext_symlink, "error", "outside the model folder"),
    Case("ext-symlink-dir", ext_symlink_dir, "error", "outside the model folder"),
    Case("ext-hardlink", ext_hardlink, "error", "hard link"),
    Case("ext-offset-oob", ext_offset_oob, "error", "outside"),
    Case("ext-length-oob", ext_length_oob, "error", "outside"),
    Case("ext-negative-offset", ext_negative_offset, "error", "outside"),
    Case("ext-length-mismatch", ext_length_mismatch, "error", "needs 16"),
    Case("ext-location-is-model", ext_location_is_model, "error", "model file itself"),
    Case("huge-declared-tensor", huge_declared_tensor, "error", "elements"),
    Case("huge-constant-attr", huge_constant_attr, "error", "but stores 4 bytes"),
    Case("negative-dim", negative_dim_tensor, "error", "negative"),
    Case("deep-nesting", deep_nesting, "error", "nest"),
    Case("protobuf-bomb", protobuf_bomb, "error", "not a valid onnx model"),
    Case("duplicate-names", duplicate_names, "error", "'t'"),
    Case("duplicate-initializer", duplicate_initializer, "error", "'W'"),
    Case("cycle", cycle, "error", "cycle"),
    Case("invalid-graph", invalid_graph, "error", "not valid onnx"),
    Case("unknown-pass", lambda d: save(relu_model(), d), "error", "unknown pass", ("-p", "no-such-pass")),
    Case("unsorted", unsorted, "ok"),
    Case("initializer-as-input", initializer_as_input, "ok"),
    Case("output-is-input", output_is_input, "ok"),
    Case("output-is-initializer", output_is_initializer, "ok"),
    Case("zero-nodes", zero_nodes, "ok"),
    Case("if-outer-scope", if_outer_scope, "ok"),
    Case("loop-outer-scope", loop_outer_scope, "ok"),
    Case("scan-outer-scope", scan_outer_scope, "ok"),
    Case("local-function", local_function, "ok"),
    Case("sequence-output", sequence_output, "ok"),
    Case("optional", optional_input, "ok"),
    Case("symbolic-dims", symbolic_dims, "ok"),
    Case("gather-indices", gather_indices, "ok"),
    Case("random-op", random_op, "ok"),
    Case("nan-inf-weights", nan_inf_weights, "ok"),
    Case("fp16", fp16_model, "ok"),
    Case("bf16", bf16_model, "ok"),
    Case("shared-weights-bn", shared_weights_bn, "ok"),
    Case("dropout-chain", dropout_chain, "ok"),
    Case("metadata", metadata_kept, "ok"),
    Case("external-data-ok", external_ok, "ok"),
    Case("custom-op", custom_op, "unverified", "could not verify"),
    Case("custom-op-allowed", custom_op, "ok", "", ("--allow-unverified",)),
]
