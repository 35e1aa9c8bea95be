"""Model inputs as declared (`input_specs`) and generated inputs (`generate_inputs`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxcomp.checking.data_validate import InputSpec, dim_name, is_fixed
from onnxcomp.errors import CalibrationDataError
from onnxcomp.ir.shapes import dims_of

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
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random feeds for every required input.

    A free dim takes ``dim_sizes[name]`` for a named dim (also ``dim_sizes["#INPUT:AXIS"]``
    for one dim of one input), else ``dim_value``; -1 and unnamed dims are free too.
    ``values`` fixes whole inputs (a sample rate the model compares with a constant).
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
        if spec.dtype is None or spec.shape is None:
            raise CalibrationDataError(f"cannot generate data for input {spec.name!r} (not a tensor with a known rank and type)")
        shape = tuple(
            int(d) if is_fixed(d) else sizes.get(f"#{spec.name}:{i}", sizes.get(dim_name(d) or "", dim_value))  # type: ignore[arg-type]
            for i, d in enumerate(spec.shape)
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
