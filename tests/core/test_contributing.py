"""CONTRIBUTING.md stays true: its complete pass is short, loads as a plugin, and works."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxcomp
from onnxcomp.pipeline.registry import isolated_registry
from testutil import parse

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    m = re.search(r"<!-- contributing-test: new-pass -->\s*```python\n(.*?)```", text, re.S)
    assert m, "CONTRIBUTING.md lost its example pass"
    return m.group(1)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_the_example_pass_is_under_30_lines() -> None:
    assert len(_example().strip().splitlines()) < 30


def test_the_example_pass_runs_as_a_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(_example())
    model = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x) => (float[2, 4] y) {
          a = Neg(x)
          b = Neg(a)
          c = Relu(b)
          d = Neg(c)
          y = Neg(d)
        }
        """
    )
    with isolated_registry():
        out, report = onnxcomp.optimize(model, ["remove-double-negation"], plugins=[str(plugin)])
        assert [n.op_type for n in out.graph.node] == ["Relu"]
        assert report.passes[0].stats == {"pairs_removed": 2} and report.passes[0].modified
        assert report.verification["within_tolerance"] is True
        x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
        np.testing.assert_array_equal(_run(out, x), _run(model, x))
        # Nothing to remove: the pass must say so, and the result is the input itself.
        same, report = onnxcomp.optimize(out, ["remove-double-negation"])
        assert not report.passes[0].modified and same is out
