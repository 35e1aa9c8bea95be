"""The hostile-input table: every odd or malicious file through the real CLI.

For each row either (a) a clear one-line error with exit 2, nothing written and the
input folder byte-identical, or (b) a valid, verified output with the same interface
and the same outputs in onnxruntime, no temporary leftovers, input untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxcomp.checking.calibration import generate_inputs
from onnxcomp.checking.runtime import make_session, run

from ._cases import CASES, Case
from .conftest import lossless_args, run_cli, snapshot


def _interface(model: onnx.ModelProto) -> tuple:
    """Names, element types and shapes (symbolic names kept) of inputs and outputs."""
    def vi(v: onnx.ValueInfoProto) -> tuple:
        return (v.name, v.type.SerializeToString(deterministic=True))

    return [vi(i) for i in model.graph.input], [vi(o) for o in model.graph.output]


def _outputs(path: Path, feeds: dict) -> list[np.ndarray]:
    sess = make_session(path, optimize=False)
    return list(run(sess, feeds).values())


def _assert_same_outputs(src: Path, out: Path) -> None:
    model = onnx.load(str(src))
    for dim in (2, 3):
        feeds = generate_inputs(model, dim_value=dim, seed=dim)
        ref, got = _outputs(src, feeds), _outputs(out, feeds)
        assert len(ref) == len(got)
        for r, g in zip(ref, got):
            if isinstance(r, list):
                r, g = np.concatenate([np.ravel(a) for a in r]), np.concatenate([np.ravel(a) for a in g])
            np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(r, np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path) -> None:
    work = tmp_path / "case"
    work.mkdir()
    model_path = case.build(work)
    out = model_path.parent / "out.onnx"
    before = snapshot(tmp_path)

    res = run_cli("optimize", model_path, "-o", out, *lossless_args(), *case.args)

    after = snapshot(tmp_path)
    assert "Traceback" not in res.stderr
    if case.expect in ("error", "unverified"):
        assert res.exit_code == (2 if case.expect == "error" else 1), res.stderr
        lines = res.stderr.strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("onnxcomp: error: ")]
        # Exactly one error line; an unverifiable model may also log why it cannot run.
        assert len(errors) == 1 and (len(lines) == 1 or case.expect == "unverified"), res.stderr
        assert case.message.lower() in errors[0].lower(), errors[0]
        assert after == before, "something was written or the input changed"
        assert not (work / "pwned").exists(), "a pickle was unpickled"
        return

    assert res.exit_code == 0, res.stderr
    new = {k for k in after if k not in before}
    assert new <= {str(out.relative_to(tmp_path)), str(out.relative_to(tmp_path)) + ".data"}, new
    assert {k: v for k, v in after.items() if k in before} == before, "the input changed"
    onnx.checker.check_model(str(out), full_check=True)
    src_model, out_model = onnx.load(str(model_path)), onnx.load(str(out))
    assert _interface(out_model) == _interface(src_model)
    if case.name != "custom-op-allowed":
        _assert_same_outputs(model_path, out)


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 35
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("builder", ["pickle_file", "protobuf_bomb", "huge_declared_tensor"])
def test_real_process_exit_code_and_one_line(builder: str, tmp_path: Path) -> None:
    """A few rows through a real ``onnxcomp`` process (not click's in-process runner)."""
    import subprocess
    import sys

    from . import _cases

    src = getattr(_cases, builder)(tmp_path)
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(src), "-o", str(tmp_path / "out.onnx")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("onnxcomp: error: "), proc.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / "pwned").exists()
