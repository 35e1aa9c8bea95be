"""Real pretrained models from pinned PyPI wheels (silero-vad, rapidocr), fetched once per session.

The wheels are fetched with ``pip download --no-deps`` into the benchmark's cache
(``ONNXCOMP_REAL_CACHE``, default ``~/.cache/onnxcomp-real``) by the same code as
``bench/real/run.py``. Without the registry the tests skip, saying so — except under
``CI=true``, where CI reaches the registry and a failed fetch is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench"
for _p in (str(_BENCH), str(_BENCH / "real")):  # the benchmark's helper modules (real_*, suite_*)
    if _p not in sys.path:
        sys.path.insert(0, _p)

from real_fetch import DEFAULT_CACHE, RAPIDOCR, SILERO, model_file, wheel_path


@pytest.fixture(scope="session")
def real_cache() -> Path:
    """The cache holding the silero-vad and rapidocr wheels (fetched on first use)."""
    try:
        for pin in (SILERO, RAPIDOCR):
            wheel_path(pin, DEFAULT_CACHE)
    except Exception as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must reach the package registry to fetch the real-model wheels: {e}")
        pytest.skip(f"real-model wheels not available (package registry unreachable?): {e}")
    return DEFAULT_CACHE


@pytest.fixture
def real_model(real_cache: Path, tmp_path: Path):
    """``real_model(name)``: a private copy of corpus model ``name`` (tests never write into the cache)."""

    def copy(name: str) -> Path:
        dst = tmp_path / f"{name}.onnx"
        dst.write_bytes(model_file(name, real_cache).read_bytes())
        return dst

    return copy
