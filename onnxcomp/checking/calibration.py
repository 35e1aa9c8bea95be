"""Calibration, train and eval data: npz files, folders of npz, ``random``, or a reader.

Format (the command-line contract; the README "Calibration data" section says the same):

* an ``.npz`` whose keys are graph input names, each input's samples stacked on its
  *sample axis*: the first dim the model does not fix (axis 0 for ``[batch, 3, H, W]``, axis 1
  for a ``state[2, batch, 128]``), axis 0 when every dim is fixed. A rank-0 input (a sample
  rate ``sr``) holds one value shared by all samples. The reserved array ``__sample_axes__``
  (strings ``"NAME=AXIS"`` or ``"NAME=none"``) overrides the axes;
* a folder of such files, read one at a time. A file holding at most one batch is fed as
  is, so a folder of *complete feeds* (one ``.npz`` per sample, arrays exactly as the model
  takes them: scalars as scalars, states with their batch of 1) needs no stacking; a file
  whose inputs disagree on the sample count is a complete feed too (fed as given);
* the word ``random`` (generated inputs, with a warning);
* through the API also a dict of arrays, or an onnxruntime ``CalibrationDataReader`` (any
  object with ``get_next() -> dict | None``), whose batches are complete feeds.

An extra array named ``label`` carries task labels (samples on axis 0). Batches are cut
to the model's batch size: a fixed batch dim of B gives batches of B samples (a ragged rest
is left out); a free batch dim gives batches of ``batch_size`` (default 8). Batches never
span two files.

Data is validated against the model when loaded (`CalibrationData.from_source`) and again
as each file is read: `onnxcomp.checking.data_validate`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp.checking.data_sources import (
    ArraysSource,
    Chunk,
    GeneratedSource,
    NpzFilesSource,
    ReaderSource,
    SampleSource,
)
from onnxcomp.checking.data_validate import LABEL_KEY, InputSpec, take
from onnxcomp.checking.generated import (
    generate_inputs,
    input_specs,
    required_input_specs,
    runnable_plan,
)
from onnxcomp.errors import CalibrationDataError

log = logging.getLogger("onnxcomp")

__all__ = ["LABEL_KEY", "CalibrationData", "InputSpec", "generate_inputs", "input_specs", "required_input_specs"]

#: Held-out split defaults (see `CalibrationData.holdout`).
HOLDOUT_FRACTION = 0.25
HOLDOUT_MAX = 32
HOLDOUT_MIN_SAMPLES = 4


class CalibrationData:
    """A re-iterable source of input batches for calibration, verification and training.

    Create with `CalibrationData.from_source`. Iterating yields feed dicts (labels
    removed); `iter_with_labels` yields ``(feeds, labels_or_None)``.

    Attributes:
        batch_size: Samples per batch (the model's fixed batch, else the one asked for, else 8).
        generated: The samples are generated (``random``), not real data.
        has_labels: A ``label`` array comes with the samples.
        role: ``calibration``, ``train`` or ``eval`` (for messages).
        num_samples: Samples available (None for a reader: unknown until read).
        name: The source, e.g. ``"calib.npz"`` or ``"calib/"`` (a folder).
        description: What the data is, for consoles and reports: ``"32 samples of calib.npz"``,
            ``"8 held-out samples of calib.npz"``, ``"8 generated samples of random inputs"``.
    """

    def __init__(
        self,
        source: SampleSource,
        *,
        model: onnx.ModelProto | None = None,
        specs: list[InputSpec] | None = None,
        batch_size: int | None = None,
        generated: bool = False,
        label: str = "arrays",
        select: Mapping[int, np.ndarray] | None = None,
        kind: str = "",
    ) -> None:
        self._source = source
        self._specs = specs if specs is not None else required_input_specs(model)  # type: ignore[arg-type]
        fixed = {s.fixed_batch for s in self._specs if s.fixed_batch is not None}
        #: The model's fixed batch size (None where the batch dim is free).
        self._fixed_batch = min(fixed) if fixed else None
        self.batch_size = batch_size or (self._fixed_batch if len(fixed) == 1 else 8)
        self.generated = generated
        self.has_labels = source.has_labels
        self.role = source.role
        self._label = label
        self._kind = kind
        #: chunk index -> sample indices kept (None: every sample of every chunk)
        self._select = dict(select) if select is not None else None
        sizes = source.sizes()
        if sizes is None:
            self.num_samples: int | None = None
        elif self._select is None:
            self.num_samples = sum(sizes)
        else:
            self.num_samples = sum(len(v) for v in self._select.values())

    @property
    def name(self) -> str:
        """The source: ``"calib.npz"``, ``"calib/"``, ``"random inputs"``, ``"arrays"``, ..."""
        return self._label

    @property
    def description(self) -> str:
        """What the data is, e.g. ``"32 samples of calib.npz"`` (see the class docstring)."""
        if self.num_samples is None:
            return f"batches of {self._label}"
        kind = f"{self._kind} " if self._kind else ""
        noun = "sample" if self.num_samples == 1 else "samples"
        return f"{self.num_samples} {kind}{noun} of {self._label}"

    @classmethod
    def from_source(
        cls,
        source: str | os.PathLike[str] | Mapping[str, np.ndarray] | Any,
        model: onnx.ModelProto,
        *,
        batch_size: int | None = None,
        random_samples: int = 8,
        seed: int = 0,
        role: str = "calibration",
        sample_axes: Mapping[str, int | None] | None = None,
    ) -> CalibrationData:
        """Build from a path, ``"random"``, a dict of arrays or a ``CalibrationDataReader``.

        Every file is validated against the model before this returns (names, dtype, rank,
        fixed dims, finite values); a reader's batches are validated as they are read.

        Args:
            source: See the module docstring for the formats.
            model: The model the data feeds.
            batch_size: Samples per batch where the model's batch dim is free.
            random_samples: Generated feeds for ``"random"``.
            seed: Seed of generated feeds.
            role: ``calibration``, ``train`` or ``eval``: named in error messages.
            sample_axes: ``{input: axis or None}`` overriding each input's sample axis.

        Raises:
            CalibrationDataError: The data is missing, unreadable or does not fit the model.
        """
        specs = required_input_specs(model)
        known = {s.name for s in input_specs(model)}  # inputs with an initializer default may be fed too
        if isinstance(source, str) and source == "random":
            log.warning("using random %s data: statistics will not reflect real inputs", role)
            plan, _ = runnable_plan(model, seed=seed, batch=batch_size)
            gen = GeneratedSource(lambda s: plan.feeds(model, s), random_samples, seed, specs, role)
            return cls(gen, specs=specs, batch_size=batch_size, generated=True, label="random inputs", kind="generated")
        if isinstance(source, Mapping):
            return cls(ArraysSource(source, specs, role, sample_axes, known), specs=specs, batch_size=batch_size)
        if isinstance(source, (str, os.PathLike)):
            p = Path(source)
            if p.is_dir():
                files = sorted(p.glob("*.npz"))
                if not files:
                    raise CalibrationDataError(f"{role} data: folder {p} has no .npz files")
                src = NpzFilesSource(files, specs, role, sample_axes, known)
                label = f"{p.name}/"
            elif p.is_file():
                src, label = NpzFilesSource([p], specs, role, sample_axes, known), p.name
            else:
                raise CalibrationDataError(f"{role} data {p} not found (expected an .npz file, a folder of them, or 'random')")
            src.validate()
            return cls(src, specs=specs, batch_size=batch_size, label=label)
        if hasattr(source, "get_next"):
            return cls(ReaderSource(source, specs, role, known), specs=specs, batch_size=batch_size or 1, label="a CalibrationDataReader")
        raise CalibrationDataError(f"{role} data: unsupported type {type(source).__name__}")

    def holdout(self, n: int | None = None) -> tuple[CalibrationData, CalibrationData] | None:
        """Split into ``(fit, held_out)``: disjoint, deterministic, together all samples.

        Held out by default: 25% of the samples, at least 1 and at most 32 (``n`` asks for
        another count). The held-out samples are spread evenly over the data (every k-th
        sample, not the last ones, which may all be one class); with a fixed batch size B
        they are whole runs of B consecutive samples, so both parts keep full batches. In a
        folder of one-sample files (complete feeds) whole files are held out.

        Returns:
            None when the data cannot be split: fewer than 4 samples (or fewer than two
            batches of a fixed batch size), or a ``CalibrationDataReader`` (a one-shot
            stream of unknown length).

        Raises:
            CalibrationDataError: ``n`` is not between 1 and the samples available minus one batch.
        """
        sizes = self._source.sizes()
        if sizes is None:
            return None
        unit = self._fixed_batch or 1
        # Units: runs of `unit` consecutive available samples within one chunk.
        units: list[tuple[int, np.ndarray]] = []
        for c, size in enumerate(sizes):
            avail = np.arange(size) if self._select is None else self._select.get(c, np.zeros(0, np.int64))
            units.extend((c, avail[s : s + unit]) for s in range(0, len(avail) - unit + 1, unit))
        total = len(units) * unit
        if n is None:
            if total < HOLDOUT_MIN_SAMPLES or len(units) < 2:
                return None
            n = min(HOLDOUT_MAX, max(1, round(total * HOLDOUT_FRACTION)))
        elif not 1 <= n <= total - unit:
            raise CalibrationDataError(f"cannot hold out {n} of the {total} usable samples of {self._label}")
        k = min(len(units) - 1, max(1, round(n / unit)))
        # Evenly spread: unit i*len/k + len/(2k), floored; distinct because len/k > 1.
        picked = {int((i + 0.5) * len(units) / k) for i in range(k)}
        fit: dict[int, list[np.ndarray]] = {}
        held: dict[int, list[np.ndarray]] = {}
        for j, (c, idx) in enumerate(units):
            (held if j in picked else fit).setdefault(c, []).append(idx)
        return self._subset(fit, "fit"), self._subset(held, "held-out")

    def rebatched(self, batch_size: int) -> CalibrationData:
        """The same samples in batches of ``batch_size`` (a model with a fixed batch size
        keeps its own): e.g. one sample at a time, to hold one sample's activations."""
        if self._fixed_batch is not None or batch_size == self.batch_size:
            return self
        return CalibrationData(self._source, specs=self._specs, batch_size=batch_size, generated=self.generated,
                               label=self._label, select=self._select, kind=self._kind)

    def _subset(self, parts: dict[int, list[np.ndarray]], kind: str) -> CalibrationData:
        select = {c: np.concatenate(v) for c, v in parts.items()}
        sub = CalibrationData(self._source, specs=self._specs, batch_size=self.batch_size, generated=self.generated,
                              label=self._label, select=select, kind=kind)
        return sub

    def _batches_of(self, chunk: Chunk, idx: np.ndarray | None) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """A chunk cut into batches of `batch_size` (only samples ``idx`` when given)."""
        if chunk.complete:
            yield dict(chunk.arrays), chunk.n
            return
        count = chunk.n if idx is None else len(idx)
        for start in range(0, count, self.batch_size):
            stop = min(count, start + self.batch_size)
            # A contiguous run is a view (no copy); a selection gathers.
            index: slice | np.ndarray = slice(start, stop) if idx is None else idx[start:stop]
            if chunk.n == stop - start and idx is None:
                batch = dict(chunk.arrays)
            else:
                batch = {k: take(v, 0 if k == LABEL_KEY else chunk.axes.get(k), index) for k, v in chunk.arrays.items()}
            yield batch, stop - start

    def iter_with_labels(self, max_samples: int | None = None) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield ``(feeds, labels)`` batches of ``batch_size`` samples (streamed)."""
        seen = 0
        for c, chunk in self._source.chunks(self._select.keys() if self._select is not None else None):
            idx = self._select.get(c) if self._select is not None else None
            if max_samples is not None and idx is None and chunk.n > max_samples - seen and not chunk.complete:
                idx = np.arange(max(0, max_samples - seen))
            elif max_samples is not None and idx is not None:
                idx = idx[: max(0, max_samples - seen)]
            for batch, size in self._batches_of(chunk, idx):
                if max_samples is not None and seen >= max_samples:
                    return
                if self._fixed_batch is not None and size != self._fixed_batch and not chunk.complete:
                    continue  # a ragged last batch cannot feed a fixed-batch model
                labels = batch.pop(LABEL_KEY, None)
                seen += size
                yield batch, labels
            if max_samples is not None and seen >= max_samples:
                return

    @property
    def sample_axes(self) -> dict[str, int | None]:
        """Each input's sample axis in the batches (None: one value shared by all samples)."""
        return dict(self._source.axes)

    def samples_in(self, feeds: Mapping[str, np.ndarray]) -> int:
        """The number of samples a batch of this data holds (1 if every input is shared)."""
        axes = self.sample_axes
        return next((int(v.shape[axes[k]]) for k, v in feeds.items() if axes.get(k) is not None), 1)

    def merge(self, batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Several batches as one: each input concatenated on its sample axis (a shared
        input, such as a sample rate, taken once). For callers that want larger batches than
        the data gives (a fixed-batch model cannot take them)."""
        axes = self.sample_axes
        return {k: batches[0][k] if axes.get(k) is None else np.concatenate([b[k] for b in batches], axis=axes[k])
                for k in batches[0]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for feeds, _ in self.iter_with_labels():
            yield feeds

    def first_batches(self, n: int) -> list[dict[str, np.ndarray]]:
        """The first ``n`` batches (for verification)."""
        out = []
        for feeds in self:
            out.append(feeds)
            if len(out) >= n:
                break
        return out
