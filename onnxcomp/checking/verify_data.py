"""Which data verification runs on, and what the passes may fit on (`select_verification_data`).

Reference outputs are computed on it once (`onnxcomp.checking.verify.Verifier`):
``--eval-data``, else a held-out part of the calibration data for lossy pipelines (data no
pass was fitted on), else calibration batches, else generated inputs at two different
sizes for symbolic dims (so a pass that bakes in one size is caught).

**Causal LMs** (`onnxcomp.checking.perplexity.causal_lm_interface`) are verified window by
window (one row of ``input_ids`` per run, not a batch of them: a batch of 8 windows of 256
tokens has 400 MB of logits), on at most `LM_VERIFY_MACS` of compute per model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.checking.calibration import CalibrationData, required_input_specs
from onnxcomp.checking.data_validate import is_fixed
from onnxcomp.checking.generated import runnable_inputs
from onnxcomp.checking.perplexity import IDS, causal_lm_interface
from onnxcomp.errors import CalibrationDataError

log = logging.getLogger("onnxcomp")

#: Input feeds, one dict per run.
Feeds = list[dict[str, np.ndarray]]


def _has_symbolic_dims(model: onnx.ModelProto) -> bool:
    return any(any(not is_fixed(d) for d in (s.shape or ())) for s in required_input_specs(model))


#: Most samples of held-out or ``--eval-data`` data that verification runs on: their
#: reference outputs are kept for the whole run (candidates are compared with them).
MAX_VERIFY_SAMPLES = 64
#: Compute budget of verifying a causal LM, in multiply-accumulates per model (about
#: parameters x tokens): the reference and the candidate each run on whole windows of the
#: verification data until the next would pass it, at least one. A 135M-parameter LM
#: gets 2 windows of 256 tokens (~2 s per run on 2 cores); a tiny test decoder all of them.
LM_VERIFY_MACS = 10**11


def _parameter_count(model: onnx.ModelProto) -> int:
    """Elements of the main graph's initializers (their headers: nothing is read)."""
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer)


def _lm_windows(model: onnx.ModelProto, feeds: Feeds, labels: list[np.ndarray | None]) -> tuple[Feeds, list[np.ndarray | None], int, int] | None:
    """One feed per window (row of ``input_ids``) within `LM_VERIFY_MACS`, for a causal LM.

    Returns:
        ``(feeds, labels, tokens, windows available)``, or None when ``model`` is not a
        causal LM (or its feeds have no ``input_ids``).
    """
    if causal_lm_interface(model) is None or not feeds or any(IDS not in f for f in feeds):
        return None
    budget = LM_VERIFY_MACS // max(_parameter_count(model), 1)
    out: Feeds = []
    out_labels: list[np.ndarray | None] = []
    tokens = available = 0
    for feed, lab in zip(feeds, labels):
        rows = feed[IDS].shape[0]
        for i in range(rows):
            available += 1
            length = int(feed[IDS].shape[1])
            if out and tokens + length > budget:
                continue
            # Every LM input (ids, mask, positions, empty caches) has the batch first.
            out.append({k: v[i:i + 1] if v.ndim and v.shape[0] == rows else v for k, v in feed.items()})
            out_labels.append(lab[i:i + 1] if lab is not None and lab.ndim and lab.shape[0] == rows else lab)
            tokens += length
    return out, out_labels, tokens, available


@dataclass
class VerificationData:
    """What verification runs on, and what the passes may fit on.

    Attributes:
        feeds: Input batches the result is verified on.
        labels: Task labels per batch (None where there are none).
        description: Names the data for the console and the report, e.g. "8 held-out
            samples of calib.npz" or "generated inputs".
        fit: Calibration data the passes get (the fit part when a split was held out).
        held_out: The feeds are data no pass was fitted on.
    """

    feeds: Feeds
    labels: list[np.ndarray | None]
    description: str
    fit: CalibrationData | None
    held_out: bool


def _data_name(data: CalibrationData) -> str:
    """The source's name ("calib.npz"), to describe the part of it verification used."""
    return data.name


def _batches(data: CalibrationData, max_batches: int | None, max_samples: int | None) -> tuple[Feeds, list[np.ndarray | None], int]:
    """Batches with labels, and the number of samples in them."""
    feeds: Feeds = []
    labels: list[np.ndarray | None] = []
    n = 0
    for batch, lab in data.iter_with_labels(max_samples=max_samples):
        feeds.append(batch)
        labels.append(lab)
        n += data.samples_in(batch)
        if max_batches is not None and len(feeds) >= max_batches:
            break
    return feeds, labels, n


def select_verification_data(
    model: onnx.ModelProto,
    calibration: CalibrationData | None,
    *,
    eval_data: CalibrationData | None = None,
    lossy: bool,
    seed: int = 0,
    batches: int = 2,
    warn: Callable[[str], None] | None = None,
) -> VerificationData:
    """Choose the verification data, and the calibration data the passes fit on.

    `_select_data`; a causal LM's feeds are then cut into windows within its compute
    budget (`LM_VERIFY_MACS`), and the description says how many of them and how many
    tokens were used.
    """
    data = _select_data(model, calibration, eval_data=eval_data, lossy=lossy, seed=seed, batches=batches, warn=warn)
    if data.description == GENERATED:
        return data
    windows = _lm_windows(model, list(data.feeds), data.labels)
    if windows is None:
        return data
    feeds, labels, tokens, available = windows
    # "8 held-out samples of calib.npz" -> "2 of 8 held-out windows of calib.npz (512 tokens)"
    head, sep, rest = data.description.partition(" samples of ")
    count = f"{len(feeds)} of {available}" if len(feeds) < available else f"{len(feeds)}"
    if sep:
        kind = head.partition(" ")[2]
        desc = f"{count} {kind + ' ' if kind else ''}windows of {rest} ({tokens} tokens)"
    else:
        desc = f"{data.description}: {count} windows ({tokens} tokens)"
    return VerificationData(feeds, labels, desc, data.fit, data.held_out)


#: The description of generated verification inputs.
GENERATED = "generated inputs"


def _select_data(
    model: onnx.ModelProto,
    calibration: CalibrationData | None,
    *,
    eval_data: CalibrationData | None = None,
    lossy: bool,
    seed: int = 0,
    batches: int = 2,
    warn: Callable[[str], None] | None = None,
) -> VerificationData:
    """Choose the verification data, and the calibration data the passes fit on.

    * ``eval_data`` given: verify on it (up to `MAX_VERIFY_SAMPLES`); passes fit on all of
      ``calibration``.
    * A lossy pipeline with ``calibration``: passes fit on part of it and the result is
      verified on the rest (`CalibrationData.holdout`); when too few samples (or a
      one-shot reader) leave nothing to hold out, it is verified on the fitting data,
      with a warning and a description that says so.
    * A lossless pipeline (nothing is fitted): the first ``batches`` calibration batches.
    * No data: generated inputs, at two sizes for symbolic dims (a pass that bakes in one
      size is caught).
    """
    if eval_data is not None:
        feeds, labels, n = _batches(eval_data, None, MAX_VERIFY_SAMPLES)
        if not feeds:
            raise CalibrationDataError(f"evaluation data {_data_name(eval_data)} yields no complete batch for the model")
        return VerificationData(feeds, labels, f"{n} samples of {_data_name(eval_data)}", calibration, True)
    if calibration is not None:
        split = calibration.holdout() if lossy else None
        if split is not None:
            fit, held = split
            feeds, labels, n = _batches(held, None, MAX_VERIFY_SAMPLES)
            if feeds:
                return VerificationData(feeds, labels, f"{n} held-out samples of {_data_name(calibration)}", fit, True)
        feeds, labels, n = _batches(calibration, batches, None)
        if feeds:
            desc = f"{n} samples of {_data_name(calibration)}"
            if lossy and not calibration.generated:
                desc += ", the data the passes were fitted on (too few samples to hold any out)"
                msg = f"verified on {desc}: the fidelity reported is optimistic; pass --eval-data for an honest figure"
                log.warning(msg)
                if warn is not None:
                    warn(msg)
            return VerificationData(feeds, labels, desc, calibration, False)
    # Sizes the model runs on (tried in one session), a second feed at other sizes.
    feeds = runnable_inputs(model, seed=seed, count=2 if _has_symbolic_dims(model) else 1)
    return VerificationData(feeds, [None] * len(feeds), GENERATED, calibration, False)
