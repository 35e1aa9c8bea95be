"""`onnxcomp bench` with one unusable model among several: the others are still timed.

Through the real CLI: the failed model is a row saying why, the table and ``--json`` are
still written, the exit code is 1 (2 when no model could be timed).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxcomp.cli import main


def invoke(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def unrunnable(path: Path) -> Path:
    """A valid model onnxruntime loads but cannot run on x[1, 16]: Reshape to [5, -1] (16 is not a multiple of 5)."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [5, -1])
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "bad",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, None])], [shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_one_unloadable_file_is_a_row_and_the_others_are_timed(tmp_path: Path, model_a: Path, model_slow: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello, I am not a model\n")
    out = tmp_path / "bench.json"
    code, stdout, err = invoke("bench", model_a, junk, model_slow, "--rounds", "5", "--warmup", "1", "--threads", "1",
                               "--json", out)
    assert code == 1, err
    d = json.loads(out.read_text())
    assert [m["path"] for m in d["models"]] == [str(model_a), str(junk), str(model_slow)]
    a, bad, slow = d["models"]
    assert bad["latency_ms"] is None and "junk.onnx" in bad["error"]
    assert a["error"] is None and slow["error"] is None
    assert a["ratio_to_first"] == 1.0 and slow["latency_ms"]["p50"] > 0
    assert d["failed"] == 1 and d["rounds"] == 5
    assert "failed" in stdout and "junk.onnx" in stdout  # the table still printed, with the reason
    assert "1 of 3 model(s) not timed: junk.onnx" in err
    assert "Traceback" not in err


def test_a_model_that_cannot_run_is_a_row_and_ratios_are_to_the_first_that_ran(
        tmp_path: Path, model_a: Path, model_slow: Path) -> None:
    bad = unrunnable(tmp_path / "reshape5.onnx")
    out = tmp_path / "bench.json"
    code, stdout, err = invoke("bench", bad, model_a, model_slow, "--rounds", "5", "--warmup", "1", "--threads", "1",
                               "--json", out)
    assert code == 1, err
    first, a, slow = json.loads(out.read_text())["models"]
    assert first["latency_ms"] is None and "cannot run" in first["error"]
    assert a["ratio_to_first"] == 1.0  # the first model that ran is the reference
    assert slow["ratio_to_first"] == a["latency_ms"]["p50"] / slow["latency_ms"]["p50"]
    assert "a.onnx (the first that ran)" in stdout


def test_no_model_timed_exits_2_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model\n")
    bad = unrunnable(tmp_path / "reshape5.onnx")
    code, _, err = invoke("bench", junk, bad, "--rounds", "1", "--warmup", "1")
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("onnxcomp:")]
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: no model could be timed; the first: "), err
