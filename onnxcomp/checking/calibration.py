"""Calibration and verification data: npz files, folders of npz, ``random``, or a reader.

Format (the command-line contract): an ``.npz`` whose keys are graph input names with
samples stacked on axis 0; or a directory of such files (read one at a time, so a large
dataset never sits in memory at once); or the word ``random`` (generated from the input
shapes, with a warning). Through the API an onnxruntime ``CalibrationDataReader`` (or
any object with ``get_next() -> dict | None``) or a dict of arrays is accepted too.

An extra array named ``label`` carries task labels (for accuracy and distillation).
Batches are cut to the model's batch size: a fixed batch dim of B gives batches of B
samples; a symbolic batch dim gives batches of ``batch_size`` (default 8).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp.errors import CalibrationDataError
from onnxcomp.ir.shapes import dims_of

log = logging.getLogger("onnxcomp")
LABEL_KEY = "label"

_ONNX_TO_NP = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype (None if not a plain tensor) and shape."""

    name: str
    dtype: Any
    shape: tuple[int | str | None, ...] | None
    elem_type: int = 0

    @property
    def batch_dim(self) -> int | str | None:
        return self.shape[0] if self.shape else None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializer-backed inputs included: they are overridable)."""
    specs = []
    for vi in model.graph.input:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None:
            specs.append(InputSpec(vi.name, None, None, 0))
            continue
        dims = dims_of(vi)
        shape = tuple(dims) if dims is not None else None
        specs.append(InputSpec(vi.name, _ONNX_TO_NP.get(tt.elem_type), shape, tt.elem_type))
    return specs


def required_input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Inputs the user must feed (those without an initializer default)."""
    init = {t.name for t in model.graph.initializer}
    return [s for s in input_specs(model) if s.name not in init]


def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Upper bounds for integer inputs used as Gather indices into constant tables."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in shapes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = shapes[node.input[0]]
            if dims:
                b = int(dims[axis])
                bounds[node.input[1]] = min(bounds.get(node.input[1], b), b)
    return bounds


def generate_inputs(
    model: onnx.ModelProto,
    *,
    dim_value: int = 2,
    dim_sizes: dict[str, int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random feeds for every required input.

    Symbolic dims take ``dim_sizes[name]`` or ``dim_value``; floats are standard normal;
    integer inputs that index a constant table (embeddings) stay in range; other integers
    are 0/1 (masks, flags).
    """
    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    sizes = dim_sizes or {}
    feeds: dict[str, np.ndarray] = {}
    for spec in required_input_specs(model):
        if spec.dtype is None or spec.shape is None:
            raise CalibrationDataError(f"cannot generate data for input {spec.name!r} (not a tensor with a known rank)")
        shape = tuple(d if isinstance(d, int) else sizes.get(str(d), dim_value) for d in spec.shape)
        dt = np.dtype(spec.dtype)
        if dt.kind == "f":
            arr = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            arr = rng.integers(0, 2, shape).astype(dt)
        elif dt.kind in "iu":
            high = bounds.get(spec.name, 2)
            arr = rng.integers(0, max(1, high), shape).astype(dt)
        else:
            raise CalibrationDataError(f"cannot generate data of type {dt} for input {spec.name!r}")
        feeds[spec.name] = arr
    return feeds


class CalibrationData:
    """A re-iterable source of input batches for calibration, verification and training.

    Create with `CalibrationData.from_source`. Iterating yields feed dicts (labels
    removed); `iter_with_labels` yields ``(feeds, labels_or_None)``.
    """

    def __init__(self, samples: "_SampleSource", *, model: onnx.ModelProto, batch_size: int | None = None, generated: bool = False) -> None:
        self._source = samples
        self._specs = required_input_specs(model)
        fixed = {s.batch_dim for s in self._specs if isinstance(s.batch_dim, int)}
        self.batch_size = batch_size or (fixed.pop() if len(fixed) == 1 else 8)
        self.generated = generated
        self.has_labels = samples.has_labels

    @classmethod
    def from_source(
        cls,
        source: "str | os.PathLike[str] | dict[str, np.ndarray] | Any",
        model: onnx.ModelProto,
        *,
        batch_size: int | None = None,
        random_samples: int = 8,
        seed: int = 0,
        role: str = "calibration",  # STUB(h2): H1's validation takes the role
    ) -> "CalibrationData":
        """Build from a path, ``"random"``, a dict of arrays or a ``CalibrationDataReader``."""
        names = [s.name for s in required_input_specs(model)]
        if isinstance(source, str) and source == "random":
            log.warning("using random calibration data: statistics will not reflect real inputs")
            return cls(_RandomSource(model, random_samples, seed), model=model, batch_size=batch_size, generated=True)
        if isinstance(source, dict):
            return cls(_ArraysSource([dict(source)], names), model=model, batch_size=batch_size)
        if isinstance(source, (str, os.PathLike)):
            p = Path(source)
            if p.is_dir():
                files = sorted(p.glob("*.npz"))
                if not files:
                    raise CalibrationDataError(f"calibration folder {p} has no .npz files")
                return cls(_NpzFilesSource(files, names), model=model, batch_size=batch_size)
            if p.is_file():
                return cls(_NpzFilesSource([p], names), model=model, batch_size=batch_size)
            raise CalibrationDataError(f"calibration data {p} not found (expected an .npz file, a folder of them, or 'random')")
        if hasattr(source, "get_next"):
            return cls(_ReaderSource(source, names), model=model, batch_size=batch_size or 1)
        raise CalibrationDataError(f"unsupported calibration data: {type(source).__name__}")

    def iter_with_labels(self, max_samples: int | None = None) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield ``(feeds, labels)`` batches of ``batch_size`` samples (streamed)."""
        seen = 0
        for chunk in self._source.chunks():
            n = len(next(iter(chunk.values())))
            for start in range(0, n, self.batch_size):
                if max_samples is not None and seen >= max_samples:
                    return
                stop = min(n, start + self.batch_size)
                if max_samples is not None:
                    stop = min(stop, start + max_samples - seen)
                batch = {k: v[start:stop] for k, v in chunk.items()}
                fixed_ok = all(
                    not isinstance(s.batch_dim, int) or s.batch_dim == stop - start for s in self._specs
                )
                if not fixed_ok:
                    continue  # a ragged last batch cannot feed a fixed-batch model
                labels = batch.pop(LABEL_KEY, None)
                seen += stop - start
                yield batch, labels

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for feeds, _ in self.iter_with_labels():
            yield feeds

    description = "calibration data"  # STUB(h2): H1 defines it

    def holdout(self, n: int | None = None) -> tuple[CalibrationData, CalibrationData] | None:
        """STUB(h2): H1 implements the split."""
        return None

    def first_batches(self, n: int) -> list[dict[str, np.ndarray]]:
        """The first ``n`` batches (for verification)."""
        out = []
        for feeds in self:
            out.append(feeds)
            if len(out) >= n:
                break
        return out


class _SampleSource:
    has_labels = False

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:  # pragma: no cover - interface
        raise NotImplementedError


def _check_keys(keys: set[str], names: list[str], where: str) -> None:
    missing = [n for n in names if n not in keys]
    if missing:
        raise CalibrationDataError(f"{where} lacks arrays for model inputs {missing}; it has {sorted(keys)}")


class _NpzFilesSource(_SampleSource):
    def __init__(self, files: list[Path], names: list[str]) -> None:
        self.files, self.names = files, names
        try:
            with np.load(files[0], allow_pickle=False) as z:
                keys = set(z.files)
        except Exception as e:
            raise CalibrationDataError(f"cannot read calibration file {files[0]}: {type(e).__name__}: {e}") from None
        _check_keys(keys, names, str(files[0]))
        self.has_labels = LABEL_KEY in keys

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        for f in self.files:
            try:
                with np.load(f, allow_pickle=False) as z:
                    _check_keys(set(z.files), self.names, str(f))
                    keys = self.names + ([LABEL_KEY] if LABEL_KEY in z.files else [])
                    chunk = {k: np.asarray(z[k]) for k in keys}
            except CalibrationDataError:
                raise
            except Exception as e:
                raise CalibrationDataError(f"cannot read calibration file {f}: {type(e).__name__}: {e}") from None
            lengths = {len(v) for v in chunk.values()}
            if len(lengths) != 1:
                raise CalibrationDataError(f"{f}: arrays have different sample counts on axis 0: {sorted(lengths)}")
            yield chunk


class _ArraysSource(_SampleSource):
    def __init__(self, chunks: list[dict[str, np.ndarray]], names: list[str]) -> None:
        for c in chunks:
            _check_keys(set(c), names, "calibration arrays")
        self._chunks = [{k: np.asarray(c[k]) for k in names + ([LABEL_KEY] if LABEL_KEY in c else [])} for c in chunks]
        self.has_labels = all(LABEL_KEY in c for c in chunks)

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        yield from self._chunks


class _RandomSource(_SampleSource):
    def __init__(self, model: onnx.ModelProto, n: int, seed: int) -> None:
        self.model, self.n, self.seed = model, n, seed

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        # Symbolic dims get 2; a fixed batch dim keeps its size. One chunk per seed.
        for i in range(self.n):
            yield generate_inputs(self.model, seed=self.seed + i)


class _ReaderSource(_SampleSource):
    """Wraps an onnxruntime ``CalibrationDataReader``; each ``get_next()`` is one batch."""

    def __init__(self, reader: Any, names: list[str]) -> None:
        self.reader, self.names = reader, names

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        if hasattr(self.reader, "rewind"):
            self.reader.rewind()
        while True:
            item = self.reader.get_next()
            if item is None:
                return
            _check_keys(set(item), self.names, "CalibrationDataReader batch")
            yield {k: np.asarray(v) for k, v in item.items()}
