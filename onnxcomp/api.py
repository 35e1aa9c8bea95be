"""The Python API mirroring the CLI: `optimize`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.checking.metrics import ChannelSplit, parse_channel_spec
from onnxcomp.checking.verify import Tolerance
from onnxcomp.errors import UsageError
from onnxcomp.io.files import check_output_path, load_model, save_model, with_payloads
from onnxcomp.ir.shapes import dims_of
from onnxcomp.pipeline.manager import ManagerOptions, PassManager
from onnxcomp.pipeline.pass_api import Pass
from onnxcomp.pipeline.plugins import load_entry_point_plugins, load_plugin
from onnxcomp.pipeline.presets import pipeline_for
from onnxcomp.pipeline.registry import load_builtin_passes
from onnxcomp.pipeline.report import Report
from onnxcomp.perf.machine import release_memory
from onnxcomp.pipeline.steps import Pipeline, build_pipeline


def default_output_path(input_path: str | os.PathLike[str]) -> Path:
    """``<stem>.opt.onnx`` beside the input."""
    p = Path(input_path)
    return p.with_name(p.stem + ".opt.onnx")


def _same_file(a: Any, b: Any) -> bool:
    """Both are paths naming the same file or folder."""
    paths = (str, os.PathLike)
    return isinstance(a, paths) and isinstance(b, paths) and Path(a).resolve() == Path(b).resolve()


def channel_splits(model: onnx.ModelProto, channels: Sequence[str] | Mapping[str, ChannelSplit]) -> dict[str, ChannelSplit]:
    """Parse and check ``--channels`` specs against the model's outputs (before any work).

    Raises:
        UsageError: An unknown output, an axis outside its rank, or group sizes that do
            not add up to a fixed channel dimension.
    """
    if isinstance(channels, Mapping):
        splits = dict(channels)
    else:
        try:
            splits = dict(parse_channel_spec(c) for c in channels)
        except ValueError as e:
            raise UsageError(str(e)) from None
    outputs = {o.name: o for o in model.graph.output}
    for name, split in splits.items():
        if name not in outputs:
            raise UsageError(f"--channels: the model has no output {name!r} (outputs: {', '.join(outputs)})")
        dims = dims_of(outputs[name])
        if split.axis is None or dims is None:
            continue
        if not -len(dims) <= split.axis < len(dims):
            raise UsageError(f"--channels: axis {split.axis} is out of range for output {name!r} of rank {len(dims)}")
        size = dims[split.axis]
        if split.sizes and isinstance(size, int) and size > 0 and sum(split.sizes) != size:
            raise UsageError(f"--channels: groups {list(split.sizes)} of output {name!r} add up to {sum(split.sizes)}, but axis {split.axis} has {size}")
    return splits


def optimize(
    model_or_path: onnx.ModelProto | str | os.PathLike[str],
    passes: Sequence[str | Pass | tuple[str, dict[str, Any]]] | Pipeline = (),
    *,
    preset: str | None = None,
    calibration_data: Any = None,
    train_data: Any = None,
    eval_data: Any = None,
    output: str | os.PathLike[str] | None = None,
    plugins: Sequence[str] = (),
    strict: bool = False,
    verify: Literal["each", "final", "none"] = "each",
    atol: float = 1e-4,
    rtol: float = 1e-4,
    allow_unverified: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    min_cosine: float | None = None,
    channels: Sequence[str] | Mapping[str, ChannelSplit] = (),
    speed_check: bool = False,
) -> tuple[onnx.ModelProto, Report]:
    """Optimize a model with a pipeline of passes; verify; optionally write the result.

    Args:
        model_or_path: A ModelProto or a path to an ``.onnx`` file (never overwritten).
        passes: Pass specs (``"prune-channels:ratio=0.5"``, ``("name", {opts})`` or Pass
            instances). Alone they form the whole pipeline; with ``preset`` they override
            that preset's options or are appended. A `Pipeline` (of pass names, specs or
            instances, nested pipelines kept) is run as it is.
        preset: Named pipeline (default ``lossless`` when ``passes`` is empty).
        calibration_data: ``.npz`` path, folder of ``.npz``, ``"random"``, a dict of arrays
            or an onnxruntime ``CalibrationDataReader``.
        train_data: Training data for ``distill`` (same formats; ``label`` array optional).
        eval_data: Data to verify the result on (same formats; no pass sees it). Without
            it, a lossy pipeline fits on part of ``calibration_data`` and is verified on
            the held-out rest; the report's ``verification.data`` names what was used.
        output: Where to write the result (atomically, after verification). None: don't write.
        plugins: Plugin modules or ``.py`` files to import first.
        strict: Fail instead of rolling back a lossless pass that changes outputs.
        verify: ``each`` pass (default), ``final`` only, or ``none``.
        atol: Absolute tolerance for lossless passes.
        rtol: Tolerance relative to each output's largest magnitude.
        allow_unverified: Accept a result that could not be checked numerically.
        seed: Seed for everything random (deterministic output).
        progress: Callback receiving progress messages.
        min_cosine: Fail (`VerificationError`, nothing written) when the worst cosine, per
            output and per channel, is below this.
        channels: Channel splits for fidelity: ``"NAME:AXIS[=N1,N2,...]"`` / ``"NAME:none"``
            strings, or a mapping of output name to `ChannelSplit`.
        speed_check: When a lossy pass changed the model, time result vs input on the CPU
            EP for about a second (`onnxcomp.perf.speed_check`): ``report.speed`` and, when
            the result is slower, a warning. Off by default here, on in the CLI.

    Returns:
        The optimized model and the report.
    """
    load_builtin_passes()
    load_entry_point_plugins()
    for plugin in plugins:
        load_plugin(plugin)
    input_path = None if isinstance(model_or_path, onnx.ModelProto) else Path(model_or_path)
    if output is not None:
        check_output_path(output, [input_path] if input_path else [])
    # lazy_external: a >2 GB input keeps its weights on disk (see model_io.load_model).
    model = load_model(input_path, lazy_external=True) if input_path is not None else model_or_path
    pipeline = build_pipeline(passes, ()) if isinstance(passes, Pipeline) else pipeline_for(preset, passes)
    if verify not in ("each", "final", "none"):
        raise UsageError(f"verify must be each, final or none (got {verify!r})")
    if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
        raise UsageError(f"min_cosine must be between -1 and 1 (got {min_cosine})")
    if min_cosine is not None and verify == "none":
        raise UsageError("--min-cosine needs verification; it cannot be combined with --verify none")
    if _same_file(eval_data, calibration_data) or _same_file(eval_data, train_data):
        raise UsageError(f"--eval-data {eval_data} is also the calibration or training data: passes are fitted on it")
    splits = channel_splits(model, channels)
    calib = CalibrationData.from_source(calibration_data, model, seed=seed) if calibration_data is not None else None
    if train_data is not None and _same_file(train_data, calibration_data):
        train = calib  # one object: the manager then holds the verification part out of training too
    else:
        train = CalibrationData.from_source(train_data, model, seed=seed, role="train") if train_data is not None else None
    evaluation = CalibrationData.from_source(eval_data, model, seed=seed, role="eval") if eval_data is not None else None
    manager = PassManager(
        pipeline,
        options=ManagerOptions(
            strict=strict, verify=verify, tolerance=Tolerance(atol, rtol), allow_unverified=allow_unverified, seed=seed,
            channels=splits, min_cosine=min_cosine,
        ),
        calibration=calib,
        train_data=train,
        eval_data=evaluation,
        progress=progress,
    )
    result, report = manager.run(model)
    release_memory()  # the run's graph and sessions, before the result is timed and written
    report.input = str(input_path) if input_path else None
    if speed_check and any(r.modified and not r.lossless for r in report.passes):
        from onnxcomp.perf.speed_check import check_speed

        if progress:
            progress("speed check: timing the result against the input")
        report.speed, slower = check_speed(model, result, data=calibration_data, seed=seed)
        if slower:
            report.warnings.append(slower)
        release_memory()
    if output is not None:
        written = save_model(result, output, protect=[input_path] if input_path else [])
        report.output = str(written)
    else:
        # A large input's weights were left in its file (io.load_model): hand the caller
        # a complete model, as for any input that fits one protobuf.
        result = with_payloads(result)
    return result, report
