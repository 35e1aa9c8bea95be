"""Inputs for timing: ``--shape`` specs, one feed dict per model, shapes for reports."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxcomp.checking.calibration import CalibrationData, required_input_specs
from onnxcomp.checking.data_validate import is_fixed
from onnxcomp.checking.generated import runnable_inputs
from onnxcomp.errors import CalibrationDataError, UsageError

log = logging.getLogger("onnxcomp")

#: One input dict for a session: ``{input name: array}``.
Feeds = dict[str, np.ndarray]


def parse_shape_specs(specs: Sequence[str] | Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` strings (or pass a mapping through).

    Raises:
        UsageError: A spec is not ``NAME=DxDx...`` with positive integer dims.
    """
    if not specs:
        return {}
    if isinstance(specs, Mapping):
        return {k: tuple(int(d) for d in v) for k, v in specs.items()}
    out: dict[str, tuple[int, ...]] = {}
    for s in specs:
        name, sep, dims = s.rpartition("=")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims.strip()):
            raise UsageError(f"bad --shape {s!r}: expected NAME=DIMxDIMx... such as input=1x3x224x224")
        shape = tuple(int(d) for d in dims.strip().split("x"))
        if any(d <= 0 for d in shape):
            raise UsageError(f"bad --shape {s!r}: dims must be positive")
        out[name] = shape
    return out


def make_feeds(
    model: onnx.ModelProto,
    *,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Feeds:
    """One feed dict for timing: the first batch of ``data``, else generated inputs.

    Generated inputs get ``shapes[name]`` where given (checked against fixed dims). A
    symbolic dim named in a ``--shape`` input takes that size in every input that shares
    it (a sequence length ``seq`` in both ``input_ids`` and ``attention_mask``); free
    batch dims (each input's first free dim) become ``batch`` (default 1); other free
    dims (symbolic, unnamed or -1) take sizes the model runs on
    (`onnxcomp.checking.generated.runnable_plan`), and a scalar compared with a constant
    (a sample rate) takes that constant.

    Raises:
        UsageError: ``shapes`` names an unknown input or contradicts a fixed dim.
        CalibrationDataError: ``data`` is missing, unreadable or does not fit the model,
            or generated inputs cannot run it.
    """
    specs = required_input_specs(model)
    if data is not None:
        calib = CalibrationData.from_source(data, model, batch_size=batch, role="benchmark")
        first = calib.first_batches(1)
        if not first:
            raise CalibrationDataError(f"{data} has no complete batch for this model (batch size {calib.batch_size})")
        return first[0]
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise UsageError(f"--shape names unknown input(s) {unknown}; model inputs: {[s.name for s in specs]}")
    for s in specs:
        if s.name not in shapes:
            continue
        want = shapes[s.name]
        if s.shape is not None and len(s.shape) != len(want):
            raise UsageError(f"--shape {s.name}: rank {len(want)} but the model input has rank {len(s.shape)} {list(s.shape)}")
        if any(is_fixed(d) and d != w for d, w in zip(s.shape or (), want)):
            raise UsageError(f"--shape {s.name}={'x'.join(map(str, want))} contradicts the fixed shape {list(s.shape or ())}")
    # Sizes the model runs on: --shape and --batch where given, else sizes it declares or
    # implies (one onnxruntime session tries a few; see checking.generated).
    feeds = runnable_inputs(model, seed=seed, count=1, batch=batch, shapes=shapes)[0]
    if batch is not None:
        fixed = {s.name: s.fixed_batch for s in specs if s.fixed_batch is not None}
        if fixed and all(v != batch for v in fixed.values()):
            log.warning("--batch %d ignored for input(s) with a fixed batch size %s", batch, fixed)
    return feeds


def feed_shapes(feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """``{input: shape}`` for reports."""
    return {k: list(v.shape) for k, v in feeds.items()}
