"""Fixtures of the tune tests; makes the folder's helper module (`tune_testutil`) importable."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tune_testutil import Files, classifier


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """The classifier, 16 calibration samples, 48 labelled eval samples (labels: the model's own top-1)."""
    folder = tmp_path_factory.mktemp("tune")
    model = classifier()
    path = folder / "clf.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    x = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(folder / "calib.npz", x=calib)
    np.savez(folder / "eval.npz", x=x, label=logits.argmax(1).astype(np.int64))
    return Files(path, folder / "calib.npz", folder / "eval.npz", folder)


