"""bench / compare Python API: inputs, EP selection, IO binding, placement, result keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp
from onnxcomp.checking.runtime import provider_args, providers_for, resolve_providers
from onnxcomp.errors import CalibrationDataError, InvalidModelError, UsageError
from onnxcomp.perf.feeds import make_feeds, parse_shape_specs
from onnxcomp.perf.placement import ep_warnings, node_placement, placement_from_profile
from onnxcomp.perf.timing import IoBindingRunner, PlainRunner, make_runner

# ----------------------------------------------------------------------------- inputs


def test_parse_shape_specs() -> None:
    assert parse_shape_specs(["x=1x3x224x224", "ids=2x8"]) == {"x": (1, 3, 224, 224), "ids": (2, 8)}
    assert parse_shape_specs(None) == {}
    for bad in ["x", "x=", "=1x2", "x=1xa", "x=0x2"]:
        with pytest.raises(UsageError):
            parse_shape_specs([bad])


def test_make_feeds_batch_and_shapes(make_classifier) -> None:
    m = make_classifier()
    assert make_feeds(m)["x"].shape == (1, 16)
    assert make_feeds(m, batch=4)["x"].shape == (4, 16)
    assert make_feeds(m, shapes={"x": (3, 16)})["x"].shape == (3, 16)
    with pytest.raises(UsageError, match="contradicts"):
        make_feeds(m, shapes={"x": (3, 17)})
    with pytest.raises(UsageError, match="unknown input"):
        make_feeds(m, shapes={"y": (3, 16)})
    with pytest.raises(UsageError, match="rank"):
        make_feeds(m, shapes={"x": (3,)})


def test_shared_symbolic_dim_follows_shape() -> None:
    g = onnx.parser.parse_graph("""
        g (float[B, S] a, float[B, S] b) => (float[B, S] y) { y = Add(a, b) }
    """)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    feeds = make_feeds(m, shapes={"a": (2, 7)})
    assert feeds["a"].shape == (2, 7) and feeds["b"].shape == (2, 7)


def test_make_feeds_from_data(model_a: Path, labelled_npz: Path, tmp_path: Path) -> None:
    m = onnx.load(model_a)
    feeds = make_feeds(m, batch=4, data=labelled_npz)
    assert set(feeds) == {"x"} and feeds["x"].shape == (4, 16)
    np.testing.assert_array_equal(feeds["x"], np.load(labelled_npz)["x"][:4])
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros((2, 16), np.float32))
    with pytest.raises(CalibrationDataError):
        make_feeds(m, data=bad)
    with pytest.raises(CalibrationDataError):
        make_feeds(m, data=tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- EPs


def test_unavailable_ep_lists_available() -> None:
    with pytest.raises(UsageError, match="available:.*CPUExecutionProvider"):
        resolve_providers("no-such-ep")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA present")
def test_bench_cuda_missing_is_usage_error(model_a: Path) -> None:
    with pytest.raises(UsageError, match=r"cuda.*not available.*onnxcomp\[cuda\]"):
        onnxcomp.bench([model_a], ep="cuda", rounds=1)


def test_bad_ep_device_suffix(model_a: Path) -> None:
    with pytest.raises(UsageError, match="DEVICE_ID"):
        onnxcomp.bench([model_a], ep="cpu:x", rounds=1)


class FakeBinding:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def bind_ortvalue_input(self, name: str, value: Any) -> None:
        self.log.append(("bind_input", name, value))

    def bind_output(self, name: str, device_type: str, device_id: int) -> None:
        self.log.append(("bind_output", name, device_type, device_id))

    def synchronize_inputs(self) -> None:
        self.log.append(("sync_inputs",))

    def synchronize_outputs(self) -> None:
        self.log.append(("sync_outputs",))


class FakeIO:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeCudaSession:
    """Records the IO-binding protocol the CUDA path must follow."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    def io_binding(self) -> FakeBinding:
        return FakeBinding(self.log)

    def get_inputs(self) -> list[FakeIO]:
        return [FakeIO("x")]

    def get_outputs(self) -> list[FakeIO]:
        return [FakeIO("logits"), FakeIO("aux")]

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.log.append(("run",))

    def run(self, *a: Any) -> None:  # must never be used on the device path
        raise AssertionError("plain run on a CUDA session")


def test_cuda_runner_binds_once_on_device_and_syncs_every_run() -> None:
    sess = FakeCudaSession()
    copies: list[tuple[str, int]] = []

    def to_device(arr: np.ndarray, device_type: str, device_id: int) -> str:
        copies.append((device_type, device_id))
        return f"ortvalue{arr.shape}"

    feeds = {"x": np.zeros((2, 16), np.float32), "unused": np.zeros(1)}
    runner = IoBindingRunner(sess, feeds, "cuda", 1, ortvalue_from_numpy=to_device)
    setup = list(sess.log)
    assert copies == [("cuda", 1)]  # one host→device copy, only for real inputs
    assert ("bind_input", "x", "ortvalue(2, 16)") in setup
    assert ("bind_output", "logits", "cuda", 1) in setup and ("bind_output", "aux", "cuda", 1) in setup
    assert setup[-1] == ("sync_inputs",)
    for _ in range(3):
        runner()
    assert sess.log[len(setup):] == [("run",), ("sync_outputs",)] * 3
    assert copies == [("cuda", 1)]  # no copies inside the timed calls


def test_make_runner_picks_io_binding_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda a, d, i: (d, i)))
    r = make_runner(FakeCudaSession(), {"x": np.zeros((1, 16), np.float32)}, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert isinstance(r, IoBindingRunner) and r.inputs["x"] == ("cuda", 0)
    r2 = make_runner(FakeCudaSession(), {"x": np.zeros((1, 16), np.float32)}, ["TensorrtExecutionProvider"], 2)
    assert isinstance(r2, IoBindingRunner) and r2.inputs["x"] == ("cuda", 2)


def test_io_binding_runner_really_runs_on_cpu(model_a: Path) -> None:
    sess = ort.InferenceSession(str(model_a), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    runner = IoBindingRunner(sess, {"x": x}, "cpu", 0)
    runner()
    got = runner.binding.copy_outputs_to_cpu()[0]
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-6)
    assert isinstance(make_runner(sess, {"x": x}, ["CPUExecutionProvider"]), PlainRunner)


def _qdq_model() -> onnx.ModelProto:
    return onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[1, 4] y) {
            s = Constant<value = float {0.1}>()
            z = Constant<value = uint8 {128}>()
            q = QuantizeLinear(x, s, z)
            y = DequantizeLinear(q, s, z)
        }
    """)


def test_qdq_on_cuda_warns_but_not_on_cpu_or_tensorrt(make_classifier) -> None:
    q = _qdq_model()
    w = ep_warnings(q, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert len(w) == 1 and "INT8" in w[0] and "TensorRT" in w[0]
    assert ep_warnings(q, ["CPUExecutionProvider"]) == []
    assert ep_warnings(q, ["TensorrtExecutionProvider", "CPUExecutionProvider"]) == []
    assert ep_warnings(make_classifier(), ["CUDAExecutionProvider", "CPUExecutionProvider"]) == []


def test_placement_from_profile_events() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "conv1_fence_before", "args": {}},
        {"cat": "Node", "name": "conv2_kernel_time", "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "conv2_kernel_time", "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "q_kernel_time", "args": {"op_name": "QuantizeLinear", "provider": "CPUExecutionProvider"}},
    ]
    assert placement_from_profile(events) == {
        "CPUExecutionProvider": {"QuantizeLinear": 1},
        "CUDAExecutionProvider": {"Conv": 2},
    }


def test_node_placement_from_a_real_profile(model_a: Path) -> None:
    place = node_placement(str(model_a), ["CPUExecutionProvider"], {"x": np.zeros((1, 16), np.float32)})
    assert set(place) == {"CPUExecutionProvider"}
    assert sum(place["CPUExecutionProvider"].values()) >= 2  # MatMul(+Relu fused or not) and the output MatMul
    assert not list(Path(".").glob("profile*.json"))  # the profile file is cleaned up


# ----------------------------------------------------------------------------- bench / compare


def test_bench_result_keys_and_ratio(model_a: Path, model_slow: Path) -> None:
    r = onnxcomp.bench([model_a, model_slow], rounds=6, warmup=1, threads=1)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["rounds"] == 6 and d["interleaved"] is True and d["threads"] == 1
    assert [m["path"] for m in d["models"]] == [str(model_a), str(model_slow)]
    for m in d["models"]:
        assert set(m["latency_ms"]) >= {"p50", "p90", "p99", "mean", "stdev"}
        assert len(m["samples_ms"]) == 6 and m["size_bytes"] > 0 and m["throughput_per_s"] > 0
    first, second = r.models
    assert first.ratio_to_first == 1.0
    assert second.ratio_to_first == pytest.approx(first.latency.p50 / second.latency.p50)
    assert second.input_shapes == {"x": [1, 16]}


def test_bench_batch_and_placement_flag(model_a: Path) -> None:
    r = onnxcomp.bench(model_a, rounds=2, warmup=1, batch=5, placement=True)
    m = r.models[0]
    assert m.batch == 5 and m.input_shapes == {"x": [5, 16]}
    assert m.node_placement and "CPUExecutionProvider" in m.node_placement
    assert onnxcomp.bench(model_a, rounds=2, warmup=1).models[0].node_placement is None  # CPU: off by default


def test_bench_rejects_bad_input(tmp_path: Path, model_a: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(InvalidModelError):
        onnxcomp.bench([junk], rounds=1)
    with pytest.raises(InvalidModelError):
        onnxcomp.bench([tmp_path / "missing.onnx"], rounds=1)
    with pytest.raises(UsageError):
        onnxcomp.bench([model_a], rounds=0)
    with pytest.raises(UsageError):
        onnxcomp.bench([model_a], threads=0)


def test_bench_model_that_cannot_run_is_one_line_error(tmp_path: Path, save_model) -> None:
    # Valid ONNX whose shape only fails at run time (reshape to an impossible size).
    m = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[?, ?] y) {
            s = Constant<value = int64[2] {3, 5}>()
            y = Reshape(x, s)
        }
    """)
    p = save_model(m, tmp_path / "bad_reshape.onnx")
    with pytest.raises(InvalidModelError, match="cannot run"):
        onnxcomp.bench([p], rounds=1, warmup=1)


def test_compare_fidelity_accuracy_and_speed(model_a: Path, model_noisy: Path, labelled_npz: Path) -> None:
    same = onnxcomp.compare(model_a, model_a, labelled_npz, rounds=3, warmup=1)
    assert same.overall["cosine"] == pytest.approx(1.0) and same.overall["max_abs_diff"] == 0
    f = same.outputs["logits"]
    assert f.top1_agreement == 1.0 and f.accuracy_reference == 1.0 and f.accuracy_candidate == 1.0
    assert same.samples == 32 and same.labelled

    noisy = onnxcomp.compare(model_a, model_noisy, labelled_npz, rounds=3, warmup=1)
    nf = noisy.outputs["logits"]
    assert nf.cosine < 0.95 and nf.top1_agreement is not None and nf.top1_agreement < 1.0
    assert nf.accuracy_candidate is not None and nf.accuracy_candidate < 1.0
    d = json.loads(json.dumps(noisy.to_dict(), default=str).replace("Infinity", "null"))
    assert {"reference", "candidate", "outputs", "overall", "speedup", "latency_ms", "samples"} <= set(d)
    assert set(d["latency_ms"]) == {"reference", "candidate"}
    assert noisy.speedup == pytest.approx(noisy.bench.models[0].latency.p50 / noisy.bench.models[1].latency.p50)


def test_compare_generated_inputs_without_speed(model_a: Path, model_noisy: Path) -> None:
    r = onnxcomp.compare(model_a, model_noisy, speed=False)
    assert r.bench is None and r.speedup is None
    assert r.data == "generated" and r.samples == 16 and not r.labelled  # 2 batches of 8 on a dynamic batch
    assert r.outputs["logits"].cosine < 0.95


def test_compare_renamed_outputs_match_by_position(tmp_path: Path, model_a: Path, make_classifier, save_model) -> None:
    m = make_classifier()
    m.graph.output[0].name = "scores"
    m.graph.node[-1].output[0] = "scores"
    p = save_model(m, tmp_path / "renamed.onnx")
    r = onnxcomp.compare(model_a, p, speed=False)
    assert r.outputs["logits"].cosine == pytest.approx(1.0)


def test_provider_lists_for_gpu_eps(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend onnxruntime-gpu with TensorRT is installed: selection logic only, nothing runs.
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers_for("tensorrt") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert provider_args(["CUDAExecutionProvider", "CPUExecutionProvider"], 1) == [
        ("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UsageError, match="tensorrt"):
        providers_for("tensorrt")
