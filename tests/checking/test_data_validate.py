"""Data is validated against the model when loaded: names, dtype, rank, fixed dims, finite
values; one line naming role, input, expected and found. Per-input sample axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_testutil import image_model, relu_model, silero_feed, silero_like

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.checking.data_validate import (
    SAMPLE_AXES_KEY,
    InputSpec,
    default_sample_axis,
)
from onnxcomp.errors import CalibrationDataError

MODEL = relu_model(["N", 3, 8])
GOOD = np.zeros((4, 3, 8), np.float32)


def _error(source, model=MODEL, **kw) -> str:
    with pytest.raises(CalibrationDataError) as e:
        CalibrationData.from_source(source, model, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("bad, found", [
    (np.full((4, 3, 8), np.nan, np.float32), "96 NaN of 96 values"),
    (np.where(np.arange(96).reshape(4, 3, 8) == 50, np.nan, 0).astype(np.float32), "1 NaN of 96 values"),
    (np.where(np.arange(96).reshape(4, 3, 8) == 3, -np.inf, 0).astype(np.float32), "1 inf of 96 values"),
])
def test_non_finite_values_refused(bad: np.ndarray, found: str) -> None:
    msg = _error({"x": bad})
    assert msg == f"calibration data: input 'x': expected finite values, found {found}"


@pytest.mark.parametrize("bad, found", [
    (np.zeros((4, 3, 8)), "float64 [4, 3, 8]"),            # dtype
    (np.zeros((4, 3, 8, 1), np.float32), "float32 [4, 3, 8, 1]"),  # rank
    (np.zeros((4, 3, 9), np.float32), "float32 [4, 3, 9]"),  # a fixed dim
    (np.zeros((4, 3, 8), np.int64), "int64 [4, 3, 8]"),
])
def test_dtype_rank_and_fixed_dims_refused(bad: np.ndarray, found: str) -> None:
    assert _error({"x": bad}, role="train") == f"train data: input 'x': expected float32 [N, 3, 8], found {found}"


def test_missing_and_unknown_inputs_named() -> None:
    assert "no array for input 'x'" in _error({"y": GOOD}, role="eval")
    assert _error({"y": GOOD}, role="eval").startswith("eval data")
    assert "array 'extra' is not a model input" in _error({"x": GOOD, "extra": GOOD})
    CalibrationData.from_source({"x": GOOD, "label": np.arange(4)}, MODEL)  # labels are no input


def test_a_bad_file_in_a_folder_fails_before_any_batch(tmp_path: Path) -> None:
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=GOOD)
    np.savez(tmp_path / "3.npz", x=np.zeros((4, 3, 9), np.float32))  # the last file: wrong shape
    msg = _error(tmp_path)
    assert "3.npz" in msg and "expected float32 [N, 3, 8], found float32 [4, 3, 9]" in msg
    np.savez(tmp_path / "3.npz", x=np.where(np.arange(96).reshape(4, 3, 8) == 95, np.nan, 0).astype(np.float32))
    assert "3.npz" in _error(tmp_path) and "1 NaN" in _error(tmp_path)


def test_files_are_validated_again_as_they_are_read(tmp_path: Path) -> None:
    p = tmp_path / "c.npz"
    np.savez(p, x=GOOD)
    data = CalibrationData.from_source(p, MODEL)
    np.savez(p, x=np.full((4, 3, 8), np.inf, np.float32))  # changed after loading
    with pytest.raises(CalibrationDataError, match="input 'x' in .*c.npz: expected finite values, found 96 inf"):
        list(data)


def test_a_fixed_batch_is_no_fixed_dim_of_the_data() -> None:
    # [1, 3, 8]: batch 1 on axis 0; 4 stacked samples give 4 batches of 1.
    data = CalibrationData.from_source({"x": GOOD}, relu_model([1, 3, 8]))
    assert [b["x"].shape for b in data] == [(1, 3, 8)] * 4


def test_reader_batches_are_validated_and_fed_as_given() -> None:
    class Reader:
        def __init__(self, items):
            self.items = list(items)

        def get_next(self):
            return self.items.pop(0) if self.items else None

    ok = CalibrationData.from_source(Reader([{"x": GOOD}, {"x": GOOD[:1]}]), MODEL)
    assert [b["x"].shape[0] for b in ok] == [4, 1] and ok.holdout() is None and ok.num_samples is None
    bad = CalibrationData.from_source(Reader([{"x": GOOD.astype(np.float64)}]), MODEL)
    with pytest.raises(CalibrationDataError, match="in CalibrationDataReader batch 0: expected float32"):
        list(bad)


@pytest.mark.parametrize("shape, axis", [
    (("batch", 3, "h", "w"), 0), ((1, 3, None, None), 0), ((-1, 3, "?", "?"), 0),
    ((2, None, 128), 1), ((2, "batch_size", 128), 1), ((), None), ((4, 3), 0),
])
def test_default_sample_axis(shape: tuple, axis: int | None) -> None:
    assert default_sample_axis(InputSpec("x", np.float32, shape)) == axis


def test_state_with_batch_on_axis_1_and_a_shared_scalar(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 512)).astype(np.float32)
    state = rng.standard_normal((2, 10, 128)).astype(np.float32)
    np.savez(tmp_path / "s.npz", input=x, state=state, sr=np.array(16000, np.int64))
    data = CalibrationData.from_source(tmp_path / "s.npz", silero_like(), batch_size=4)
    batches = list(data)
    assert data.num_samples == 10 and [b["input"].shape[0] for b in batches] == [4, 4, 2]
    assert [b["state"].shape for b in batches] == [(2, 4, 128), (2, 4, 128), (2, 2, 128)]
    np.testing.assert_array_equal(batches[1]["state"], state[:, 4:8])
    assert all(b["sr"].shape == () and b["sr"] == 16000 for b in batches)
    # Inputs that disagree on a sample count make a complete feed: fed as given, in one batch.
    odd = CalibrationData.from_source({"input": x, "state": state[:, :9], "sr": np.array(16000, np.int64)}, silero_like())
    assert odd.num_samples == 1 and [b["state"].shape for b in odd] == [(2, 9, 128)]
    # Labels must match the samples they label.
    assert "'label' holds 9 labels for 10 samples" in _error(
        {"input": x, "state": state, "sr": np.array(16000, np.int64), "label": np.arange(9)}, silero_like())
    # A per-sample sr is no scalar.
    msg = _error({"input": x, "state": state, "sr": np.full(10, 16000, np.int64)}, silero_like())
    assert msg == "calibration data: input 'sr': expected int64 [], found int64 [10]"


def test_sample_axes_key_overrides_the_default(tmp_path: Path) -> None:
    model = relu_model([4, None])  # axis 0 fixed to 4: by default the samples are on axis 1
    x = np.zeros((4, 6), np.float32)
    assert [b["x"].shape for b in CalibrationData.from_source({"x": x}, model, batch_size=4)] == [(4, 4), (4, 2)]
    np.savez(tmp_path / "a.npz", x=x.T.copy(), **{SAMPLE_AXES_KEY: np.array(["x=0"])})  # [6, 4]: samples on axis 0
    data = CalibrationData.from_source(tmp_path / "a.npz", model, batch_size=4)
    assert data.num_samples == 6 and [b["x"].shape for b in data] == [(4, 4), (2, 4)]
    by_api = CalibrationData.from_source({"x": x.T.copy()}, model, batch_size=4, sample_axes={"x": 0})
    assert [b["x"].shape for b in by_api] == [(4, 4), (2, 4)]
    np.savez(tmp_path / "c.npz", x=x, **{SAMPLE_AXES_KEY: np.array(["x:1"])})
    assert "bad __sample_axes__ entry 'x:1'" in _error(tmp_path / "c.npz", model)


def test_folder_of_complete_feeds_is_fed_file_by_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    feeds = [silero_feed(rng) for _ in range(6)]
    for i, f in enumerate(feeds):
        np.savez(tmp_path / f"{i:02d}.npz", **f)
    data = CalibrationData.from_source(tmp_path, silero_like())
    got = list(data)
    assert len(got) == 6 and data.num_samples == 6 and data.description == f"6 samples of {tmp_path.name}/"
    for g, f in zip(got, feeds):
        assert {k: v.shape for k, v in g.items()} == {k: v.shape for k, v in f.items()}
        np.testing.assert_array_equal(g["state"], f["state"])


def test_minus_one_and_unnamed_dims_are_free() -> None:
    data = CalibrationData.from_source({"x": np.zeros((5, 3, 64, 64), np.float32)}, image_model(64))
    assert data.batch_size == 8 and [b["x"].shape[0] for b in data] == [5]


def test_batches_merge_on_their_sample_axes() -> None:
    rng = np.random.default_rng(0)
    data = CalibrationData.from_source(
        {"input": rng.standard_normal((6, 512)).astype(np.float32),
         "state": rng.standard_normal((2, 6, 128)).astype(np.float32), "sr": np.array(16000, np.int64)},
        silero_like(), batch_size=2)
    batches = list(data)
    assert data.sample_axes == {"input": 0, "state": 1, "sr": None}
    assert [data.samples_in(b) for b in batches] == [2, 2, 2]
    merged = data.merge(batches)
    assert merged["input"].shape == (6, 512) and merged["state"].shape == (2, 6, 128) and merged["sr"].shape == ()
    assert data.samples_in(merged) == 6
