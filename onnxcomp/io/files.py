"""The one place that reads and writes model files.

Loading refuses what is not a model (empty, truncated, Git LFS pointers, pickles, zip
checkpoints) and what is unsafe (see `onnxcomp.io.safety`) with a one-line
`InvalidModelError`, before any large allocation. Inputs whose external data is too large
for one protobuf can be loaded *lazily* (``lazy_external=True``): tensors stay in the
validated data file and are streamed file-to-file whenever a copy is needed (checker,
onnxruntime, the final output), so onnxcomp itself never holds the weights.

Saving is atomic: everything is written into a temporary directory beside the
destination, fsynced, verified (sizes; header and external ranges parse back) and
renamed into place — external-data file first, the model file last — so a crash, a full
disk or a failed check never leaves a partial output. Serialization is deterministic.
The input (and its data file) is never overwritten.

External data is written by our own small writer rather than ``onnx.save(...,
save_as_external_data=True)`` because the library version mutates the caller's
ModelProto in place and (in some releases) appended to an existing data file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.errors import InvalidModelError, UsageError, one_line
from onnxcomp.io import safety
from onnxcomp.io.outputs import check_output_path, external_data_files, remove_stale_temps, temp_prefix

#: Protobuf cannot serialize a message of 2 GiB or more; stay clear of the limit.
PROTO_LIMIT = 2**31 - 2**26
#: Tensors at least this large go to the external data file when external data is used.
EXTERNAL_THRESHOLD = 1024
#: With ``lazy_external``, inputs whose external payloads total at least this many bytes
#: keep their tensors on disk (referenced, not loaded): a model too large for one
#: protobuf is then never held in memory by onnxcomp itself.
LAZY_EXTERNAL_BYTES = PROTO_LIMIT


def _sniff(path: Path) -> None:
    """Recognise common non-model files before protobuf sees them."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InvalidModelError(f"cannot read {path}: {e.strerror or e}") from None
    if not path.is_file():
        raise InvalidModelError(f"{path} is not a file (a folder or device?)")
    if size == 0:
        raise InvalidModelError(f"{path} is empty (0 bytes)")
    with path.open("rb") as f:
        head = f.read(256)
    if head.startswith(b"version https://git-lfs"):
        raise InvalidModelError(f"{path} is a Git LFS pointer, not the model: run `git lfs pull` to fetch it")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InvalidModelError(f"{path} looks like a Python pickle (e.g. a PyTorch checkpoint), not ONNX; pickles are never loaded")
    if head.startswith(b"PK\x03\x04"):
        raise InvalidModelError(f"{path} is a zip archive (e.g. a PyTorch .pt file), not an ONNX model")


def load_model(path: str | os.PathLike[str], *, load_external_data: bool = True, lazy_external: bool = False) -> onnx.ModelProto:
    """Load an ONNX model from ``path`` with clear errors for bad input.

    Order matters for safety: sniff the first bytes (LFS pointer, pickle, zip), parse the
    protobuf *without* external payloads, check IR/opset, nesting depth and that every
    tensor's declared size is backed by stored bytes, check every external reference —
    and only then read external payloads. Nothing is unpickled, ever.

    Args:
        path: The ``.onnx`` file. External data is resolved relative to its folder.
        load_external_data: Load external tensors into memory (default). Without it the
            references are still checked, so a later load cannot escape the folder.
        lazy_external: When external payloads total at least `LAZY_EXTERNAL_BYTES`, keep
            them on disk: tensors stay external, pinned to the model's folder (see
            `onnxcomp.io.safety.reference_external_data`). Everything in onnxcomp reads
            and writes such models by streaming from that file; other consumers should
            write them with `save_model` first.

    Returns:
        The model.

    Raises:
        InvalidModelError: The file is missing, empty, not ONNX, too new/old, declares
            more data than it stores, or references unsafe or missing external data.
    """
    p = Path(path)
    _sniff(p)

    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except RecursionError:
        raise InvalidModelError(f"{p} nests messages too deeply to parse; refusing to load") from None
    except Exception as e:  # protobuf raises DecodeError and friends
        raise InvalidModelError(f"{p} is not a valid ONNX model ({type(e).__name__}: {one_line(e, 300)})") from None
    safety.check_model_header(model, p)
    safety.check_limits(model)
    if not load_external_data:
        safety.check_external_data(model, p.parent, p)
    elif lazy_external and _external_total(model) >= LAZY_EXTERNAL_BYTES:
        safety.reference_external_data(model, p.parent, p)
    else:
        safety.load_external_data_safely(model, p.parent, p)
    return model


def _external_total(model: onnx.ModelProto) -> int:
    total = 0
    for t in safety.iter_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += safety.expected_nbytes(t) or 0
    return total


def model_from(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    """Return a ModelProto from either a ModelProto or a path."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return load_model(model_or_path)


def _tensor_bytes(t: onnx.TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def model_nbytes(model: onnx.ModelProto) -> int:
    """Approximate serialized size without serializing (sums tensor payloads)."""
    total = 0
    for t in safety.iter_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "length":
                    total += int(kv.value)
        elif t.HasField("raw_data"):
            # From the dims: reading t.raw_data would copy the payload, and ByteSize()
            # encodes it (milliseconds per 10 MB).
            n = safety.expected_nbytes(t)
            total += t.ByteSize() if n is None else n
        else:
            total += int(np.prod(t.dims, dtype=np.int64)) * 8
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model cannot be serialized as a single self-contained protobuf.

    That is: too large, or holding tensors still referenced on disk (lazy loading).
    """
    return model_nbytes(model) >= PROTO_LIMIT or any(safety.is_referenced(t) for t in safety.iter_tensors(model))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``model`` to ``path`` atomically; ``model`` itself is not modified.

    Steps: refuse paths that would overwrite an input; remove temporary folders that dead
    processes left for this destination (`onnxcomp.io.outputs.remove_stale_temps`); write
    model (and data file) into a fresh temporary folder ``.NAME.<pid>.<random>.tmp``
    beside the destination; fsync; verify what was written (sizes,
    header parses, external ranges in bounds); rename the data file, then the model file
    last; fsync the folder. On any failure — including Ctrl-C — the temporary folder is
    removed and nothing at the destination changed. Serialization is deterministic, so
    the same model always gives the same bytes.

    Args:
        model: The model to write.
        path: Destination ``.onnx`` path.
        external_data: Store large tensors in ``<name>.data`` beside the model. ``None``
            (default) decides by size: only models too large for one protobuf use it.
        protect: Input files that must never be overwritten (the model being optimized).

    Returns:
        The path written.

    Raises:
        UsageError: The destination is an input, a folder, in a missing folder, or cannot
            be written (read-only folder, disk full, ...).
    """
    out = check_output_path(path, protect)
    remove_stale_temps(out)  # leftovers of a killed run writing the same output
    use_external = needs_external_data(model) if external_data is None else external_data
    data_name = out.name + ".data"
    final_data = out.parent / data_name
    # A previous output at this path may use a data file the new one does not need.
    old_refers = final_data.exists() and _refers_to(out, data_name)
    tmpdir: Path | None = None
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent))
        tmp_model = tmpdir / out.name
        tmp_data = tmpdir / data_name
        to_write = _externalized_copy(model, tmp_data, data_name) if use_external else model
        blob = to_write.SerializeToString(deterministic=True)
        with tmp_model.open("wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        wrote_data = use_external and tmp_data.exists()
        _verify_written(tmp_model, len(blob), wrote_data)
        del blob
        if wrote_data:
            os.replace(tmp_data, final_data)
        os.replace(tmp_model, out)
        if old_refers and not wrote_data:
            final_data.unlink(missing_ok=True)
        _fsync_dir(out.parent)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if tmpdir is not None:
            _remove_tree(tmpdir)
    return out


def _verify_written(model_path: Path, expected_size: int, external: bool) -> None:
    """Check the bytes on disk before they replace anything.

    Cheap on purpose: the size must match what was serialized and, for external data,
    the header must parse and every reference must lie inside the data file. (The
    numeric verification already happened on the in-memory model.)
    """
    size = model_path.stat().st_size
    if size != expected_size:
        raise OSError(f"wrote {size} bytes instead of {expected_size}")
    if external:

        try:
            header = onnx.load_model(str(model_path), load_external_data=False)
        except Exception as e:
            raise OSError(f"written model does not parse back: {one_line(e, 300)}") from None
        try:
            safety.check_external_data(header, model_path.parent, model_path)
        except InvalidModelError as e:
            raise OSError(f"written model fails its own checks: {e}") from None


def _remove_tree(folder: Path) -> None:
    """Remove our temporary folder (flat: it only ever holds the model and data file)."""
    for leftover in folder.glob("*"):
        try:
            leftover.unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass


def _refers_to(model_path: Path, data_name: str) -> bool:
    return any(p.name == data_name for p in external_data_files(model_path)) if model_path.exists() else False


def _externalized_copy(model: onnx.ModelProto, data_path: Path, location: str) -> onnx.ModelProto:
    """A copy of ``model`` whose large tensors point into ``data_path`` (written here).

    The copy shares nothing mutable with ``model``; tensor payloads are streamed to the
    file one at a time, and tensors still referenced on disk (lazy loading) are copied
    file-to-file by the kernel (``copy_file_range``), so peak memory stays at about one
    tensor beyond the model's in-memory part. Small referenced tensors are inlined.
    ``data_path`` is removed again when no tensor needed it.
    """
    tensors = list(safety.iter_tensors(model))
    # Per tensor: None (leave as is), ("ext", offset, length) or ("inline", payload).
    records: list[tuple | None] = []
    with data_path.open("wb") as f:
        offset = 0
        for t in tensors:
            if safety.is_referenced(t):
                src, src_off, n = safety.external_source(t)
                if n < EXTERNAL_THRESHOLD:
                    records.append(("inline", safety.read_external(t)))
                    continue
            elif t.data_location == onnx.TensorProto.EXTERNAL:
                raise InvalidModelError(f"tensor {t.name!r} still references external data that was not loaded")
            else:
                payload_size = len(t.raw_data) if t.HasField("raw_data") else None
                if payload_size is None:
                    n_est = int(np.prod(t.dims, dtype=np.int64)) * 4
                    if n_est < EXTERNAL_THRESHOLD or t.data_type == onnx.TensorProto.STRING:
                        records.append(None)
                        continue
                elif payload_size < EXTERNAL_THRESHOLD:
                    records.append(None)
                    continue
            pad = (-offset) % 4096  # page-align so runtimes can mmap tensors
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            if safety.is_referenced(t):
                f.flush()
                _copy_range(src, src_off, n, f)
            else:
                data = _tensor_bytes(t)
                n = len(data)
                f.write(data)
                del data
            records.append(("ext", offset, n))
            offset += n
        f.flush()
        os.fsync(f.fileno())
    if offset == 0:
        data_path.unlink()
    # Temporarily clear payloads so CopyFrom does not duplicate gigabytes.
    saved: list[tuple[bytes | None, list]] = []
    try:
        for t, rec in zip(tensors, records):
            if rec is None or rec[0] != "ext" or safety.is_referenced(t):
                saved.append((None, []))
                continue
            raw = t.raw_data if t.HasField("raw_data") else None
            saved.append((raw, _take_typed_fields(t)))
            t.ClearField("raw_data")
        shell = onnx.ModelProto()
        shell.CopyFrom(model)
    finally:
        for t, (raw, typed) in zip(tensors, saved):
            if raw is not None:
                t.raw_data = raw
            _restore_typed_fields(t, typed)
    for t, rec in zip(list(safety.iter_tensors(shell)), records):
        if rec is None:
            continue
        del t.external_data[:]
        if rec[0] == "inline":
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = rec[1]
            continue
        t.data_location = onnx.TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        t.external_data.add(key="offset", value=str(rec[1]))
        t.external_data.add(key="length", value=str(rec[2]))
    return shell


def _copy_range(src: Path, offset: int, length: int, dst) -> None:  # noqa: ANN001 - a binary file
    """Append ``length`` bytes of ``src`` from ``offset`` to open file ``dst``, kernel-side
    when possible (no user-space buffer), else in 16 MiB chunks."""
    with src.open("rb") as s:
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < length:
                    n = os.copy_file_range(s.fileno(), dst.fileno(), length - done, offset + done)
                    if n == 0:
                        break
                    done += n
            except OSError:
                pass  # e.g. cross-device on old kernels: fall back below
            dst.seek(0, os.SEEK_END)
        s.seek(offset + done)
        while done < length:
            chunk = s.read(min(1 << 24, length - done))
            if not chunk:
                raise InvalidModelError(f"external data file {src.name} ended early")
            dst.write(chunk)
            done += len(chunk)


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _take_typed_fields(t: onnx.TensorProto) -> list[tuple[str, list]]:
    taken = []
    for name in _TYPED_FIELDS:
        values = getattr(t, name)
        if len(values):
            taken.append((name, list(values)))
            t.ClearField(name)
    return taken


def _restore_typed_fields(t: onnx.TensorProto, taken: list[tuple[str, list]]) -> None:
    for name, values in taken:
        getattr(t, name).extend(values)


def serialize_for_runtime(model: onnx.ModelProto, workdir: Path) -> bytes | str:
    """Bytes for ``onnxruntime.InferenceSession``, or a file path when too large for bytes."""
    if not needs_external_data(model):
        return model.SerializeToString()
    path = workdir / "model.onnx"
    save_model(model, path, external_data=True)
    return str(path)
