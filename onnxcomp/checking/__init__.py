"""Checking results: calibration data, the onnxruntime session factory, numeric
verification and fidelity metrics.

* `onnxcomp.checking.calibration`: calibration / training data (`CalibrationData`) and
  generated inputs;
* `onnxcomp.checking.runtime`: the one place that builds onnxruntime sessions;
* `onnxcomp.checking.verify`: reference outputs, drift against a tolerance, fidelity;
  `Checker` (`onnxcomp.checking.checker`) checks a candidate model for the pass manager;
* `onnxcomp.checking.metrics`: cosine, errors, SNR, top-1 agreement.
"""

from onnxcomp.checking.calibration import LABEL_KEY, CalibrationData, InputSpec, generate_inputs, input_specs, required_input_specs
from onnxcomp.checking.metrics import FidelityAccumulator, OutputFidelity, summarize
from onnxcomp.checking.perplexity import paired_perplexity
from onnxcomp.checking.runtime import make_session, resolve_providers, run
from onnxcomp.checking.verify import (
    Tolerance,
    drift,
    evaluate,
    fidelity,
    verification_feeds,
)

__all__ = [
    "LABEL_KEY",
    "CalibrationData",
    "FidelityAccumulator",
    "InputSpec",
    "OutputFidelity",
    "Tolerance",
    "drift",
    "evaluate",
    "fidelity",
    "generate_inputs",
    "input_specs",
    "make_session",
    "paired_perplexity",
    "required_input_specs",
    "resolve_providers",
    "run",
    "summarize",
    "verification_feeds",
]
