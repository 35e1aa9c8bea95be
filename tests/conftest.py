"""Shared fixtures (definitions live in `testutil`, importable from any test)."""

from __future__ import annotations

import os

import onnx
import pytest

# Keep every onnxruntime session small: the suite runs with `-n 2` on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import testutil  # noqa: E402


@pytest.fixture
def relu_model() -> onnx.ModelProto:
    """x -> Relu -> Identity -> y, plus a dead Sigmoid."""
    return testutil.relu_model()


@pytest.fixture
def conv_model() -> onnx.ModelProto:
    """A small conv net with constant weights (deterministic)."""
    return testutil.conv_model()
