"""Interrupted and killed runs: SIGTERM/SIGINT in the write window leave nothing; a later run
removes what a killed one left (and only that).

The runs are real ``onnxcomp optimize`` processes. A child holds itself inside the write
window by wrapping `onnxcomp.io.files._verify_written` (called after the temporary model is
written and before it is renamed into place) with a pause that first touches a marker file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from onnxcomp.io.outputs import remove_stale_temps

from ._cases import relu_model, save
from .conftest import lossless_args, run_cli

ROOT = Path(__file__).resolve().parents[2]

#: The child: pause inside the write window, then run the real CLI.
_CHILD = """
import os, sys, time
from pathlib import Path
from onnxcomp.io import files

real = files._verify_written

def paused(*args, **kwargs):
    real(*args, **kwargs)
    Path(os.environ["ONNXCOMP_TEST_READY"]).write_text("in the write window")
    time.sleep(120)

files._verify_written = paused
from onnxcomp.cli import main
main(sys.argv[1:], prog_name="onnxcomp")
"""


def _start_in_write_window(src: Path, out: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """An optimize process paused in its write window; returns it and its temporary folder."""
    ready = tmp_path / "ready.marker"
    env = {**os.environ, "ONNXCOMP_TEST_READY": str(ready), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, "optimize", str(src), "-o", str(out), *lossless_args()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"child never reached the write window (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    ready.unlink()
    temps = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.{proc.pid}.") and p.name.endswith(".tmp")]
    assert len(temps) == 1 and (temps[0] / out.name).is_file(), "the write window holds a temporary model"
    return proc, temps[0]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("previous_output", [False, True])
def test_signal_in_write_window_leaves_nothing(sig: int, code: int, previous_output: bool, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = save(relu_model(), work)
    out = work / "out.onnx"
    if previous_output:
        out.write_bytes(b"the previous output")
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    proc, _ = _start_in_write_window(src, out, tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == "onnxcomp: interrupted; nothing written"
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before, "temporary folder or output left behind"


def test_killed_run_leftover_is_removed_by_the_next_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = save(relu_model(), work)
    out = work / "out.onnx"
    proc, leftover = _start_in_write_window(src, out, tmp_path)
    proc.kill()  # SIGKILL: no handler runs, the temporary folder stays
    proc.communicate(timeout=60)
    assert leftover.is_dir()
    res = run_cli("optimize", src, "-o", out, *lossless_args())
    assert res.exit_code == 0, res.stderr
    assert _listing(work) == ["model.onnx", "out.onnx"]
    onnx.checker.check_model(str(out), full_check=True)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_only_our_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    dead, live = _dead_pid(), os.getppid()
    stale_dir = tmp_path / f".out.onnx.{dead}.k2j3h4g5.tmp"
    stale_dir.mkdir()
    (stale_dir / "out.onnx").write_bytes(b"partial")
    (stale_dir / "out.onnx.data").write_bytes(b"partial data")
    stale_file = tmp_path / f".out.onnx.{dead}.abc_123.tmp"  # a report's temporary file
    stale_file.write_text("{}")
    kept = [
        tmp_path / f".out.onnx.{live}.x1y2z3w4.tmp",  # a live process (a concurrent run) is writing
        tmp_path / f".out.onnx.{os.getpid()}.q1w2e3r4.tmp",  # this process (another thread) is writing
        tmp_path / f".other.onnx.{dead}.k2j3h4g5.tmp",  # another output's
        tmp_path / ".out.onnx.tmp",  # not our pattern
        tmp_path / f".out.onnx.{dead}.k2j3h4g5.tmp.bak",
        tmp_path / f"out.onnx.{dead}.k2j3h4g5.tmp",
    ]
    for k in kept:
        k.mkdir()
        (k / "out.onnx").write_bytes(b"keep me")
    odd = tmp_path / f".out.onnx.{dead}.nested00.tmp"  # our name, but not what we write: a nested folder
    (odd / "sub").mkdir(parents=True)
    removed = remove_stale_temps(out)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert not stale_dir.exists() and not stale_file.exists()
    assert all((k / "out.onnx").read_bytes() == b"keep me" for k in kept) and (odd / "sub").is_dir()


def test_interrupt_after_the_model_is_written_names_it(tmp_path: Path, monkeypatch) -> None:
    from onnxcomp.pipeline.report import Report

    def interrupted(self, path):  # Ctrl-C while the report is being written
        raise KeyboardInterrupt
    monkeypatch.setattr(Report, "write_json", interrupted)
    src = save(relu_model(), tmp_path)
    out = tmp_path / "out.onnx"
    res = run_cli("optimize", src, "-o", out, "--report", tmp_path / "r.json", *lossless_args())
    assert res.exit_code == 130
    assert res.stderr.strip().splitlines()[-1] == f"onnxcomp: interrupted; only {out} was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx"]
