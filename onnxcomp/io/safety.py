"""Checks that make loading a model from a stranger safe.

Everything here runs on the model *header* (the protobuf parsed without external tensor
payloads) before any large allocation:

* IR version and default-domain opset must be ones the installed onnx understands.
* Subgraph nesting (If/Loop/Scan bodies, functions) is bounded (`MAX_GRAPH_DEPTH`).
* Every tensor's declared size must be backed by bytes that are really stored: a tensor
  declaring ``dims=[10**12]`` with no data is refused instead of allocated. So the memory
  onnxcomp can be made to spend is bounded by the size of the files it was given.
* External-data references are confined to the model's own folder: no ``..``, no absolute
  paths, no symbolic links on the way, no hard links (which could alias any file on the
  same file system), not the model file itself, and every ``[offset, offset + length)``
  range must lie inside its file and match the tensor's declared size.

Each violation is an `InvalidModelError` with a one-line message (exit code 2).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import TensorProto

from onnxcomp.errors import InvalidModelError

#: Oldest IR version we accept (onnx's own loaders handle older ones poorly).
MIN_IR_VERSION = 3
#: The newest IR version the installed onnx package understands.
MAX_IR_VERSION = onnx.IR_VERSION
#: Default-domain opsets the installed onnx package knows.
MAX_OPSET = onnx.defs.onnx_opset_version()
MIN_OPSET = 1
#: Deepest subgraph nesting accepted (real models rarely exceed 4: Loop > If > If).
MAX_GRAPH_DEPTH = 16
#: Largest element count one tensor may declare (2**40 elements is 4 TiB of float32):
#: guards the arithmetic; the real bound is that declared bytes must exist on disk.
MAX_TENSOR_ELEMENTS = 2**40

_DEFAULT_DOMAINS = ("", "ai.onnx")

# Bits per element of every fixed-size type (sub-byte types are packed).
_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16, TensorProto.INT16: 16,
    TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8, TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32, TensorProto.UINT64: 64, TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8), ("FLOAT8E8M0", 8),
                     ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2)):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = _bits


def check_model_header(model: onnx.ModelProto, path: Path | None = None) -> None:
    """Validate IR version and opset imports before anything else touches the model.

    Raises:
        InvalidModelError: No graph, IR version or default opset out of range, or no
            ``opset_import`` at all.
    """
    where = f"{path}: " if path else ""
    if not model.HasField("graph"):
        raise InvalidModelError(f"{where}file parsed but contains no graph (not an ONNX model?)")
    if model.ir_version < MIN_IR_VERSION:
        raise InvalidModelError(f"{where}IR version {model.ir_version} is too old (supported: {MIN_IR_VERSION}..{MAX_IR_VERSION})")
    if model.ir_version > MAX_IR_VERSION:
        raise InvalidModelError(
            f"{where}IR version {model.ir_version} is newer than this onnx ({onnx.__version__}) supports (max {MAX_IR_VERSION}); upgrade onnx"
        )
    if not model.opset_import:
        raise InvalidModelError(f"{where}model has no opset_import (which operator set does it use?)")
    for op in model.opset_import:
        if op.domain in _DEFAULT_DOMAINS and not (MIN_OPSET <= op.version <= MAX_OPSET):
            raise InvalidModelError(f"{where}opset {op.version} is not supported (supported: {MIN_OPSET}..{MAX_OPSET})")


def iter_graphs(model: onnx.ModelProto) -> Iterator[tuple[onnx.GraphProto | onnx.FunctionProto, int]]:
    """Every graph and function in ``model`` with its nesting depth (explicit stack).

    Raises:
        InvalidModelError: Nesting deeper than `MAX_GRAPH_DEPTH`.
    """
    stack: list[tuple[onnx.GraphProto | onnx.FunctionProto, int]] = [(model.graph, 0)]
    stack.extend((f, 0) for f in model.functions)
    while stack:
        g, depth = stack.pop()
        if depth > MAX_GRAPH_DEPTH:
            raise InvalidModelError(f"subgraphs nest {depth} levels deep (limit {MAX_GRAPH_DEPTH}); refusing to load")
        yield g, depth
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append((attr.g, depth + 1))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend((sg, depth + 1) for sg in attr.graphs)


def iter_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Initializers and tensor-valued attributes of every graph and function."""
    for g, _ in iter_graphs(model):
        if isinstance(g, onnx.GraphProto):
            yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def declared_elements(t: TensorProto) -> int:
    """Element count from ``dims``, refusing negative or absurd sizes without overflow."""
    n = 1
    for d in t.dims:
        if d < 0:
            raise InvalidModelError(f"tensor {t.name!r} has a negative dimension {list(t.dims)}")
        n *= d
        if n > MAX_TENSOR_ELEMENTS:
            raise InvalidModelError(f"tensor {t.name!r} declares {_product_str(t.dims)} elements (limit {MAX_TENSOR_ELEMENTS}); refusing to load")
    return n


def _product_str(dims: object) -> str:
    n = 1
    for d in dims:  # type: ignore[attr-defined]
        n *= int(d)
    return f"{n:.3g}" if n >= 10**6 else str(n)


def expected_nbytes(t: TensorProto) -> int | None:
    """Payload bytes the tensor's dims and type require (None for strings / unknown types)."""
    bits = _BITS.get(t.data_type)
    if bits is None:
        return None
    return (declared_elements(t) * bits + 7) // 8


def _typed_count(t: TensorProto) -> int:
    return (len(t.float_data) + len(t.int32_data) + len(t.string_data) + len(t.int64_data) + len(t.double_data)
            + len(t.uint64_data))


def check_tensor_payload(t: TensorProto) -> None:
    """An in-file tensor's stored data must be exactly what its dims declare.

    Typed fields are matched loosely (complex types use two values per element, packed
    4-bit types one int32 per byte) — onnx's checker checks them exactly later; what
    matters here is that nothing declares data it does not store.
    """
    if t.data_type == TensorProto.UNDEFINED:
        raise InvalidModelError(f"tensor {t.name!r} has no data type")
    n = declared_elements(t)
    if t.data_location == TensorProto.EXTERNAL:
        return  # checked against the file in `check_external_data`
    if t.HasField("raw_data"):
        need = expected_nbytes(t)
        if need is not None and len(t.raw_data) != need:
            raise InvalidModelError(f"tensor {t.name!r} declares {list(t.dims)} ({need} bytes) but stores {len(t.raw_data)} bytes")
        return
    count = _typed_count(t)
    if n and count == 0:
        raise InvalidModelError(f"tensor {t.name!r} declares {_product_str(t.dims)} elements but stores no data")
    if count and count not in (n, 2 * n, (n + 1) // 2):
        raise InvalidModelError(f"tensor {t.name!r} declares {n} elements but stores {count} values")


def check_limits(model: onnx.ModelProto) -> None:
    """Nesting depth and every in-file tensor's size, before anything is allocated."""
    for t in iter_tensors(model):
        check_tensor_payload(t)


def _external_info(t: TensorProto) -> dict[str, str]:
    return {kv.key: kv.value for kv in t.external_data}


def resolve_inside(base: Path, location: str, model_path: Path | None = None) -> Path:
    """Resolve an external-data location, refusing anything that escapes ``base``.

    Raises:
        InvalidModelError: Absolute or malformed location, ``..``, a symbolic link on the
            way, a path outside ``base``, a missing or non-regular file, a file with
            several hard links, or the model file itself.
    """
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location or "\0" in location:
        raise InvalidModelError(f"external data location {location!r} is absolute or malformed; refusing to load")
    parts = Path(location).parts
    if ".." in parts:
        raise InvalidModelError(f"external data location {location!r} escapes the model folder; refusing to load")
    real_base = base.resolve()
    # Walk component by component with lstat so a link anywhere on the way is seen,
    # not only at the end (a linked sub-folder would otherwise smuggle files in).
    current = real_base
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise InvalidModelError(f"external data file {location!r} is missing (expected beside the model in {base})") from None
        except OSError as e:
            raise InvalidModelError(f"cannot read external data file {location!r}: {e.strerror or e}") from None
        if stat.S_ISLNK(st.st_mode):
            target = current.resolve()
            if real_base != target and real_base not in target.parents:
                raise InvalidModelError(f"external data location {location!r} resolves outside the model folder; refusing to load")
            raise InvalidModelError(f"external data file {location!r} is a symbolic link; refusing to load")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise InvalidModelError(f"external data location {location!r} is not a path to a file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelError(f"external data location {location!r} is not a regular file")
    if st.st_nlink > 1:
        raise InvalidModelError(f"external data file {location!r} has several hard links (it may alias a file elsewhere); refusing to load")
    if model_path is not None and os.path.samefile(current, model_path):
        raise InvalidModelError(f"external data location {location!r} is the model file itself; refusing to load")
    return current


def check_external_data(model: onnx.ModelProto, base: Path, model_path: Path | None = None) -> dict[str, Path]:
    """Check every external reference (location, range, size) without reading payloads.

    Returns:
        The resolved file of each distinct location.
    """
    resolved: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    for t in iter_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = _external_info(t)
        loc = info.get("location", "")
        if loc not in resolved:
            resolved[loc] = resolve_inside(base, loc, model_path)
            sizes[loc] = resolved[loc].stat().st_size
        size = sizes[loc]
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise InvalidModelError(f"tensor {t.name!r}: malformed external data offset/length") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidModelError(
                f"tensor {t.name!r}: external data range [{offset}, {offset + length}) is outside {loc} ({size} bytes)"
            )
        need = expected_nbytes(t)
        if need is not None and length != need:
            raise InvalidModelError(f"tensor {t.name!r} declares {list(t.dims)} which needs {need} bytes, but its external data has {length}")
    return resolved


def load_external_data_safely(model: onnx.ModelProto, base: Path, model_path: Path | None = None) -> None:
    """Load external tensors into ``model`` after checking every location and range."""
    resolved = check_external_data(model, base, model_path)
    handles: dict[Path, object] = {}
    try:
        for t in iter_tensors(model):
            if t.data_location != TensorProto.EXTERNAL:
                continue
            info = _external_info(t)
            real = resolved[info.get("location", "")]
            offset = int(info.get("offset", 0))
            f = handles.get(real)
            if f is None:
                f = handles[real] = open(real, "rb")
            f.seek(offset)  # type: ignore[attr-defined]
            length = int(info["length"]) if "length" in info else real.stat().st_size - offset
            data = f.read(length)  # type: ignore[attr-defined]
            if len(data) != length:  # the file shrank under us
                raise InvalidModelError(f"tensor {t.name!r}: external data file {real.name} ended early")
            t.raw_data = data
            del t.external_data[:]
            t.data_location = TensorProto.DEFAULT
    finally:
        for f in handles.values():
            f.close()  # type: ignore[attr-defined]


#: ``external_data`` key naming the folder a *referenced* tensor's location is relative
#: to (onnx's own ExternalDataInfo knows this key; onnxcomp strips it when writing).
BASEPATH_KEY = "basepath"


def reference_external_data(model: onnx.ModelProto, base: Path, model_path: Path | None = None) -> int:
    """Check external references and pin them to ``base`` instead of loading payloads.

    Used for models too large to hold as one protobuf: tensors stay on disk, each gets a
    ``basepath`` entry so later readers (`external_source`) find the validated file from
    any working directory. Returns the number of referenced payload bytes.
    """
    check_external_data(model, base, model_path)
    folder = str(base.resolve())
    total = 0
    for t in iter_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        if not any(kv.key == BASEPATH_KEY for kv in t.external_data):
            t.external_data.add(key=BASEPATH_KEY, value=folder)
        total += external_source(t)[2]
    return total


def is_referenced(t: TensorProto) -> bool:
    """True for an external tensor pinned by `reference_external_data`."""
    return t.data_location == TensorProto.EXTERNAL and any(kv.key == BASEPATH_KEY for kv in t.external_data)


def external_source(t: TensorProto) -> tuple[Path, int, int]:
    """``(file, offset, length)`` of a referenced tensor, re-validated on every call.

    Re-validation is a few ``lstat`` calls; it keeps a location a pass may have edited
    from reading outside the model's folder.
    """
    info = _external_info(t)
    base = info.get(BASEPATH_KEY)
    if not base:
        raise InvalidModelError(f"tensor {t.name!r} references external data that was not loaded")
    real = resolve_inside(Path(base), info.get("location", ""))
    size = real.stat().st_size
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise InvalidModelError(f"tensor {t.name!r}: external data range [{offset}, {offset + length}) is outside {real.name}")
    return real, offset, length


def read_external(t: TensorProto) -> bytes:
    """The payload bytes of a referenced tensor."""
    real, offset, length = external_source(t)
    with open(real, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise InvalidModelError(f"tensor {t.name!r}: external data file {real.name} ended early")
    return data
