"""The README stays true: its pass example runs, and CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

import onnxcomp
from onnxcomp.pipeline.registry import isolated_registry

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    m = re.search(re.escape(f"<!-- readme-test: {marker} -->") + r"\s*```python\n(.*?)```", README, re.S)
    assert m, f"README block {marker!r} not found"
    return m.group(1)


def test_write_a_pass_example_runs(relu_model: onnx.ModelProto, tmp_path: Path) -> None:
    source = _block_after("write-a-pass")
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(source)
    with isolated_registry():
        model, report = onnxcomp.optimize(relu_model, ["rewrite-relu-to-clip"], plugins=[str(plugin)])
        assert "Clip" in [n.op_type for n in model.graph.node]
        assert report.passes[0].stats == {"relus_rewritten": 1}
        assert not report.passes[0].rolled_back  # Clip(0, inf) == Relu, so verification passed
        # A finite max_value changes outputs; the manager must roll the "lossless" pass back.
        model2, report2 = onnxcomp.optimize(relu_model, ["rewrite-relu-to-clip:max_value=0.1"])
        assert report2.passes[0].rolled_back
        assert "Clip" not in [n.op_type for n in model2.graph.node]
    assert np.isfinite(report.verification["cosine"])


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"\*\*Run the tests:\*\*\s*```bash\n(.*?)\n```", README, re.S)
    assert len(commands) == 1
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == commands[0].strip()


def test_readme_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "pip install" in first_screen and "onnxcomp optimize" in first_screen and "onnxcomp bench" in first_screen
    assert "python -m pytest" in first_screen
