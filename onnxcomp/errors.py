"""Error hierarchy. The CLI turns every `OnnxcompError` into one line and an exit code."""

from __future__ import annotations


class OnnxcompError(Exception):
    """Base class of every error onnxcomp raises on purpose."""

    exit_code: int = 2


class UsageError(OnnxcompError):
    """Bad command-line or API usage: unknown pass, bad option value, missing data."""


class InvalidModelError(OnnxcompError):
    """The input is not a loadable, valid ONNX model (or is unsafe to load)."""


class CalibrationDataError(UsageError):
    """Calibration / verification data is missing, unreadable or does not fit the model."""


class PassError(OnnxcompError):
    """A pass failed. The message names the pass and the passes that ran before it."""

    exit_code = 1


class VerificationError(OnnxcompError):
    """The result could not be verified, or failed verification (nothing is written)."""

    exit_code = 1


class UnverifiedError(VerificationError):
    """The model could not be run to check numerics (e.g. custom ops without kernels)."""


def one_line(e: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message, at most ``limit`` characters.

    Every one-line error and warning about a caught exception goes through here (an
    exception with an empty message reads as its type name).
    """
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]
