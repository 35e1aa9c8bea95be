"""Parallel trials: local worker processes and a local Ray cluster give the seeded configurations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tune_testutil import Files, configs, report_of, run_tune

TRIALS = 4


@pytest.fixture(scope="module")
def serial(files: Files, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference: the same tune with one worker."""
    tmp = tmp_path_factory.mktemp("serial")
    res = run_tune(files, tmp, "--min-cosine", "0.5", "--seed", "3", "--report", str(tmp / "r.json"), trials=TRIALS)
    assert res.exit_code == 0, res.output
    return report_of(tmp / "r.json")


def test_two_workers_same_configurations(files: Files, tmp_path: Path, serial: dict) -> None:
    res = run_tune(files, tmp_path, "--min-cosine", "0.5", "--seed", "3", "--workers", "2",
                   "--report", str(tmp_path / "r.json"), "-o", str(tmp_path / "w.onnx"), trials=TRIALS)
    assert res.exit_code == 0, res.output
    rep = report_of(tmp_path / "r.json")
    assert configs(rep) == configs(serial)
    assert all("latency_ratio" in t for t in rep["trials"] if "error" not in t)
    assert (tmp_path / "w.onnx").is_file()
    assert os.getpid() not in {t["worker_pid"] for t in rep["trials"] if "error" not in t}


def test_ray_local_cluster_same_configurations(files: Files, tmp_path: Path, serial: dict) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        res = run_tune(files, tmp_path, "--min-cosine", "0.5", "--seed", "3", "--ray", "auto",
                       "--report", str(tmp_path / "r.json"), trials=TRIALS)
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    rep = report_of(tmp_path / "r.json")
    assert configs(rep) == configs(serial)
    # The trials ran in Ray workers: each timed its candidate against its own original.
    assert all(t["latency_ratio"] > 0 for t in rep["trials"] if "error" not in t)
    assert os.getpid() not in {t["worker_pid"] for t in rep["trials"] if "error" not in t}
