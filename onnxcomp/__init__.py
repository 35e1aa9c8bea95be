"""onnxcomp: make ONNX models smaller and faster by rewriting their graphs.

Public API::

    import onnxcomp
    model, report = onnxcomp.optimize("model.onnx", preset="lossless", output="model.opt.onnx")

Passes are registered with `register_pass`; see the README for how to write one.
"""

from onnxcomp._version import __version__
from onnxcomp.api import optimize
from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.errors import (
    CalibrationDataError,
    InvalidModelError,
    OnnxcompError,
    PassError,
    UnverifiedError,
    UsageError,
    VerificationError,
)
from onnxcomp.io.files import load_model, save_model
from onnxcomp.pipeline.pass_api import (
    NoOptions,
    Pass,
    PassContext,
    PassOptions,
    PassResult,
)
from onnxcomp.pipeline.registry import get_pass, register_pass, registered_passes
from onnxcomp.pipeline.report import Report

__all__ = [
    "__version__",
    "optimize",
    "load_model",
    "save_model",
    "register_pass",
    "registered_passes",
    "get_pass",
    "Pass",
    "PassOptions",
    "NoOptions",
    "PassResult",
    "PassContext",
    "CalibrationData",
    "Report",
    "OnnxcompError",
    "UsageError",
    "InvalidModelError",
    "CalibrationDataError",
    "PassError",
    "VerificationError",
    "UnverifiedError",
]


def __getattr__(name: str):  # lazy: bench/compare pull in more machinery
    if name == "bench":
        from onnxcomp.perf.benchmark import bench

        return bench
    if name == "compare":
        from onnxcomp.perf.comparison import compare

        return compare
    raise AttributeError(name)
