"""Data through the real command line: bad data is refused in one line with exit 2 before
any work; models with -1 batches, silero-like inputs and strings run without data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import testutil
from click.testing import CliRunner
from data_testutil import image_model, silero_feed, silero_like, string_model

from onnxcomp.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, ["-q", *args], catch_exceptions=False)


def _one_error_line(r) -> str:
    """The run failed with exit 2 and said why in exactly one line (no traceback)."""
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.fixture
def conv(save) -> Path:
    return save(testutil.conv_model(), "conv.onnx")  # x[1, 3, 8, 8]


def _calib(tmp_path: Path, name: str, x: np.ndarray) -> Path:
    p = tmp_path / name
    np.savez(p, x=x)
    return p


@pytest.mark.parametrize("case, found", [
    ("all_nan", "expected finite values, found 768 NaN of 768 values"),
    ("one_nan", "expected finite values, found 1 NaN of 768 values"),
    ("float64", "expected float32 [N, 3, 8, 8], found float64 [4, 3, 8, 8]"),
    ("shape", "expected float32 [N, 3, 8, 8], found float32 [4, 3, 16, 16]"),
])
def test_bad_calibration_data_exit_2_one_line_nothing_written(conv: Path, tmp_path: Path, case: str, found: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    bad = {
        "all_nan": np.full_like(x, np.nan),
        "one_nan": np.where(np.arange(x.size).reshape(x.shape) == 100, np.nan, x).astype(np.float32),
        "float64": x.astype(np.float64),
        "shape": rng.standard_normal((4, 3, 16, 16)).astype(np.float32),
    }[case]
    data = _calib(tmp_path, f"{case}.npz", bad)
    out = tmp_path / "out.onnx"
    line = _one_error_line(_run("optimize", str(conv), "--preset", "int8", "--calibration-data", str(data), "-o", str(out)))
    assert line == f"onnxcomp: error: calibration data: input 'x' in {data}: {found}"
    assert not out.exists()
    # compare validates its data the same way, with the same message but its role.
    line = _one_error_line(_run("compare", str(conv), str(conv), "--data", str(data)))
    assert line == f"onnxcomp: error: eval data: input 'x' in {data}: {found}"


def test_bad_train_data_is_named_as_train_data(conv: Path, tmp_path: Path) -> None:
    good = _calib(tmp_path, "good.npz", np.zeros((4, 3, 8, 8), np.float32))
    bad = _calib(tmp_path, "bad.npz", np.zeros((4, 3, 8, 8), np.float64))
    line = _one_error_line(_run("optimize", str(conv), "-p", "dce", "--calibration-data", str(good),
                                "--train-data", str(bad), "-o", str(tmp_path / "o.onnx")))
    assert line.startswith("onnxcomp: error: train data: input 'x'")


def test_minus_one_batch_runs_lossless_without_data(save, tmp_path: Path) -> None:
    model = save(image_model(320, -1), "cls.onnx")
    out = tmp_path / "cls.opt.onnx"
    r = _run("optimize", str(model), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("Identity") == 0
    r = CliRunner().invoke(main, ["bench", str(model), str(out), "--rounds", "3", "--warmup", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "[1, 3, 320, 320]" in r.output  # the size the model runs on, not -1 or 2


def test_silero_like_runs_on_generated_inputs_and_on_complete_feeds(save, tmp_path: Path) -> None:
    model = save(silero_like(), "vad.onnx")
    r = _run("optimize", str(model), "-o", str(tmp_path / "gen.onnx"))
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    for i in range(5):
        np.savez(feeds / f"{i}.npz", **silero_feed(rng))
    r = _run("optimize", str(model), "--calibration-data", str(feeds), "-o", str(tmp_path / "feeds.onnx"),
             "--report", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.output
    assert [n.op_type for n in onnx.load(str(tmp_path / "feeds.onnx")).graph.node].count("Identity") == 0
    r = _run("bench", str(model), "--rounds", "3", "--warmup", "1")
    assert r.exit_code == 0, r.output
    # A folder of complete feeds with one broken file is refused before any work.
    np.savez(feeds / "9.npz", **{**silero_feed(rng), "sr": np.full(1, 16000, np.int64)})
    line = _one_error_line(_run("optimize", str(model), "--calibration-data", str(feeds), "-o", str(tmp_path / "x.onnx")))
    assert line.endswith("input 'sr' in " + str(feeds / "9.npz") + ": expected int64 [], found int64 [1]")


def test_string_input_model_is_not_refused(save, tmp_path: Path) -> None:
    model = save(string_model(), "strings.onnx")
    r = _run("optimize", str(model), "-o", str(tmp_path / "s.onnx"))
    assert r.exit_code == 0, r.output
    assert [n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node] == ["StringNormalizer"]


def test_model_no_generated_size_runs_asks_for_data(save, tmp_path: Path) -> None:
    model = save(image_model(32 * 17), "odd.onnx")
    line = _one_error_line(_run("optimize", str(model), "-o", str(tmp_path / "o.onnx")))
    assert "generated inputs could not run the model (tried x 1x3x224x224" in line
    assert "pass --calibration-data" in line and "cannot run the input model" not in line
    x = np.random.default_rng(0).standard_normal((2, 3, 544, 544)).astype(np.float32)
    r = _run("optimize", str(model), "--calibration-data", str(_calib(tmp_path, "c.npz", x)), "-o", str(tmp_path / "o.onnx"))
    assert r.exit_code == 0, r.output
