"""Numeric verification: reference outputs, drift checks, fidelity.

One onnxruntime session per model checked — never per node, and one at a time for large
models. Reference outputs are computed once, on the data
`onnxcomp.checking.verify_data.select_verification_data` chooses. A feed's outputs larger
than `SPILL_BYTES` (an LM's logits) are kept in files of the verification's folder and read
back one feed at a time (`OutputStore`): neither the reference nor a candidate holds all
its outputs in memory, and the metrics stream over them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp.checking.metrics import (
    CHUNK,
    ChannelSplit,
    FidelityAccumulator,
    OutputFidelity,
)
from onnxcomp.checking.runtime import make_session, run
from onnxcomp.errors import one_line
from onnxcomp.io.files import model_nbytes
from onnxcomp.ir.weightless import ArrayCache, RuntimeParts, runtime_parts

log = logging.getLogger("onnxcomp")

#: Outputs per feed, in feed order: a list, or an `OutputStore` that keeps large ones on disk.
Outputs = Sequence[dict[str, np.ndarray]]


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


#: A feed's outputs of at least this many bytes are kept in a file, not in memory (see
#: `OutputStore`): one window of an LM's logits is 50 MB.
SPILL_BYTES = 16 << 20


class OutputStore(Sequence[dict[str, np.ndarray]]):
    """Outputs per feed, the large ones (`SPILL_BYTES`) in ``.npy`` files of a folder of their own.

    Indexing reads a spilled feed's outputs back, so walking the store (as `drift`,
    `fidelity` and `paired_perplexity` do) holds one feed's outputs at a time. The folder
    is removed with the store.
    """

    def __init__(self, parent: Path) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="outputs-", dir=parent))
        self._items: list[dict[str, np.ndarray] | list[tuple[str, Path]]] = []
        weakref.finalize(self, shutil.rmtree, self._folder, True)

    def append(self, outputs: dict[str, np.ndarray], *, copy: bool = False) -> None:
        """Add the next feed's outputs (object arrays, e.g. strings, stay in memory).

        ``copy``: outputs kept in memory are copies (an onnxruntime output array keeps its
        session's whole arena alive); spilled ones are written from the arrays as they are.
        """
        if sum(a.nbytes for a in outputs.values()) < SPILL_BYTES or any(a.dtype.hasobject for a in outputs.values()):
            self._items.append({k: np.array(v, copy=True) for k, v in outputs.items()} if copy else outputs)
            return
        files = []
        for j, (name, value) in enumerate(outputs.items()):
            path = self._folder / f"{len(self._items)}-{j}.npy"
            np.save(path, value, allow_pickle=False)
            files.append((name, path))
        self._items.append(files)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        item = self._items[i]
        if isinstance(item, dict):
            return item
        return {name: np.load(path, allow_pickle=False) for name, path in item}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self[i] for i in range(len(self)))


def evaluate(
    model: "onnx.ModelProto | RuntimeParts | bytes | str",
    feeds: Outputs,
    workdir: Path | None = None,
    *,
    lent: Mapping[str, np.ndarray] | None = None,
    cache: ArrayCache | None = None,
    cancel: threading.Event | None = None,
    spill: bool = False,
) -> Outputs:
    """Run ``model`` (graph optimizations off: we check *our* graph) on every feed.

    ``lent`` and ``cache`` pass weights without copying them (see `onnxcomp.ir.weightless`).
    ``cancel``, when set by the time the session is built, skips the runs (`Cancelled`).
    ``spill`` (with a ``workdir``): return an `OutputStore` there, so large outputs are
    held one feed at a time. The session is closed before this returns.
    """
    sess = make_session(model, optimize=False, workdir=workdir, lent=lent, cache=cache, one_shot=True)
    if cancel is not None and cancel.is_set():
        raise Cancelled
    out: list[dict[str, np.ndarray]] | OutputStore = OutputStore(workdir) if spill and workdir is not None else []
    for f in feeds:
        out.append({k: _as_array(v) for k, v in run(sess, f).items()})
    return out


class Cancelled(Exception):
    """A background evaluation whose outputs nobody will read stopped early."""


def _max_abs_diff(ref: np.ndarray, cand: np.ndarray, finite: np.ndarray) -> float:
    """Largest ``|ref - cand|`` in float64 where ``finite``, `CHUNK` values at a time (a
    float64 copy of an LM's logits window would be 100 MB)."""
    r, c, keep = ref.reshape(-1), cand.reshape(-1), finite.reshape(-1)
    out = 0.0
    for start in range(0, r.size, CHUNK):
        k = keep[start:start + CHUNK]
        d = np.abs(r[start:start + CHUNK].astype(np.float64) - c[start:start + CHUNK])[k]
        if d.size:
            out = max(out, float(d.max()))
    return out


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
                    diff = _max_abs_diff(r, c, fin)
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
            self._outputs = evaluate(self._reference, self.feeds, self.workdir, cache=self.cache, cancel=self._closing, spill=True)
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
            return evaluate(model, self.feeds, self.workdir, lent=lent, cache=self.cache, spill=True), None
        except Exception as e:
            return [], f"result cannot run in onnxruntime: {one_line(e)}"
