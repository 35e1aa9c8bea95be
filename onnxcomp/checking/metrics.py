"""Fidelity metrics between a reference output and a candidate output.

Accumulated batch by batch (`FidelityAccumulator`) so comparing over a large dataset
never holds all outputs in memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class OutputFidelity:
    """Fidelity of one output: cosine, errors, SNR, and top-1 agreement for classifiers."""

    cosine: float
    max_abs_diff: float
    mean_abs_diff: float
    snr_db: float
    top1_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    mismatched_nan: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_classifier(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind == "f"


class FidelityAccumulator:
    """Streams (reference, candidate) pairs of one output and summarises them."""

    def __init__(self) -> None:
        self.dot = 0.0
        self.nr = 0.0
        self.nc = 0.0
        self.err2 = 0.0
        self.abs_sum = 0.0
        self.max_abs = 0.0
        self.count = 0
        self.top1_same = 0
        self.top1_n = 0
        self.correct_ref = 0
        self.correct_cand = 0
        self.labelled = 0
        self.mismatched_nan = 0

    def add(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add one batch of outputs (same shape), with optional task labels."""
        if ref.shape != cand.shape:
            raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
        if ref.dtype.kind not in "fc":
            r = ref.astype(np.float64)
            c = cand.astype(np.float64)
        else:
            r = ref.astype(np.float64)
            c = cand.astype(np.float64)
        # NaN/Inf in the same places (e.g. a model with NaN weights) count as equal.
        same_nonfinite = (~np.isfinite(r)) & ((r == c) | (np.isnan(r) & np.isnan(c)))
        bad = (~np.isfinite(r) | ~np.isfinite(c)) & ~same_nonfinite
        self.mismatched_nan += int(bad.sum())
        mask = np.isfinite(r) & np.isfinite(c)
        rf, cf = r[mask], c[mask]
        d = rf - cf
        self.dot += float(np.dot(rf, cf))
        self.nr += float(np.dot(rf, rf))
        self.nc += float(np.dot(cf, cf))
        self.err2 += float(np.dot(d, d))
        if d.size:
            self.abs_sum += float(np.abs(d).sum())
            self.max_abs = max(self.max_abs, float(np.abs(d).max()))
        self.count += int(d.size)
        if _is_classifier(ref):
            pr, pc = ref.argmax(1), cand.argmax(1)
            self.top1_same += int((pr == pc).sum())
            self.top1_n += len(pr)
            if labels is not None and len(labels) == len(pr):
                lab = np.asarray(labels).reshape(-1)
                self.correct_ref += int((pr == lab).sum())
                self.correct_cand += int((pc == lab).sum())
                self.labelled += len(lab)

    def result(self) -> OutputFidelity:
        """The summary so far."""
        if self.nr == 0 and self.nc == 0:
            cos = 1.0
        elif self.nr == 0 or self.nc == 0:
            cos = 0.0
        else:
            cos = self.dot / math.sqrt(self.nr * self.nc)
        snr = math.inf if self.err2 == 0 else 10 * math.log10(max(self.nr, 1e-300) / self.err2)
        return OutputFidelity(
            cosine=float(min(1.0, cos)),
            max_abs_diff=math.inf if self.mismatched_nan else self.max_abs,
            mean_abs_diff=self.abs_sum / self.count if self.count else 0.0,
            snr_db=snr,
            top1_agreement=self.top1_same / self.top1_n if self.top1_n else None,
            accuracy_reference=self.correct_ref / self.labelled if self.labelled else None,
            accuracy_candidate=self.correct_cand / self.labelled if self.labelled else None,
            mismatched_nan=self.mismatched_nan,
        )


def summarize(per_output: dict[str, OutputFidelity]) -> dict[str, Any]:
    """Overall figures: the worst cosine and the largest error across outputs."""
    if not per_output:
        return {"cosine": 1.0, "max_abs_diff": 0.0}
    vals = list(per_output.values())
    out: dict[str, Any] = {
        "cosine": min(v.cosine for v in vals),
        "max_abs_diff": max(v.max_abs_diff for v in vals),
        "mean_abs_diff": max(v.mean_abs_diff for v in vals),
        "snr_db": min(v.snr_db for v in vals),
    }
    tops = [v.top1_agreement for v in vals if v.top1_agreement is not None]
    if tops:
        out["top1_agreement"] = min(tops)
    accs = [(v.accuracy_reference, v.accuracy_candidate) for v in vals if v.accuracy_candidate is not None]
    if accs:
        out["accuracy_reference"], out["accuracy_candidate"] = accs[0]
    return out
