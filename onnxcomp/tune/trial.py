"""One trial of ``tune``: build a candidate through `onnxcomp.api.optimize`, score it, time it.

A `Worker` lives in one process (the main one, a local worker process or a Ray worker)
and keeps what every trial shares: the original model, the evaluation data with the
original's outputs on it (`EvalSet`), the loaded calibration and training data, and an
onnxruntime session of the original, warmed up, for timing. Each trial then:

1. runs ``optimize`` with the configuration's pipeline (verified like any run: on the
   eval data, never on calibration samples);
2. scores the metric on the eval data (`EvalSet.score`);
3. times the candidate **interleaved with the original** (`onnxcomp.perf.timing`: A B,
   B A, … in this process, on the target EP, with this worker's threads), and reports
   the latency ratio candidate ÷ original (median of the paired ratios; < 1 is faster).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxcomp.checking.runtime import make_session, parse_ep, providers_for
from onnxcomp.errors import OnnxcompError, one_line
from onnxcomp.io.files import load_model
from onnxcomp.perf.feeds import Feeds
from onnxcomp.perf.timing import (
    InterleavedTimer,
    make_runner,
    paired_ratio,
    timed_rounds,
)
from onnxcomp.tune.metrics import CONFIDENCE, Budget, EvalSet, load_metric
from onnxcomp.tune.space import pipeline_of

log = logging.getLogger("onnxcomp")


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs, picklable (sent to worker processes and Ray tasks)."""

    model: str
    calibration_data: Any
    eval_data: Any
    train_data: Any = None
    metric: str = "cosine"
    max_drop: float | None = None
    min_cosine: float | None = None
    confidence: float = CONFIDENCE
    ep: str = "cpu"
    threads: int | None = None
    seed: int = 0
    #: Seconds of interleaved timing per trial (at least `MIN_ROUNDS` rounds).
    timing_s: float = 2.0
    warmup: int = 5
    #: Files shipped with a Ray task: ``{role: (file name, bytes)}`` (see `materialize`).
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def budget(self) -> Budget:
        """The job's budget."""
        return Budget(self.max_drop, self.min_cosine, self.confidence)


MIN_ROUNDS = 20


def config_key(config: dict[str, Any]) -> str:
    """A stable key of a configuration (equal configurations, equal keys)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_digest(model: onnx.ModelProto) -> str | None:
    """A digest of the candidate's bytes: two configurations that build the same model are
    one candidate (None for a model too large to serialize in one piece)."""
    try:
        return hashlib.sha1(model.SerializeToString()).hexdigest()[:16]
    except ValueError:
        return None


def compute_digest(model: onnx.ModelProto) -> str:
    """A digest of what the candidate computes, weight *values* left out: the nodes (with
    their attributes), the inputs and outputs, and each initializer's name, type and shape.

    Two candidates with the same digest run the same kernels on the same shapes; they
    differ only in numbers (an INT8 calibrator's scales, say), which do not change CPU
    kernels' speed. They get one latency measurement (`onnxcomp.tune.search`), so noise
    cannot make one of them look faster. A tensor in a node attribute is hashed by
    type and shape too. One pass over the graph.
    """
    h = hashlib.sha1()

    def tensor(t: onnx.TensorProto) -> None:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)};".encode())

    graph = model.graph
    for vi in (*graph.input, *graph.output):
        h.update(vi.SerializeToString())
    for t in graph.initializer:
        tensor(t)
    for node in graph.node:
        h.update(f"{node.domain}:{node.op_type}:{list(node.input)}:{list(node.output)}".encode())
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                h.update(a.name.encode())
                tensor(a.t)
            else:
                h.update(a.SerializeToString())
    return h.hexdigest()[:16]


class Worker:
    """Runs trials in one process against its own copy of the original (see the module doc)."""

    def __init__(self, job: TrialJob) -> None:
        self.job = job
        self.model = load_model(job.model)
        ep_name, self.device_id = parse_ep(job.ep)
        self.providers = providers_for(ep_name)
        self.metric = load_metric(job.metric)
        self.eval = EvalSet(job.eval_data, self.model, self.metric, providers=self.providers, threads=job.threads, seed=job.seed)
        self.feeds: Feeds = self.eval.batches[0][0]
        self.original_runner = self._runner(self.model)

    def _runner(self, model: onnx.ModelProto) -> Any:
        session = make_session(model, providers=self.providers, threads=self.job.threads, spinning=False,
                               device_id=self.device_id)
        runner = make_runner(session, self.feeds, session.get_providers(), self.device_id)
        runner._session = session  # keep the session alive with its runner
        return runner

    def run(self, config: dict[str, Any]) -> dict[str, Any]:
        """One trial; never raises for a candidate that fails (the result says why)."""
        start = time.perf_counter()
        try:
            result = self._run(config)
        except OnnxcompError as e:
            result = {"error": one_line(e, 300), "error_type": type(e).__name__}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - a pass bug fails this trial, not the whole tune
            result = {"error": f"{type(e).__name__}: {one_line(e, 300)}", "error_type": "internal"}
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result

    def build(self, config: dict[str, Any], output: str | Path | None = None) -> tuple[onnx.ModelProto, Any]:
        """The candidate of ``config`` through the public optimize API (written when ``output``)."""
        from onnxcomp.api import optimize

        # A candidate's warnings (degraded, say) go into its result and report, not on the console.
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return optimize(self.model, pipeline_of(config), calibration_data=self.job.calibration_data,
                            train_data=self.job.train_data, eval_data=self.job.eval_data, output=output,
                            seed=self.job.seed, speed_check=False)
        finally:
            log.setLevel(level)

    def _run(self, config: dict[str, Any]) -> dict[str, Any]:
        candidate, report = self.build(config)
        score, cosine, paired = self.eval.score_details(candidate)
        ratio = self.latency_ratio(candidate)
        budget, stderr = self.job.budget, paired.get("drop_stderr")
        violation = budget.violation(self.eval.original, score, cosine, stderr)
        if stderr is not None and budget.max_drop is not None:
            paired["drop_bound"] = budget.drop_bound(self.eval.original, score, stderr)
        return {
            "score": score,
            "metric": self.metric.display(score),
            "cosine": cosine,
            **paired,
            "latency_ratio": ratio,
            "violation": violation,
            "within_budget": violation <= 0,
            "size_bytes": candidate.ByteSize(),
            "model_sha1": model_digest(candidate),
            "compute_sha1": compute_digest(candidate),
            "verification": report.verification.get("data"),
            "degraded": report.degraded,
            "warnings": list(report.warnings),
            "worker_pid": os.getpid(),
        }

    def latency_ratio(self, candidate: onnx.ModelProto) -> float:
        """Candidate ÷ original latency, interleaved in this process (< 1: faster)."""
        timer = InterleavedTimer([self.original_runner, self._runner(candidate)])
        timer.warmup(self.job.warmup)
        ms = timed_rounds(timer, rounds=None, duration_s=self.job.timing_s, min_rounds=MIN_ROUNDS)
        return 1.0 / paired_ratio(ms[:, 0], ms[:, 1])


# --------------------------------------------------------------------------- per-process worker

_WORKER: Worker | None = None
_WORKER_KEY: str | None = None


def worker_for(job: TrialJob) -> Worker:
    """This process's worker for ``job`` (built on first use; a new job replaces it)."""
    global _WORKER, _WORKER_KEY
    key = config_key({k: v for k, v in job.__dict__.items() if k != "files"})
    if _WORKER is None or _WORKER_KEY != key:
        _WORKER, _WORKER_KEY = Worker(materialize(job)), key
    return _WORKER


def materialize(job: TrialJob) -> TrialJob:
    """A job whose shipped files are written to a local folder (a Ray node without the paths)."""
    if not job.files:
        return job
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="onnxcomp-tune-"))
    paths = {}
    for role, (name, payload) in job.files.items():
        (folder / role).mkdir()
        path = folder / role / name
        path.write_bytes(payload)
        paths[role] = str(path)
    return TrialJob(**{**job.__dict__, **paths, "files": {}})


def run_trial(job: TrialJob, config: dict[str, Any]) -> dict[str, Any]:
    """Run one trial in this process (the function local workers and Ray tasks call)."""
    return worker_for(job).run(config)
