"""Pytest configuration for the models tests."""

from __future__ import annotations

import sys
from pathlib import Path

# Make ``import models`` work when pytest is run without ``python -m`` (which
# would put the repo root on sys.path itself).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def pytest_configure(config) -> None:  # noqa: ANN001 - pytest hook signature
    """Register the marker used by tests that train the digits model."""
    config.addinivalue_line("markers", "trains_digits: trains the (small) digits CNN for a few seconds")
