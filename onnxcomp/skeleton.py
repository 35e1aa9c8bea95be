"""Models without their weights, for cheap checks.

Verifying a pass means running ``onnx.checker`` and onnxruntime on the result. Handing
either one a whole ``ModelProto`` costs a serialization and a parse of every weight byte
(for a 90 MB BERT that is most of the verification time), although neither needs the
bytes: the checker needs each weight's type and shape, and onnxruntime can borrow the
weights as arrays (``SessionOptions.add_external_initializers``) instead of parsing them.

So large main-graph initializers are stripped from a lightweight copy of the model:

* `structure_skeleton` turns them into typed graph inputs (what the checker and shape
  inference need of them);
* `runtime_parts` marks them external and returns the arrays for onnxruntime to borrow
  (tensors still on disk are memory-mapped, not read).

Subgraph and function tensors and small constants (shape vectors, axes, scalars: what
shape inference reads) stay inline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from onnxcomp import safety

#: Initializers at least this large (payload bytes) are stripped.
MIN_STRIPPED_BYTES = 4096

#: The ``location`` of a stripped tensor; never read (onnxruntime gets the array instead).
_PLACEHOLDER = "onnxcomp-borrowed-weight"


def _payload_bytes(t: TensorProto) -> int:
    """Payload size without reading it (reading ``raw_data`` copies it)."""
    if t.data_location == TensorProto.EXTERNAL:
        return next((int(kv.value) for kv in t.external_data if kv.key == "length"), MIN_STRIPPED_BYTES)
    return int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type)


def _itemsize(data_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:  # string or exotic types: never stripped
        return 0


def _strippable(t: TensorProto) -> bool:
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED) or _itemsize(t.data_type) == 0:
        return False
    if t.data_type in (TensorProto.BFLOAT16,) or t.data_type >= TensorProto.FLOAT8E4M3FN:
        return False  # numpy has no native dtype: keep them inline
    if t.data_location == TensorProto.EXTERNAL:
        return safety.is_referenced(t)
    return t.HasField("raw_data") and _payload_bytes(t) >= MIN_STRIPPED_BYTES


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main graph has no initializers (the rest is copied)."""
    graph = onnx.GraphProto()
    for fd, value in model.graph.ListFields():
        if fd.name == "initializer":
            continue
        if fd.is_repeated:
            getattr(graph, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(graph, fd.name).CopyFrom(value)
        else:
            setattr(graph, fd.name, value)
    out = onnx.ModelProto()
    for fd, value in model.ListFields():
        if fd.name == "graph":
            continue
        if fd.is_repeated:
            getattr(out, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(out, fd.name).CopyFrom(value)
        else:
            setattr(out, fd.name, value)
    out.graph.CopyFrom(graph)
    return out


def structure_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with large main-graph initializers replaced by typed graph inputs.

    Everything the checker and shape inference look at (nodes, types, shapes, small
    constants, subgraphs, functions) is kept. What is lost is the checker's look at the
    stripped tensors' payload encoding; `runtime_parts` checks each payload's size.
    """
    out = _copy_without_initializers(model)
    listed = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if _strippable(t):
            if t.name not in listed:
                out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            out.graph.initializer.append(t)
    return out


@dataclass
class RuntimeParts:
    """A serialized skeleton plus the stripped weights for onnxruntime to borrow.

    The arrays must outlive the session that borrows them (keep this object with it).
    """

    model_bytes: bytes
    names: list[str]
    arrays: list[np.ndarray]


def _array(t: TensorProto) -> np.ndarray:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    shape = tuple(int(d) for d in t.dims)
    if t.data_location == TensorProto.EXTERNAL:
        path, offset, length = safety.external_source(t)
        if length != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise onnx.checker.ValidationError(f"tensor {t.name!r}: external data length {length} does not match its shape {list(shape)}")
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    raw = t.raw_data
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise onnx.checker.ValidationError(f"tensor {t.name!r} holds {len(raw)} bytes but its shape {list(shape)} needs {expected}")
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)  # raw_data is little-endian
    return arr if np.little_endian else arr.astype(np.dtype(dtype))


def runtime_parts(model: onnx.ModelProto) -> RuntimeParts:
    """Split ``model`` into skeleton bytes and borrowed weight arrays for onnxruntime."""
    out = _copy_without_initializers(model)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for t in model.graph.initializer:
        if not _strippable(t):
            out.graph.initializer.append(t)
            continue
        names.append(t.name)
        arrays.append(_array(t))
        stub = out.graph.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=_PLACEHOLDER)
    return RuntimeParts(out.SerializeToString(), names, arrays)
