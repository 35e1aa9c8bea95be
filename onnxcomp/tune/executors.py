"""Where trials run: in this process, in local worker processes, or as Ray tasks.

Every executor maps a batch of configurations to results **in order**, yielding each as
soon as it and those before it are done (so the sampler is told results in the order it
asked, whatever finishes first, and progress moves trial by trial), and every worker times
its candidates against its own copy of the original (`onnxcomp.tune.trial.Worker`).

Local workers (``--workers N``) are spawned processes. Worker *i* is pinned to its own
cores with ``os.sched_setaffinity`` (Linux): cores ``[i*T, (i+1)*T)`` modulo the cores
this process may use, where ``T = --threads`` (1 when not given), and its onnxruntime
sessions use ``T`` intra-op threads. So ``--workers 2 --threads 1`` on 2 cores gives
each worker one core, and the original and candidate of a trial always share the
same core(s): both are slowed alike by anything else on the machine, and the latency
ratio stays fair. Asking for more workers × threads than there are cores is allowed
(the cores are shared round-robin) but makes the ratios noisier; the CLI warns.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any

from onnxcomp.errors import UsageError
from onnxcomp.tune.metrics import is_file_source
from onnxcomp.tune.trial import TrialJob, run_trial

log = logging.getLogger("onnxcomp")


class InProcess:
    """Trials one after another in this process."""

    def __init__(self, job: TrialJob) -> None:
        self.job = job

    def map(self, configs: Sequence[dict[str, Any]], deadline: float | None = None) -> Iterator[dict[str, Any]]:
        """Results of ``configs``, in order; none started after ``deadline`` (`time.monotonic`)."""
        for c in configs:
            if _past(deadline):
                return
            yield run_trial(self.job, c)

    def close(self, now: bool = False) -> None:
        """Nothing to release."""


def usable_cores() -> list[int]:
    """The cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _pin_worker(counter: Any, threads: int, cores: list[int]) -> None:
    """Initializer of a local worker process: take the next index, pin to its cores."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    mine = {cores[(index * threads + k) % len(cores)] for k in range(threads)}
    try:
        os.sched_setaffinity(0, mine)
    except (AttributeError, OSError):  # not Linux, or not allowed: threads stay pinned by count only
        pass


class LocalProcesses:
    """``--workers N``: spawned processes, each pinned to its own cores (see the module doc)."""

    def __init__(self, job: TrialJob, workers: int) -> None:
        self.job = job
        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pin_worker,
                                        initargs=(counter, job.threads or 1, usable_cores()))

    def map(self, configs: Sequence[dict[str, Any]], deadline: float | None = None) -> Iterator[dict[str, Any]]:
        """Results of ``configs``, in order (all submitted at once); after ``deadline``,
        trials not yet started are cancelled and the results stop at the first of them."""
        return in_order([self.pool.submit(run_trial, self.job, c) for c in configs], deadline)

    def close(self, now: bool = False) -> None:
        """Stop the worker processes (pending trials are cancelled); ``now``: also the
        running ones (an interrupted tune must not wait minutes for them)."""
        if now:
            # ProcessPoolExecutor has no public way to stop running work before Python
            # 3.14 (terminate_workers); its process table is the only handle.
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


def in_order(futures: list[Future], deadline: float | None) -> Iterator[Any]:
    """The futures' results in order; once ``deadline`` passes, the ones not yet started
    are cancelled (running ones finish) and the results stop at the first cancelled one."""
    for f in futures:
        wait([f], timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not f.done():  # past the deadline: cancel what has not started, let running ones finish
            for g in futures:
                g.cancel()
        if f.cancelled():  # this one, or a later one cancelled while an earlier one ran
            return
        yield f.result()


def shipped(job: TrialJob) -> TrialJob:
    """The job with its model and data files attached, for workers on other machines."""
    files: dict[str, tuple[str, bytes]] = {}
    for role in ("model", "calibration_data", "eval_data", "train_data"):
        src = getattr(job, role)
        if src is None or src == "random":
            continue
        if not is_file_source(src):
            raise UsageError(f"--ray needs files it can send to the workers; {role.replace('_', '-')} {src} is not a file")
        with open(src, "rb") as f:
            files[role] = (os.path.basename(str(src)), f.read())
    return TrialJob(**{**job.__dict__, "files": files})


class RayTasks:
    """``--ray auto|ADDRESS``: one Ray task per trial, ``--threads`` CPUs each.

    Connects to a running cluster (``auto``: the one ``ray start`` made on this machine,
    or the one this process already initialised). The model and data files travel with
    the tasks (`shipped`), so workers need no shared file system.
    """

    def __init__(self, job: TrialJob, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray: pip install 'onnxcomp[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - any connection failure is the user's address
                raise UsageError(f"--ray {address}: cannot connect to a Ray cluster ({type(e).__name__}: {e})") from None
        self.job_ref = ray.put(shipped(job))
        self.task = ray.remote(num_cpus=job.threads or 1)(_ray_trial)

    def map(self, configs: Sequence[dict[str, Any]], deadline: float | None = None) -> Iterator[dict[str, Any]]:
        """Results of ``configs``, in order (tasks run in parallel on the cluster); after
        ``deadline``, the tasks not yet finished are cancelled and the results stop there."""
        refs = [self.task.remote(self.job_ref, c) for c in configs]
        for i, ref in enumerate(refs):
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = self.ray.wait([ref], timeout=timeout)
            if not ready:
                for r in refs[i:]:
                    self.ray.cancel(r)
                return
            yield self.ray.get(ref)

    def close(self, now: bool = False) -> None:
        """Leaves the cluster running (it is the user's)."""


def _ray_trial(job: TrialJob, config: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: one trial in this Ray worker process (its `Worker` is kept between tasks)."""
    return run_trial(job, config)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def make_executor(job: TrialJob, *, workers: int, ray: str | None) -> InProcess | LocalProcesses | RayTasks:
    """The executor for ``--workers`` / ``--ray``."""
    if ray is not None:
        return RayTasks(job, ray)
    if workers > 1:
        return LocalProcesses(job, workers)
    return InProcess(job)
