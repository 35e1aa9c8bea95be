"""Numeric verification: reference outputs, drift checks, fidelity.

One onnxruntime session per model checked — never per node. Reference outputs are
computed once, on the data `select_verification_data` chooses: ``--eval-data``, else a
held-out part of the calibration data for lossy pipelines (data no pass was fitted on),
else calibration batches, else generated inputs at two different sizes for symbolic dims
(so a pass that bakes in one size is caught).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp.checking.calibration import (
    CalibrationData,
    required_input_specs,
)
from onnxcomp.checking.data_validate import is_fixed
from onnxcomp.checking.generated import runnable_inputs
from onnxcomp.checking.metrics import ChannelSplit, FidelityAccumulator, OutputFidelity
from onnxcomp.checking.runtime import make_session, run
from onnxcomp.errors import CalibrationDataError, one_line
from onnxcomp.io.files import model_nbytes
from onnxcomp.ir.weightless import ArrayCache, RuntimeParts, runtime_parts

log = logging.getLogger("onnxcomp")

Outputs = list[dict[str, np.ndarray]]


@dataclass
class Tolerance:
    """Allowed drift for lossless passes: ``max|a-b| <= atol + rtol * max|ref|`` per output.

    Half-precision outputs get at least 1e-2 for both.
    """

    atol: float = 1e-4
    rtol: float = 1e-4

    def bound(self, ref: np.ndarray) -> float:
        """The allowed max |diff| for reference output ``ref``."""
        fin = ref[np.isfinite(ref)]
        scale = float(np.abs(fin).max()) if fin.size else 0.0
        atol, rtol = self.atol, self.rtol
        if ref.dtype == np.float16:
            atol, rtol = max(atol, 1e-2), max(rtol, 1e-2)
        return atol + rtol * scale


def _as_array(v: Any) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, list):  # sequence outputs
        return np.concatenate([np.asarray(x).reshape(-1) for x in v]) if v else np.zeros(0, np.float32)
    return np.asarray(v)


def _has_symbolic_dims(model: onnx.ModelProto) -> bool:
    return any(any(not is_fixed(d) for d in (s.shape or ())) for s in required_input_specs(model))


#: Most samples of held-out or ``--eval-data`` data that verification runs on: their
#: reference outputs are kept for the whole run (candidates are compared with them).
MAX_VERIFY_SAMPLES = 64


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

    feeds: Outputs
    labels: list[np.ndarray | None]
    description: str
    fit: CalibrationData | None
    held_out: bool


def _data_name(data: CalibrationData) -> str:
    """The source's name ("calib.npz"), to describe the part of it verification used."""
    return data.name


def _batches(data: CalibrationData, max_batches: int | None, max_samples: int | None) -> tuple[Outputs, list[np.ndarray | None], int]:
    """Batches with labels, and the number of samples in them."""
    feeds: Outputs = []
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
    return VerificationData(feeds, [None] * len(feeds), "generated inputs", calibration, False)


def evaluate(
    model: "onnx.ModelProto | RuntimeParts | bytes | str",
    feeds: Outputs,
    workdir: Path | None = None,
    *,
    lent: Mapping[str, np.ndarray] | None = None,
    cache: ArrayCache | None = None,
    cancel: threading.Event | None = None,
) -> Outputs:
    """Run ``model`` (graph optimizations off: we check *our* graph) on every feed.

    ``lent`` and ``cache`` pass weights without copying them (see `onnxcomp.ir.weightless`).
    ``cancel``, when set by the time the session is built, skips the runs (`Cancelled`).
    """
    sess = make_session(model, optimize=False, workdir=workdir, lent=lent, cache=cache, one_shot=True)
    if cancel is not None and cancel.is_set():
        raise Cancelled
    return [{k: _as_array(v) for k, v in run(sess, f).items()} for f in feeds]


class Cancelled(Exception):
    """A background evaluation whose outputs nobody will read stopped early."""


def drift(reference: Outputs, candidate: Outputs, tolerance: Tolerance) -> tuple[str, str] | None:
    """The first output that differs beyond tolerance, as ``(name, description)``; else None.

    NaN/Inf must appear in the same places; integer and bool outputs must be equal.
    """
    for ref_out, cand_out in zip(reference, candidate):
        for name, r in ref_out.items():
            c = cand_out.get(name)
            if c is None:
                return name, f"removed output {name!r}"
            if r.shape != c.shape or r.dtype != c.dtype:
                return name, f"changed output {name!r} from {r.dtype}{list(r.shape)} to {c.dtype}{list(c.shape)}"
            if r.dtype.kind in "fc":
                if not np.array_equal(np.isnan(r), np.isnan(c)) or not np.array_equal(np.isinf(r), np.isinf(c)):
                    return name, f"changed output {name!r} (NaN/Inf pattern differs)"
                inf = np.isinf(r)
                if inf.any() and not np.array_equal(r[inf], c[inf]):
                    return name, f"changed output {name!r} (Inf signs differ)"
                fin = np.isfinite(r)
                if fin.any():
                    diff = float(np.abs(r[fin].astype(np.float64) - c[fin]).max())
                    bound = tolerance.bound(r)
                    if diff > bound:
                        return name, f"changed output {name!r} beyond tolerance (max |diff| {diff:.3g} > {bound:.3g})"
            elif not np.array_equal(r, c):
                return name, f"changed output {name!r} (integer/bool values differ)"
    return None


def fidelity(
    reference: Outputs,
    candidate: Outputs,
    labels: list[np.ndarray | None] | None = None,
    channels: Mapping[str, ChannelSplit] | None = None,
) -> dict[str, OutputFidelity]:
    """Per-output (and per-channel, see `onnxcomp.checking.metrics`) fidelity of
    ``candidate`` against ``reference`` (same feeds, same order).

    ``channels``: a channel split per output name, overriding the default axis.
    """
    accs: dict[str, FidelityAccumulator] = {}
    split = channels or {}
    for i, (ref_out, cand_out) in enumerate(zip(reference, candidate)):
        lab = labels[i] if labels else None
        for name, r in ref_out.items():
            c = cand_out.get(name)
            if c is not None and r.dtype.kind in "fiub" and r.shape == c.shape and r.size:
                if name not in accs:
                    accs[name] = FidelityAccumulator(split.get(name), name)
                accs[name].add(r, c, lab)
    return {k: a.result() for k, a in accs.items()}


#: Inputs up to this size (serialized, weights included) check a candidate while the
#: reference run may still be going: two sessions' memory is affordable there.
OVERLAP_BYTES = 256 << 20


class Verifier:
    """The verification feeds and the input model's outputs on them.

    ``unverifiable`` holds a reason when onnxruntime cannot run the input model (custom
    ops without kernels, unsupported types); numeric checks are then skipped and the
    result is reported as unverified.
    """

    def __init__(self, reference: onnx.ModelProto, feeds: Outputs, *, tolerance: Tolerance | None = None) -> None:
        self.feeds = feeds
        self.tolerance = tolerance or Tolerance()
        # Removed when the Verifier is collected (or at exit): models spilled to disk for
        # onnxruntime can be gigabytes and must not pile up in the temp folder.
        self._tmp = tempfile.TemporaryDirectory(prefix="onnxcomp-verify-")
        self.workdir = Path(self._tmp.name)
        self._reference = reference
        self._outputs: Outputs | None = None
        self._unverifiable: str | None = None
        self._thread: threading.Thread | None = None
        self._candidates: list[threading.Thread] = []  # background candidate runs, joined by close()
        #: Weights decoded for the reference run, reused by candidates that keep them.
        self.cache = ArrayCache()
        #: Small enough to start the reference run on speculation and to run a candidate
        #: beside it (see `OVERLAP_BYTES`).
        self.small = model_nbytes(reference) <= OVERLAP_BYTES
        self._closing = threading.Event()

    def prefetch(self) -> None:
        """Start running the reference model in the background: its outputs are needed soon.

        onnxruntime releases the GIL while it builds and runs a session, so on a machine
        with a spare core this overlaps with the passes. If nothing turns out to need the
        outputs, `close` skips the runs (the session being built is still waited for).
        """
        if self._thread is None and self._outputs is None and self._unverifiable is None:
            self._thread = threading.Thread(target=self._compute, name="onnxcomp-reference", daemon=True)
            self._thread.start()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Wait for background runs and drop cached weights (call when done, also on errors)."""
        self._closing.set()  # a reference run nobody asked for stops after its session
        self._join()
        for thread in self._candidates:
            thread.join()
        self._candidates.clear()
        self.cache.clear()

    def _ensure(self) -> None:
        """Run the reference model once, on first need (a run that changes nothing needs none)."""
        self._join()
        if self._outputs is None and self._unverifiable is None:
            self._compute()

    def _compute(self) -> None:
        try:
            self._outputs = evaluate(self._reference, self.feeds, self.workdir, cache=self.cache, cancel=self._closing)
        except Cancelled:
            pass
        except Exception as e:
            self._unverifiable = f"onnxruntime cannot run the input model on the verification inputs ({one_line(e)[:240]})"
            log.warning("cannot verify numerics: %s", self._unverifiable)

    @property
    def reference_outputs(self) -> Outputs:
        """The input model's outputs on the feeds (empty if it cannot run)."""
        self._ensure()
        return self._outputs or []

    @property
    def unverifiable(self) -> str | None:
        """Why numerics cannot be checked, or None."""
        self._ensure()
        return self._unverifiable

    @property
    def can_verify(self) -> bool:
        """Whether the input model runs (waits for the reference run)."""
        return self.unverifiable is None

    @property
    def may_verify(self) -> bool:
        """False only once the reference run is known to have failed (does not wait)."""
        return self._unverifiable is None

    def start_evaluate(self, model: onnx.ModelProto, lent: Mapping[str, np.ndarray] | None = None) -> Callable[[], tuple[Outputs, str | None]]:
        """Begin `evaluate` on ``model``; return a function that waits for its result.

        What onnxruntime needs is taken from ``model`` before this returns, so the caller
        may go on modifying ``model`` (e.g. writing its payloads) while the session is
        built and run in the background. A reference run still going on is not waited
        for when the input is small (`OVERLAP_BYTES`): the two sessions then run side by
        side, where waiting left the main thread idle. Larger models run one session at
        a time, so their weights are not held by two sessions at once.
        """
        if not self.small:
            self._join()
        try:
            parts = runtime_parts(model, lent, self.cache)
        except Exception as e:
            failed: tuple[Outputs, str | None] = ([], f"result cannot run in onnxruntime: {one_line(e)}")
            return lambda: failed
        box: dict[str, tuple[Outputs, str | None]] = {}

        def work() -> None:
            box["result"] = self._evaluate_now(parts)

        thread = threading.Thread(target=work, name="onnxcomp-candidate", daemon=True)
        thread.start()
        self._candidates.append(thread)

        def wait() -> tuple[Outputs, str | None]:
            thread.join()
            return box.get("result", ([], "result cannot run in onnxruntime: its evaluation did not finish"))

        return wait

    def evaluate(self, model: "onnx.ModelProto | RuntimeParts | bytes | str", lent: Mapping[str, np.ndarray] | None = None) -> tuple[Outputs, str | None]:
        """Outputs of ``model`` on the verification feeds, or an error description.

        ``lent``: values of payload-free initializer headers in ``model``.
        """
        self._join()  # the cache is filled by the reference run
        return self._evaluate_now(model, lent)

    def _evaluate_now(self, model: "onnx.ModelProto | RuntimeParts | bytes | str", lent: Mapping[str, np.ndarray] | None = None) -> tuple[Outputs, str | None]:
        """`evaluate` without waiting for the reference run."""
        try:
            return evaluate(model, self.feeds, self.workdir, lent=lent, cache=self.cache), None
        except Exception as e:
            return [], f"result cannot run in onnxruntime: {one_line(e)}"
