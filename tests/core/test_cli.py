"""The optimize/passes command line: outputs, reports, exit codes, never touching the input."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxcomp import __version__
from onnxcomp.cli import main


@pytest.fixture
def model_file(tmp_path: Path, relu_model: onnx.ModelProto) -> Path:
    p = tmp_path / "m.onnx"
    onnx.save(relu_model, str(p))
    return p


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version() -> None:
    r = _run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_optimize_default_output_and_report(model_file: Path, tmp_path: Path) -> None:
    before = model_file.read_bytes()
    r = _run("-q", "optimize", str(model_file), "-p", "dce", "--report", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.output
    out = tmp_path / "m.opt.onnx"
    assert out.exists() and model_file.read_bytes() == before
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passes"][0]["name"] == "dce" and report["passes"][0]["nodes_after"] == 2
    assert report["verification"]["cosine"] == pytest.approx(1.0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "no-such-pass"], "unknown pass 'no-such-pass'; known passes:"),
        (["-p", "dce:bogus=1"], "has no option 'bogus'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--calibration-data", "/nonexistent/x.npz"], "not found"),
    ],
)
def test_usage_errors_exit_2_nothing_written(model_file: Path, args: list[str], message: str) -> None:
    r = _run("optimize", str(model_file), *args)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert not model_file.with_name("m.opt.onnx").exists()


def test_output_equal_to_input_refused(model_file: Path) -> None:
    before = model_file.read_bytes()
    r = _run("optimize", str(model_file), "-p", "dce", "-o", str(model_file))
    assert r.exit_code == 2 and "refusing to write" in r.output
    assert model_file.read_bytes() == before


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
        (b"\x80\x04\x95 pickle", "pickle"),
        (b"\x08\x07garbage\xff\xff\xff", "not a valid ONNX model"),
    ],
)
def test_bad_model_files(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    r = _run("optimize", str(p))
    assert r.exit_code == 2 and message in r.output
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.onnx"]


def test_passes_lists_every_registered_pass_with_options() -> None:
    r = _run("passes", "--json")
    data = json.loads(r.output)
    from onnxcomp.pipeline.registry import registered_passes

    assert {p["name"] for p in data["passes"]} == set(registered_passes())
    assert "lossless" in data["presets"]
    for p in data["passes"]:
        assert p["summary"] and isinstance(p["options"], list)
    table = _run("passes")
    assert table.exit_code == 0 and "dce" in table.output
