"""``tune``: search pass configurations for the fastest model within a metric budget.

The loop (`tune`):

1. Everything is checked before any trial: the model, the data (the eval data must be
   given and must not be the calibration or training data), the metric (it is scored
   on the original first, so a metric that raises fails here, in one line), the budget.
2. An Optuna study (multi-objective: maximise the metric, minimise the latency ratio;
   TPE with the budget as a constraint) lives in ``storage`` — the trial journal, a
   SQLite file by default. Its name is derived from the model's bytes and the tune's
   settings, so running the same command again resumes it: finished trials are kept,
   trials that were running when the tune was interrupted are asked again.
3. The presets (`onnxcomp.tune.space.preset_configs`) are the first trials, so they are
   measured in the same run, on the same machine, and marked in every output. Then a
   fixed spread over the space (`onnxcomp.tune.space.spread_configs`, at most half the
   trials) is enqueued before the sampler asks its own: a model-guided sampler left to
   itself crowds around the first feasible point and leaves a front of two or three
   points.
4. Trials are asked in batches of `BATCH` configurations, run by the executor (in this
   process, ``--workers`` processes or Ray tasks) and told in the order they were asked.
   The configurations of a batch depend only on the seed and the results of earlier
   batches, so a fixed ``--seed`` gives the same first batches with any number of
   workers (later ones can differ through latency noise). Every trial is a distinct
   configuration (`ask_distinct`): one the sampler asks again is skipped (told
   ``PRUNED``, not counted) and replaced by a seeded random one (`Filler`).
5. The fastest trial within the budget is built again (the same seed gives the same
   model) and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxcomp.errors import UsageError, VerificationError
from onnxcomp.tune.executors import make_executor, usable_cores
from onnxcomp.tune.metrics import CONFIDENCE
from onnxcomp.tune.report import TrialPoint, TuneResult, choose, closest
from onnxcomp.tune.space import (
    SearchSpace,
    derive_space,
    describe,
    preset_configs,
    spread_configs,
    suggest,
)
from onnxcomp.tune.trial import TrialJob, Worker, config_key, worker_for

log = logging.getLogger("onnxcomp")

#: Configurations asked (and run in parallel) at a time.
BATCH = 8

#: Random draws tried for a new configuration before the space counts as exhausted.
FILL_TRIES = 2000

#: ``progress(done, total, message)``.
TuneProgress = Callable[[int, int, str], None]


class NoCandidateError(VerificationError):
    """No trial met the budget (exit code 1; nothing written)."""


def default_storage(model: str | Path) -> str:
    """``sqlite:///<stem>.tune.db`` in the current folder."""
    return f"sqlite:///{Path.cwd() / (Path(model).stem + '.tune.db')}"


def study_name(model: str | Path, job: TrialJob, space: dict[str, Any]) -> str:
    """The study of this model and these settings (same command, same study: resume)."""
    h = hashlib.sha1()
    with open(model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    settings = {k: str(getattr(job, k)) for k in ("calibration_data", "eval_data", "train_data", "metric", "max_drop",
                                                  "min_cosine", "confidence", "ep", "threads", "seed")}
    h.update(json.dumps([settings, space], sort_keys=True, default=str).encode())
    return f"onnxcomp-tune-{Path(model).stem}-{h.hexdigest()[:12]}"


def _open_study(storage: str, name: str, seed: int) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            # Two batches of random configurations first: the space has conditional corners
            # (prune + distill + int8) that a model-guided sampler finds only once seen.
            seed=seed, multivariate=True, group=True, n_startup_trials=2 * BATCH)
    try:
        return optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                   sampler=sampler, load_if_exists=True)
    except Exception as e:  # noqa: BLE001 - a bad URL, a folder that does not exist, a locked file
        raise UsageError(f"--storage {storage}: {type(e).__name__}: {e}") from None


def resume_study(study: Any, presets: dict[str, dict[str, Any]], spread: list[dict[str, Any]]) -> int:
    """Fail trials left running by an interrupted tune and ask them again, first; enqueue
    the presets and the spread of a new study. Returns the number of finished trials.

    Optuna asks waiting (enqueued) trials in the order of their numbers, so trials
    enqueued again would come after the rest of the spread; the waiting ones are taken
    out of the queue (asked and failed: they never ran) and enqueued again behind the
    interrupted ones, so a resumed tune goes on in the order the first one had.
    """
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for _ in waiting:
            study.tell(study.ask(), state=TrialState.FAIL)
        for t in running:
            study.tell(t.number, state=TrialState.FAIL)
        for t in [*running, *waiting]:
            params = t.params if t.state == TrialState.RUNNING else t.system_attrs.get("fixed_params", {})
            study.enqueue_trial(params, user_attrs={k: v for k, v in t.user_attrs.items() if k == "preset"})
    if not study.user_attrs.get("presets_enqueued"):
        for name, config in presets.items():
            study.enqueue_trial(config, user_attrs={"preset": name})
        for config in spread:
            study.enqueue_trial(config)
        study.set_user_attr("presets_enqueued", True)
    return len(_finished(study))


class Filler:
    """Random configurations of the space in a seeded order: what replaces a duplicate.

    A model-guided sampler that has settled asks the configurations it believes best
    again and again; each such ask is a trial that measures nothing new. A seeded
    Optuna `RandomSampler` draws a fresh point of the same space instead (through
    `suggest`, so every draw is a valid configuration), in an order that depends only on
    the seed: the same tune gives the same trials with any number of workers.
    """

    def __init__(self, space: SearchSpace, seed: int) -> None:
        import optuna

        self.space = space
        self.study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))

    def draw(self, taken: set[str]) -> dict[str, Any] | None:
        """A configuration whose `config_key` is not in ``taken`` (None: none found in
        `FILL_TRIES` draws, the space is as good as exhausted)."""
        from optuna.trial import TrialState

        for _ in range(FILL_TRIES):
            trial = self.study.ask()
            config = suggest(trial, self.space)
            self.study.tell(trial, state=TrialState.PRUNED)
            if config_key(config) not in taken:
                return config
        return None


def ask_distinct(study: Any, space: SearchSpace, size: int, taken: set[str], filler: Filler) -> list[tuple[Any, dict[str, Any]]]:
    """Ask ``size`` trials whose configurations are not in ``taken`` (the `config_key` of
    every configuration measured or being measured; the batch's are added to it), as
    ``(trial, configuration)`` pairs.

    A configuration asked again is told ``PRUNED``, marked ``duplicate_of`` (its key),
    and a random new one (`Filler`) is enqueued in its place: ``--trials`` counts
    distinct candidates, and a sampler that has settled on a few configurations cannot
    burn the time on them. Fewer than ``size`` pairs only when the space has no new
    configuration left.
    """
    from optuna.trial import TrialState

    batch: list[tuple[Any, dict[str, Any]]] = []
    while len(batch) < size:
        trial = study.ask()
        config = suggest(trial, space)
        key = config_key(config)
        if key in taken:
            trial.set_user_attr("duplicate_of", key)
            study.tell(trial, state=TrialState.PRUNED)
            fresh = filler.draw(taken)
            if fresh is None:
                break
            study.enqueue_trial(fresh)
            continue
        taken.add(key)
        batch.append((trial, config))
    return batch


def _finished(study: Any) -> list[Any]:
    """Trials that ran to a result (interrupted ones carry none)."""
    return [t for t in study.get_trials(deepcopy=False) if "result" in t.user_attrs and t.state.is_finished()]


def _points(study: Any) -> list[TrialPoint]:
    return [TrialPoint(t.number, t.user_attrs["config"], describe(t.user_attrs["config"]), t.user_attrs.get("preset"),
                       t.user_attrs["result"]) for t in _finished(study)]


def _tell(study: Any, trial: Any, config: dict[str, Any], result: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("config", config)
    trial.set_user_attr("result", result)
    if "error" in result:
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_constraint("budget", float(result["violation"]))  # feasible when <= 0
    study.tell(trial, [float(result["score"]), float(result["latency_ratio"])])


def tune(
    model: str | Path,
    *,
    calibration_data: Any,
    eval_data: Any,
    train_data: Any = None,
    metric: str = "cosine",
    max_drop: float | None = None,
    min_cosine: float | None = None,
    confidence: float = CONFIDENCE,
    ep: str = "cpu",
    threads: int | None = None,
    trials: int = 30,
    time_budget_min: float | None = None,
    workers: int = 1,
    ray: str | None = None,
    storage: str | None = None,
    seed: int = 0,
    output: str | Path | None = None,
    timing_s: float = 2.0,
    progress: TuneProgress | None = None,
) -> TuneResult:
    """Search for the fastest model within the budget; write it to ``output``.

    Args:
        model: The ONNX file (never overwritten).
        calibration_data: What passes fit on (``.npz``, folder, ``"random"``).
        eval_data: What candidates are scored and verified on (never seen by a pass).
        train_data: Training data; enables ``distill`` in the space.
        metric: ``cosine``, ``accuracy``, ``perplexity`` or ``MODULE:FUNCTION``.
        max_drop: Budget: absolute drop of the metric allowed (accuracy as a fraction).
        min_cosine: Budget: worst cosine (per output and channel) allowed.
        confidence: A drop with paired per-sample errors (accuracy) is judged on its
            one-sided upper bound at this confidence (`Budget`; 0.5: the measured drop).
        ep: Execution provider candidates are timed on.
        threads: Intra-op threads per worker (default: onnxruntime's, or cores ÷ workers).
        trials: Finished trials wanted in the study (presets included).
        time_budget_min: Start no trial after this many minutes (running ones finish).
        workers: Local worker processes.
        ray: ``auto`` or a Ray cluster address: trials run as Ray tasks.
        storage: Optuna storage URL (default `default_storage`).
        seed: Seed of the sampler and of every pass.
        output: Where to write the chosen model (None: don't).
        timing_s: Seconds of interleaved timing per trial.
        progress: Callback ``(done, total, message)``.

    Returns:
        The `TuneResult`.

    Raises:
        UsageError: Bad input (exit code 2), before any trial.
        NoCandidateError: No trial met the budget (nothing written).
    """
    start, started = time.perf_counter(), time.monotonic()
    if eval_data is None:
        raise UsageError("tune needs --eval-data: candidates are scored on data no pass was fitted on")
    if calibration_data is None:
        raise UsageError("tune needs --calibration-data (an .npz, a folder of them, or 'random')")
    if str(eval_data) in (str(calibration_data), str(train_data)):
        raise UsageError(f"--eval-data {eval_data} is also the calibration or training data: passes are fitted on it")
    if trials < 1 or workers < 1 or (threads is not None and threads < 1):
        raise UsageError("--trials, --workers and --threads must be >= 1")
    if workers > 1 and ray is not None:
        raise UsageError("--workers and --ray exclude each other (Ray places trials itself)")
    if workers > 1 and threads is None:
        threads = max(1, len(usable_cores()) // workers)
    job = TrialJob(model=str(model), calibration_data=calibration_data, eval_data=eval_data, train_data=train_data,
                   metric=metric, max_drop=max_drop, min_cosine=min_cosine, confidence=confidence, ep=ep, threads=threads, seed=seed,
                   timing_s=timing_s)
    job.budget  # noqa: B018 - validates the budget before anything is loaded
    if workers * (threads or 1) > len(usable_cores()):
        log.warning("%d workers x %d threads exceed the %d cores: latency ratios will be noisy",
                    workers, threads or 1, len(usable_cores()))
    # Checks model, data and metric, scores the original; in-process trials use this worker too.
    main = worker_for(job)
    space = derive_space(main.model, train_data=train_data is not None)
    presets = preset_configs(space)
    storage = storage or default_storage(model)
    name = study_name(model, job, space.to_dict())
    study = _open_study(storage, name, seed)
    spread = spread_configs(space)[:max(0, trials // 2 - len(presets))]
    done = resume_study(study, presets, spread)
    deadline = None if time_budget_min is None else started + 60 * time_budget_min
    executor = make_executor(job, workers=workers, ray=ray)
    measured = {config_key(t.user_attrs["config"]) for t in _finished(study)}
    models: dict[str, tuple[int, dict[str, Any]]] = {}
    for t in _finished(study):
        _remember(models, t.number, t.user_attrs["result"])
    filler, exhausted = Filler(space, seed), False
    try:
        while done < trials and (deadline is None or time.monotonic() < deadline):
            batch = ask_distinct(study, space, min(BATCH, trials - done), measured, filler)
            if not batch:
                exhausted = True  # every configuration the space holds has been measured
                break
            asked, configs = [t for t, _ in batch], [c for _, c in batch]
            if progress:
                progress(done, trials, f"running {len(configs)} trial(s): {_best_text(study, main)}")
            fresh = executor.map(configs, deadline)
            for trial, config in zip(asked, configs):
                if (outcome := next(fresh, None)) is None:
                    break  # the time budget ran out: trials not run stay open, a resume asks them again
                result = _same_model(outcome, models)
                _tell(study, trial, config, result)
                _remember(models, trial.number, result)
                done += 1
                if progress:
                    progress(done, trials, _best_text(study, main))
    except BaseException:
        executor.close(now=True)  # interrupted or failed: running trials stay open in the journal
        raise
    executor.close()
    points = _points(study)
    result = TuneResult(
        model=str(model), metric=metric, higher_is_better=main.metric.higher_is_better, budget=job.budget.describe(main.metric),
        original_metric=main.metric.display(main.eval.original), eval_data=main.eval.description, ep=ep, threads=threads,
        storage=storage, study=name, space=space.to_dict(), points=points, notes=list(space.notes),
    )
    if exhausted:
        result.notes.append(f"the search space holds {done} distinct configurations: all measured")
    result.duplicates_skipped = sum(1 for t in study.get_trials(deepcopy=False) if "duplicate_of" in t.user_attrs)
    result.notes.append("reused across trials: the loaded model, the eval data and the original's outputs on it, the "
                        "original's timing session (one per worker); each configuration is measured once (one the "
                        "sampler asks again is replaced by a random new one, `duplicates_skipped`); calibration statistics are collected by quantize-int8 inside each trial (the quantization "
                        "API offers no cache, and a pruned graph has other activations anyway)")
    result.best = choose(points)
    if result.best is None:
        near = closest(points)
        where = ("; closest: trial {} ({}): {} {:.6g}, cosine {:.5f}, latency ratio {:.3f}".format(
            near.number, near.label, metric, near.result["metric"], near.result["cosine"], near.latency_ratio)
            if near else "; every trial failed" if points else "; no trial finished within the time budget")
        raise NoCandidateError(f"no candidate met the budget ({result.budget}) in {len(points)} trials{where}; nothing written")
    if output is not None:
        if progress:
            progress(done, trials, f"writing the chosen model (trial {result.best.number})")
        written, report = main.build(result.best.config, output=output)
        result.best_output = report.output
        result.best_report = report.to_dict()
        score, _ = main.eval.score(written)
        if abs(score - result.best.score) > 1e-9:
            result.notes.append(f"the written model scores {main.metric.display(score):.6g}, its trial "
                                f"{result.best.result['metric']:.6g} (a pass is not deterministic)")
    result.seconds = time.perf_counter() - start
    return result


def _remember(models: dict[str, tuple[int, dict[str, Any]]], number: int, result: dict[str, Any]) -> None:
    """Index a measured trial by its model's bytes and by what it computes (first one kept)."""
    if "error" in result:
        return
    for key in ("model_sha1", "compute_sha1"):
        if result.get(key):
            models.setdefault(f"{key}:{result[key]}", (number, result))


def _same_model(result: dict[str, Any], models: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """A candidate that computes the same as one measured before keeps that one's latency ratio.

    Two configurations often build the same model (a fallback cap never reached), or models
    that differ only in numbers (two calibrators' activation scales: the same kernels on the
    same shapes, `onnxcomp.tune.trial.compute_digest`). Timing them again would only add
    noise, and picking the luckier of two timings of one computation would flatter the
    result; with equal latency the one closest to the original wins, then the better metric
    (`onnxcomp.tune.report.choose`).
    The report says which: ``same_model_as`` (identical bytes) or ``same_compute_as``.
    """
    if "error" in result:
        return result
    for key, field in (("model_sha1", "same_model_as"), ("compute_sha1", "same_compute_as")):
        first = models.get(f"{key}:{result.get(key)}") if result.get(key) else None
        if first is not None:
            number, earlier = first
            return {**result, "latency_ratio": earlier["latency_ratio"], field: number}
    return result


def _best_text(study: Any, main: Worker) -> str:
    best = choose(_points(study))
    if best is None:
        return "best so far: none within the budget"
    return (f"best so far: trial {best.number}, ×{1 / best.latency_ratio:.2f} faster, "
            f"{main.metric.name} {best.result['metric']:.4g}")
