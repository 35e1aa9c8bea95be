"""`CalibrationData.holdout`: disjoint, deterministic, documented default size, whole
batches for fixed-batch models, whole files for folders of complete feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_testutil import relu_model, silero_feed, silero_like

from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.errors import CalibrationDataError


def _ids(data: CalibrationData) -> list[int]:
    """Sample ids: every sample's first value is its index in the full data."""
    return [int(v) for feeds in data for v in feeds["x"][:, 0]]


def _indexed(n: int) -> dict[str, np.ndarray]:
    x = np.zeros((n, 3), np.float32)
    x[:, 0] = np.arange(n)
    return {"x": x, "label": np.arange(n)}


@pytest.mark.parametrize("n, held", [(4, 1), (10, 2), (40, 10), (128, 32), (1000, 32)])
def test_default_size_disjoint_and_complete(n: int, held: int) -> None:
    data = CalibrationData.from_source(_indexed(n), relu_model(["N", 3]))
    fit, out = data.holdout()
    assert fit.num_samples == n - held and out.num_samples == held
    fit_ids, out_ids = _ids(fit), _ids(out)
    assert len(out_ids) == held and set(fit_ids).isdisjoint(out_ids) and sorted(fit_ids + out_ids) == list(range(n))
    # Spread over the data (not the last samples, which may all be one class).
    if held > 1:
        assert out_ids[0] < n // 2 <= out_ids[-1]
    # Labels travel with their samples.
    for feeds, labels in out.iter_with_labels():
        np.testing.assert_array_equal(labels, feeds["x"][:, 0].astype(np.int64))
    assert out.has_labels and fit.description == f"{n - held} fit samples of arrays"
    assert out.description == f"{held} held-out {'sample' if held == 1 else 'samples'} of arrays"


def test_deterministic_and_explicit_size() -> None:
    data = CalibrationData.from_source(_indexed(50), relu_model(["N", 3]))
    a, b = data.holdout(7), data.holdout(7)
    assert _ids(a[1]) == _ids(b[1]) and len(_ids(a[1])) == 7 and _ids(a[0]) == _ids(b[0])
    with pytest.raises(CalibrationDataError, match="cannot hold out 50"):
        data.holdout(50)


def test_too_few_samples_cannot_be_split() -> None:
    assert CalibrationData.from_source(_indexed(3), relu_model(["N", 3])).holdout() is None


def test_fixed_batch_holds_out_whole_batches(tmp_path: Path) -> None:
    model = relu_model([4, 3])
    np.savez(tmp_path / "c.npz", **_indexed(34))  # 8 full batches of 4, 2 samples left over
    data = CalibrationData.from_source(tmp_path / "c.npz", model)
    fit, out = data.holdout()
    assert data.description == "34 samples of c.npz"
    assert all(f["x"].shape == (4, 3) for f in fit) and all(f["x"].shape == (4, 3) for f in out)
    assert len(_ids(out)) == 8 and set(_ids(fit)).isdisjoint(_ids(out)) and len(_ids(fit)) == 24
    assert CalibrationData.from_source(_indexed(7), model).holdout() is None  # one batch only


def test_folder_of_complete_feeds_holds_out_whole_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(12):
        np.savez(tmp_path / f"{i:02d}.npz", **silero_feed(rng))
    data = CalibrationData.from_source(tmp_path, silero_like())
    fit, out = data.holdout()
    assert out.num_samples == 3 and fit.num_samples == 9
    held = [f["input"] for f in out]
    kept = [f["input"] for f in fit]
    assert len(held) == 3 and len(kept) == 9
    assert not any(np.array_equal(h, k) for h in held for k in kept)
    assert out.description == f"3 held-out samples of {tmp_path.name}/"


def test_generated_data_can_be_split() -> None:
    data = CalibrationData.from_source("random", relu_model(["N", 3]), random_samples=8)
    assert data.generated and data.num_samples == 8
    fit, out = data.holdout()
    assert out.num_samples == 2 and fit.generated and "generated" in data.description
