"""Honest verification through the real CLI: per-channel fidelity, the floor and
``--min-cosine``, the data verification ran on (held out, ``--eval-data``, generated),
NaN never passes, and the report's wording and layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from rich.console import Console

from onnxcomp.cli import main
from onnxcomp.pipeline.report import PassRecord, Report

PLUGIN = str(Path(__file__).with_name("verify_plugin.py"))


def _save(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray], path: Path) -> Path:
    for i, node in enumerate(nodes):
        node.name = node.name or f"{node.op_type.lower()}{i}"
    g = h.make_graph(nodes, "g", inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return path


@pytest.fixture
def detector(tmp_path: Path) -> Path:
    """A head whose one output concatenates 4 'box' channels (~100) and 4 probabilities (0..1)."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
        "wb": rng.standard_normal((4, 16, 1, 1)).astype(np.float32) * 30,
        "wp": rng.standard_normal((4, 16, 1, 1)).astype(np.float32) * 0.5,
        "bp": np.full(4, -2.0, np.float32),
    }
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["f0"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["f0"], ["f"]),
        h.make_node("Conv", ["f", "wb"], ["box"]),
        h.make_node("Conv", ["f", "wp", "bp"], ["logit"]),
        h.make_node("Sigmoid", ["logit"], ["prob"]),
        h.make_node("Concat", ["box", "prob"], ["out"], axis=1),
    ]
    return _save(nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, 8, 8, 8])],
                 [h.make_tensor_value_info("out", T.FLOAT, [1, 8, 8, 8])], inits, tmp_path / "det.onnx")


@pytest.fixture
def det_calib(tmp_path: Path) -> Path:
    p = tmp_path / "calib.npz"
    np.savez(p, x=np.random.default_rng(1).standard_normal((32, 8, 8, 8)).astype(np.float32))
    return p


@pytest.fixture
def convnet(tmp_path: Path) -> Path:
    """x[N,4,8,8] -> Conv -> Relu -> Conv -> Relu -> Conv 1x1 -> y[N,8,8,8] (prunable)."""
    rng = np.random.default_rng(0)
    shapes = {"1": (16, 4, 3, 3), "2": (16, 16, 3, 3), "3": (8, 16, 1, 1)}
    inits: dict[str, np.ndarray] = {}
    for k, s in shapes.items():
        inits["w" + k] = (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)
        inits["b" + k] = (rng.standard_normal(s[0]) * 0.1).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c2"], ["r2"]),
        h.make_node("Conv", ["r2", "w3", "b3"], ["y"]),
    ]
    return _save(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 4, 8, 8])],
                 [h.make_tensor_value_info("y", T.FLOAT, ["N", 8, 8, 8])], inits, tmp_path / "convnet.onnx")


def _npz(path: Path, n: int, seed: int, shape: tuple[int, ...] = (4, 8, 8)) -> Path:
    np.savez(path, x=np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32))
    return path


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_broken_small_range_part_of_a_concat_is_reported(detector: Path, det_calib: Path, tmp_path: Path) -> None:
    """One uint8 scale for boxes (~100) and probabilities (0..1) destroys the probabilities:
    the whole-output cosine hides it, the per-channel cosine does not."""
    out, report = tmp_path / "det.int8.onnx", tmp_path / "r.json"
    # concat_range_ratio=1e9 forces the shared scale quantize-int8 now avoids by itself.
    r = _run("optimize", detector, "-o", out, "-p", "quantize-int8:target_cosine=none,concat_range_ratio=1e9",
             "--calibration-data", det_calib, "--report", report)
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    v = rep["verification"]
    assert v["output_cosine"] > 0.99  # what used to be reported
    assert v["cosine"] < 0.9 and rep["degraded"] is True and v["degraded"] is True
    assert v["worst"]["output"] == "out" and v["worst"]["axis"] == 1 and int(v["worst"]["channel"]) >= 4
    assert f"out channel {v['worst']['channel']} (axis 1)" in r.output and "degraded" in r.output
    assert any("below 0.9" in w and "out channel" in w for w in rep["warnings"])
    # A named split: the four probabilities as one group.
    r = _run("optimize", detector, "-o", out, "-p", "quantize-int8:target_cosine=none,concat_range_ratio=1e9", "--calibration-data", det_calib,
             "--channels", "out:1=4,4", "--report", report)
    v = json.loads(report.read_text())["verification"]
    assert v["worst"]["channel"] == "4-7" and "out channels 4-7 (axis 1)" in r.output


def test_int8_keeps_the_small_range_part_within_target(detector: Path, det_calib: Path, tmp_path: Path) -> None:
    """quantize-int8 keeps the probabilities within target: the Concat of ranges ~100x apart
    stays float (its inputs keep their own scales), and whatever is left to the fallback is
    scored with the same per-channel worst cosine; the held-out worst channel meets 0.99."""
    report = tmp_path / "r.json"
    r = _run("optimize", detector, "-o", tmp_path / "det.int8.onnx", "--preset", "int8", "--calibration-data", det_calib,
             "--report", report)
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    stats = next(p["stats"] for p in rep["passes"] if p["name"] == "quantize-int8")
    assert stats["concats_float"] == 1 and stats.get("target_met", True) is True
    assert rep["verification"]["cosine"] > 0.99 and rep["degraded"] is False
    assert rep["verification"]["data"] == "8 held-out samples of calib.npz"


def test_min_cosine_fails_with_nothing_written(detector: Path, det_calib: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "det.int8.onnx", tmp_path / "r.json"
    r = _run("optimize", detector, "-o", out, "-p", "quantize-int8:target_cosine=none,concat_range_ratio=1e9", "--calibration-data", det_calib,
             "--min-cosine", "0.9", "--report", report)
    assert r.exit_code == 1
    assert "--min-cosine 0.9" in r.output and "out channel" in r.output and "held-out samples of calib.npz" in r.output
    assert not out.exists() and not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "det.onnx"]


def test_min_cosine_needs_verification(detector: Path, tmp_path: Path) -> None:
    r = _run("optimize", detector, "-o", tmp_path / "o.onnx", "--verify", "none", "--allow-unverified", "--min-cosine", "0.5")
    assert r.exit_code == 2 and "--min-cosine" in r.output and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("spec", ["nope:1", "out:7", "out:1=4,5", "out"])
def test_bad_channel_specs_exit_2(detector: Path, tmp_path: Path, spec: str) -> None:
    r = _run("optimize", detector, "-o", tmp_path / "o.onnx", "--channels", spec)
    assert r.exit_code == 2 and "--channels" in r.output and not (tmp_path / "o.onnx").exists()


def test_report_names_the_verification_data(convnet: Path, tmp_path: Path) -> None:
    calib = _npz(tmp_path / "calib.npz", 32, 1)
    report = tmp_path / "r.json"
    # Lossless: nothing is fitted, calibration batches verify it.
    r = _run("optimize", convnet, "-o", tmp_path / "a.onnx", "--calibration-data", calib, "--report", report)
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())["verification"]["data"]
    assert data == "16 samples of calib.npz" and f"verified on {data}" in r.output
    # No data: generated inputs.
    r = _run("optimize", convnet, "-o", tmp_path / "b.onnx", "-p", "test-note-fit-data", "--plugin", PLUGIN, "--report", report)
    assert r.exit_code == 0, r.output
    assert json.loads(report.read_text())["verification"]["data"] == "generated inputs" and "verified on generated inputs" in r.output


def test_lossy_pipeline_fits_on_one_part_and_verifies_on_the_other(convnet: Path, tmp_path: Path) -> None:
    calib = _npz(tmp_path / "calib.npz", 32, 1)
    report = tmp_path / "r.json"
    r = _run("optimize", convnet, "-o", tmp_path / "a.onnx", "-p", "test-note-fit-data", "--plugin", PLUGIN,
             "--calibration-data", calib, "--report", report)
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["passes"][0]["stats"]["fit_data"] == "24 fit samples of calib.npz"
    assert rep["verification"]["data"] == "8 held-out samples of calib.npz"
    assert "verified on 8 held-out samples of calib.npz" in r.output
    # Too few samples to hold any out: verified on the fitting data, and it says so.
    few = _npz(tmp_path / "few.npz", 3, 2)
    r = _run("optimize", convnet, "-o", tmp_path / "b.onnx", "-p", "test-note-fit-data", "--plugin", PLUGIN,
             "--calibration-data", few, "--report", report)
    rep = json.loads(report.read_text())
    assert rep["passes"][0]["stats"]["fit_data"] == "3 samples of few.npz"
    assert "fitted on" in rep["verification"]["data"] and any("--eval-data" in w for w in rep["warnings"])


def test_eval_data(convnet: Path, tmp_path: Path) -> None:
    calib, evald = _npz(tmp_path / "calib.npz", 32, 1), _npz(tmp_path / "eval.npz", 16, 2)
    report = tmp_path / "r.json"
    r = _run("optimize", convnet, "-o", tmp_path / "a.onnx", "-p", "test-note-fit-data", "--plugin", PLUGIN,
             "--calibration-data", calib, "--eval-data", evald, "--report", report)
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["passes"][0]["stats"]["fit_data"] == "32 samples of calib.npz"  # all of it: eval data verifies
    assert rep["verification"]["data"] == "16 samples of eval.npz" and "verified on 16 samples of eval.npz" in r.output
    # Eval data is validated like any data (role "eval"), and may not be the fitting data.
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 8, 8), np.float32))
    r = _run("optimize", convnet, "-o", tmp_path / "b.onnx", "--eval-data", bad)
    assert r.exit_code == 2 and "eval" in r.output and not (tmp_path / "b.onnx").exists()
    r = _run("optimize", convnet, "-o", tmp_path / "b.onnx", "--calibration-data", calib, "--eval-data", calib)
    assert r.exit_code == 2 and "fitted on it" in r.output


@pytest.mark.parametrize("verify", ["each", "final"])
def test_nan_producing_candidate_never_passes(convnet: Path, tmp_path: Path, verify: str) -> None:
    out = tmp_path / "a.onnx"
    r = _run("optimize", convnet, "-o", out, "-p", "test-sqrt-output", "--plugin", PLUGIN, "--verify", verify,
             "--calibration-data", _npz(tmp_path / "calib.npz", 32, 1))
    assert r.exit_code == 1, r.output
    assert "NaN/Inf" in r.output and "'y'" in r.output and not out.exists()


def test_prune_recover_reported_fidelity_matches_an_independent_held_out_measurement(convnet: Path, tmp_path: Path) -> None:
    calib = _npz(tmp_path / "calib.npz", 64, 1)
    out, report = tmp_path / "pr.onnx", tmp_path / "r.json"
    r = _run("optimize", convnet, "-o", out, "--preset", "prune-recover", "-p", "prune-channels:ratio=0.2",
             "--calibration-data", calib, "--report", report)
    assert r.exit_code == 0, r.output
    v = json.loads(report.read_text())["verification"]
    assert v["data"] == "16 held-out samples of calib.npz"
    # Independent: 256 samples no pass has seen, both models run in onnxruntime directly.
    x = np.random.default_rng(99).standard_normal((256, 4, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(convnet), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert v["output_cosine"] < 0.999  # lossy enough for the comparison to mean something
    assert abs(v["output_cosine"] - _cos(ref, got)) < 0.01
    assert abs(v["cosine"] - min(_cos(ref[:, i], got[:, i]) for i in range(8))) < 0.01  # the headline: worst channel


def test_no_change_in_words(tmp_path: Path) -> None:
    clean = _save([h.make_node("Relu", ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])], {}, tmp_path / "clean.onnx")
    r = _run("optimize", clean, "-o", tmp_path / "o.onnx")
    assert r.exit_code == 0, r.output
    assert "no change: the model is already clean" in r.output and "onnxcomp passes" not in r.output
    assert "verified on generated inputs: identical to the input" in r.output


def test_report_fits_80_columns() -> None:
    rep = Report()
    for name, lossless in (("eliminate-identity", True), ("fold-constants", True), ("prune-channels", False),
                           ("reconstruct", False), ("quantize-int8", False)):
        rep.passes.append(PassRecord(name=name, seconds=12.345, modified=True, nodes_before=123456, nodes_after=120000,
                                     params_before=25_557_032, params_after=11_689_512, bytes_before=102_400_000,
                                     bytes_after=46_000_000, lossless=lossless, note="a fairly long note about what happened",
                                     fidelity=None if lossless else {"cosine": 0.98765}))
    rep.passes.append(PassRecord(name="cse", seconds=0.1, modified=False, nodes_before=1, nodes_after=1, params_before=1,
                                 params_after=1, bytes_before=1, bytes_after=1, rolled_back=True, note="changed output 'y'"))
    rep.verification = {"verified": True, "data": "8 held-out samples of calib.npz", "cosine": 0.9876, "max_abs_diff": 0.1,
                        "worst": {"where": "output0 channel 7 (axis 1)"}}
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    rep.render(console)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for r in rep.passes:
        assert any(line.lstrip().startswith(r.name + " ") for line in text.splitlines()), r.name
    assert "rolled back" in text and "verified on 8 held-out samples of calib.npz" in text


def test_compare_judges_channels_too(detector: Path, det_calib: Path, tmp_path: Path) -> None:
    broken = tmp_path / "det.int8.onnx"
    assert _run("optimize", detector, "-o", broken, "-p", "quantize-int8:target_cosine=none,concat_range_ratio=1e9",
                "--calibration-data", det_calib).exit_code == 0
    out = tmp_path / "c.json"
    r = _run("compare", detector, broken, "--no-speed", "--channels", "out:1=4,4", "--json", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["outputs"]["out"]["output_cosine"] > 0.99 and doc["overall"]["cosine"] < 0.9
    assert doc["overall"]["worst"]["where"] == "out channels 4-7 (axis 1)" and "worst: out channels 4-7" in r.output
    r = _run("compare", detector, broken, "--no-speed", "--channels", "nope:1")
    assert r.exit_code == 2 and "--channels" in r.output



def test_training_on_the_calibration_file_leaves_the_held_out_part_alone(convnet: Path, tmp_path: Path) -> None:
    """The same file as --train-data and --calibration-data: training gets the fit part only."""
    calib = _npz(tmp_path / "calib.npz", 32, 1)
    report = tmp_path / "r.json"
    r = _run("optimize", convnet, "-o", tmp_path / "a.onnx", "-p", "test-note-fit-data", "--plugin", PLUGIN,
             "--calibration-data", calib, "--train-data", calib, "--report", report)
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["passes"][0]["stats"]["train_data"] == "24 fit samples of calib.npz"
    assert rep["verification"]["data"] == "8 held-out samples of calib.npz"


def _embedder(path: Path) -> Path:
    """x[N,16] -> MatMul -> LpNormalization: an L2-normalised embedding [N,32]."""
    w = np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "w"], ["e"]), h.make_node("LpNormalization", ["e"], ["embedding"], axis=-1, p=2)]
    return _save(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 16])],
                 [h.make_tensor_value_info("embedding", T.FLOAT, ["N", 32])], {"w": w}, path)


def test_fidelity_lines_show_top1_only_where_it_applies(tmp_path: Path) -> None:
    """Issue 17 item 10 through the CLI: a sentence-embedding-like output gets a cosine, never
    a top-1 agreement (neither on the console nor in the report)."""
    model = _embedder(tmp_path / "emb.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(4).standard_normal((32, 16)).astype(np.float32))
    report = tmp_path / "r.json"
    r = _run("optimize", model, "-o", tmp_path / "emb.int8.onnx", "-p", "quantize-int8:target_cosine=none",
             "--calibration-data", calib, "--report", report, "--no-speed-check")
    assert r.exit_code == 0, r.output
    v = json.loads(report.read_text())["verification"]
    assert "cosine" in v and "top1_agreement" not in v
    assert "cosine" in r.output and "top-1" not in r.output


def test_plain_pruning_that_breaks_the_model_warns_and_is_marked_degraded(convnet: Path, tmp_path: Path) -> None:
    """Issue 17 item 11 through the CLI: `-p prune-channels` alone, pruning nearly everything,
    exits 0 (no --min-cosine) but warns with the output and channel, and the report says
    degraded."""
    calib, report = _npz(tmp_path / "c.npz", 32, 1), tmp_path / "r.json"
    r = _run("optimize", convnet, "-o", tmp_path / "p.onnx", "-p", "prune-channels:ratio=0.9",
             "--calibration-data", calib, "--report", report, "--no-speed-check")
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["verification"]["cosine"] < 0.9  # the precondition: this pruning breaks the model
    assert rep["degraded"] is True
    assert "degraded" in r.output and "below 0.9" in r.output and "y" in rep["verification"]["worst"]["output"]
