"""Checks that make loading a model from a stranger safe.

Everything here runs on the model *header* (the protobuf without external tensor
payloads) before any large allocation, and confines external-data references to the
model's own folder (no ``..``, absolute paths, symlinks or hardlinks leading outside).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxcomp.errors import InvalidModelError

#: Oldest IR version we accept (onnx's own loaders handle older ones poorly).
MIN_IR_VERSION = 3
#: The newest IR version the installed onnx package understands.
MAX_IR_VERSION = onnx.IR_VERSION
#: Default-domain opsets the installed onnx package knows.
MAX_OPSET = onnx.defs.onnx_opset_version()
MIN_OPSET = 1


def check_model_header(model: onnx.ModelProto, path: Path | None = None) -> None:
    """Validate IR version and opset imports before anything else touches the model."""
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
        raise InvalidModelError(f"{where}model has no opset_import")
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and not (MIN_OPSET <= op.version <= MAX_OPSET):
            raise InvalidModelError(f"{where}opset {op.version} is not supported (supported: {MIN_OPSET}..{MAX_OPSET})")


def _resolve_inside(base: Path, location: str) -> Path:
    """Resolve an external-data location, refusing anything that escapes ``base``."""
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise InvalidModelError(f"external data location {location!r} is absolute or malformed; refusing to load")
    parts = Path(location).parts
    if ".." in parts:
        raise InvalidModelError(f"external data location {location!r} escapes the model folder; refusing to load")
    candidate = base / location
    real_base = base.resolve()
    if candidate.is_symlink() or any(p.is_symlink() for p in candidate.parents if p != base and real_base in p.resolve().parents):
        raise InvalidModelError(f"external data file {location!r} is a symbolic link; refusing to load")
    real = candidate.resolve()
    if real_base not in real.parents:
        raise InvalidModelError(f"external data location {location!r} resolves outside the model folder; refusing to load")
    if not real.exists():
        raise InvalidModelError(f"external data file {location!r} is missing (expected beside the model)")
    if not real.is_file():
        raise InvalidModelError(f"external data location {location!r} is not a regular file")
    if os.stat(real).st_nlink > 1:
        raise InvalidModelError(f"external data file {location!r} has several hard links; refusing to load")
    return real


def load_external_data_safely(model: onnx.ModelProto, base: Path) -> None:
    """Load external tensors into ``model`` after checking every location and range."""
    from onnxcomp.model_io import _all_tensors

    handles: dict[Path, object] = {}
    try:
        for t in _all_tensors(model.graph):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {kv.key: kv.value for kv in t.external_data}
            real = _resolve_inside(base, info.get("location", ""))
            size = real.stat().st_size
            try:
                offset = int(info.get("offset", 0))
                length = int(info["length"]) if "length" in info else size - offset
            except ValueError:
                raise InvalidModelError(f"tensor {t.name!r}: malformed external data offset/length") from None
            if offset < 0 or length < 0 or offset + length > size:
                raise InvalidModelError(
                    f"tensor {t.name!r}: external data range [{offset}, {offset + length}) is outside {real.name} ({size} bytes)"
                )
            f = handles.get(real)
            if f is None:
                f = handles[real] = open(real, "rb")
            f.seek(offset)  # type: ignore[attr-defined]
            t.raw_data = f.read(length)  # type: ignore[attr-defined]
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    finally:
        for f in handles.values():
            f.close()  # type: ignore[attr-defined]
