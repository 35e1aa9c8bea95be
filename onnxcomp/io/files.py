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
from google.protobuf.message import Message
from onnx import numpy_helper

from onnxcomp.errors import InvalidModelError, UsageError, one_line
from onnxcomp.io import payloads, safety
from onnxcomp.io.outputs import check_output_path, external_data_files, remove_stale_temps, temp_prefix

#: Protobuf cannot serialize a message of 2 GiB or more; stay clear of the limit.
PROTO_LIMIT = 2**31 - 2**26
#: Tensors at least this large go to the external data file when external data is used.
EXTERNAL_THRESHOLD = 1024
#: With ``lazy_external``, inputs whose external payloads total at least this many bytes
#: keep their tensors on disk (referenced, not loaded): a model too large for one
#: protobuf is then never held in memory by onnxcomp itself.
LAZY_EXTERNAL_BYTES = PROTO_LIMIT
#: With ``lazy_external``, single-file models at least this large keep their large
#: weights in the file too (`onnxcomp.io.payloads`): each reader would otherwise copy
#: them again (protobuf memory, decoded arrays, onnxruntime's own copy).
LAZY_INLINE_BYTES = 256 << 20
#: Initializers at least this large are referenced in the file by a lazy single-file load.
LAZY_INLINE_MIN_TENSOR = 64 << 10


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
            `onnxcomp.io.safety.reference_external_data`). A single-file model of at
            least `LAZY_INLINE_BYTES` gets the same treatment: its large initializers
            become references to their byte ranges inside the model file itself
            (`onnxcomp.io.payloads.header_referencing_payloads`). Everything in onnxcomp reads and writes such
            models by streaming from the file; other consumers should write them with
            `save_model` first.

    Returns:
        The model.

    Raises:
        InvalidModelError: The file is missing, empty, not ONNX, too new/old, declares
            more data than it stores, or references unsafe or missing external data.
    """
    p = Path(path)
    _sniff(p)
    if lazy_external and load_external_data and p.stat().st_size >= LAZY_INLINE_BYTES:
        header = payloads.header_referencing_payloads(p, LAZY_INLINE_MIN_TENSOR)
        if header is not None:
            safety.check_model_header(header, p)
            safety.check_limits(header)
            return header

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
    # By size: a model whose weights are still referenced in its input file but fits one
    # protobuf (a lazily loaded single-file model) is written as one file again.
    use_external = model_nbytes(model) >= PROTO_LIMIT if external_data is None else external_data
    data_name = out.name + ".data"
    final_data = out.parent / data_name
    # A previous output at this path may use a data file the new one does not need.
    old_refers = final_data.exists() and _refers_to(out, data_name)
    tmpdir: Path | None = None
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent))
        tmp_model = tmpdir / out.name
        tmp_data = tmpdir / data_name
        if use_external:
            blob = _externalized_copy(model, tmp_data, data_name).SerializeToString(deterministic=True)
        else:
            blob = _serialize_inlined(model)
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

    The copy shares nothing mutable with ``model``, and ``model`` is not touched (protobuf
    frees memory only with a whole message, so clearing and restoring a payload would
    hold it twice). Main-graph initializers enter the copy as payload-free headers; their
    payloads are streamed to the file one at a time, and tensors still referenced on
    disk (lazy loading) are copied file-to-file by the kernel (``copy_file_range``), so
    peak memory stays at about one tensor beyond the model's in-memory part. Small
    referenced tensors are inlined. ``data_path`` is removed again when no tensor needed it.
    """
    shell = onnx.ModelProto()
    copy_fields_except(model, shell, {"graph"})
    copy_fields_except(model.graph, shell.graph, {"initializer"})
    with data_path.open("wb") as f:
        end = 0
        for t in model.graph.initializer:
            new = shell.graph.initializer.add()
            if _external_size(t) is None:
                new.CopyFrom(t)
                continue
            copy_fields_except(t, new, {"raw_data", "external_data", "data_location", *_TYPED_FIELDS})
            end = _externalize(t, new, f, end, location)
        # Tensors elsewhere (subgraphs, functions, Constant attributes) are rare and small:
        # the copy already holds them, so they are moved out of the copy itself.
        for t in safety.iter_tensors(shell):
            if t.data_location == onnx.TensorProto.EXTERNAL and not safety.is_referenced(t):
                continue  # written above
            if _external_size(t) is not None:
                end = _externalize(t, t, f, end, location)
        f.flush()
        os.fsync(f.fileno())
    if end == 0:
        data_path.unlink()
    return shell


def copy_fields_except(src: Message, dst: Message, skip: Iterable[str]) -> None:
    """Copy every set field of ``src`` except those named in ``skip`` into the empty ``dst``.

    How a model is copied without its weights (``skip={"initializer"}`` on the graph)
    without serializing or duplicating them.
    """
    skip = set(skip)
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _external_size(t: onnx.TensorProto) -> int | None:
    """Payload bytes of ``t`` if it goes to the data file (referenced or large), else None."""
    if safety.is_referenced(t):
        return safety.external_source(t)[2]
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise InvalidModelError(f"tensor {t.name!r} still references external data that was not loaded")
    if t.HasField("raw_data"):
        # From the dims: reading t.raw_data would copy the payload.
        n = safety.expected_nbytes(t)
        n = len(t.raw_data) if n is None else n
    elif t.data_type == onnx.TensorProto.STRING:
        return None
    else:
        n = int(np.prod(t.dims, dtype=np.int64)) * 4
    return n if n >= EXTERNAL_THRESHOLD else None


def _externalize(src: onnx.TensorProto, dst: onnx.TensorProto, f, end: int, location: str) -> int:
    """Append ``src``'s payload to ``f`` (page-aligned) and make ``dst`` point at it; returns the new end.

    A small referenced tensor is inlined into ``dst`` instead.
    """
    if safety.is_referenced(src):
        path, offset, n = safety.external_source(src)
        if n < EXTERNAL_THRESHOLD:
            payload = safety.read_external(src)
            del dst.external_data[:]
            dst.ClearField("data_location")
            dst.raw_data = payload
            return end
    pad = (-end) % 4096  # page-align so runtimes can mmap tensors
    if pad:
        f.write(b"\0" * pad)
        end += pad
    if safety.is_referenced(src):
        f.flush()
        _copy_range(path, offset, n, f)
    else:
        data = _tensor_bytes(src)
        n = len(data)
        f.write(data)
        del data
        for name in ("raw_data", *_TYPED_FIELDS):
            dst.ClearField(name)
    del dst.external_data[:]
    dst.data_location = onnx.TensorProto.EXTERNAL
    dst.external_data.add(key="location", value=location)
    dst.external_data.add(key="offset", value=str(end))
    dst.external_data.add(key="length", value=str(n))
    return end + n


def with_payloads(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` complete in memory: a copy with referenced payloads read in, when it fits
    one protobuf; otherwise (or when nothing is referenced) ``model`` itself."""
    if model_nbytes(model) >= PROTO_LIMIT or not any(safety.is_referenced(t) for t in safety.iter_tensors(model)):
        return model
    out = onnx.ModelProto()
    out.ParseFromString(_serialize_inlined(model))
    return out


def _serialize_inlined(model: onnx.ModelProto) -> bytes:
    """``model`` serialized as one file, the payloads of referenced tensors read in.

    The referenced tensors get their payloads for the serialization only (and their
    references back afterwards), rather than through a copy of the whole model, which
    would hold every other payload twice.
    """
    referenced = [t for t in safety.iter_tensors(model) if safety.is_referenced(t)]
    saved = [list(t.external_data) for t in referenced]
    try:
        for t in referenced:
            payload = safety.read_external(t)
            del t.external_data[:]
            t.ClearField("data_location")  # DEFAULT, and not written: the bytes of an unreferenced load
            t.raw_data = payload
            del payload
        return model.SerializeToString(deterministic=True)
    finally:
        for t, entries in zip(referenced, saved):
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.extend(entries)


def _copy_range(src: Path, offset: int, length: int, dst) -> None:
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


def serialize_for_runtime(model: onnx.ModelProto, workdir: Path) -> bytes | str:
    """Bytes for ``onnxruntime.InferenceSession``, or a file path when too large for bytes."""
    if not needs_external_data(model):
        return model.SerializeToString()
    path = workdir / "model.onnx"
    save_model(model, path, external_data=True)
    return str(path)
