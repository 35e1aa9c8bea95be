"""bench/run.py argument parsing, configuration, tool isolation and --render-only."""

from __future__ import annotations

import json
import time

import pytest
from bench_suite_fakes import doc, row

import run as bench_run
from suite_config import FULL_MODELS, QUICK_MODELS, make_config
from suite_tools import TOOLS, Tool, ToolInputs, run_tool


def test_quick_covers_cnns_transformer_and_trained_model():
    cfg = make_config(quick=True)
    assert cfg.models == QUICK_MODELS
    assert {"resnet18", "mobilenetv2", "bert", "digits"} <= set(cfg.models)
    assert cfg.setting("bert").batch == 8 and cfg.setting("bert").seq_len == 32
    assert cfg.setting("resnet18").batch == 1 and cfg.threads == 2
    assert make_config(quick=False).models == FULL_MODELS


def test_models_and_tools_options():
    args = bench_run.parse_args(["--quick", "--models", "bert,digits", "--tools", "onnxsim,onnxcomp:int8"])
    assert args.quick and args.models == ("bert", "digits") and args.tools == ("onnxsim", "onnxcomp:int8")
    with pytest.raises(SystemExit) as e:
        bench_run.parse_args(["--tools", "nope"])
    assert e.value.code == 2


def test_bad_model_or_ratio_is_a_usage_error():
    with pytest.raises(ValueError, match="unknown model"):
        make_config(quick=True, models=("alexnet",))
    with pytest.raises(ValueError, match="ratio"):
        make_config(quick=True, ratio=1.0)
    assert bench_run.main(["--models", "alexnet"]) == 2


def test_every_peer_named_in_the_issue_is_registered():
    keys = {t.key for t in TOOLS}
    assert {"ort:quantize_static", "ort:quantize_dynamic", "onnxsim", "torch-pruning"} <= keys
    assert {"onnxcomp:lossless", "onnxcomp:int8", "onnxcomp:prune", "onnxcomp:prune+int8",
            "onnxcomp:prune-recover"} <= keys
    cfg = make_config(quick=True)
    dyn = next(t for t in TOOLS if t.key == "ort:quantize_dynamic")
    assert dyn.applies(cfg.setting("bert")) and not dyn.applies(cfg.setting("resnet18"))


def _inputs(tmp_path, timeout=5.0):
    cfg = make_config(quick=True, tool_timeout_s=timeout)
    return ToolInputs("resnet18", cfg.setting("resnet18"), cfg, tmp_path / "fp32.onnx", tmp_path / "c.npz", None,
                      tmp_path / "out.onnx")


def test_a_failing_tool_becomes_an_error_line(tmp_path):
    def boom(inp):
        raise RuntimeError("boom\nmore detail")

    out, seconds, err = run_tool(Tool("x", "x", "peer", "int8", lambda s: True, boom), _inputs(tmp_path))
    assert out is None and err == "RuntimeError: boom" and seconds >= 0


def test_a_slow_tool_times_out(tmp_path):
    def slow(inp):
        time.sleep(5)

    t0 = time.perf_counter()
    out, _, err = run_tool(Tool("x", "x", "peer", "int8", lambda s: True, slow), _inputs(tmp_path, timeout=0.2))
    assert out is None and err.startswith("ToolTimeout") and time.perf_counter() - t0 < 3


def test_render_only_rebuilds_the_report(tmp_path):
    assert bench_run.main(["--render-only", "--out-dir", str(tmp_path)]) == 2  # nothing to render yet
    d = doc([row("resnet18", "fp32", "reference", "reference", label="FP32"),
             row("resnet18", "onnxsim", "peer", "cleanup", ratio=0.9, label="onnxsim")], ["resnet18"])
    (tmp_path / "results.json").write_text(json.dumps(d))
    assert bench_run.main(["--render-only", "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "### resnet18" in md and (tmp_path / "results.png").exists()
    # No onnxcomp row on this model: the peer's point is one onnxcomp does not reach.
    found = json.loads((tmp_path / "results.json").read_text())["findings"]
    assert [(f["peer"], f["verdict"]) for f in found] == [("onnxsim", "pareto")]
