"""``onnxcomp tune``: the fastest model within the user's metric budget, searched and measured.

* `onnxcomp.tune.space`: the search space derived from the model and the pass registry;
* `onnxcomp.tune.metrics`: metrics on the eval data, the budget;
* `onnxcomp.tune.trial`: one trial (build through `onnxcomp.api.optimize`, score, time);
* `onnxcomp.tune.executors`: trials in this process, local worker processes or Ray tasks;
* `onnxcomp.tune.search`: the Optuna study (journal, resume) and `tune` itself;
* `onnxcomp.tune.report`: the Pareto front, JSON, Markdown and the plot.

The package sits above `onnxcomp.api` (it builds candidates through it) and below the CLI.
"""

from onnxcomp.tune.report import TrialPoint, TuneResult
from onnxcomp.tune.search import NoCandidateError, tune

__all__ = ["NoCandidateError", "TrialPoint", "TuneResult", "tune"]
