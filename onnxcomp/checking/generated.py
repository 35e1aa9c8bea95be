"""Model inputs as declared (`input_specs`) and generated inputs that run the model.

`generate_inputs` makes random feeds for given sizes; `runnable_inputs` first picks sizes
the model declares or implies and checks that the model runs on them: free batch dims get 1
(2 in a second feed), the free spatial dims of image inputs try sizes real image models
accept (224, 320, 32, 640, ... — multiples of 32), other free dims (sequences, audio) try
16, 512, 64, ..., and a scalar the model compares with a constant (a sample rate ``sr``
tested ``== 16000``) gets that constant. A free dim named for a KV cache (``past``,
``cache``) is 0 in the first candidate: a causal LM then runs a prefill of random tokens
with empty caches, where random cache contents made its outputs noise that no quantized
model matches (cosine -0.57 for a 4-bit SmolLM2 that reaches 0.98 on text). One onnxruntime session runs the candidates in
turn (a few at most); if none runs, the error says what was tried and asks for data.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.checking.data_validate import (
    InputSpec,
    default_sample_axis,
    dim_name,
    is_fixed,
)
from onnxcomp.errors import CalibrationDataError, one_line
from onnxcomp.ir.shapes import dims_of

#: Names of free dims that are a KV cache's length (see the module docstring).
_CACHE_DIM = re.compile(r"past|cache", re.IGNORECASE)

#: Feeds of one run: ``{input name: array}``.
Feeds = dict[str, np.ndarray]

#: Candidate sizes for free spatial dims of image inputs (after a size the metadata
#: declares), and for other free dims, tried in order (the i-th candidate takes the i-th of
#: each list).
IMAGE_SIZES = (224, 320, 32, 640, 48, 96)
OTHER_SIZES = (16, 512, 64, 256, 1024, 8)

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
    onnx.TensorProto.STRING: np.object_,
}


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
    dim_sizes: Mapping[str, int] | None = None,
    values: Mapping[str, np.ndarray] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random feeds for every required input.

    A free dim takes ``dim_sizes[name]`` for a named dim (also ``dim_sizes["#INPUT:AXIS"]``
    for one dim of one input), else ``dim_value``; -1 and unnamed dims are free too.
    ``values`` fixes whole inputs (a sample rate the model compares with a constant),
    ``shapes`` whole shapes.
    Floats are standard normal; integer inputs that index a constant table (embeddings)
    stay in range; other integers are 0/1 (masks, flags); strings are short words.

    Raises:
        CalibrationDataError: An input is not a tensor of known rank and type.
    """
    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    sizes = dict(dim_sizes or {})
    feeds: dict[str, np.ndarray] = {}
    for spec in required_input_specs(model):
        if values and spec.name in values:
            feeds[spec.name] = np.asarray(values[spec.name])
            continue
        if spec.dtype is None or (spec.shape is None and spec.name not in (shapes or {})):
            raise CalibrationDataError(f"cannot generate data for input {spec.name!r} (not a tensor with a known rank and type)")
        if shapes and spec.name in shapes:
            shape = tuple(int(d) for d in shapes[spec.name])
        else:
            shape = tuple(
                int(d) if is_fixed(d) else sizes.get(f"#{spec.name}:{i}", sizes.get(dim_name(d) or "", dim_value))  # type: ignore[arg-type]
                for i, d in enumerate(spec.shape or ())
            )
        dt = np.dtype(spec.dtype)
        if dt.kind == "f":
            arr = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            arr = rng.integers(0, 2, shape).astype(dt)
        elif dt.kind in "iu":
            high = bounds.get(spec.name, 2)
            arr = rng.integers(0, max(1, high), shape).astype(dt)
        elif dt.kind == "O":
            words = np.array(["onnx", "Model", "input", "text", "data"], dtype=object)
            arr = words[rng.integers(0, len(words), shape)] if shape else np.array(words[0], dtype=object)
        else:
            raise CalibrationDataError(f"cannot generate data of type {dt} for input {spec.name!r}")
        feeds[spec.name] = arr
    return feeds


def _dim_key(spec: InputSpec, axis: int, d: object) -> str:
    """The `generate_inputs` size key of a free dim: its name, or ``#INPUT:AXIS`` if unnamed."""
    return dim_name(d) or f"#{spec.name}:{axis}"  # type: ignore[arg-type]


def _image_axes(spec: InputSpec) -> tuple[int, ...]:
    """Spatial axes of an image-like input (rank 4 float, 1/3/4 channels NCHW or NHWC)."""
    shape = spec.shape or ()
    if len(shape) != 4 or spec.dtype is None or np.dtype(spec.dtype).kind != "f":
        return ()
    if shape[1] in (1, 3, 4):
        return (2, 3)
    if shape[3] in (1, 3, 4):
        return (1, 2)
    return ()


def _declared_image_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """The image size a model's metadata declares (Ultralytics exports: ``imgsz`` ``[320, 320]``)."""
    for prop in model.metadata_props:
        if prop.key in ("imgsz", "image_size", "img_size"):
            sizes = [int(t) for t in re.findall(r"\d+", prop.value)][:2]
            if sizes and all(0 < n <= 8192 for n in sizes):
                return (sizes[0], sizes[-1])
    return None


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Small constant tensors of the main graph (initializers and Constant nodes)."""
    out = {t.name: t for t in model.graph.initializer if np.prod(t.dims, dtype=np.int64) <= 16}
    arrays = {k: numpy_helper.to_array(v) for k, v in out.items()}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and np.prod(a.t.dims, dtype=np.int64) <= 16:
                    arrays[node.output[0]] = numpy_helper.to_array(a.t)
    return arrays


_COMPARISONS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"})
_PASS_THROUGH = frozenset({"Cast", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Flatten"})


def implied_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values for small inputs the model compares with a constant (``sr == 16000``).

    Such an input usually selects a branch (an ``If``) that only real values reach; random
    0/1 takes the wrong one or none. Looks through one Cast/Squeeze/Unsqueeze/Reshape.
    """
    specs = {s.name: s for s in required_input_specs(model)
             if s.shape is not None and all(is_fixed(d) for d in s.shape) and int(np.prod(s.shape or (1,))) == 1
             and s.dtype is not None and np.dtype(s.dtype).kind in "iuf"}
    if not specs:
        return {}
    consts = _constants(model)
    alias = {n: n for n in specs}  # tensor -> the input it carries unchanged
    for node in model.graph.node:  # graph order: a pass-through is seen before its consumers
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in alias:
            alias.setdefault(node.output[0], alias[node.input[0]])
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type not in _COMPARISONS or len(node.input) != 2:
            continue
        for mine, other in (node.input, node.input[::-1]):
            name = alias.get(mine)
            if name is not None and name not in out and other in consts and consts[other].size == 1:
                spec = specs[name]
                out[name] = np.asarray(consts[other]).astype(spec.dtype).reshape(spec.shape)
    return out


@dataclass
class SizePlan:
    """Sizes for generated inputs: free dims by key (see `generate_inputs`), fixed values."""

    sizes: dict[str, int] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    #: Whole shapes the user gave (``--shape``), also for inputs of unknown rank.
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Keys the plan chose (not the user), by role: ``batch``, ``height``, ``width``, ``other``, ``cache`` (a KV cache length).
    roles: dict[str, str] = field(default_factory=dict)

    def resized(self, batch: int, image: int, other: int) -> SizePlan:
        """The plan with chosen batch sizes times ``batch`` and other free dims grown."""
        grow = {"batch": lambda v: v * batch, "height": lambda v: v + image, "width": lambda v: v + image,
                "other": lambda v: v + other, "cache": lambda v: v}
        sizes = {k: grow[self.roles[k]](v) if k in self.roles else v for k, v in self.sizes.items()}
        return SizePlan(sizes, self.values, self.shapes, self.roles)

    def feeds(self, model: onnx.ModelProto, seed: int) -> Feeds:
        """Random feeds at these sizes."""
        return generate_inputs(model, dim_value=1, dim_sizes=self.sizes, values=self.values, shapes=self.shapes, seed=seed)


def candidate_plans(
    model: onnx.ModelProto, *, batch: int = 1, shapes: Mapping[str, Sequence[int]] | None = None, count: int = len(IMAGE_SIZES)
) -> list[SizePlan]:
    """Size plans to try, most likely first (see the module docstring).

    ``shapes`` fixes whole inputs (a user's ``--shape``); ``batch`` is the size of free
    batch dims (each input's first free dim, and dims whose name says batch).
    """
    specs = required_input_specs(model)
    values = implied_values(model)
    user: dict[str, int] = {}
    for spec in specs:
        for i, (d, w) in enumerate(zip(spec.shape or (), (shapes or {}).get(spec.name, ()))):
            if not is_fixed(d):
                user[_dim_key(spec, i, d)] = int(w)
    roles: dict[str, str] = {}  # size key -> batch / image / other
    for spec in specs:
        if spec.shape is None or spec.name in values:
            continue
        axis = default_sample_axis(spec)
        for i, d in enumerate(spec.shape):
            if is_fixed(d):
                continue
            key = _dim_key(spec, i, d)
            name = (dim_name(d) or "").lower()
            spatial = _image_axes(spec)
            role = ("batch" if i == axis or "batch" in name else "cache" if _CACHE_DIM.search(name)
                    else ("height", "width")[spatial.index(i)] if i in spatial else "other")
            roles.setdefault(key, role)
    plans = []
    declared = _declared_image_size(model)
    images = ([declared] if declared else []) + [(n, n) for n in IMAGE_SIZES if (n, n) != declared]
    for k, ((height, width), other) in enumerate(itertools.islice(zip(images, OTHER_SIZES), count)):
        # An empty cache first; later candidates give it a length, should the model need one.
        pick = {"batch": batch, "height": height, "width": width, "other": other, "cache": 0 if k == 0 else other}
        chosen = {k: r for k, r in roles.items() if k not in user}
        given = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
        plan = SizePlan({k: pick[r] for k, r in chosen.items()} | user, dict(values), given, chosen)
        if all(p.sizes != plan.sizes for p in plans):  # only a batch dim free: one plan
            plans.append(plan)
    return plans


def _describe(feeds: Feeds) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'}" if v.ndim else f"{k}={v.item()!r}" for k, v in feeds.items())


def runnable_plan(
    model: onnx.ModelProto,
    *,
    seed: int = 0,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[SizePlan, Callable[[Feeds], bool] | None]:
    """The first of `candidate_plans` the model runs on, and a function that tries more feeds
    on the same session. With one candidate only (no free dims), or when onnxruntime cannot
    load the model, that candidate is returned unchecked with None: the caller's own
    session says why it cannot run.

    One onnxruntime session (graph optimizations off: cheap to build) tries the candidates.

    Raises:
        CalibrationDataError: The model loads but runs on none of the candidates: the
            message lists what was tried and asks for ``--calibration-data``.
    """
    import onnxruntime as ort

    from onnxcomp.checking.runtime import make_session

    plans = candidate_plans(model, batch=batch or 1, shapes=shapes)
    if len(plans) == 1:
        return plans[0], None  # nothing to choose: the caller's own run says if it fails
    try:
        session = make_session(model, optimize=False, one_shot=True)
    except Exception:  # cannot load: nothing to try here
        return plans[0], None
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # failed tries are expected: keep onnxruntime's log quiet
    last = ""

    def runs(feeds: Feeds) -> bool:
        nonlocal last
        try:
            session.run(None, feeds, quiet)
            return True
        except Exception as e:
            last = one_line(e, 160)
            return False

    tried = []
    for plan in plans:
        feeds = plan.feeds(model, seed)
        if runs(feeds):
            return plan, runs
        tried.append(_describe(feeds))
    raise CalibrationDataError(
        f"generated inputs could not run the model (tried {'; '.join(tried)}; last error: {last}); "
        "pass --calibration-data with real inputs (see README, Calibration data)"
    )


def runnable_inputs(
    model: onnx.ModelProto,
    *,
    seed: int = 0,
    count: int = 2,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[Feeds]:
    """``count`` generated feeds the model runs on (`runnable_plan`); the second one at
    other sizes where the model has free dims and runs on them, so a pass that bakes in
    one size is caught.

    Raises:
        CalibrationDataError: See `runnable_plan`.
    """
    plan, runs = runnable_plan(model, seed=seed, batch=batch, shapes=shapes)
    out = [plan.feeds(model, seed)]
    if count <= 1:
        return out
    if batch is None and runs is None and set(plan.roles.values()) == {"batch"}:
        # Only batch dims are free (nothing was tried): batch 2, as any batched model takes.
        bigger = plan.resized(2, 0, 0)
        return out + [bigger.feeds(model, seed + 1 + i) for i in range(count - 1)]
    tries = [] if batch is not None or runs is None else [plan.resized(2, 32, 8), plan.resized(2, 0, 0)]
    for other in tries:
        if other.sizes != plan.sizes:
            more = [other.feeds(model, seed + 1 + i) for i in range(count - 1)]
            if runs(more[0]):  # type: ignore[misc]
                return out + more
    return out + [plan.feeds(model, seed + 1 + i) for i in range(count - 1)]
