"""onnxruntime sessions: execution-provider selection, threads, and running models."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.errors import UsageError
from onnxcomp.ir.weightless import ArrayCache, RuntimeParts, references_files, runtime_parts

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
    """
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if one_shot:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        from onnxcomp.io.files import PROTO_LIMIT

        # The weights are lent as arrays, not serialized and parsed again (see skeleton),
        # except weights still on disk: onnxruntime maps those from a file without a copy.
        parts = runtime_parts(model, lent, cache) if lent or not references_files(model) else None
        if parts is None or (len(parts.model_bytes) >= PROTO_LIMIT and not lent):
            return _session_from_file(model, so, providers, workdir)
        model = parts
    if isinstance(model, RuntimeParts):
        if model.names:
            so.add_external_initializers(model.names, [ort.OrtValue.ortvalue_from_numpy(a) for a in model.arrays])
        session = ort.InferenceSession(model.model_bytes, sess_options=so, providers=list(providers))
        session._onnxcomp_borrowed = model  # the session reads these arrays: keep them alive
        return session
    if isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, sess_options=so, providers=list(providers))


def _session_from_file(
    model: onnx.ModelProto, so: ort.SessionOptions, providers: Sequence[str], workdir: Path | None
) -> ort.InferenceSession:
    """A session on ``model`` saved as a file (external data onnxruntime can map)."""
    from onnxcomp.io.files import serialize_for_runtime

    if workdir is not None:
        return ort.InferenceSession(serialize_for_runtime(model, workdir), sess_options=so, providers=list(providers))
    # The spilled copy is only needed while the session loads it: remove it after.
    with tempfile.TemporaryDirectory(prefix="onnxcomp-ort-") as tmp:
        return ort.InferenceSession(serialize_for_runtime(model, Path(tmp)), sess_options=so, providers=list(providers))


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``session`` on ``feeds`` (extra keys ignored), outputs by name."""
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    outs = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outs))
