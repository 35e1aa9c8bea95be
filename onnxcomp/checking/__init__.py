"""Checking results: calibration data, the onnxruntime session factory, numeric
verification and fidelity metrics.

* `onnxcomp.checking.calibration`: calibration / training data (`CalibrationData`) and
  generated inputs;
* `onnxcomp.checking.runtime`: the one place that builds onnxruntime sessions;
* `onnxcomp.checking.verify_data`: which data verification runs on (held out, windows
  of a causal LM within a compute budget);
* `onnxcomp.checking.verify`: reference outputs, drift against a tolerance, fidelity;
  `Checker` (`onnxcomp.checking.checker`) checks a candidate model for the pass manager;
* `onnxcomp.checking.metrics`: cosine per output and per channel, errors, SNR, top-1
  agreement where it applies, the fidelity floor.
"""

from onnxcomp.checking.calibration import (
    LABEL_KEY,
    CalibrationData,
    InputSpec,
    generate_inputs,
    input_specs,
    required_input_specs,
)
from onnxcomp.checking.metrics import (
    FIDELITY_FLOOR,
    ChannelSplit,
    FidelityAccumulator,
    OutputFidelity,
    parse_channel_spec,
    summarize,
)
from onnxcomp.checking.perplexity import paired_perplexity
from onnxcomp.checking.runtime import make_session, resolve_providers, run
from onnxcomp.checking.verify import (
    OutputStore,
    Tolerance,
    drift,
    evaluate,
    fidelity,
)
from onnxcomp.checking.verify_data import VerificationData, select_verification_data

__all__ = [
    "FIDELITY_FLOOR",
    "LABEL_KEY",
    "CalibrationData",
    "ChannelSplit",
    "FidelityAccumulator",
    "InputSpec",
    "OutputFidelity",
    "OutputStore",
    "Tolerance",
    "VerificationData",
    "drift",
    "evaluate",
    "fidelity",
    "generate_inputs",
    "input_specs",
    "make_session",
    "paired_perplexity",
    "parse_channel_spec",
    "required_input_specs",
    "resolve_providers",
    "run",
    "select_verification_data",
    "summarize",
]
