"""Where the weights of a single-file model lie inside the file, so they can stay there.

A parsed ``ModelProto`` holds every weight in protobuf memory that is freed only with the
whole message, and every reader copies it again (``raw_data`` access returns new bytes,
onnxruntime copies what it is lent). For a large single-file model that is three or four
copies of the weights before a pass starts. But an initializer's ``raw_data`` is a plain
byte range of the file: `inline_payload_ranges` finds those ranges by walking the
protobuf wire format (tags and lengths only, never the payloads), and
`header_referencing_payloads` (what `onnxcomp.io.files.load_model` uses for large files)
parses the file without them and turns each large initializer into an external
reference into the model file itself — the form the lazy loading of >2 GB external-data
models already streams from (`onnxcomp.io.safety.is_referenced`).

Written by hand because neither onnx nor protobuf exposes field offsets; the wire format
is stable (varint tags, length-delimited submessages) and only three field numbers are
read: ``ModelProto.graph`` (7), ``GraphProto.initializer`` (5), ``TensorProto.name`` (8)
and ``TensorProto.raw_data`` (9).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import onnx

from onnxcomp.io import safety

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9


class WireFormatError(ValueError):
    """The bytes are not the protobuf the walk expects (truncated or malformed)."""


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireFormatError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: mmap.mmap | bytes, pos: int, end: int):
    """``(field number, wire type, value start, value end)`` of each field in ``buf[pos:end]``."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, nxt = _varint(buf, pos, end)
        elif wire == 1:
            nxt = pos + 8
        elif wire == 5:
            nxt = pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            nxt = pos + length
        else:  # groups (3, 4) are not used by onnx.proto
            raise WireFormatError(f"unsupported wire type {wire}")
        if nxt > end:
            raise WireFormatError("field runs past its message")
        yield number, wire, pos, nxt
        pos = nxt


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def without_payloads(path: str | os.PathLike[str], ranges: dict[str, tuple[int, int]]) -> bytes:
    """The model file's bytes with the ``raw_data`` fields of ``ranges`` left out.

    What `inline_payload_ranges` found, re-encoded with the enclosing lengths fixed: the
    header parses to the model with those initializers' payloads missing (to be replaced
    by references), at the cost of the header, never of the weights.
    """
    wanted = {offset for offset, _ in ranges.values()}
    with Path(path).open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:

        def raw(a: int, b: int) -> bytes:
            return bytes(buf[a:b])

        out = bytearray()
        pos = 0
        for number, wire, start, end in _fields(buf, 0, len(buf)):
            if number != _MODEL_GRAPH or wire != 2:
                out += raw(pos, end)
                pos = end
                continue
            graph = bytearray()
            g_pos = start
            for g_number, g_wire, t_start, t_end in _fields(buf, start, end):
                if g_number != _GRAPH_INITIALIZER or g_wire != 2:
                    graph += raw(g_pos, t_end)
                    g_pos = t_end
                    continue
                tensor = bytearray()
                v_pos = t_start
                for t_number, t_wire, v_start, v_end in _fields(buf, t_start, t_end):
                    if not (t_number == _TENSOR_RAW_DATA and t_wire == 2 and v_start in wanted):
                        tensor += raw(v_pos, v_end)
                    v_pos = v_end
                graph += _len_field(_GRAPH_INITIALIZER, bytes(tensor))
                g_pos = t_end
            out += _len_field(_MODEL_GRAPH, bytes(graph))
            pos = end
        return bytes(out)


def inline_payload_ranges(path: str | os.PathLike[str], min_bytes: int = 0) -> dict[str, tuple[int, int]]:
    """``{initializer name: (offset, length)}`` of the main graph's ``raw_data`` payloads.

    Only payloads of at least ``min_bytes`` are listed; an initializer whose name appears
    twice is left out (the parser would merge the messages). Reads tags and lengths only.

    Raises:
        WireFormatError: The file is not well-formed protobuf.
    """
    p = Path(path)
    out: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    with p.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for number, wire, start, end in _fields(buf, 0, len(buf)):
            if number != _MODEL_GRAPH or wire != 2:
                continue
            for g_number, g_wire, t_start, t_end in _fields(buf, start, end):
                if g_number != _GRAPH_INITIALIZER or g_wire != 2:
                    continue
                name, payload = "", None
                for t_number, t_wire, v_start, v_end in _fields(buf, t_start, t_end):
                    if t_wire != 2:
                        continue
                    if t_number == _TENSOR_NAME:
                        name = bytes(buf[v_start:v_end]).decode("utf-8", "replace")
                    elif t_number == _TENSOR_RAW_DATA:
                        payload = (v_start, v_end - v_start)  # the last occurrence wins, as in parsing
                if name in seen:
                    out.pop(name, None)
                    continue
                seen.add(name)
                if payload is not None and payload[1] >= min_bytes:
                    out[name] = payload
    return out


def structure_only(path: str | os.PathLike[str], min_bytes: int = 64 << 10) -> onnx.ModelProto:
    """The model in ``path`` parsed without the payloads of its main-graph initializers of
    ``min_bytes`` or more (dropped, not referenced): enough to read its graph and its
    external-data references, at the cost of the header (a plain parse of a 540 MB file
    takes seconds and twice its size in memory).

    Raises:
        WireFormatError: The file is not the protobuf the walk expects.
        Exception: What protobuf raises for bytes that do not parse as a model.
    """
    ranges = inline_payload_ranges(path, min_bytes)
    model = onnx.ModelProto()
    model.ParseFromString(without_payloads(path, ranges) if ranges else Path(path).read_bytes())
    return model


def header_referencing_payloads(path: Path, min_bytes: int) -> onnx.ModelProto | None:
    """The model in ``path`` with its main-graph initializers of ``min_bytes`` or more left in the file.

    The file is parsed without those payloads (`without_payloads`), and each such
    initializer becomes an external tensor at its byte range of the model file, pinned
    like `safety.reference_external_data` pins external data. So loading never holds the
    weights (a parse would hold the file's bytes and their parsed copy). None when this
    does not apply: no large payload, external data already, a file that cannot be
    referenced safely (a link, several hard links) or does not parse; the caller's normal
    load then runs and reports any problem.
    """
    try:
        safety.resolve_inside(path.parent, path.name)  # the checks every later read repeats
        ranges = inline_payload_ranges(path, min_bytes)
        if not ranges:
            return None
        header = onnx.ModelProto()
        header.ParseFromString(without_payloads(path, ranges))
    except Exception:  # noqa: BLE001 - any failure: the normal load decides and explains
        return None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in safety.iter_tensors(header)):
        return None
    folder = str(path.parent.resolve())
    for t in header.graph.initializer:
        r = ranges.get(t.name)
        if r is None:
            continue
        if t.HasField("raw_data") or safety.expected_nbytes(t) != r[1]:
            return None  # not the tensor the scan saw: let the normal load judge the file
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", path.name), ("offset", str(r[0])), ("length", str(r[1])), (safety.BASEPATH_KEY, folder)):
            t.external_data.add(key=key, value=value)
    return header
