"""`Checker`: is a pass's result valid ONNX, and does it compute what it should?

The pass manager hands the checker a `onnxcomp.ir.Candidate` after every change and gets
a `Verdict` back. The checker owns everything checking needs across a run:

* ``onnx.checker`` (full check, with shape inference) on the candidate's weightless
  skeleton; if the *input* fails the full check too, the run falls back to structural
  checks, once, with a warning;
* the `Verifier` (verification feeds and the input's outputs on them, computed in the
  background while passes run);
* the baseline: the outputs of the last accepted model, which a lossless change must
  reproduce within tolerance (a lossy change is accepted and its fidelity against the
  input is measured);
* the final verification of the result: fidelity per output and per channel (the worst
  is the headline), on the data `select_verification_data` chose (named in the report);
  non-finite differences never pass; a lossy result below the fidelity floor is marked
  ``degraded`` with a warning naming the output and channel; ``min_cosine`` turns a
  result below it into an error (nothing is written).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnx

from onnxcomp.checking.metrics import (
    FIDELITY_FLOOR,
    ChannelSplit,
    OutputFidelity,
    below_floor,
    fidelity_problem,
    summarize,
)
from onnxcomp.checking.perplexity import paired_perplexity
from onnxcomp.checking.verify import (
    Outputs,
    Tolerance,
    Verifier,
    drift,
    fidelity,
)
from onnxcomp.checking.verify_data import VerificationData
from onnxcomp.errors import UnverifiedError, VerificationError, one_line
from onnxcomp.ir.candidate import Candidate
from onnxcomp.ir.weightless import references_files, structure_skeleton

log = logging.getLogger("onnxcomp")


def check_structure(model: "onnx.ModelProto | bytes | str", full: bool, lent: Collection[str] = ()) -> None:
    """``onnx.checker`` on a model (its weightless skeleton), serialized bytes, or a path.

    A ModelProto is checked as `structure_skeleton` of it: large weights become typed
    inputs, so the checker neither serializes nor parses gigabytes it does not look at
    (and models over 2 GB need no spill to disk). ``lent`` names initializers that are
    payload-free headers of an export in progress.
    """
    if isinstance(model, (bytes, str)):
        onnx.checker.check_model(model, full_check=full)
        return
    check_skeleton(structure_skeleton(model, lent), full)


def check_skeleton(skeleton: onnx.ModelProto, full: bool) -> None:
    """``onnx.checker`` on a weightless skeleton (spilled to a file if it is still > 2 GB)."""
    from onnxcomp.io.files import PROTO_LIMIT, save_model

    if skeleton.ByteSize() < PROTO_LIMIT:  # cheap here: the skeleton holds no large weights
        onnx.checker.check_model(skeleton.SerializeToString(), full_check=full)
        return
    with tempfile.TemporaryDirectory(prefix="onnxcomp-check-") as d:
        path = Path(d) / "model.onnx"
        save_model(skeleton, path, external_data=True)
        onnx.checker.check_model(str(path), full_check=full)


@dataclass
class Verdict:
    """What checking a candidate found.

    Attributes:
        model: The complete candidate model when accepted, else None.
        problem: Why it was rejected (invalid, cannot run, drifted), else None.
        fidelity: For an accepted candidate checked numerically: its fidelity summary
            against the input model (cosine, errors, ...), else None.
    """

    model: onnx.ModelProto | None
    problem: str | None = None
    fidelity: dict[str, Any] | None = None

    @classmethod
    def rejected(cls, problem: str) -> "Verdict":
        """A rejected candidate."""
        return cls(None, problem)


class Checker:
    """Checks the candidates of one pipeline run against its input model.

    Args:
        model: The run's input model (already structurally valid).
        verify: ``each`` (numeric check after every change), ``final`` or ``none``.
        tolerance: Allowed drift for lossless changes.
        data: What to verify on (`select_verification_data`); required unless ``verify``
            is ``none``.
        warn: Receives warnings for the report.
        channels: Channel splits per output name (else the default channel axis).
        floor: A lossy result whose worst cosine is below this is ``degraded``.
        min_cosine: A result whose worst cosine is below this fails verification.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        verify: Literal["each", "final", "none"],
        tolerance: Tolerance,
        data: VerificationData | None,
        warn: Callable[[str], None],
        channels: Mapping[str, ChannelSplit] | None = None,
        floor: float = FIDELITY_FLOOR,
        min_cosine: float | None = None,
    ) -> None:
        self.input = model
        self._verify = verify
        self._tolerance = tolerance
        self._warn = warn
        self._data = data
        self._channels = dict(channels or {})
        self._floor = floor
        self._min_cosine = min_cosine
        self._full_check = True
        # Weights still on disk reach onnxruntime as a file it maps; lent arrays get copied.
        self._lend_weights = not references_files(model)
        self._baseline: Outputs | None = None  # last accepted outputs; None = the input's
        self._baseline_model: onnx.ModelProto | None = None
        self._baseline_fidelity: dict[str, OutputFidelity] | None = None  # its fidelity, for final()
        self.verifier: Verifier | None = None
        if verify != "none":
            if data is None:
                raise ValueError("Checker: verification data is required unless verify='none'")
            self.verifier = Verifier(model, data.feeds, tolerance=tolerance)
            if self.verifier.small:
                # Most pipelines change something, and then the reference run is on the
                # critical path: start it now, beside the import and the first passes.
                # (Larger inputs start it at the first change: a wasted run costs more.)
                self.verifier.prefetch()

    def close(self) -> None:
        """Wait for background runs and drop cached weights (also on errors)."""
        if self.verifier is not None:
            self.verifier.close()

    def expect_check(self) -> None:
        """A candidate is coming: start the reference run now if it has not started."""
        if self.verifier is not None:
            self.verifier.prefetch()

    def expect_lossy_pass(self) -> None:
        """A lossy pass is about to run: on a large input, run the reference now.

        Such a pass nearly always changes the model, and the input's reference run (its
        session and the input's weights, 0.9 GB for a 540 MB decoder) then follows it on
        top of what the pass left: run first, it comes on top of the graph alone
        (the int8 preset on SmolLM2: 1.25 GB peak after the pass). Its outputs are kept
        in files (`OutputStore`). Small inputs start it in the background anyway.
        """
        if self.verifier is not None and not self.verifier.small:
            self.verifier.reference_outputs  # noqa: B018 - computed now, for the check that follows

    def check(self, candidate: Candidate, lossless: bool) -> Verdict:
        """Check ``candidate``; an accepted lossless one becomes the new baseline.

        Lossless changes are compared with the last accepted outputs (tolerance); lossy
        ones are accepted and their fidelity against the input is returned.
        """
        try:
            self._check_candidate_structure(candidate)
        except Exception as e:
            return Verdict.rejected(f"result is not valid ONNX: {one_line(e)}")
        verifier = self.verifier
        if verifier is None or self._verify != "each" or not verifier.may_verify:
            return Verdict(candidate.finish())
        if self._lend_weights:
            wait = verifier.start_evaluate(candidate.header_model, lent=candidate.lent_arrays(verifier.cache))
            model = candidate.finish()  # while onnxruntime works; wasted only if rejected
            outs, err = wait()
        else:  # weights on disk: onnxruntime maps them from a file (see weightless.references_files)
            model = candidate.finish()
            outs, err = verifier.evaluate(model)
        # The candidate may have started before the reference run was known to work (the
        # two overlap); if the input itself cannot run there is nothing to compare.
        if not verifier.can_verify:
            return Verdict(model)
        if err:
            return Verdict.rejected(err)
        baseline = self._baseline if self._baseline is not None else verifier.reference_outputs
        bad = drift(baseline, outs, self._tolerance) if lossless else None
        if bad:
            return Verdict.rejected(bad[1])
        per = self._fidelity(outs)
        problem = fidelity_problem(per)
        if problem and not lossless:  # lossless: drift above already compared NaN/Inf patterns
            return Verdict.rejected(f"result fails verification: {problem}")
        self._baseline, self._baseline_model, self._baseline_fidelity = outs, model, per
        return Verdict(model, fidelity=summarize(per))

    def _fidelity(self, outs: Outputs) -> dict[str, OutputFidelity]:
        assert self.verifier is not None and self._data is not None
        return fidelity(self.verifier.reference_outputs, outs, self._data.labels, self._channels)

    def _check_candidate_structure(self, candidate: Candidate) -> None:
        skeleton = candidate.skeleton()
        try:
            check_skeleton(skeleton, self._full_check)
        except Exception:
            if not self._full_check or self._input_passes_full_check():
                raise
            check_skeleton(skeleton, False)

    def _input_passes_full_check(self) -> bool:
        """Full-check the input once; if it fails, fall back to structural checks for good."""
        try:
            check_structure(self.input, full=True)
            return True
        except Exception as e:
            self._full_check = False
            msg = f"input model fails onnx's full check ({one_line(e)}); checking structure only"
            log.warning(msg)
            self._warn(msg)
            return False

    def final(self, result: onnx.ModelProto, *, allow_unverified: bool, lossless: bool, context: str) -> dict[str, Any]:
        """The ``verification`` section of the report for the run's ``result``.

        Args:
            result: The accepted result (the input itself if nothing changed).
            allow_unverified: Accept a result whose numerics could not be checked.
            lossless: Every accepted change was lossless (the result must then match the
                input within tolerance).
            context: The passes that ran, for error messages.
        """
        verifier = self.verifier
        if verifier is None or self._data is None:
            if self._min_cosine is not None:
                raise UnverifiedError("--min-cosine needs verification, which was disabled (--verify none)")
            if not allow_unverified:
                raise UnverifiedError("verification was disabled (--verify none); pass --allow-unverified to write an unverified model")
            return {"verified": False, "reason": "verification disabled"}
        data = self._data.description
        if result is self.input:
            names = [o.name for o in result.graph.output]
            exact = {"cosine": 1.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0}
            return {"verified": True, "data": data, "identical_to_input": True, **exact, "degraded": False,
                    "outputs": {n: dict(exact) for n in names}, "within_tolerance": True}
        if not verifier.can_verify:
            if self._min_cosine is not None:
                raise UnverifiedError(f"--min-cosine cannot be checked: {verifier.unverifiable}")
            if not allow_unverified:
                raise UnverifiedError(f"could not verify the result: {verifier.unverifiable}; pass --allow-unverified to write it anyway")
            self._warn(f"not verified: {verifier.unverifiable}")
            return {"verified": False, "reason": verifier.unverifiable}
        if result is self._baseline_model and self._baseline is not None and self._baseline_fidelity is not None:
            # Already evaluated and measured when it was accepted.
            outs, per = self._baseline, self._baseline_fidelity
        else:
            outs, err = verifier.evaluate(result)
            if err:
                raise VerificationError(f"final model: {err} ({context})")
            per = self._fidelity(outs)
        problem = fidelity_problem(per)
        if problem:
            raise VerificationError(f"final model fails verification on {data}: {problem} ({context}); nothing written")
        summary = summarize(per)
        out: dict[str, Any] = {"verified": True, "data": data, **summary, "floor": self._floor, "degraded": False,
                               "outputs": {k: v.to_dict() for k, v in per.items()}}
        ppl = paired_perplexity(self.input, verifier.feeds, verifier.reference_outputs, outs)
        if ppl is not None:  # a causal LM: next-token perplexity on the verification feeds
            out["perplexity"] = ppl
        if lossless:
            bad = drift(verifier.reference_outputs, outs, self._tolerance)
            out["within_tolerance"] = bad is None
            if bad is not None:
                raise VerificationError(f"lossless pipeline {bad[1]} ({context})")
        else:
            for line in below_floor(per, self._floor):
                out["degraded"] = True
                msg = f"degraded result: {line} (the fidelity floor), verified on {data}"
                log.warning(msg)
                self._warn(msg)
        if self._min_cosine is not None and summary["cosine"] < self._min_cosine:
            raise VerificationError(
                f"fidelity below --min-cosine {self._min_cosine:g}: {summary['worst']['where']} has cosine "
                f"{summary['cosine']:.4f} on {data}; nothing written"
            )
        return out
