"""The real-model benchmark's own pieces, on tiny data (no download): metrics, tokenizer, failure rows, report."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import real_data as D
import real_report
import real_tasks as T
import real_tools


def _load_real_run():
    """bench/real/run.py under its own name (bench/run.py is also a module called ``run``)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "real" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_real_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


real_run = _load_real_run()


def det(cls: int, conf: float, box: list[float]) -> tuple[int, float, np.ndarray]:
    return cls, conf, np.array(box, np.float32)


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    kept = T.nms(boxes, np.array([0.6, 0.9, 0.5]), 0.45)
    assert sorted(kept.tolist()) == [1, 2]


def test_detection_matching_needs_same_class_and_iou() -> None:
    ref = [det(0, 0.9, [0, 0, 10, 10]), det(1, 0.8, [20, 20, 30, 30])]
    cand = [det(0, 0.7, [1, 0, 10, 10]),      # same class, IoU 0.9: match
            det(2, 0.9, [20, 20, 30, 30]),    # wrong class: FP (and the ref box is a FN)
            det(0, 0.3, [100, 100, 110, 110])]  # nowhere: FP
    assert T.match_counts(ref, cand) == (1, 2, 1)
    assert T.f1(1, 2, 1) == pytest.approx(2 / 5)
    assert T.f1(0, 0, 0) == 1.0


def test_wordpiece_greedy_longest_match() -> None:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", ",", "!"])}
    tok = D.WordPiece(vocab)
    assert tok.tokenize("Unaffable, hello!") == [2, 4, 5, 6, 8, 7, 9, 3]
    assert tok.tokenize("xyz") == [2, 1, 3]
    b = tok.batch(["hello", "unaffable hello"])
    assert b["input_ids"].shape == (2, 6) and b["attention_mask"].sum(1).tolist() == [3, 6]


def test_ctc_greedy_decode_collapses_repeats_and_drops_blanks() -> None:
    task = object.__new__(T.OcrRecTask)
    task.chars = ["", "a", "b", " "]
    probs = np.eye(4)[[1, 1, 0, 1, 2, 2, 3, 2]][None]  # a a _ a b b ␣ b
    assert task.decode(probs) == ["aab b"]


def test_vad_chunks_carry_context() -> None:
    audio = np.arange(1200, dtype=np.float32)
    chunks = D.vad_chunks(audio, chunk=512, context=64)
    assert len(chunks) == 2 and chunks[0].shape == (576,)
    assert (chunks[0][:64] == 0).all() and (chunks[1][:64] == audio[448:512]).all()


def test_a_failing_or_slow_tool_is_an_error_row(tmp_path: Path) -> None:
    job = real_tools.Job(tmp_path / "in.onnx", tmp_path / "out" / "x.onnx", tmp_path, [], 0)

    def boom(_: real_tools.Job) -> real_tools.Produced:
        raise ValueError("bad model\nsecond line")

    def slow(_: real_tools.Job) -> real_tools.Produced:
        time.sleep(5)
        return real_tools.Produced()

    out, _, err = real_tools.run_tool(real_tools.RealTool("t", "t", "c", boom), job, 10)
    assert out is None and err == "ValueError: bad model"
    out, secs, err = real_tools.run_tool(real_tools.RealTool("t", "t", "c", slow), job, 1)
    assert out is None and "ToolTimeout" in err and secs < 4
    nothing = lambda _: real_tools.Produced()  # "succeeds" without writing a model
    out, _, err = real_tools.run_tool(real_tools.RealTool("t", "t", "c", nothing), job, 10)
    assert out is None and "wrote no model" in err


def test_calibration_layouts(tmp_path: Path) -> None:
    task = object.__new__(T.Task)
    task.calibration = [{"ids": np.ones((1, 3), np.int64)}, {"ids": np.ones((1, 5), np.int64)}]
    stacked = real_run.write_calibration(task, tmp_path / "a")
    with np.load(stacked) as z:
        assert z["ids"].shape == (2, 5) and z["ids"][0].tolist() == [1, 1, 1, 0, 0]  # padded to the longest
    task.calibration_layout = "feeds"
    task.calibration = [{"x": np.zeros((1, 4), np.float32), "sr": np.array(16000, np.int64)}] * 3
    folder = real_run.write_calibration(task, tmp_path / "b")
    files = sorted(folder.glob("*.npz"))
    assert len(files) == 3
    with np.load(files[0]) as z:
        assert z["sr"].shape == () and z["x"].shape == (1, 4)


def test_report_shows_failures_and_unprepared_models() -> None:
    doc = {
        "command": "python bench/real/run.py --quick", "finished_utc": "now", "wall_s": 60.0,
        "environment": {"cpu": "cpu", "logical_cpus": 2, "versions": {"onnx": "1"}},
        "load_start": [5.0], "load_end": [5.0],
        "config": {"threads": 2, "duration_s": 2.0},
        "tools": [{"key": "onnxsim", "label": "onnxsim", "category": "cleanup"}],
        "models": {
            "m1": {"description": "d", "data": "held-out: x", "run": {"command": "python bench/real/run.py --models m1",
                                                                      "finished_utc": "then", "load": [1.0]}, "rows": [
                {"key": "fp32", "label": "FP32", "status": "ok", "nodes": 10, "size_bytes": 2048, "tool_seconds": None,
                 "headline": "F1 1.000", "timing": {"speedup": 1.0}},
                {"key": "onnxsim", "label": "onnxsim", "status": "failed", "error": "RuntimeError: nope",
                 "tool_seconds": 1.0}]},
            "m2": {"description": "d2", "error": "RuntimeError: pip download failed"},
        },
    }
    md = real_report.render(doc)
    assert "| m1 | – | 10 | **failed** |" in md
    assert "m1 · onnxsim: RuntimeError: nope" in md
    assert "could not be prepared**: RuntimeError: pip download failed" in md
    assert "latency ratios are noisy" in md  # load 5 on 2 CPUs
    assert "Measured by `python bench/real/run.py --models m1` (then" in md  # kept by --merge from another run
    assert md.count("Generated") >= 1 and "python bench/real/run.py --quick" in md
