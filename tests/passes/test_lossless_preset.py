"""The ``lossless`` preset end to end (API and CLI)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from lossless_testutil import assert_same_outputs, ops, parse

import onnxcomp


def test_preset_reaches_fixed_point_on_mixed_graph() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x) => (float[1,3,4,4] y) <float[3,3,1,1] w = {1,0,0, 0,1,0, 0,0,1},
        float[3] g1 = {1, 2, 3}, float[3] b1 = {0, 1, 0}, float[3] m1 = {0, 0, 1}, float[3] v1 = {1, 1, 1}> {
      i = Identity(x)
      s = Shape(i)
      c = Conv(i, w)
      n = BatchNormalization(c, g1, b1, m1, v1)
      r1 = Relu(n)
      r2 = Relu(n)
      a = Add(r1, r2)
      d = Dropout(a)
      y = Reshape(d, s)
    }""")
    out, report = onnxcomp.optimize(m, preset="lossless")
    assert ops(out) == {"Conv": 1, "Relu": 1, "Add": 1}
    assert report.verification["within_tolerance"]
    assert_same_outputs(m, out, atol=1e-5, rtol=1e-5)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.torch
def test_cli_removes_all_batchnorm_and_identity_of_raw_torch_export(tmp_path: Path) -> None:
    models = pytest.importorskip("models")
    from click.testing import CliRunner

    from onnxcomp.checking.calibration import generate_inputs
    from onnxcomp.cli import main
    from onnxcomp.checking.verify import evaluate

    src = tmp_path / "mbv2.onnx"
    models.export("mobilenetv2", src, small=True, keep_batchnorm=True)
    before = ops(onnx.load(str(src)))
    assert before["BatchNormalization"] > 0 and before["Identity"] > 0  # the test needs both
    digest = _sha(src)
    dst = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["optimize", str(src), "-o", str(dst)])
    assert result.exit_code == 0, result.output
    assert _sha(src) == digest  # the input file is byte-identical
    out = onnx.load(str(dst))
    after = ops(out)
    assert "BatchNormalization" not in after and "Identity" not in after
    assert len(out.graph.node) < sum(before.values())
    feeds = generate_inputs(onnx.load(str(src)), seed=1)
    ref, got = evaluate(onnx.load(str(src)), [feeds])[0], evaluate(out, [feeds])[0]
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-4, rtol=0)
