"""onnxruntime sessions: execution-provider selection, threads, and running models.

This is the one module that builds ``ort.SessionOptions`` and ``ort.InferenceSession``:
verification, calibration and the benchmarks (`onnxcomp.perf`) all get their sessions
from `make_session` / `open_session`, so every session is configured in one place.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.errors import InvalidModelError, UsageError, one_line
from onnxcomp.ir.weightless import (
    PLACEHOLDER_LOCATION,
    ArrayCache,
    RuntimeParts,
    in_place_bytes,
    references_files,
    runtime_parts,
)

log = logging.getLogger("onnxcomp")

#: Where onnxruntime looks for the external-data files of a model given as bytes.
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"

EP_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}

#: Execution providers whose tensors live in CUDA device memory: they take a ``device_id``
#: provider option, and IO binding puts their inputs and outputs on a ``cuda`` device.
CUDA_DEVICE_EPS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def resolve_providers(ep: str | Sequence[str] | None) -> list[str]:
    """Map ``cpu``/``cuda``/... (or full provider names) to available providers.

    A non-CPU provider gets the CPU provider appended as fallback for unsupported ops.

    Raises:
        UsageError: The provider is unknown or not available in this onnxruntime build,
            listing the available ones.
    """
    wanted = [ep] if isinstance(ep, str) or ep is None else list(ep)
    available = ort.get_available_providers()
    out: list[str] = []
    for w in wanted:
        name = EP_ALIASES.get((w or "cpu").lower(), w or "CPUExecutionProvider")
        if name not in available:
            short = ", ".join(sorted({k for k, v in EP_ALIASES.items() if v in available} | set(available)))
            hint = " (install the `cuda` extra: pip install 'onnxcomp[cuda]')" if name == "CUDAExecutionProvider" else ""
            raise UsageError(f"execution provider {w!r} is not available in this onnxruntime{hint}; available: {short}")
        out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def parse_ep(ep: str | None) -> tuple[str, int]:
    """``"cuda:1"`` → (``"cuda"``, 1); device 0 by default.

    Raises:
        UsageError: The device part is not a number.
    """
    name, _, dev = (ep or "cpu").partition(":")
    if dev and not dev.isdigit():
        raise UsageError(f"bad execution provider {ep!r}: expected NAME or NAME:DEVICE_ID (e.g. cuda:1)")
    return name, int(dev or 0)


def providers_for(ep: str) -> list[str]:
    """`resolve_providers`, plus the CUDA EP behind TensorRT when available.

    TensorRT leaves unsupported subgraphs to the next provider in the list; without CUDA
    in between they would run on the CPU and a benchmark would mostly time copies.
    """
    providers = resolve_providers(ep)
    if providers[0] == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers() \
            and "CUDAExecutionProvider" not in providers:
        providers.insert(1, "CUDAExecutionProvider")
    return providers


def provider_args(providers: Sequence[str], device_id: int | None) -> list[str | tuple[str, dict[str, str]]]:
    """The ``providers=`` argument of an InferenceSession.

    With a ``device_id``, the CUDA-memory EPs get it as a provider option; without one every
    provider is passed by name (onnxruntime's default device).
    """
    if device_id is None:
        return list(providers)
    return [(p, {"device_id": str(device_id)}) if p in CUDA_DEVICE_EPS else p for p in providers]


def _session_options(
    *, threads: int | None, optimize: bool, one_shot: bool, spinning: bool, profile_prefix: str | None
) -> ort.SessionOptions:
    """SessionOptions for `make_session` (see its arguments)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    # Collected first so that one_shot and spinning=False, which share a key, set it once.
    config: dict[str, str] = {}
    if one_shot:
        config["session.intra_op.allow_spinning"] = "0"
        config["session.disable_prepacking"] = "1"
    if not spinning:
        config["session.intra_op.allow_spinning"] = "0"
        config["session.inter_op.allow_spinning"] = "0"
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def make_session(
    model: onnx.ModelProto | RuntimeParts | str | Path | bytes,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    optimize: bool = True,
    workdir: Path | None = None,
    lent: Mapping[str, np.ndarray] | None = None,
    cache: ArrayCache | None = None,
    one_shot: bool = False,
    spinning: bool = True,
    profile_prefix: str | None = None,
    device_id: int | None = None,
) -> ort.InferenceSession:
    """Create one InferenceSession.

    Args:
        model: A ModelProto, its `onnxcomp.ir.weightless.RuntimeParts`, serialized bytes, or a path.
        providers: Resolved provider names (see `resolve_providers`).
        threads: Intra-op threads (None: onnxruntime's default).
        optimize: Enable onnxruntime graph optimizations (disable to run the graph as
            written, e.g. for verification).
        workdir: Where to spill models too large to pass as bytes.
        lent: Values of payload-free initializer headers in ``model`` (see
            `onnxcomp.ir.weightless.runtime_parts`).
        cache: Decoded weights to reuse (and fill).
        one_shot: The session runs only a few times (verification): idle worker threads
            do not spin (spinning only steals the CPU from other work) and weights are not
            prepacked (a packed copy costs memory and time that one run never earns back).
        spinning: False: neither the intra-op nor the inter-op thread pool spins while
            idle (several sessions timed in turn would otherwise steal each other's cores).
        profile_prefix: Turn on onnxruntime profiling, writing to files with this prefix.
        device_id: Device of the CUDA-memory EPs (see `provider_args`); None: onnxruntime's default.
    """
    so = _session_options(threads=threads, optimize=optimize, one_shot=one_shot, spinning=spinning,
                          profile_prefix=profile_prefix)
    pargs = provider_args(providers, device_id)
    if isinstance(model, onnx.ModelProto):
        from onnxcomp.io.files import PROTO_LIMIT

        # The weights are lent as arrays, not serialized and parsed again (see skeleton),
        # except weights still on disk: onnxruntime reads those from the user's files,
        # where they are, or else from a copy with external data.
        parts = runtime_parts(model, lent, cache) if lent or not references_files(model) else None
        if parts is None:
            here = in_place_bytes(model)
            if here is not None:
                so.add_session_config_entry(EXTERNAL_FOLDER_KEY, here[1])
                return ort.InferenceSession(here[0], sess_options=so, providers=pargs)
        if parts is None or (len(parts.model_bytes) >= PROTO_LIMIT and not lent):
            return _session_from_file(model, so, pargs, workdir)
        model = parts
    if isinstance(model, RuntimeParts):
        return _lent_session(model, lambda: _session_options(
            threads=threads, optimize=optimize, one_shot=one_shot, spinning=spinning, profile_prefix=profile_prefix), pargs)
    if isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, sess_options=so, providers=pargs)


#: Lent arrays of at least this many bytes in all are read in place (`_lent_session`);
#: smaller ones are copied: a copy of a few MB costs nothing, and where a graph
#: optimization must read a lent weight (QDQ weights of CNNs, measured in 1 of 10
#: sessions of the test suite) the in-place attempt is a session built for nothing.
IN_PLACE_BYTES = 32 << 20


@functools.cache
def _placeholder_folder() -> str:
    """A folder holding an empty file named `PLACEHOLDER_LOCATION` (removed at exit).

    onnxruntime checks that the external-data file of every initializer exists, even of
    those whose values `SessionOptions.add_initializer` supplies; an empty one also makes
    any attempt to read a lent weight from it fail loudly instead of reading garbage.
    """
    folder = tempfile.TemporaryDirectory(prefix="onnxcomp-lent-")
    _PLACEHOLDER_FOLDERS.append(folder)  # kept alive until exit, then removed
    (Path(folder.name) / PLACEHOLDER_LOCATION).touch()
    return folder.name


_PLACEHOLDER_FOLDERS: list[tempfile.TemporaryDirectory] = []


def _lent_session(
    parts: RuntimeParts, options: Callable[[], ort.SessionOptions], providers: Sequence[str | tuple[str, dict[str, str]]]
) -> ort.InferenceSession:
    """A session on ``parts`` that reads the lent arrays where they are (from `IN_PLACE_BYTES`).

    ``add_initializer`` hands onnxruntime the arrays themselves; ``add_external_initializers``
    makes it copy them (measured with onnxruntime 1.32: a 400 MB weight cost +400 MB at
    session creation, against +9 MB). A graph optimization that reads a lent weight's
    values (constant folding of ``Transpose(weight)``, say) cannot see such an array and
    fails; the session is then built again the copying way.
    """
    in_place = bool(parts.names) and sum(a.nbytes for a in parts.arrays) >= IN_PLACE_BYTES
    so = options()
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in parts.arrays]
    if in_place:
        so.log_severity_level = 4  # a failure here is expected and handled: not for the user's terminal
        so.add_session_config_entry(EXTERNAL_FOLDER_KEY, _placeholder_folder())
        for name, value in zip(parts.names, values):
            so.add_initializer(name, value)
    elif parts.names:
        so.add_external_initializers(parts.names, values)
    try:
        session = ort.InferenceSession(parts.model_bytes, sess_options=so, providers=list(providers))
    except Exception as e:
        if not in_place:
            raise
        log.debug("onnxruntime could not use %d lent weights in place (%s); copying them", len(parts.names), one_line(e, 200))
        so = options()
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in parts.arrays]
        so.add_external_initializers(parts.names, values)
        session = ort.InferenceSession(parts.model_bytes, sess_options=so, providers=list(providers))
    # The session reads these arrays (through these OrtValues, which it does not own):
    # they must live as long as it does.
    session._onnxcomp_borrowed = (parts, values)
    return session


def _session_from_file(
    model: onnx.ModelProto, so: ort.SessionOptions, providers: Sequence[str | tuple[str, dict[str, str]]],
    workdir: Path | None,
) -> ort.InferenceSession:
    """A session on ``model`` saved as a file (external data onnxruntime can map)."""
    from onnxcomp.io.files import serialize_for_runtime

    if workdir is not None:
        return ort.InferenceSession(serialize_for_runtime(model, workdir), sess_options=so, providers=list(providers))
    # The spilled copy is only needed while the session loads it: remove it after.
    with tempfile.TemporaryDirectory(prefix="onnxcomp-ort-") as tmp:
        return ort.InferenceSession(serialize_for_runtime(model, Path(tmp)), sess_options=so, providers=list(providers))


def open_session(
    path: str,
    providers: Sequence[str],
    *,
    threads: int | None,
    spinning: bool,
    device_id: int = 0,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """A fully optimized session on a model file, as deployed (for timing); failures become one line.

    Raises:
        InvalidModelError: onnxruntime cannot load the model on these providers.
    """
    try:
        return make_session(path, providers=providers, threads=threads, spinning=spinning,
                            profile_prefix=profile_prefix, device_id=device_id)
    except Exception as e:
        raise InvalidModelError(f"onnxruntime cannot load {path}: {one_line(e, 300)}") from None


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``session`` on ``feeds`` (extra keys ignored), outputs by name."""
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    outs = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outs))
