"""The study's journal: a resumed tune asks the interrupted trials first, then the rest in order."""

from __future__ import annotations

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
