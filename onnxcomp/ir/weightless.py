"""Models without their weights, for cheap checks.

Verifying a pass means running ``onnx.checker`` and onnxruntime on the result. Handing
either one a whole ``ModelProto`` costs a serialization and a parse of every weight byte
(for a 90 MB BERT that is most of the verification time), although neither needs the
bytes: the checker needs each weight's type and shape, and onnxruntime can borrow the
weights as arrays (``SessionOptions.add_initializer``) instead of parsing them.

So large main-graph initializers are stripped from a lightweight copy of the model:

* `structure_skeleton` turns them into typed graph inputs (what the checker and shape
  inference need of them);
* `runtime_parts` marks them external and returns the arrays for onnxruntime to borrow.
  onnxruntime reads them in place, unless one of its graph optimizations must read a
  weight's values, and then copies them all (`onnxcomp.checking.runtime.make_session`);
  so a model whose weights are still in an external-data file (`references_files`) is
  better handed over as a file, which it maps.

Subgraph and function tensors and small constants (shape vectors, axes, scalars: what
shape inference reads) stay inline.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxcomp.io import safety
from onnxcomp.io.files import copy_fields_except

#: Initializers at least this large (payload bytes) are stripped.
MIN_STRIPPED_BYTES = 4096

#: The ``location`` of a stripped tensor; never read (onnxruntime gets the array instead),
#: but onnxruntime checks that a file of that name exists (see `onnxcomp.checking.runtime`).
PLACEHOLDER_LOCATION = "onnxcomp-borrowed-weight"


@functools.cache
def _itemsize(data_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:  # string or exotic types: never stripped
        return 0


def lendable(data_type: int) -> bool:
    """Whether tensors of this ONNX type can be lent to onnxruntime as numpy arrays."""
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED) or _itemsize(data_type) == 0:
        return False
    # numpy has no native bfloat16/float8/int4: such tensors stay inline.
    return data_type != TensorProto.BFLOAT16 and data_type < TensorProto.FLOAT8E4M3FN


def _strippable(t: TensorProto) -> bool:
    if not lendable(t.data_type):
        return False
    if t.data_location == TensorProto.EXTERNAL:
        return safety.is_referenced(t)
    # Sized from the header: reading raw_data would copy the payload.
    return t.HasField("raw_data") and (safety.expected_nbytes(t) or 0) >= MIN_STRIPPED_BYTES


def references_files(model: onnx.ModelProto) -> bool:
    """Whether some tensor of ``model`` is still in an external-data file (lazy loading).

    Such models should reach onnxruntime as files (`onnxcomp.io.files.serialize_for_runtime`):
    onnxruntime memory-maps external data read from a file, but copies weights it is lent,
    which for a model over 2 GB would double its memory.
    """
    return any(safety.is_referenced(t) for t in safety.iter_tensors(model))


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main graph has no initializers (the rest is copied)."""
    out = onnx.ModelProto()
    copy_fields_except(model, out, {"graph"})
    copy_fields_except(model.graph, out.graph, {"initializer"})
    return out


def typed_input(name: str, elem_type: int, dims: "Collection[int]") -> onnx.ValueInfoProto:
    """A tensor value-info with static ``dims`` (``helper.make_tensor_value_info`` without
    its per-call validation, which showed up when a skeleton lists hundreds of weights)."""
    vi = onnx.ValueInfoProto(name=name)
    tt = vi.type.tensor_type
    tt.elem_type = elem_type
    shape = tt.shape
    shape.SetInParent()  # a scalar still has a (rank-0) shape
    for d in dims:
        shape.dim.add().dim_value = int(d)
    return vi


def structure_skeleton(model: onnx.ModelProto, lent: Collection[str] = ()) -> onnx.ModelProto:
    """``model`` with large main-graph initializers replaced by typed graph inputs.

    Everything the checker and shape inference look at (nodes, types, shapes, small
    constants, subgraphs, functions) is kept. What is lost is the checker's look at the
    stripped tensors' payload encoding; `runtime_parts` checks each payload's size.

    Args:
        model: The model.
        lent: Names of initializers that are payload-free headers whose values live
            elsewhere (an export in progress, see ``graph_io.export_parts``).
    """
    out = _copy_without_initializers(model)
    listed = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name in lent or _strippable(t):
            if t.name not in listed:
                out.graph.input.append(typed_input(t.name, t.data_type, t.dims))
        else:
            out.graph.initializer.append(t)
    return out


class ArrayCache:
    """Decoded weights by TensorProto identity, so a weight is copied out of protobuf once.

    The input model's weights are decoded for the reference run; a candidate that still
    uses an unchanged input weight (graphsurgeon keeps the original TensorProto behind
    it) then borrows the same array. Entries hold the proto, so an ``id`` stays unique.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[TensorProto, np.ndarray]] = {}

    def array(self, t: TensorProto) -> np.ndarray:
        """The array of ``t`` (decoded, or memory-mapped when it is still on disk)."""
        hit = self._by_id.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        arr = _array(t)
        self._by_id[id(t)] = (t, arr)
        return arr

    def clear(self) -> None:
        self._by_id.clear()


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
    if not t.HasField("raw_data"):
        return numpy_helper.to_array(t).reshape(shape)  # typed fields (float_data, ...)
    raw = t.raw_data
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise onnx.checker.ValidationError(f"tensor {t.name!r} holds {len(raw)} bytes but its shape {list(shape)} needs {expected}")
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)  # raw_data is little-endian
    return arr if np.little_endian else arr.astype(np.dtype(dtype))


#: In-memory payloads a model read in place (`in_place_bytes`) may carry inline, in bytes.
IN_PLACE_INLINE_BYTES = 64 << 20


def in_place_bytes(model: onnx.ModelProto, max_inline: int = IN_PLACE_INLINE_BYTES) -> tuple[bytes, str] | None:
    """``model`` serialized with its referenced weights left in their files, and their folder.

    For a model whose large weights are still in the user's files (lazy loading, see
    `references_files`): onnxruntime reads them from there when told the folder
    (``session.model_external_initializers_file_folder_path``), so no session needs a
    temporary copy of them. That copy was 0.6 s and 540 MB of disk writes per session on
    a 540 MB decoder, several sessions per run. None when this does not apply: weights in
    several folders, referenced tensors outside the main graph's initializers, or more
    than ``max_inline`` bytes of weights in memory (those are better lent or spilled).
    """
    out = _copy_without_initializers(model)
    if any(safety.is_referenced(t) for t in safety.iter_tensors(out)):
        return None  # subgraph or function tensors on disk: rare; the file copy handles them
    folders: set[str] = set()
    inline = 0
    for t in model.graph.initializer:
        new = out.graph.initializer.add()
        if not safety.is_referenced(t):
            inline += safety.expected_nbytes(t) or 0
            if inline > max_inline:
                return None
            new.CopyFrom(t)
            continue
        copy_fields_except(t, new, {"external_data"})
        for kv in t.external_data:  # onnxruntime rejects keys it does not know
            if kv.key == safety.BASEPATH_KEY:
                folders.add(kv.value)
            else:
                new.external_data.add(key=kv.key, value=kv.value)
    if len(folders) != 1:
        return None
    return out.SerializeToString(), folders.pop()


def runtime_parts(
    model: onnx.ModelProto, lent: Mapping[str, np.ndarray] | None = None, cache: ArrayCache | None = None
) -> RuntimeParts:
    """Split ``model`` into skeleton bytes and borrowed weight arrays for onnxruntime.

    Args:
        model: The model.
        lent: Values of initializers that are payload-free headers in ``model`` (see
            `structure_skeleton`); each must match its header's type and shape.
        cache: Where decoded weights are looked up and kept.
    """
    lent = lent or {}
    out = _copy_without_initializers(model)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for t in model.graph.initializer:
        if t.name in lent:
            arr = lent[t.name]
            want = (onnx.helper.tensor_dtype_to_np_dtype(t.data_type), tuple(int(d) for d in t.dims))
            if (arr.dtype, arr.shape) != want:
                raise onnx.checker.ValidationError(f"tensor {t.name!r}: values {arr.dtype}{list(arr.shape)} do not match its header {want}")
        elif _strippable(t):
            arr = cache.array(t) if cache is not None else _array(t)
        else:
            out.graph.initializer.append(t)
            continue
        names.append(t.name)
        arrays.append(np.ascontiguousarray(arr))
        stub = out.graph.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=PLACEHOLDER_LOCATION)
    return RuntimeParts(out.SerializeToString(), names, arrays)
