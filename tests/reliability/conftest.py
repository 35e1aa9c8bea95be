"""Shared helpers for the reliability tests: running the real CLI and snapshotting folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxcomp.cli import main
from onnxcomp.pipeline.presets import CLEANUP
from onnxcomp.pipeline.registry import load_builtin_passes, registered_passes


def lossless_args() -> list[str]:
    """``--preset lossless`` when all its passes exist; otherwise the registered subset.

    The lossless passes are developed in parallel; these tests must exercise whatever the
    preset contains without failing merely because a pass module is not there yet.
    """
    load_builtin_passes()
    known = registered_passes()
    if all(n in known for n in CLEANUP):
        return ["--preset", "lossless"]
    args: list[str] = []
    for n in CLEANUP:
        if n in known:
            args += ["-p", n]
    return args


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Invoke ``onnxcomp`` in-process (click's runner), stdout and stderr kept apart."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (recursively): file bytes, or None for dirs/links."""
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


@pytest.fixture
def cli():
    return run_cli
