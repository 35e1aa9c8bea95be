"""Fake benchmark rows/documents for the report, findings and plot tests."""

from __future__ import annotations

from typing import Any


def row(model: str, tool: str, family: str, category: str, *, ratio: float | None = 1.0, cosine: float | None = 1.0,
        accuracy: float | None = None, status: str = "ok", error: str | None = None, label: str | None = None
        ) -> dict[str, Any]:
    """A row as `bench/run.py` writes it; ``ratio``/``cosine`` None = not measured."""
    measured = status == "ok"
    return {
        "model": model, "tool": tool, "label": label or tool, "family": family, "category": category,
        "status": status, "error": error, "tool_seconds": 1.5, "path": None, "notes": [], "details": {},
        "cost": {"size_bytes": 2_000_000, "params": 500_000, "flops": 3_000_000_000, "nodes": 10,
                 "flops_partial": tool == "ort:quantize_dynamic"} if measured else None,
        "fidelity": ({"cosine": cosine, "max_abs_diff": 0.1, "snr_db": 30.0, "samples": 16, "top1_agreement": 0.9,
                      "accuracy_reference": 0.98 if accuracy is not None else None, "accuracy": accuracy}
                     if measured and cosine is not None else None),
        "timing": ({"p50_ms": 10.0 * ratio, "p90_ms": 11.0 * ratio, "latency_ratio": ratio,
                    "paired_latency_ratio": ratio, "rounds": 20} if measured and ratio is not None else None),
    }


def doc(rows: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """A whole results document around ``rows``."""
    return {
        "schema": 1, "command": "python bench/run.py --quick", "mode": "quick", "generated_utc": "2026-01-01 00:00 UTC",
        "duration_s": 12.0,
        "environment": {"cpu": "Test CPU", "logical_cpus": 2, "affinity_cpus": 2, "ram_gib": 24.0, "os": "Linux",
                        "python": "3.11", "versions": {"onnxruntime": "1.32.0", "onnxsim": None}},
        "load_average": {"start": [0.1, 0.2, 0.3], "end": [0.4, 0.5, 0.6]},
        "config": {"ep": "cpu", "providers": ["CPUExecutionProvider"], "threads": 2, "ratio": 0.5, "warmup": 3,
                   "min_rounds": 15, "duration_s": 6.0, "small": False},
        "models": [{"name": m, "shape": "float32 [1, 3, 224, 224]", "calib_samples": 16, "eval_data": "16 samples",
                    "timing": {"rounds": 20, "providers": ["CPUExecutionProvider"], "threads": 2}} for m in models],
        "rows": rows,
    }
