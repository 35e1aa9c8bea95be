"""The study's journal: a resumed tune asks the interrupted trials first, then the rest in order."""

from __future__ import annotations

import json

import optuna

from onnxcomp.tune.search import resume_study


def test_resume_asks_interrupted_trials_first_then_the_queue_in_order() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    resume_study(study, {"int8": {"q": "a"}}, [{"q": "b"}, {"q": "c"}, {"q": "d"}])
    first = [study.ask() for _ in range(2)]  # a batch asked, then the tune was killed
    assert [t.suggest_categorical("q", list("abcd")) for t in first] == ["a", "b"]
    resume_study(study, {"int8": {"q": "a"}}, [{"q": "b"}, {"q": "c"}, {"q": "d"}])
    again = [study.ask() for _ in range(4)]
    assert [t.suggest_categorical("q", list("abcd")) for t in again] == ["a", "b", "c", "d"]
    assert again[0].user_attrs.get("preset") == "int8"  # the preset stays marked
    states = {t.number: t.state for t in study.trials}
    assert states[first[0].number] == states[first[1].number] == optuna.trial.TrialState.FAIL


def _distinct_run(seed: int) -> tuple[list[dict], optuna.Study]:
    """Ask a small space (7 configurations) for 10 trials after enqueuing one config three times."""
    from onnxcomp.tune.search import Filler, ask_distinct
    from onnxcomp.tune.space import SearchSpace

    space = SearchSpace(quant_modes=("none", "static"), calibrators=("minmax",))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=seed))
    for _ in range(3):
        study.enqueue_trial({"quant": "none"})
    taken: set[str] = set()
    filler = Filler(space, seed)
    first = ask_distinct(study, space, 3, taken, filler)
    rest = ask_distinct(study, space, 10, taken, filler)  # more than the space holds
    return [c for _, c in first + rest], study


def test_duplicates_are_skipped_and_replaced_deterministically() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs, study = _distinct_run(5)
    keys = [json.dumps(c, sort_keys=True) for c in configs]
    assert configs[0] == {"quant": "none"}
    assert len(keys) == len(set(keys)) == 7  # every configuration once; the space ran out, no endless asking
    duplicates = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(duplicates) >= 2 and all(t.state == optuna.trial.TrialState.PRUNED for t in duplicates)
    assert _distinct_run(5)[0] == configs  # the same seed, the same trials


def test_choose_the_fastest_within_budget_then_the_closest_to_the_original() -> None:
    from onnxcomp.tune.report import TrialPoint, choose

    def point(number: int, ratio: float, metric: float, cosine: float, within: bool = True) -> TrialPoint:
        return TrialPoint(number, {}, "", None, {"score": metric, "metric": metric, "cosine": cosine,
                                                  "latency_ratio": ratio, "within_budget": within})

    slow, tied_better_metric, tied_closer = point(0, 0.5, 0.99, 0.999), point(1, 0.3, 0.985, 0.976), point(2, 0.3, 0.982, 0.987)
    outside = point(3, 0.2, 0.9, 0.8, within=False)
    assert choose([slow, tied_better_metric, tied_closer, outside]) is tied_closer
    assert choose([slow, tied_better_metric]) is tied_better_metric
    assert choose([outside]) is None
    # Within NEAR_EQUAL (timing noise) of the fastest counts as equally fast: the closer one wins.
    nearly, faster_looser = point(4, 0.31, 0.982, 0.99), point(5, 0.3, 0.984, 0.976)
    assert choose([faster_looser, nearly]) is nearly
    assert choose([faster_looser, nearly], near_equal=0.0) is faster_looser
    assert choose([faster_looser, point(6, 0.4, 0.99, 0.999)]) is faster_looser  # 33 % slower is slower
    preset = TrialPoint(7, {}, "", "int8", {**faster_looser.result})  # never slower than a preset within budget
    assert choose([preset, nearly]) is preset


def test_results_stop_cleanly_at_the_time_budget() -> None:
    """Trials queued behind running ones when the deadline passes are cancelled, not raised."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from onnxcomp.tune.executors import in_order

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(time.sleep, 0.3) for _ in range(6)]
        results = list(in_order(futures, time.monotonic() + 0.1))
    assert len(results) == 2  # the two running when the deadline passed finished; four never started
    assert sum(f.cancelled() for f in futures) == 4
