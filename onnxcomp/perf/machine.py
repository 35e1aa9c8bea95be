"""Where and with what a measurement ran: environment, process memory, model size on disk."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import onnxruntime as ort

from onnxcomp.io.files import external_data_files


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (all sessions together), in MB."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB
    except (ImportError, OSError):
        return None


def model_size_bytes(path: str | os.PathLike[str]) -> int:
    """The model file plus its external-data files."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in external_data_files(p) if f.exists())


def environment() -> dict[str, Any]:
    """Where a measurement was taken (quote it with every number)."""
    return {"onnxruntime": ort.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(), "system": platform.system()}
