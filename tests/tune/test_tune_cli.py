"""``onnxcomp tune`` through the CLI: outputs, budget, resume, custom metric, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
from tune_testutil import Files, report_of, run_tune


def accuracy_of(model: Path, eval_npz: Path) -> float:
    d = np.load(eval_npz)
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": d["x"]})[0]
    return float(np.mean(logits.argmax(1) == d["label"]))


def test_outputs_pareto_presets_and_budget(files: Files, tmp_path: Path) -> None:
    out = tmp_path / "best.onnx"
    res = run_tune(files, tmp_path, "--metric", "accuracy", "--max-drop", "0.1", "-o", str(out),
                   "--report", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md"),
                   "--plot", str(tmp_path / "t.png"), trials=6)
    assert res.exit_code == 0, res.output
    rep = report_of(tmp_path / "t.json")
    assert {"pareto", "trials"} <= set(rep)
    assert len(rep["trials"]) == 6
    for p in rep["pareto"]:
        assert {"configuration", "latency_ratio", "metric"} <= set(p)
        assert p["latency_ratio"] > 0
    # The front is non-dominated: faster points have a strictly lower metric.
    front = sorted(rep["pareto"], key=lambda p: p["latency_ratio"])
    assert all(a["metric"] < b["metric"] for a, b in itertools.pairwise(front))
    # The presets are trials of the run, marked, and none dominates the front.
    presets = {t["preset"] for t in rep["trials"] if t["preset"]}
    assert {"int8", "prune", "prune-recover"} <= presets
    assert not any(p["dominates_front"] for p in rep["presets"].values())
    # Trials that built the same model, or models computing the same (other scales), share
    # one latency measurement.
    for key in ("model_sha1", "compute_sha1"):
        by_model: dict[str, set] = {}
        for t in rep["trials"]:
            by_model.setdefault(t.get(key), set()).add(t.get("latency_ratio"))
        assert all(len(ratios) == 1 for sha, ratios in by_model.items() if sha)
    # Paired facts of the accuracy: the labels are the original's own top-1 (accuracy 1), so
    # every changed top-1 is a lost sample, and the drop is noise-free only when none changed.
    n = len(np.load(files.eval)["label"])
    for t in (t for t in rep["trials"] if "error" not in t):
        assert t["top1_changed"] == round((1 - t["metric"]) * n)
        assert (t["drop_stderr"] > 0) == (t["top1_changed"] > 0)
        # The budget is judged on the upper 95 % bound of the drop (the default --confidence).
        drop = rep["metric"]["original"] - t["metric"]
        assert t["drop_bound"] == pytest.approx(drop + 1.6448536 * t["drop_stderr"])
        assert t["within_budget"] == (t["drop_bound"] <= 0.1)
    # The chosen model is the fastest within budget (the closest to the original among the
    # equally fast), written, and within budget on the eval data.
    best = rep["best"]
    feasible = [t for t in rep["trials"] if t.get("within_budget")]
    cap = min([min(t["latency_ratio"] for t in feasible) * 1.05] + [t["latency_ratio"] for t in feasible if t["preset"]])
    assert best["latency_ratio"] <= cap
    assert best["cosine"] == max(t["cosine"] for t in feasible if t["latency_ratio"] <= cap)
    assert out.is_file() and best["output"] == str(out)
    assert accuracy_of(out, files.eval) >= rep["metric"]["original"] - 0.1
    assert best["report"]["verification"]["data"].endswith("eval.npz")
    assert "| trial |" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_keeps_finished_trials_and_reruns_interrupted(files: Files, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'journal.db'}"
    first = run_tune(files, tmp_path, "--min-cosine", "0.5", "--report", str(tmp_path / "a.json"), trials=3, storage=storage)
    assert first.exit_code == 0, first.output
    a = report_of(tmp_path / "a.json")
    # Simulate a tune killed while a trial ran: a trial left RUNNING in the journal.
    study = optuna.load_study(study_name=a["study"], storage=storage)
    stale = study.ask()
    asked = {"prune": stale.suggest_categorical("prune", [False, True]),
             "quant": stale.suggest_categorical("quant", ["none", "static", "dynamic"])}
    second = run_tune(files, tmp_path, "--min-cosine", "0.5", "--report", str(tmp_path / "b.json"), trials=5, storage=storage)
    assert second.exit_code == 0, second.output
    b = report_of(tmp_path / "b.json")
    assert b["study"] == a["study"]
    assert len(b["trials"]) == 5
    # The first three trials are kept as they were (not redone) ...
    assert [t for t in b["trials"] if t["number"] < 3] == [t for t in a["trials"]]
    # ... and the interrupted one was asked again with its configuration.
    states = {t.number: t.state for t in optuna.load_study(study_name=a["study"], storage=storage).trials}
    assert states[stale.number] == optuna.trial.TrialState.FAIL
    assert any(t["number"] > stale.number and {k: t["configuration"].get(k) for k in asked} == asked for t in b["trials"])


def test_custom_metric(files: Files, tmp_path: Path) -> None:
    plugin = tmp_path / "mymetric.py"
    plugin.write_text(
        "import numpy as np\n"
        "CALLS = []\n"
        "def top1(outputs, data):\n"
        "    CALLS.append((sorted(outputs), sorted(data)))\n"
        "    return float(np.mean(outputs['logits'].argmax(1) == data['label']))\n"
    )
    res = run_tune(files, tmp_path, "--metric", f"{plugin}:top1", "--max-drop", "0.2", "--report", str(tmp_path / "r.json"),
                   "-o", str(tmp_path / "m.onnx"), trials=3)
    assert res.exit_code == 0, res.output
    rep = report_of(tmp_path / "r.json")
    assert rep["metric"]["name"].endswith(":top1") and rep["metric"]["original"] == 1.0
    for t in rep["trials"]:
        if "error" not in t:
            assert t["metric"] == pytest.approx(accuracy_of_config(t))
    assert accuracy_of(tmp_path / "m.onnx", files.eval) >= 0.8


def accuracy_of_config(trial: dict) -> float:
    """The custom metric is top-1 accuracy: within [0, 1] and consistent with within_budget."""
    assert 0.0 <= trial["metric"] <= 1.0
    assert trial["within_budget"] == (1.0 - trial["metric"] <= 0.2 + 1e-12)
    return trial["metric"]


def test_no_candidate_meets_the_budget(files: Files, tmp_path: Path) -> None:
    plugin = tmp_path / "strict.py"
    # Scores the original (the first call) 1 and every candidate 0: no candidate can be within 0.01.
    plugin.write_text("N = [0]\ndef f(outputs, data):\n    N[0] += 1\n    return 1.0 if N[0] == 1 else 0.0\n")
    out = tmp_path / "none.onnx"
    res = run_tune(files, tmp_path, "--metric", f"{plugin}:f", "--max-drop", "0.01", "-o", str(out),
                   "--report", str(tmp_path / "r.json"), trials=2)
    assert res.exit_code == 1, res.output
    assert "no candidate met the budget" in res.output and "closest: trial" in res.output
    assert not out.exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-drop", "0.01", "--eval-data", None], "needs --eval-data"),
        ([], "give a budget"),
        (["--max-drop", "0.01", "--metric", "nosuchmodule:f"], "not found"),
        (["--max-drop", "0.01", "--metric", "RAISES"], "raised ZeroDivisionError"),
        (["--max-drop", "0.01", "-o", "/nonexistent-folder/x.onnx"], "/nonexistent-folder"),
        (["--max-drop", "0.01", "--eval-data", "CALIB"], "also the calibration"),
    ],
)
def test_bad_input_is_one_line_exit_2(files: Files, tmp_path: Path, args: list, message: str) -> None:
    raising = tmp_path / "raising.py"
    raising.write_text("def f(outputs, data):\n    return 1 / 0\n")
    args = [str(raising) + ":f" if a == "RAISES" else str(files.calib) if a == "CALIB" else a for a in args]
    if None in args:  # drop the eval data: rebuild the command without it
        from click.testing import CliRunner

        from onnxcomp.cli.main import main

        res = CliRunner().invoke(main, ["tune", str(files.model), "--calibration-data", str(files.calib), "--max-drop", "0.01"])
    else:
        res = run_tune(files, tmp_path, *args, trials=1)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not list(tmp_path.glob("*.onnx"))


def test_time_budget_stops_starting_trials(files: Files, tmp_path: Path) -> None:
    out = tmp_path / "t.onnx"
    res = run_tune(files, tmp_path, "--min-cosine", "0.5", "--time-budget", "0.0001", "-o", str(out), trials=8)
    assert res.exit_code == 1, res.output
    assert "no trial finished within the time budget" in res.output and not out.exists()
