"""Make the folder's helper module (`data_testutil`) importable under --import-mode=importlib."""

import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def save(tmp_path: Path):
    """``save(model, name) -> path`` in the test's folder."""
    def _save(model: onnx.ModelProto, name: str) -> Path:
        p = tmp_path / name
        onnx.save(model, str(p))
        return p
    return _save
