"""Safe writing: never overwrite an input, never leave a partial output, same bytes twice."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcomp.errors import UsageError
from onnxcomp.io import files as model_io
from onnxcomp.io.files import load_model, save_model

from ._cases import relu_model, save, with_external
from .conftest import lossless_args, run_cli, snapshot


def _big_weight_model() -> onnx.ModelProto:
    from ._cases import parse

    m = parse("g (float[2,64] x) => (float[2,64] y) { t = Identity(x)\n y = MatMul(t, W) }")
    m.graph.initializer.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "W"))
    return m


# ------------------------------------------------------------- refusing outputs
@pytest.mark.parametrize("how", ["same-path", "relative-path", "hardlink", "symlink"])
def test_output_that_is_the_input_is_refused(how: str, tmp_path: Path) -> None:
    src = save(relu_model(), tmp_path)
    if how == "same-path":
        out = src
    elif how == "relative-path":
        out = tmp_path / "." / "model.onnx"
    elif how == "hardlink":
        out = tmp_path / "alias.onnx"
        os.link(src, out)
    else:
        out = tmp_path / "alias.onnx"
        os.symlink(src, out)
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", out, *lossless_args())
    assert res.exit_code == 2
    assert "refusing to write" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_output_data_file_colliding_with_input_data_is_refused(tmp_path: Path) -> None:
    src = with_external(tmp_path, location="out.onnx.data")
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", tmp_path / "out.onnx", *lossless_args())
    assert res.exit_code == 2 and "out.onnx.data" in res.stderr
    assert snapshot(tmp_path) == before


def test_output_equal_to_input_data_file_is_refused(tmp_path: Path) -> None:
    src = with_external(tmp_path)
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", tmp_path / "model.onnx.data", *lossless_args())
    assert res.exit_code == 2 and "refusing to write" in res.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["missing-folder", "is-a-folder"])
def test_bad_output_location(target: str, tmp_path: Path) -> None:
    src = save(relu_model(), tmp_path)
    out = tmp_path / "nope" / "out.onnx" if target == "missing-folder" else tmp_path / "sub"
    if target == "is-a-folder":
        out.mkdir()
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", out, *lossless_args())
    assert res.exit_code == 2 and res.stderr.startswith("onnxcomp: error: ")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------- failures leave nothing
def _fail_fsync(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize(
    "failure",
    ["read-only-folder", "disk-full", "verify-fails", "interrupted-before-rename", "interrupted-between-renames"],
)
def test_failed_write_leaves_destination_untouched(failure: str, external: bool, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    before = snapshot(tmp_path)
    real_replace = os.replace
    calls: list[str] = []

    def replace_then_interrupt(a, b):  # the data file goes in, then Ctrl-C
        calls.append(str(b))
        if len(calls) == 1 and external:
            return real_replace(a, b)
        raise KeyboardInterrupt

    if failure == "read-only-folder":
        def no_mkdtemp(*a, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        monkeypatch.setattr(model_io.tempfile, "mkdtemp", no_mkdtemp)
    elif failure == "disk-full":
        monkeypatch.setattr(model_io.os, "fsync", _fail_fsync)
    elif failure == "verify-fails":
        def bad_verify(*a, **k):
            raise OSError("written model does not parse back")
        monkeypatch.setattr(model_io, "_verify_written", bad_verify)
    elif failure == "interrupted-before-rename":
        monkeypatch.setattr(model_io.os, "replace", lambda a, b: (_ for _ in ()).throw(KeyboardInterrupt()))
    else:
        monkeypatch.setattr(model_io.os, "replace", replace_then_interrupt)

    expected = KeyboardInterrupt if failure.startswith("interrupted") else UsageError
    with pytest.raises(expected):
        save_model(_big_weight_model(), out, external_data=external)
    after = snapshot(tmp_path)
    if failure == "interrupted-between-renames" and external:
        # The one window that is not atomic: the new data file is in place, the model
        # file still the old one (which used no data file). Nothing temporary remains.
        after.pop("out.onnx.data", None)
    assert after == before, "partial output or temporary files left behind"


def test_disk_full_via_cli_is_one_line_exit_2(tmp_path: Path, monkeypatch) -> None:
    src = save(relu_model(), tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(model_io.os, "fsync", _fail_fsync)
    res = run_cli("optimize", src, "-o", tmp_path / "out.onnx", *lossless_args())
    assert res.exit_code == 2
    assert "No space left" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------- what gets written
def test_same_input_gives_byte_identical_output(tmp_path: Path) -> None:
    src = save(_big_weight_model(), tmp_path)
    for name in ("a.onnx", "b.onnx"):
        res = run_cli("optimize", src, "-o", tmp_path / name, "--seed", "3", *lossless_args())
        assert res.exit_code == 0, res.stderr
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_external_data_written_deterministically_and_aligned(tmp_path: Path) -> None:
    model = _big_weight_model()
    frozen = model.SerializeToString()
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        save_model(model, tmp_path / sub / "m.onnx", external_data=True)
    assert model.SerializeToString() == frozen, "save_model mutated its argument"
    for f in ("m.onnx", "m.onnx.data"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    header = onnx.load(str(tmp_path / "a" / "m.onnx"), load_external_data=False)
    (w,) = [t for t in header.graph.initializer if t.name == "W"]
    info = {kv.key: kv.value for kv in w.external_data}
    assert w.data_location == onnx.TensorProto.EXTERNAL and int(info["offset"]) % 4096 == 0
    back = load_model(tmp_path / "a" / "m.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(back.graph.initializer[0]), numpy_helper.to_array(model.graph.initializer[0]))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["m.onnx", "m.onnx.data"]


def test_overwriting_previous_output_removes_its_stale_data_file(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    save_model(_big_weight_model(), out, external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    save_model(_big_weight_model(), out, external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(str(out), full_check=True)


def test_default_output_beside_input(tmp_path: Path) -> None:
    src = save(relu_model(), tmp_path)
    data = src.read_bytes()
    res = run_cli("optimize", src, *lossless_args())
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "model.opt.onnx").exists() and src.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.opt.onnx"]


def test_external_input_untouched_and_output_valid(tmp_path: Path) -> None:
    src = with_external(tmp_path)
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", tmp_path / "out.onnx", *lossless_args())
    assert res.exit_code == 0, res.stderr
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)


# ------------------------------------------- lazily referenced (>2 GB) inputs
@pytest.fixture
def lazy_everything(monkeypatch):
    """Treat every external-data input as 'too large to load' (the >2 GB code path)."""
    monkeypatch.setattr(model_io, "LAZY_EXTERNAL_BYTES", 0)


def _external_bn_model(folder: Path) -> Path:
    """Conv (64x8x3x3 weight, external) -> BatchNorm, plus an Identity: passes must fire."""
    rng = np.random.default_rng(0)
    from ._cases import parse

    m = parse("""g (float[1,8,5,5] x) => (float[1,64,5,5] y) {
 t = Identity(x)
 c = Conv<pads = [1,1,1,1]>(t, W)
 y = BatchNormalization(c, s, b, mu, v)
}""")
    w = rng.standard_normal((64, 8, 3, 3)).astype(np.float32)
    (folder / "model.onnx.data").write_bytes(w.tobytes())
    t = onnx.TensorProto(name="W", data_type=onnx.TensorProto.FLOAT, dims=w.shape, data_location=onnx.TensorProto.EXTERNAL)
    for k, val in (("location", "model.onnx.data"), ("offset", "0"), ("length", str(w.nbytes))):
        t.external_data.add(key=k, value=val)
    m.graph.initializer.append(t)
    for name, arr in (("s", rng.uniform(0.5, 2, 64)), ("b", rng.standard_normal(64)), ("mu", rng.standard_normal(64)),
                      ("v", rng.uniform(0.5, 2, 64))):
        m.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
    return save(m, folder)


def test_lazy_input_keeps_weights_on_disk(tmp_path: Path, lazy_everything) -> None:
    src = _external_bn_model(tmp_path)
    model = load_model(src, lazy_external=True)
    (w,) = [t for t in model.graph.initializer if t.name == "W"]
    assert w.data_location == onnx.TensorProto.EXTERNAL and not w.raw_data


def test_lazy_input_optimizes_to_a_valid_equal_model(tmp_path: Path, lazy_everything) -> None:
    from onnxcomp.checking.runtime import make_session, run

    src = _external_bn_model(tmp_path)
    before = snapshot(tmp_path)
    res = run_cli("optimize", src, "-o", tmp_path / "out.onnx", *lossless_args())
    assert res.exit_code == 0, res.stderr
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before, "input changed"
    out = tmp_path / "out.onnx"
    onnx.checker.check_model(str(out), full_check=True)
    header = onnx.load(str(out), load_external_data=False)
    assert not any(kv.key == "basepath" for t in header.graph.initializer for kv in t.external_data)
    ops = [n.op_type for n in header.graph.node]
    assert "Identity" not in ops  # the passes did run on the lazily loaded graph
    if "fold-batchnorm" in " ".join(lossless_args()) or lossless_args()[:1] == ["--preset"]:
        assert "BatchNormalization" not in ops  # fold-batchnorm read the on-disk weight
    x = np.random.default_rng(1).standard_normal((1, 8, 5, 5)).astype(np.float32)
    ref = run(make_session(src, optimize=False), {"x": x})["y"]
    got = run(make_session(out, optimize=False), {"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_no_spilled_copies_left_in_temp(tmp_path: Path, monkeypatch, lazy_everything) -> None:
    """Verification spills models to disk for onnxruntime; those copies must go away."""
    import tempfile

    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = _external_bn_model(src_dir)
    res = run_cli("optimize", src, "-o", src_dir / "out.onnx", *lossless_args())
    assert res.exit_code == 0, res.stderr
    import gc

    gc.collect()
    assert list(spill.iterdir()) == []
