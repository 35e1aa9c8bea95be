"""Checking data against the model it feeds: names, dtype, rank, fixed dims, finite values.

Calibration, train and eval data are all checked here, when loaded and again as each file is
read, so that bad data fails in one line (`CalibrationDataError`, exit 2) before any pass
runs, naming the data's role, the input, what the model expects and what was found.

Layout of an array (the command-line contract, see the README "Calibration data" section):
each input's samples are stacked on its **sample axis**, the model's batch axis for that
input (see `default_sample_axis`): axis 0 for ``images[batch, 3, H, W]`` and ``x[1, 3, H, W]``,
axis 1 for silero's ``state[2, ?, 128]`` (a dim fixed to more than 1 is no batch). Rank-0 inputs (silero's ``sr``) have no sample axis: they hold one
value shared by every sample. An ``.npz`` may override the axes with the reserved array
`SAMPLE_AXES_KEY`, strings ``"NAME=AXIS"`` (``"NAME=none"``: shared).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcomp.errors import CalibrationDataError
from onnxcomp.ir.shapes import Dim

#: The reserved ``.npz`` key that names each input's sample axis: ``["state=1", "sr=none"]``.
SAMPLE_AXES_KEY = "__sample_axes__"
#: The array of task labels (samples on axis 0).
LABEL_KEY = "label"
#: Keys of a data file that are not model inputs.
RESERVED_KEYS = frozenset({SAMPLE_AXES_KEY, LABEL_KEY})


def is_fixed(d: Dim) -> bool:
    """A dim the model fixes (a size >= 0); symbolic, unnamed and -1 dims are free."""
    return isinstance(d, int) and d >= 0


def dim_name(d: Dim) -> str | None:
    """The symbolic name of a free dim, or None when it is unnamed ('', '?', -1, None)."""
    return d if isinstance(d, str) and d not in ("", "?") else None


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype (None if not a plain tensor) and shape.

    ``shape`` holds the declared dims: ints (``-1`` is free, like a symbolic dim), symbolic
    names (str) or None (unnamed); ``shape`` itself is None when the rank is unknown.
    """

    name: str
    dtype: Any
    shape: tuple[Dim, ...] | None
    elem_type: int = 0

    @property
    def batch_dim(self) -> Dim:
        """The dim on the default sample axis (see `default_sample_axis`), None for scalars."""
        axis = default_sample_axis(self)
        return self.shape[axis] if self.shape is not None and axis is not None and axis < len(self.shape) else None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model fixes for this input (on its sample axis), else None."""
        d = self.batch_dim
        return d if is_fixed(d) and d > 0 else None  # type: ignore[return-value]


def default_sample_axis(spec: InputSpec) -> int | None:
    """The axis samples are stacked on (None for rank-0 inputs).

    A dim named like a batch (``batch``, ``batch_size``, ``N``); else axis 0 when the model
    leaves it free or fixes it to 1; else the first free dim (an LSTM state
    ``[layers, batch, hidden]`` fixes axis 0 to the layer count); else axis 0.
    """
    if spec.shape is None:
        return 0
    if len(spec.shape) == 0:
        return None
    named = [i for i, d in enumerate(spec.shape) if isinstance(d, str) and ("batch" in d.lower() or d == "N")]
    if named:
        return named[0]
    if not is_fixed(spec.shape[0]) or spec.shape[0] == 1:
        return 0
    return next((i for i, d in enumerate(spec.shape) if not is_fixed(d)), 0)


def parse_sample_axes(value: Any, where: str) -> dict[str, int | None]:
    """Read a `SAMPLE_AXES_KEY` array (``"NAME=AXIS"`` / ``"NAME=none"`` strings)."""
    out: dict[str, int | None] = {}
    for item in np.asarray(value).reshape(-1).tolist():
        name, sep, axis = str(item).rpartition("=")
        axis = axis.strip().lower()
        if not sep or not name or not (axis == "none" or axis.isdigit()):
            raise CalibrationDataError(f"{where}: bad {SAMPLE_AXES_KEY} entry {item!r}: expected 'NAME=AXIS' or 'NAME=none'")
        out[name] = None if axis == "none" else int(axis)
    return out


def sample_axes(specs: Iterable[InputSpec], explicit: Mapping[str, int | None] | None = None) -> dict[str, int | None]:
    """Each input's sample axis: ``explicit`` where given, else `default_sample_axis`."""
    explicit = explicit or {}
    return {s.name: explicit[s.name] if s.name in explicit else default_sample_axis(s) for s in specs}


def describe_expected(spec: InputSpec, axis: int | None) -> str:
    """``float32 [N, 3, 224, 224]``: N marks the sample axis, free dims show their name or ?."""
    dt = "tensor" if spec.dtype is None else "string" if np.dtype(spec.dtype).kind in "OUS" else np.dtype(spec.dtype).name
    if spec.shape is None:
        return f"{dt} of any shape"
    dims = ["N" if i == axis else str(d) if is_fixed(d) else (dim_name(d) or "?") for i, d in enumerate(spec.shape)]
    return f"{dt} [{', '.join(dims)}]"


def describe_found(dtype: Any, shape: tuple[int, ...]) -> str:
    """``float64 [4, 3, 32, 32]``."""
    return f"{np.dtype(dtype).name} [{', '.join(map(str, shape))}]"


def check_header(role: str, where: str, spec: InputSpec, axis: int | None, dtype: Any, shape: tuple[int, ...]) -> None:
    """dtype, rank and fixed dims of one array (its header is enough).

    Raises:
        CalibrationDataError: One line naming role, input, expected and found.
    """
    if spec.dtype is not None and np.dtype(spec.dtype).kind in "OUS":  # strings: any numpy string form
        bad = np.dtype(dtype).kind not in "OUS"
    else:
        bad = spec.dtype is not None and np.dtype(dtype) != np.dtype(spec.dtype)
    if spec.shape is not None:
        if len(shape) != len(spec.shape) or (axis is not None and axis >= len(shape)):
            bad = True
        else:
            bad = bad or any(is_fixed(d) and i != axis and d != n for i, (d, n) in enumerate(zip(spec.shape, shape)))
    if bad:
        raise CalibrationDataError(
            f"{role} data: input {spec.name!r}{where}: expected {describe_expected(spec, axis)}, found {describe_found(dtype, shape)}"
        )


def check_finite(role: str, where: str, name: str, arr: np.ndarray) -> None:
    """Every value of a float array is finite (one NaN or inf poisons statistics).

    Raises:
        CalibrationDataError: Naming the input and how many values are NaN / inf.
    """
    if arr.dtype.kind not in "fc":
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    nan = int(np.isnan(arr).sum())
    inf = int(arr.size - finite.sum()) - nan
    what = ", ".join(f"{n} {k}" for n, k in ((nan, "NaN"), (inf, "inf")) if n)
    raise CalibrationDataError(
        f"{role} data: input {name!r}{where}: expected finite values, found {what} of {arr.size} values"
    )


def check_keys(role: str, where: str, keys: Iterable[str], specs: list[InputSpec], known: Iterable[str] = ()) -> None:
    """Every required input has an array and every array is an input (or reserved).

    ``known`` are further accepted names (inputs with an initializer default).
    """
    keys = set(keys)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in keys]
    unknown = sorted(keys - set(names) - set(known) - RESERVED_KEYS)
    where = where.removeprefix(" in ")
    if missing:
        raise CalibrationDataError(
            f"{role} data{' ' + where if where else ''}: no array for input {missing[0]!r} "
            f"(model inputs: {', '.join(names)}; found: {', '.join(sorted(keys)) or 'nothing'})"
        )
    if unknown:
        raise CalibrationDataError(
            f"{role} data{' ' + where if where else ''}: array {unknown[0]!r} is not a model input "
            f"(model inputs: {', '.join(names)}; '{LABEL_KEY}' holds labels)"
        )


def sample_count(role: str, where: str, shapes: Mapping[str, tuple[int, ...]], axes: Mapping[str, int | None]) -> int | None:
    """How many samples the arrays hold (the same on every input's sample axis).

    Arrays without a sample axis (shared) do not count; a file of only shared arrays is
    one sample. None when the inputs disagree: the file is then a *complete feed*, fed
    exactly as given in one batch (a model input such as a target shape ``[2]`` has no
    batch axis at all).

    Raises:
        CalibrationDataError: The inputs agree but the ``label`` array (samples on axis 0)
            holds another number of samples.
    """
    counts = {k: shape[axes[k]] for k, shape in shapes.items()  # type: ignore[index]
              if k != LABEL_KEY and axes.get(k) is not None and axes[k] < len(shape)}  # type: ignore[operator]
    if len(set(counts.values())) > 1:
        return None
    n = next(iter(counts.values()), 1)
    labels = shapes.get(LABEL_KEY)
    if labels is not None and counts and (len(labels) == 0 or labels[0] != n):
        raise CalibrationDataError(
            f"{role} data{where}: '{LABEL_KEY}' holds {labels[0] if labels else 0} labels for {n} samples"
        )
    return n


def take(arr: np.ndarray, axis: int | None, index: slice | np.ndarray) -> np.ndarray:
    """``arr`` restricted to samples ``index`` on ``axis`` (a shared array as is)."""
    if axis is None:
        return arr
    return arr[(slice(None),) * axis + (index,)]
