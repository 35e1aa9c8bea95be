"""The tools compared on the real-model corpus: onnxcomp's presets and the peers, as a new user runs them.

* onnxcomp: ``onnxcomp.optimize(model, preset=...)`` through the public API with the preset's
  defaults. ``lossless`` gets no data (the cleanup peers need none); ``int8``, ``prune`` and
  ``prune-recover`` get the calibration data (one ``.npz``, samples on axis 0; for silero a
  folder of complete feeds, one ``.npz`` per sample).
* onnxsim: ``onnxsim.simplify`` (its own output check on).
* onnxslim: ``onnxslim.slim``.
* onnxruntime ``quantize_static``: ``quant_pre_process`` (falls back to the raw model when it
  fails, noted), QDQ, per-channel INT8 weights, MinMax on the same calibration feeds, once
  with S8S8 (the default) and once with U8S8.
* onnxruntime ``quantize_dynamic``: ``quant_pre_process`` then the defaults.

Every tool runs under a time limit; a tool that raises or times out is a row with its error.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from suite_tools import first_line, time_limit

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Job:
    """What a tool gets: the FP32 file, the calibration data (path and feeds), where to write."""

    fp32: Path
    out: Path
    calibration_path: Path
    calibration_feeds: list[Feeds]
    seed: int


@dataclass
class Produced:
    """A tool's result: notes for the report and details for the JSON."""

    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RealTool:
    """One row kind: ``key`` (JSON id, ``--tools``), ``label``, ``category``, the adapter."""

    key: str
    label: str
    category: str
    run: Callable[[Job], Produced]


def _onnxcomp(preset: str, *, data: bool) -> Callable[[Job], Produced]:
    def run(job: Job) -> Produced:
        import onnxcomp

        _, report = onnxcomp.optimize(job.fp32, preset=preset, output=job.out, seed=job.seed,
                                      calibration_data=str(job.calibration_path) if data else None)
        rolled = [p.name for p in report.passes if p.rolled_back]
        notes = ([f"rolled back: {', '.join(sorted(set(rolled)))}"] if rolled else []) + list(report.warnings)[:3]
        seconds: dict[str, float] = {}
        for p in report.passes:
            seconds[p.name] = round(seconds.get(p.name, 0.0) + float(p.seconds), 3)
        return Produced(notes, {"passes": [p.name for p in report.passes], "seconds_by_pass": seconds,
                                "verification": report.verification, "warnings": list(report.warnings)})

    return run


def _onnxsim(job: Job) -> Produced:
    import onnx
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(job.fp32)))
    if not ok:
        raise RuntimeError("onnxsim's own check failed (outputs differ from the input model)")
    onnx.save(model, str(job.out))
    return Produced()


def _onnxslim(job: Job) -> Produced:
    import onnx
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(str(job.fp32))), str(job.out))
    return Produced()


class _Reader:
    """An onnxruntime ``CalibrationDataReader`` over the calibration feeds (the same samples onnxcomp gets)."""

    def __init__(self, feeds: list[Feeds]) -> None:
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def _preprocessed(job: Job, notes: list[str]) -> Path:
    from onnxruntime.quantization import quant_pre_process

    pre = job.out.with_name(job.out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(job.fp32), str(pre))
        return pre
    except Exception as e:  # the peer's own step failing is a fact worth reporting
        notes.append(f"quant_pre_process failed ({first_line(e)}); quantized the raw model")
        return job.fp32


def _ort_static(activations: str) -> Callable[[Job], Produced]:
    def run(job: Job) -> Produced:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        reader = type("Reader", (_Reader, CalibrationDataReader), {})(job.calibration_feeds)
        notes: list[str] = []
        src = _preprocessed(job, notes)
        quantize_static(str(src), str(job.out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8)
        return Produced(notes, {"format": "QDQ", "per_channel": True,
                                "types": "U8S8" if activations == "uint8" else "S8S8 (default)"})

    return run


def _ort_dynamic(job: Job) -> Produced:
    from onnxruntime.quantization import quantize_dynamic

    notes: list[str] = []
    quantize_dynamic(str(_preprocessed(job, notes)), str(job.out))
    return Produced(notes, {"weight_type": "QInt8 (default)"})


TOOLS: tuple[RealTool, ...] = (
    RealTool("onnxcomp:lossless", "onnxcomp lossless", "cleanup", _onnxcomp("lossless", data=False)),
    RealTool("onnxsim", "onnxsim", "cleanup", _onnxsim),
    RealTool("onnxslim", "onnxslim", "cleanup", _onnxslim),
    RealTool("onnxcomp:int8", "onnxcomp int8", "int8", _onnxcomp("int8", data=True)),
    RealTool("ort:quantize_static", "ORT quantize_static S8S8", "int8", _ort_static("int8")),
    RealTool("ort:quantize_static_u8", "ORT quantize_static U8S8", "int8", _ort_static("uint8")),
    RealTool("ort:quantize_dynamic", "ORT quantize_dynamic", "int8", _ort_dynamic),
    RealTool("onnxcomp:prune", "onnxcomp prune", "prune", _onnxcomp("prune", data=True)),
    RealTool("onnxcomp:prune-recover", "onnxcomp prune-recover", "prune", _onnxcomp("prune-recover", data=True)),
)


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Run in ``path``: onnxruntime's quantization tools drop temporary files in the current directory."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_tool(tool: RealTool, job: Job, timeout_s: float) -> tuple[Produced | None, float, str | None]:
    """Run ``tool`` under ``timeout_s`` in the output's folder; never raises for the tool's own failure.

    Paths in ``job`` must be absolute (the tool runs in another directory).

    Returns:
        ``(result or None, wall seconds, error line or None)``.
    """
    job.out.parent.mkdir(parents=True, exist_ok=True)
    job.out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        with time_limit(timeout_s), _working_dir(job.out.parent):
            produced = tool.run(job)
        if not job.out.exists():
            raise RuntimeError(f"reported success but wrote no model at {job.out}")
        return produced, time.perf_counter() - t0, None
    except Exception as e:  # a failed tool is a row, never a crashed run (ToolTimeout included)
        return None, time.perf_counter() - t0, first_line(e)
