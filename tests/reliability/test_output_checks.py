"""Every output path is checked before any work; a run that fails writes nothing it does not name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from onnxcomp.pipeline.manager import PassManager

from ._cases import relu_model, save
from .conftest import lossless_args, run_cli, snapshot


def _cannot_create_in(folder: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A folder in which no file can be created: a chmod 555 folder, or (as root, who ignores
    permissions) a kernel file system that refuses new files."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for candidate in (ro, Path("/sys"), Path("/proc")):
            if candidate.is_dir() and _cannot_create_in(candidate):
                yield candidate
                return
        pytest.skip("no folder refuses new files here")
    finally:
        ro.chmod(0o755)


@pytest.fixture
def no_pipeline(monkeypatch):
    """Fail the test if the pipeline starts: the check must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline ran before the output was checked")
    monkeypatch.setattr(PassManager, "run", refuse)


def _one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: "), stderr
    return lines[0]


@pytest.mark.usefixtures("no_pipeline")
def test_report_into_missing_folder_fails_before_work_and_writes_no_model(tmp_path: Path) -> None:
    src = save(relu_model(), tmp_path)
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", tmp_path / "out.onnx", "--report", tmp_path / "nope" / "r.json", *lossless_args())
    assert res.exit_code == 2
    line = _one_line_error(res.stderr)
    assert "--report" in line and "does not exist" in line and str(tmp_path / "nope") in line
    assert snapshot(tmp_path) == before


@pytest.mark.usefixtures("no_pipeline")
@pytest.mark.parametrize("which", ["report", "model"])
def test_read_only_output_folder_fails_before_work(which: str, readonly_dir: Path, tmp_path: Path) -> None:
    src = save(relu_model(), tmp_path)
    out = readonly_dir / "out.onnx" if which == "model" else tmp_path / "out.onnx"
    report = tmp_path / "r.json" if which == "model" else readonly_dir / "r.json"
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", out, "--report", report, *lossless_args())
    assert res.exit_code == 2
    assert "cannot write" in _one_line_error(res.stderr)
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.mark.usefixtures("no_pipeline")
@pytest.mark.parametrize("report_name", ["model.onnx", "out.onnx"])
def test_report_over_the_input_or_the_output_is_refused(report_name: str, tmp_path: Path) -> None:
    src = save(relu_model(), tmp_path)
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", tmp_path / "out.onnx", "--report", tmp_path / report_name, *lossless_args())
    assert res.exit_code == 2
    line = _one_line_error(res.stderr)
    assert "refusing to write" in line or "same file" in line
    assert snapshot(tmp_path) == before


def test_report_write_failure_names_the_written_model(tmp_path: Path, monkeypatch) -> None:
    """A report that fails after the model was written (disk full) says where the model is."""
    from onnxcomp.io import outputs

    src = save(relu_model(), tmp_path)
    real_mkstemp = outputs.tempfile.mkstemp
    calls = {"n": 0}

    def mkstemp_failing_for_report(*args, **kwargs):
        # The first call is the up-front probe of the report folder; the report write fails.
        if str(kwargs.get("prefix", "")).startswith(".r.json."):
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(28, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", mkstemp_failing_for_report)
    res = run_cli("optimize", src, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json", *lossless_args())
    assert res.exit_code == 2
    line = _one_line_error(res.stderr)
    assert "No space left" in line and f"the model was written: {tmp_path / 'out.onnx'}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx"]


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "{model}", "--json", "{missing}/b.json"],
        ["compare", "{model}", "{model}", "--json", "{missing}/c.json"],
        ["gate", "{model}", "{model}", "--markdown", "{missing}/summary.md"],
        ["gate", "--record", "{missing}/base.json", "{model}"],
        ["inspect", "{model}", "--json", "{missing}/g.json"],
    ],
    ids=["bench-json", "compare-json", "gate-markdown", "gate-record", "inspect-json"],
)
def test_other_commands_check_their_outputs_first(args: list[str], tmp_path: Path, monkeypatch) -> None:
    import importlib

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the output was checked")
    for mod in ("onnxcomp.perf.benchmark", "onnxcomp.perf.comparison", "onnxcomp.perf.gate", "onnxcomp.perf.gate_record",
                "onnxcomp.perf.prepare", "onnxcomp.cli.inspect"):
        module = importlib.import_module(mod)
        for name in ("prepare_models", "load_model", "open_session", "group_rows"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    src = save(relu_model(), tmp_path)
    before = snapshot(tmp_path)
    res = run_cli(*(a.format(model=src, missing=tmp_path / "nope") for a in args))
    assert res.exit_code == 2
    assert "does not exist" in _one_line_error(res.stderr)
    assert snapshot(tmp_path) == before
