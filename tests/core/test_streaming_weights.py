"""Weights left on disk: single-file payload references and streaming `quantize-weights`.

Large inputs keep their weights in the file (a single-file model's payload ranges, or its
external-data file) and passes read them one at a time; the results must be exactly what
the in-memory path gives. The thresholds are lowered so tiny models take that path (the
memory itself is measured in ``bench/big_model_memory.py``, not here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.io import files, payloads, safety
from onnxcomp.io.files import load_model, save_model
from onnxcomp.quantization import blockwise


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x[N,64] -> MatMul -> Relu -> MatMul -> Gemm(transB, bias) -> y; a small 'scale' stays inline."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...]) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / 8).astype(np.float32), name)

    inits = [w("W0", (64, 128)), w("W1", (128, 64)), w("W2", (32, 64)), w("b2", (32,)), w("scale", (4,))]
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h0"]), helper.make_node("Relu", ["h0"], ["a0"]),
             helper.make_node("MatMul", ["a0", "W1"], ["h1"]),
             helper.make_node("Gemm", ["h1", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture
def lazy_single_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every single-file input counts as large; tensors of 1 kB and more stay in the file."""
    monkeypatch.setattr(files, "LAZY_INLINE_BYTES", 0)
    monkeypatch.setattr(files, "LAZY_INLINE_MIN_TENSOR", 1024)


def test_payload_ranges_are_the_raw_data_bytes(tmp_path: Path) -> None:
    m = _mlp()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    ranges = payloads.inline_payload_ranges(path, 1024)
    assert set(ranges) == {"W0", "W1", "W2"}  # b2 (128 B) and scale (16 B) are below 1 kB
    blob = path.read_bytes()
    for t in m.graph.initializer:
        if t.name in ranges:
            offset, length = ranges[t.name]
            assert blob[offset:offset + length] == t.raw_data
    header = onnx.ModelProto()
    header.ParseFromString(payloads.without_payloads(path, ranges))
    for t in m.graph.initializer:
        if t.name in ranges:
            t.ClearField("raw_data")
    assert header.SerializeToString(deterministic=True) == m.SerializeToString(deterministic=True)


def test_structure_only_skips_large_payloads_and_keeps_external_references(tmp_path: Path) -> None:
    """What the output checks read of an input (its external-data files) costs its header only."""
    from onnxcomp.io.outputs import external_data_files

    m = _mlp()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    header = payloads.structure_only(path, 1024)
    kept = {t.name for t in header.graph.initializer if t.raw_data}
    assert kept == {"b2", "scale"} and [n.op_type for n in header.graph.node] == [n.op_type for n in m.graph.node]
    assert external_data_files(path) == []
    ext = _external(m, tmp_path / "ext")
    assert [p.name for p in external_data_files(ext)] == [f"{ext.name}.data"]


def test_lazy_single_file_load_references_the_file_and_writes_it_back(tmp_path: Path, lazy_single_file: None) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_mlp(), src)
    model = load_model(src, lazy_external=True)
    refs = {t.name: safety.external_source(t) for t in model.graph.initializer if safety.is_referenced(t)}
    assert set(refs) == {"W0", "W1", "W2"} and all(p == src.resolve() for p, _, _ in refs.values())
    out = save_model(model, tmp_path / "copy.onnx")
    assert not (tmp_path / "copy.onnx.data").exists()  # fits one protobuf: written as one file again
    assert onnx.load(str(out)).SerializeToString(deterministic=True) == onnx.load(str(src)).SerializeToString(deterministic=True)
    assert any(safety.is_referenced(t) for t in model.graph.initializer)  # saving did not change the model


def test_a_hard_linked_file_is_loaded_in_memory(tmp_path: Path, lazy_single_file: None) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_mlp(), src)
    (tmp_path / "alias.onnx").hardlink_to(src)
    model = load_model(src, lazy_external=True)
    assert not any(safety.is_referenced(t) for t in model.graph.initializer)


def _external(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir()
    path = folder / "m.onnx"
    save_model(model, path, external_data=True)
    assert (folder / "m.onnx.data").exists()
    return path


@pytest.mark.parametrize("form", ["single_file", "external_data"])
@pytest.mark.parametrize("spec", ["quantize-weights:min_weight_size=256", "quantize-weights:bits=8,block_size=16,min_weight_size=256"])
def test_streaming_quantize_weights_equals_the_in_memory_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                form: str, spec: str) -> None:
    model = _mlp()
    expected, _ = onnxcomp.optimize(model, passes=[spec])  # in memory: nothing on disk to stream from
    monkeypatch.setattr(files, "LAZY_INLINE_BYTES", 0)
    monkeypatch.setattr(files, "LAZY_INLINE_MIN_TENSOR", 1024)
    monkeypatch.setattr(files, "LAZY_EXTERNAL_BYTES", 0)
    if form == "single_file":
        src = tmp_path / "m.onnx"
        onnx.save(model, src)
    else:
        src = _external(model, tmp_path / "ext")
    assert any(safety.is_referenced(t) for t in load_model(src, lazy_external=True).graph.initializer)
    out = tmp_path / "q.onnx"
    _, report = onnxcomp.optimize(str(src), passes=[spec], output=str(out))
    assert report.passes[-1].stats["weights_quantized"] == 3
    written = onnx.load(str(out))
    assert written.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_chunked_rtn_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    w = np.random.default_rng(1).standard_normal((37, 96)).astype(np.float32)
    whole = blockwise.rtn(w, 4, 32, False)
    monkeypatch.setattr(blockwise, "RTN_CHUNK", 96 * 5)  # 5 rows at a time, a ragged last chunk
    chunked = blockwise.rtn(w, 4, 32, False)
    for a, b in ((whole.codes, chunked.codes), (whole.scales, chunked.scales), (whole.zero_points, chunked.zero_points)):
        np.testing.assert_array_equal(a, b)


def test_the_api_returns_a_complete_model_without_output(tmp_path: Path, lazy_single_file: None) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_mlp(), src)
    result, _ = onnxcomp.optimize(str(src))  # lossless: the weights are unchanged, read from the file
    assert not any(t.data_location == TensorProto.EXTERNAL for t in result.graph.initializer)
    expected = {t.name: numpy_helper.to_array(t) for t in _mlp().graph.initializer}
    for t in result.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), expected[t.name])


@pytest.mark.parametrize("form", ["single_file", "external_data"])
def test_sessions_read_referenced_weights_from_the_users_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    """onnxruntime reads weights still on disk where they are: no temporary copy, same outputs."""
    from onnxcomp.checking import runtime
    from onnxcomp.ir import weightless

    monkeypatch.setattr(files, "LAZY_INLINE_BYTES", 0)
    monkeypatch.setattr(files, "LAZY_INLINE_MIN_TENSOR", 1024)
    monkeypatch.setattr(files, "LAZY_EXTERNAL_BYTES", 0)
    model = _mlp()
    if form == "single_file":
        src = tmp_path / "m.onnx"
        onnx.save(model, src)
    else:
        src = _external(model, tmp_path / "ext")
    lazy = load_model(src, lazy_external=True)
    data, folder = weightless.in_place_bytes(lazy)
    assert Path(folder) == src.parent.resolve() and len(data) < 2048  # the weights are not in the bytes
    copies = []
    monkeypatch.setattr(runtime, "_session_from_file", lambda *a, **k: copies.append(a) or pytest.fail("copied"))
    x = {"x": np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)}
    got = runtime.run(runtime.make_session(lazy), x)["y"]
    want = runtime.run(runtime.make_session(model), x)["y"]
    np.testing.assert_array_equal(got, want)
    assert not copies
    # More in memory than may go inline (b2 and scale, with no allowance): not read in place.
    assert weightless.in_place_bytes(lazy, max_inline=0) is None
