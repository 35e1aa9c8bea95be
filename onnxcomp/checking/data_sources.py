"""Where samples come from: ``.npz`` files, arrays, generated inputs, a reader.

A source yields `Chunk`s (one per file, dict or reader batch) and, except a reader, knows
each chunk's sample count before reading it (``.npz`` headers are read without the data),
so `CalibrationData` can split off held-out samples and count samples up front. Every
source validates what it yields (`onnxcomp.checking.data_validate`); the file sources also
validate every file before the first one is used (`SampleSource.validate`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxcomp.checking.data_validate import (
    LABEL_KEY,
    SAMPLE_AXES_KEY,
    InputSpec,
    check_finite,
    check_header,
    check_keys,
    parse_sample_axes,
    sample_axes,
    sample_count,
)
from onnxcomp.errors import CalibrationDataError, one_line


@dataclass
class Chunk:
    """Arrays read together (a file, a dict, a reader batch).

    Attributes:
        arrays: Input arrays (and ``label`` when present).
        axes: Each input's sample axis (None: shared by every sample).
        n: Samples held.
        where: `` in FILE`` for messages ('' when there is no file).
        complete: A feed to use exactly as given (reader batches): never sliced.
    """

    arrays: dict[str, np.ndarray]
    axes: dict[str, int | None]
    n: int
    where: str = ""
    complete: bool = False


class SampleSource:
    """The interface of a source of chunks (see the module docstring)."""

    has_labels = False

    def __init__(self, specs: list[InputSpec], role: str, axes: Mapping[str, int | None] | None) -> None:
        self.specs, self.role = specs, role
        self.explicit_axes = dict(axes or {})
        #: Each input's sample axis (of the first file, where a file names its own).
        self.axes = sample_axes(specs, self.explicit_axes)

    def sizes(self) -> list[int] | None:
        """Samples per chunk, in order (None when unknown until read: a reader)."""
        return None

    def validate(self) -> None:
        """Check everything that can be checked before the data is used."""

    def chunks(self, wanted: Container[int] | None = None) -> Iterator[tuple[int, Chunk]]:  # pragma: no cover - interface
        """``(index, chunk)`` for every chunk (only those in ``wanted`` when given)."""
        raise NotImplementedError

    def make_chunk(self, arrays: Mapping[str, Any], where: str, *, complete: bool = False, known: Container[str] = ()) -> Chunk:
        """Validate arrays (names, dtype, rank, fixed dims, finite) into a `Chunk`."""
        explicit = dict(self.explicit_axes)
        if SAMPLE_AXES_KEY in arrays:
            explicit.update(parse_sample_axes(arrays[SAMPLE_AXES_KEY], f"{self.role} data{where}"))
        check_keys(self.role, where, arrays.keys(), self.specs, known)
        axes = sample_axes(self.specs, explicit)
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            arr = np.asarray(arrays[spec.name])
            check_header(self.role, where, spec, axes[spec.name], arr.dtype, arr.shape)
            check_finite(self.role, where, spec.name, arr)
            out[spec.name] = arr
        if LABEL_KEY in arrays:
            out[LABEL_KEY] = np.asarray(arrays[LABEL_KEY])
        n = sample_count(self.role, where, {k: v.shape for k, v in out.items()}, axes)
        return Chunk(out, axes, 1 if n is None else n, where, complete or n is None)


def npz_headers(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """``{key: (dtype, shape)}`` of an ``.npz`` from its array headers, without the data."""
    out: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:  # no public reader for newer headers: read the array
                    with np.load(path, allow_pickle=False) as z:
                        a = z[key]
                    shape, dtype = a.shape, a.dtype
            out[key] = (np.dtype(dtype), tuple(shape))
    return out


class NpzFilesSource(SampleSource):
    """One ``.npz`` or a folder of them, read one file at a time."""

    def __init__(self, files: list[Path], specs: list[InputSpec], role: str, axes: Mapping[str, int | None] | None,
                 known: Container[str] = ()) -> None:
        super().__init__(specs, role, axes)
        self.files, self.known = files, known
        self._sizes: list[int] = []
        self._validated = False

    def _read(self, f: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(f, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except Exception as e:
            raise CalibrationDataError(f"{self.role} data: cannot read {f}: {one_line(e, 200)}") from None

    def _check_header_of(self, f: Path) -> int:
        """Keys, dtypes and shapes of one file from its headers; its sample count."""
        where = f" in {f}"
        try:
            headers = npz_headers(f)
        except Exception as e:
            raise CalibrationDataError(f"{self.role} data: cannot read {f} (expected an .npz): {one_line(e, 200)}") from None
        explicit = dict(self.explicit_axes)
        if SAMPLE_AXES_KEY in headers:
            explicit.update(parse_sample_axes(self._read(f)[SAMPLE_AXES_KEY], f"{self.role} data{where}"))
        check_keys(self.role, where, headers.keys(), self.specs, self.known)
        axes = sample_axes(self.specs, explicit)
        if f == self.files[0]:
            self.axes = axes
        for spec in self.specs:
            dtype, shape = headers[spec.name]
            check_header(self.role, where, spec, axes[spec.name], dtype, shape)
        shapes = {k: headers[k][1] for k in [s.name for s in self.specs] + ([LABEL_KEY] if LABEL_KEY in headers else [])}
        n = sample_count(self.role, where, shapes, axes)
        return 1 if n is None else n  # inputs that disagree: one complete feed

    def validate(self) -> None:
        """Every file's headers, then every file's values (one file in memory at a time).

        Headers first, so a wrong shape in the last file fails without reading the data;
        then one read of everything for non-finite values, which no header shows.
        """
        if self._validated:
            return
        self._sizes = [self._check_header_of(f) for f in self.files]
        with np.load(self.files[0], allow_pickle=False) as z:
            self.has_labels = LABEL_KEY in z.files
        for f in self.files:
            arrays = self._read(f)
            for spec in self.specs:
                check_finite(self.role, f" in {f}", spec.name, arrays[spec.name])
        self._validated = True

    def sizes(self) -> list[int] | None:
        self.validate()
        return list(self._sizes)

    def chunks(self, wanted: Container[int] | None = None) -> Iterator[tuple[int, Chunk]]:
        for i, f in enumerate(self.files):
            if wanted is None or i in wanted:
                yield i, self.make_chunk(self._read(f), f" in {f}", known=self.known)


class ArraysSource(SampleSource):
    """A dict of arrays given through the API (one chunk)."""

    def __init__(self, arrays: Mapping[str, Any], specs: list[InputSpec], role: str, axes: Mapping[str, int | None] | None,
                 known: Container[str] = ()) -> None:
        super().__init__(specs, role, axes)
        self._chunk = self.make_chunk(arrays, "", known=known)
        self.axes = self._chunk.axes
        self.has_labels = LABEL_KEY in self._chunk.arrays

    def sizes(self) -> list[int] | None:
        return [self._chunk.n]

    def chunks(self, wanted: Container[int] | None = None) -> Iterator[tuple[int, Chunk]]:
        if wanted is None or 0 in wanted:
            yield 0, self._chunk


class GeneratedSource(SampleSource):
    """``n`` generated feeds (``make(seed)``), one chunk each."""

    def __init__(self, make: Callable[[int], dict[str, np.ndarray]], n: int, seed: int, specs: list[InputSpec], role: str) -> None:
        super().__init__(specs, role, None)
        self.make, self.n, self.seed = make, n, seed
        self._first = self.make_chunk(make(seed), "")

    def sizes(self) -> list[int] | None:
        return [self._first.n] * self.n

    def chunks(self, wanted: Container[int] | None = None) -> Iterator[tuple[int, Chunk]]:
        for i in range(self.n):
            if wanted is None or i in wanted:
                yield i, self._first if i == 0 else self.make_chunk(self.make(self.seed + i), "")


class ReaderSource(SampleSource):
    """An onnxruntime ``CalibrationDataReader``: each ``get_next()`` is one complete feed."""

    def __init__(self, reader: Any, specs: list[InputSpec], role: str, known: Container[str] = ()) -> None:
        super().__init__(specs, role, None)
        self.reader, self.known = reader, known

    def chunks(self, wanted: Container[int] | None = None) -> Iterator[tuple[int, Chunk]]:
        if hasattr(self.reader, "rewind"):
            self.reader.rewind()
        i = 0
        while True:
            item = self.reader.get_next()
            if item is None:
                return
            if wanted is None or i in wanted:
                yield i, self.make_chunk(item, f" in CalibrationDataReader batch {i}", complete=True, known=self.known)
            i += 1
