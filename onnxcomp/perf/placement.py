"""Which execution provider runs what: node placement from onnxruntime profiles, EP warnings."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxcomp.checking.runtime import open_session
from onnxcomp.perf.feeds import Feeds
from onnxcomp.perf.timing import PlainRunner

#: Ops that mark a quantized (QDQ or QOperator) model.
QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})


def quantized_node_count(model: onnx.ModelProto) -> int:
    """Nodes that belong to INT8 execution: Q/DQ pairs, QLinear* and *Integer ops."""
    return sum(1 for n in model.graph.node if n.op_type in QUANT_OPS or n.op_type.startswith("QLinear"))


def ep_warnings(model: onnx.ModelProto, providers: Sequence[str]) -> list[str]:
    """Warnings about optimizations that do not pay on the chosen EP.

    The CUDA EP has no INT8 kernels for QDQ Conv/MatMul: it runs the float op between
    Dequantize and Quantize (or falls back to the CPU EP), so an INT8 model is usually
    *slower* there than the float model. TensorRT does run QDQ models in INT8.
    """
    out: list[str] = []
    q = quantized_node_count(model)
    if q and providers and providers[0] == "CUDAExecutionProvider":
        out.append(f"model has {q} quantization nodes (INT8 QDQ) but the CUDA EP has no INT8 kernels for them: "
                   "it runs float math between Q/DQ or falls back to the CPU EP, so INT8 rarely pays here "
                   "(use the TensorRT EP for INT8 on NVIDIA GPUs); see node placement")
    return out


def placement_from_profile(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Which EP ran which op types, from onnxruntime profiling events.

    Node events (``cat == "Node"``) carry ``args.provider`` and ``args.op_name``; each node
    appears once per phase and run, so nodes are counted by distinct node name.

    Returns:
        ``{provider: {op_type: node_count}}``.
    """
    seen: dict[str, tuple[str, str]] = {}
    for ev in events:
        if ev.get("cat") != "Node":
            continue
        args = ev.get("args") or {}
        provider, op = args.get("provider"), args.get("op_name")
        if not provider or not op:
            continue
        node = str(ev.get("name", "")).rsplit("_", 2)[0] if str(ev.get("name", "")).endswith("_kernel_time") else str(ev.get("name", ""))
        seen[node] = (provider, op)
    out: dict[str, dict[str, int]] = {}
    for provider, op in seen.values():
        out.setdefault(provider, {}).setdefault(op, 0)
        out[provider][op] += 1
    return {p: dict(sorted(ops.items())) for p, ops in sorted(out.items())}


def node_placement(
    path: str, providers: Sequence[str], feeds: Feeds, *, threads: int | None = None, device_id: int = 0
) -> dict[str, dict[str, int]]:
    """Run ``path`` once with onnxruntime profiling and report the EP of every op type.

    This is what actually ran after onnxruntime's own graph optimizations and partitioning
    (fused ops show up under their fused names).
    """
    with tempfile.TemporaryDirectory(prefix="onnxcomp-profile-") as tmp:
        sess = open_session(path, providers, threads=threads, spinning=False, device_id=device_id,
                            profile_prefix=str(Path(tmp) / "profile"))
        PlainRunner(sess, feeds)()
        prof = sess.end_profiling()
        try:
            events = json.loads(Path(prof).read_text())
        finally:
            Path(prof).unlink(missing_ok=True)
    if isinstance(events, dict):  # some builds wrap events in {"traceEvents": [...]}
        events = events.get("traceEvents", [])
    return placement_from_profile(events)
