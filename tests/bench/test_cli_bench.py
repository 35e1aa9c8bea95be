"""`onnxcomp bench|compare|gate` on tiny models: JSON keys and exit codes (0 / 1 / 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcomp.cli import main

FAST_GATE = ["--max-time", "3", "--warmup", "2"]


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error:"), err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- bench


def test_bench_json_contract(tmp_path: Path, model_a: Path, model_slow: Path) -> None:
    out = tmp_path / "bench.json"
    code, stdout, err = invoke("bench", model_a, model_slow, "--rounds", "5", "--warmup", "1", "--threads", "1", "--json", out)
    assert code == 0, err
    d = json.loads(out.read_text())
    assert [m["path"] for m in d["models"]] == [str(model_a), str(model_slow)]
    for m in d["models"]:
        assert set(m["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
        assert "ratio_to_first" in m
    assert d["models"][0]["ratio_to_first"] == 1.0
    assert d["ep"] == "cpu" and d["threads"] == 1 and d["rounds"] == 5
    assert "p50 ms" in stdout  # the table


def test_bench_json_to_stdout_is_pure_json(model_a: Path) -> None:
    code, stdout, err = invoke("bench", model_a, "--rounds", "2", "--warmup", "1", "--json", "-")
    assert code == 0, err
    assert json.loads(stdout)["models"][0]["path"] == str(model_a)


def test_bench_shape_option(model_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    code, _, err = invoke("bench", model_a, "--rounds", "2", "--warmup", "1", "--shape", "x=3x16", "--json", out)
    assert code == 0, err
    assert json.loads(out.read_text())["models"][0]["input_shapes"] == {"x": [3, 16]}


@pytest.mark.parametrize("case", ["missing", "not_onnx", "unknown_ep", "missing_data", "bad_shape", "bad_data"])
def test_bench_bad_input_exits_2(case: str, tmp_path: Path, model_a: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello, I am not a model\n")
    bad_npz = tmp_path / "wrong.npz"
    np.savez(bad_npz, nope=np.zeros((2, 16), np.float32))
    args = {
        "missing": [tmp_path / "nope.onnx"],
        "not_onnx": [junk],
        "unknown_ep": [model_a, "--ep", "warp-drive"],
        "missing_data": [model_a, "--data", tmp_path / "nope.npz"],
        "bad_shape": [model_a, "--shape", "x=3x17"],
        "bad_data": [model_a, "--data", bad_npz],
    }[case]
    code, stdout, err = invoke("bench", *args, "--rounds", "1", "--warmup", "1")
    assert_one_line_error(code, err)
    if case == "unknown_ep":
        assert "available:" in err and "CPUExecutionProvider" in err


# ----------------------------------------------------------------------------- compare


def test_compare_json_contract(tmp_path: Path, model_a: Path, model_noisy: Path, labelled_npz: Path) -> None:
    out = tmp_path / "cmp.json"
    code, stdout, err = invoke("compare", model_a, model_noisy, "--data", labelled_npz, "--rounds", "3", "--json", out)
    assert code == 0, err
    d = json.loads(out.read_text())
    f = d["outputs"]["logits"]
    assert set(f) >= {"cosine", "max_abs_diff", "mean_abs_diff", "snr_db", "top1_agreement",
                      "accuracy_reference", "accuracy_candidate"}
    assert f["cosine"] < 0.95 and f["accuracy_reference"] == 1.0
    assert d["speedup"] > 0 and set(d["latency_ms"]) == {"reference", "candidate"}
    assert d["samples"] == 32 and d["labelled"] is True
    assert "cosine" in stdout


def test_compare_identical_json_is_strict(tmp_path: Path, model_a: Path, model_a_copy: Path) -> None:
    out = tmp_path / "cmp.json"
    code, _, err = invoke("compare", model_a, model_a_copy, "--no-speed", "--json", out)
    assert code == 0, err
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text  # SNR of identical outputs is inf → null
    d = json.loads(text)
    assert d["outputs"]["logits"]["cosine"] == pytest.approx(1.0) and d["outputs"]["logits"]["snr_db"] is None
    assert d["speedup"] is None


def test_compare_missing_candidate_exits_2(tmp_path: Path, model_a: Path) -> None:
    code, _, err = invoke("compare", model_a, tmp_path / "nope.onnx")
    assert_one_line_error(code, err)


# ----------------------------------------------------------------------------- gate


def test_gate_identical_copy_passes(tmp_path: Path, model_a: Path, model_a_copy: Path) -> None:
    out, md = tmp_path / "gate.json", tmp_path / "summary.md"
    md.write_text("earlier step\n")
    code, stdout, err = invoke("gate", model_a, model_a_copy, "--max-slowdown", "0.10", *FAST_GATE,
                               "--json", out, "--markdown", md)
    assert code == 0, stdout + err
    d = json.loads(out.read_text())
    assert d["verdict"] == "pass" and d["exit_code"] == 0 and d["mode"] == "paired"
    assert d["threads"] == 1 and d["rounds"] >= 20
    assert d["slowdown"] <= 0.10 and len(d["ci"]) == 2
    summary = md.read_text()
    assert summary.startswith("earlier step\n")  # appended, not overwritten
    assert "PASS" in summary and "| latency slowdown" in summary
    assert "PASS" in stdout


def test_gate_slower_candidate_is_regression(tmp_path: Path, model_a: Path, model_slow: Path) -> None:
    out = tmp_path / "gate.json"
    code, stdout, err = invoke("gate", model_a, model_slow, *FAST_GATE, "--json", out)
    assert code == 1, stdout + err
    d = json.loads(out.read_text())
    assert d["verdict"] == "regression" and d["slowdown"] > 0.5
    assert any(r.startswith("latency:") for r in d["reasons"])


def test_gate_fidelity_regression_with_min_cosine(tmp_path: Path, model_a: Path, model_noisy: Path) -> None:
    out = tmp_path / "gate.json"
    # Generous slowdown budget: only fidelity can fail this one.
    code, stdout, err = invoke("gate", model_a, model_noisy, "--max-slowdown", "5", "--min-cosine", "0.99", *FAST_GATE,
                               "--json", out)
    assert code == 1, stdout + err
    d = json.loads(out.read_text())
    assert d["verdict"] == "regression" and d["latency_verdict"] == "pass"
    assert d["fidelity"]["cosine"] < 0.99 and any("cosine" in r for r in d["reasons"])
    # …and the same pair without --min-cosine passes.
    code2, _, err2 = invoke("gate", model_a, model_noisy, "--max-slowdown", "5", *FAST_GATE)
    assert code2 == 0, err2


def test_gate_min_cosine_pass_on_identical(tmp_path: Path, model_a: Path, model_a_copy: Path) -> None:
    code, stdout, err = invoke("gate", model_a, model_a_copy, "--min-cosine", "0.999", *FAST_GATE, "--json", "-")
    assert code == 0, err
    assert json.loads(stdout)["fidelity"]["cosine"] == pytest.approx(1.0)


def test_gate_record_then_compare_against_record(tmp_path: Path, model_a: Path, model_slow: Path) -> None:
    rec = tmp_path / "baseline.json"
    code, _, err = invoke("gate", "--record", rec, model_slow, "--max-time", "2", "--warmup", "1")
    assert code == 0, err
    r = json.loads(rec.read_text())
    assert r["format"].startswith("onnxcomp-gate-baseline") and len(r["log_ratios"]) >= 20 and r["threads"] == 1
    out = tmp_path / "g.json"
    # The tiny model is far cheaper (relative to the reference workload) than the recorded one.
    code, stdout, err = invoke("gate", rec, model_a, "--max-time", "2", "--warmup", "1", "--json", out)
    assert code == 0, stdout + err
    d = json.loads(out.read_text())
    assert d["mode"] == "baseline-record" and d["slowdown"] < -0.2
    assert "reference_workload" in d["latency_ms"]


def test_gate_record_detects_regression(tmp_path: Path, model_a: Path, model_slow: Path) -> None:
    rec = tmp_path / "baseline.json"
    assert invoke("gate", "--record", rec, model_a, "--max-time", "2", "--warmup", "1")[0] == 0
    code, stdout, err = invoke("gate", rec, model_slow, "--max-time", "2", "--warmup", "1")
    assert code == 1, stdout + err


@pytest.mark.parametrize("case", ["one_path", "three_paths", "record_two", "bad_threshold", "bad_record", "wrong_record",
                                  "min_cosine_with_record", "unknown_ep", "not_onnx", "bad_threads"])
def test_gate_usage_errors_exit_2(case: str, tmp_path: Path, model_a: Path, model_a_copy: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("junk")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    wrong_json = tmp_path / "wrong.json"
    wrong_json.write_text(json.dumps({"models": []}))
    args = {
        "one_path": [model_a],
        "three_paths": [model_a, model_a, model_a],
        "record_two": ["--record", tmp_path / "r.json", model_a, model_a_copy],
        "bad_threshold": [model_a, model_a_copy, "--max-slowdown", "-1"],
        "bad_record": [bad_json, model_a],
        "wrong_record": [wrong_json, model_a],
        "min_cosine_with_record": [wrong_json, model_a, "--min-cosine", "0.9"],
        "unknown_ep": [model_a, model_a_copy, "--ep", "warp-drive"],
        "not_onnx": [model_a, junk],
        "bad_threads": [model_a, model_a_copy, "--threads", "0"],
    }[case]
    code, _, err = invoke("gate", *args, *FAST_GATE)
    assert_one_line_error(code, err)


def test_commands_registered() -> None:
    code, stdout, _ = invoke("--help")
    assert code == 0
    for name in ("bench", "compare", "gate"):
        assert name in stdout
