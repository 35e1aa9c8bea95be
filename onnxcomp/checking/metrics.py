"""Fidelity metrics between a reference output and a candidate output.

Accumulated batch by batch (`FidelityAccumulator`) so comparing over a large dataset
never holds all outputs in memory.

**Per output and per channel.** One output can mix quantities of very different scale (a
detector's ``[N, 22, anchors]`` head: 4 box coordinates up to 320 beside 18 class
probabilities up to 1). Its cosine over the whole tensor is dominated by the large part,
so a candidate that destroys the small part still scores 0.999. Every output is therefore
also measured per channel, and its headline ``cosine`` is the worst of the whole-output
cosine and every judged channel's cosine. The channel axis (`default_channel_axis`):

* rank >= 4 (NCHW-style feature maps): axis 1;
* rank 3: the smaller of axes 1 and 2 when it has at most `SMALL_AXIS` entries
  (``[N, C, L]`` heads such as YOLO's ``[1, 22, 2100]`` or ``[1, 84, 8400]`` use axis 1;
  short ``[N, L, C]`` token outputs are judged per token). A language model's logits
  ``[N, 256, 49152]`` are not split: its worst of hundreds of tokens says little about
  the model and would flag every 4-bit result (its measure is perplexity);
* rank 2 ``[N, C]`` with 2 <= C <= `SMALL_HEAD` (box + score heads, a few classes): the
  last axis (wide class-score or embedding rows are homogeneous; their cosine is the
  output's);
* otherwise (rank 0 or 1, a channel axis of size 1): the whole output only;
* or a split the user names (`ChannelSplit`, ``--channels NAME:AXIS[=SIZES]``), whose
  groups of consecutive channels are judged as one each (``output0:1=4,18``).

**Near-zero channels.** A channel whose reference values are all zero, or whose RMS is
below `NEAR_ZERO` times the RMS of the whole output, is not judged on its own: its cosine
would only measure noise (a ReLU-dead channel against a candidate's tiny residue). Its
error still counts in the output's cosine and errors, and such channels are counted in
``near_zero_channels``. The threshold is low on purpose: a detector's class
probabilities on an image without objects are ~1e-5 beside box coordinates of ~100
(RMS ratio ~3e-7) and must still be judged.

**Top-1 agreement** is reported only for outputs that look like class scores: float
``[N, C]`` with C > 1, whose name does not mark an embedding (`_EMBEDDING_HINTS`), whose
rows are not L2-normalised (unit rows that are not probabilities are embeddings), and
where at least half the samples have a clear reference top-1 (ahead of the runner-up by
`TOP1_MARGIN` times the row's standard deviation; random-weight logits rarely do). It is
counted over those clear samples only. Labels (a ``label`` array in the data) mark a
``[N, C]`` output as class scores whatever its rows look like; accuracy is reported only
with labels.

**Non-finite values.** NaN/Inf in the same places of reference and candidate count as
equal; anywhere else they are ``mismatched_nan`` and make ``max_abs_diff`` infinite. A
result with a mismatch, or with no finite value to compare, never passes verification
(`OutputFidelity.problem`).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnxcomp.errors import UsageError

#: Reference RMS of a channel, relative to the whole output's, below which the channel
#: is near-zero (not judged on its own; see the module docstring).
NEAR_ZERO = 1e-8
#: Widest rank-2 ``[N, C]`` output that is measured per column (see `default_channel_axis`).
SMALL_HEAD = 32
#: Most entries of a rank-3 output's smaller axis (1 or 2) judged one by one (see
#: `default_channel_axis`): detection heads have tens of channels, LM sequences hundreds.
SMALL_AXIS = 100
#: A reference top-1 is clear when it leads the runner-up by this times the row's std.
TOP1_MARGIN = 0.5
#: Default fidelity floor: a lossy result whose worst cosine (per output and per channel)
#: is below this is reported as degraded, with a warning naming the output and channel.
FIDELITY_FLOOR = 0.9
#: Values converted to float64 at a time by the accumulators (8 MB of float64).
CHUNK = 1 << 20
#: Output names that mark an embedding (no top-1 agreement for those).
_EMBEDDING_HINTS = re.compile(r"embed|pool|hidden|feature|vector|sentence|token|encod", re.IGNORECASE)


@dataclass(frozen=True)
class ChannelSplit:
    """How an output is cut into channels for fidelity.

    Attributes:
        axis: The channel axis (negative counts from the end); None: whole output only.
        sizes: Consecutive group sizes along ``axis`` (must add up to its length); empty:
            every index on ``axis`` is its own channel.
    """

    axis: int | None
    sizes: tuple[int, ...] = ()


def parse_channel_spec(text: str) -> tuple[str, ChannelSplit]:
    """Parse ``NAME:AXIS[=N1,N2,...]`` or ``NAME:none`` (the ``--channels`` option).

    The last ``:`` separates the output name (which may contain ``:``) from the axis.

    Raises:
        ValueError: The text is not of that form (callers turn it into a usage error).
    """
    name, sep, rest = text.rpartition(":")
    if not sep or not name or not rest:
        raise ValueError(f"--channels {text!r}: expected OUTPUT:AXIS[=SIZES] (e.g. output0:1=4,18) or OUTPUT:none")
    if rest.strip().lower() == "none":
        return name, ChannelSplit(None)
    axis_text, _, sizes_text = rest.partition("=")
    try:
        axis = int(axis_text)
        sizes = tuple(int(s) for s in sizes_text.split(",")) if sizes_text else ()
    except ValueError:
        raise ValueError(f"--channels {text!r}: the axis and group sizes must be integers (e.g. output0:1=4,18)") from None
    if any(s <= 0 for s in sizes):
        raise ValueError(f"--channels {text!r}: group sizes must be positive")
    return name, ChannelSplit(axis, sizes)


def default_channel_axis(shape: tuple[int, ...]) -> int | None:
    """The channel axis measured by default for an output of ``shape`` (module docstring)."""
    rank = len(shape)
    if rank >= 4:
        axis = 1
    elif rank == 3 and min(shape[1], shape[2]) <= SMALL_AXIS:
        axis = 1 if shape[1] <= shape[2] else 2
    elif rank == 2 and shape[1] <= SMALL_HEAD:
        axis = 1
    else:
        return None
    return axis if shape[axis] > 1 else None


def _group_label(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


@dataclass
class OutputFidelity:
    """Fidelity of one output.

    Attributes:
        cosine: The headline: the worst of ``output_cosine`` and every judged channel's.
        output_cosine: Cosine over the whole output.
        max_abs_diff: Largest |difference| (inf when non-finite values differ).
        mean_abs_diff: Mean |difference| over finite values.
        snr_db: Signal-to-noise ratio of the whole output, in dB.
        channel_axis: The axis measured per channel, or None.
        channels_judged: Channels (or named groups) judged on their own.
        near_zero_channels: Channels not judged because the reference is ~0 there.
        worst_channel: Label of the worst judged channel ("7", or "4-21" for a group).
        worst_channel_cosine: Its cosine.
        groups: Cosine per named group (only for a user-named split).
        top1_agreement: Share of clear-top-1 samples whose argmax is unchanged (class
            scores only, see the module docstring).
        top1_samples: How many samples that share is over.
        accuracy_reference / accuracy_candidate: Against labels, when given.
        mismatched_nan: Values non-finite in one model and not the other.
        compared: Finite values compared.
    """

    cosine: float
    max_abs_diff: float
    mean_abs_diff: float
    snr_db: float
    top1_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    mismatched_nan: int = 0
    output_cosine: float = 1.0
    channel_axis: int | None = None
    channels_judged: int = 0
    near_zero_channels: int = 0
    worst_channel: str | None = None
    worst_channel_cosine: float | None = None
    groups: dict[str, float] | None = None
    top1_samples: int = 0
    compared: int = 0
    size: int = field(default=0, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self, name: str) -> str:
        """Where this output's headline cosine comes from, e.g. "output0 channel 7 (axis 1)"."""
        if self.worst_channel is not None and self.worst_channel_cosine is not None and self.worst_channel_cosine < self.output_cosine:
            kind = "channels" if "-" in self.worst_channel else "channel"
            return f"{name} {kind} {self.worst_channel} (axis {self.channel_axis})"
        return name

    @property
    def problem(self) -> str | None:
        """Why this output can never pass verification (non-finite differences), or None."""
        if self.mismatched_nan:
            return f"{self.mismatched_nan} value(s) are NaN/Inf in one model but not the other"
        if self.size and not self.compared:
            return "no finite values to compare (the reference is NaN/Inf everywhere)"
        return None


def _finite_pair(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``ref`` and ``cand`` in float64 with non-finite values zeroed where either has one,
    and the mask of values finite in both (None when all are)."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    mask = np.isfinite(r) & np.isfinite(c)
    if mask.all():
        return r, c, None
    return np.where(mask, r, 0.0), np.where(mask, c, 0.0), mask


def _cos(dot: Any, nr: Any, nc: Any) -> Any:
    """Cosine from sums (arrays or floats): 1 when both are zero, 0 when one is."""
    dot, nr, nc = np.asarray(dot, np.float64), np.asarray(nr, np.float64), np.asarray(nc, np.float64)
    denom = np.sqrt(nr * nc)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where((nr == 0) & (nc == 0), 1.0, 0.0))
    return np.minimum(cos, 1.0)


class FidelityAccumulator:
    """Streams (reference, candidate) pairs of one output and summarises them.

    Args:
        split: How to cut the output into channels; None: `default_channel_axis`.
        name: The output's name (an embedding-like name disables top-1 agreement).
    """

    def __init__(self, split: ChannelSplit | None = None, name: str = "") -> None:
        self.split = split
        self.name = name
        self.dot = self.nr = self.nc = self.err2 = self.abs_sum = self.max_abs = 0.0
        self.count = self.size = self.mismatched_nan = 0
        self.axis: int | None = None
        self._axis_fixed = False
        # Per channel along `axis`: sums of r*c, r*r, c*c and the number of values.
        self.ch_dot = np.zeros(0)
        self.ch_nr = np.zeros(0)
        self.ch_nc = np.zeros(0)
        self.ch_n = np.zeros(0)
        self.rows = self.unit_rows = self.clear = self.clear_same = 0
        self.correct_ref = self.correct_cand = self.labelled = 0

    def add(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add one batch of outputs (same shape), with optional task labels.

        Sums are taken in float64 over `CHUNK` values at a time: a float64 copy of a whole
        batch (an LM's logits window is 50 MB of float32) would cost several times its size.
        """
        if ref.shape != cand.shape:
            raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
        flat_r, flat_c = ref.reshape(-1), cand.reshape(-1)
        all_finite = True
        # Buffers reused chunk after chunk: fresh 8 MB arrays cost a page fault per page.
        width = min(CHUNK, flat_r.size)
        buf_r, buf_c, buf_d = np.empty(width), np.empty(width), np.empty(width)
        for start in range(0, flat_r.size, CHUNK):
            raw_r, raw_c = flat_r[start:start + CHUNK], flat_c[start:start + CHUNK]
            r, c, d = buf_r[:raw_r.size], buf_c[:raw_r.size], buf_d[:raw_r.size]
            r[...], c[...] = raw_r, raw_c
            nr, nc = float(np.dot(r, r)), float(np.dot(c, c))
            n_fin = r.size
            if not (math.isfinite(nr) and math.isfinite(nc)):  # squares of finite values never overflow float64
                all_finite = False
                fin_r, fin_c = np.isfinite(r), np.isfinite(c)
                mask = fin_r & fin_c
                # NaN/Inf in the same places (e.g. a model with NaN weights) count as equal.
                same_nonfinite = ~fin_r & ((raw_r == raw_c) | (np.isnan(raw_r) & np.isnan(raw_c)))
                self.mismatched_nan += int(((~fin_r | ~fin_c) & ~same_nonfinite).sum())
                r[~mask], c[~mask] = 0.0, 0.0
                nr, nc, n_fin = float(np.dot(r, r)), float(np.dot(c, c)), int(mask.sum())
            np.subtract(r, c, out=d)
            self.dot += float(np.dot(r, c))
            self.nr += nr
            self.nc += nc
            self.err2 += float(np.dot(d, d))
            if d.size:
                np.abs(d, out=d)
                self.abs_sum += float(d.sum())
                self.max_abs = max(self.max_abs, float(d.max()))
            self.count += n_fin
        self.size += ref.size
        self._add_channels(ref, cand)
        if ref.ndim == 2 and ref.shape[1] > 1 and ref.dtype.kind == "f" and all_finite:
            self._add_top1(np.asarray(ref, np.float64), np.asarray(cand, np.float64), labels)

    def _channel_axis(self, shape: tuple[int, ...]) -> int | None:
        if not self._axis_fixed:  # decided on the first batch: later sizes may differ
            self._axis_fixed = True
            if self.split is None:
                self.axis = default_channel_axis(shape)
            elif self.split.axis is not None:
                if not -len(shape) <= self.split.axis < len(shape):
                    raise UsageError(f"--channels: axis {self.split.axis} is out of range for output {self.name!r} of rank {len(shape)}")
                self.axis = self.split.axis % len(shape)
        return self.axis

    def _add_channels(self, ref: np.ndarray, cand: np.ndarray) -> None:
        axis = self._channel_axis(ref.shape)
        if axis is None or axis >= ref.ndim:
            return
        n = ref.shape[axis]
        rr = np.moveaxis(ref, axis, 0).reshape(n, -1)
        cc = np.moveaxis(cand, axis, 0).reshape(n, -1)
        if n > len(self.ch_dot):  # a dynamic channel axis may grow between batches
            grow = n - len(self.ch_dot)
            self.ch_dot, self.ch_nr, self.ch_nc, self.ch_n = (np.concatenate([a, np.zeros(grow)]) for a in (self.ch_dot, self.ch_nr, self.ch_nc, self.ch_n))
        step = max(1, CHUNK // max(n, 1))
        for start in range(0, rr.shape[1], step):
            r, c, mask = _finite_pair(rr[:, start:start + step], cc[:, start:start + step])
            self.ch_dot[:n] += np.einsum("ij,ij->i", r, c)
            self.ch_nr[:n] += np.einsum("ij,ij->i", r, r)
            self.ch_nc[:n] += np.einsum("ij,ij->i", c, c)
            self.ch_n[:n] += mask.sum(1) if mask is not None else r.shape[1]

    def _add_top1(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        norms = np.sqrt((ref * ref).sum(1))
        probabilities = bool((ref >= 0).all() and np.allclose(ref.sum(1), 1.0, atol=1e-3))
        self.rows += len(ref)
        if not probabilities:
            self.unit_rows += int((np.abs(norms - 1.0) < 1e-3).sum())
        top2 = -np.partition(-ref, 1, axis=1)[:, :2]
        clear = (top2[:, 0] - top2[:, 1]) >= TOP1_MARGIN * ref.std(1)
        pr, pc = ref.argmax(1), cand.argmax(1)
        self.clear += int(clear.sum())
        self.clear_same += int((clear & (pr == pc)).sum())
        if labels is not None and len(labels) == len(pr):
            lab = np.asarray(labels).reshape(-1)
            self.correct_ref += int((pr == lab).sum())
            self.correct_cand += int((pc == lab).sum())
            self.labelled += len(lab)

    def _is_class_scores(self) -> bool:
        if self.rows == 0 or _EMBEDDING_HINTS.search(self.name):
            return False
        if self.labelled:  # labels say it is a classifier
            return True
        return self.unit_rows < self.rows and 2 * self.clear >= self.rows

    def _channel_groups(self) -> list[tuple[int, int]]:
        n = len(self.ch_dot)
        sizes = self.split.sizes if self.split is not None else ()
        if not sizes:
            return [(i, i + 1) for i in range(n)]
        if sum(sizes) != n:
            raise UsageError(f"--channels: groups {list(sizes)} of output {self.name!r} add up to {sum(sizes)}, but axis {self.axis} has {n} channels")
        bounds = np.cumsum((0, *sizes))
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def result(self) -> OutputFidelity:
        """The summary so far."""
        out_cos = float(_cos(self.dot, self.nr, self.nc))
        snr = math.inf if self.err2 == 0 else 10 * math.log10(max(self.nr, 1e-300) / self.err2)
        worst, worst_cos, judged, near_zero = None, None, 0, 0
        groups: dict[str, float] | None = None
        if len(self.ch_dot):
            spans = self._channel_groups()
            starts = np.array([a for a, _ in spans])
            dot, nr, nc, n = (np.add.reduceat(x, starts) for x in (self.ch_dot, self.ch_nr, self.ch_nc, self.ch_n))
            cos = _cos(dot, nr, nc)
            mean_sq = self.nr / self.count if self.count else 0.0
            with np.errstate(invalid="ignore", divide="ignore"):
                ms = np.where(n > 0, nr / np.maximum(n, 1), 0.0)
            small = (nr == 0) | (ms < NEAR_ZERO**2 * mean_sq)
            near_zero = int(small.sum())
            judged = len(spans) - near_zero
            if self.split is not None and self.split.sizes:
                groups = {_group_label(a, b): float(c) for (a, b), c in zip(spans, cos)}
            if judged:
                masked = np.where(small, np.inf, cos)
                i = int(np.argmin(masked))
                worst, worst_cos = _group_label(*spans[i]), float(cos[i])
        headline = out_cos if worst_cos is None else min(out_cos, worst_cos)
        scores = self._is_class_scores()
        return OutputFidelity(
            cosine=float(headline),
            max_abs_diff=math.inf if self.mismatched_nan else self.max_abs,
            mean_abs_diff=self.abs_sum / self.count if self.count else 0.0,
            snr_db=snr,
            top1_agreement=self.clear_same / self.clear if scores and self.clear else None,
            accuracy_reference=self.correct_ref / self.labelled if self.labelled and scores else None,
            accuracy_candidate=self.correct_cand / self.labelled if self.labelled and scores else None,
            mismatched_nan=self.mismatched_nan,
            output_cosine=out_cos,
            channel_axis=self.axis if len(self.ch_dot) else None,
            channels_judged=judged,
            near_zero_channels=near_zero,
            worst_channel=worst,
            worst_channel_cosine=worst_cos,
            groups=groups,
            top1_samples=self.clear if scores else 0,
            compared=self.count,
            size=self.size,
        )


def summarize(per_output: dict[str, OutputFidelity]) -> dict[str, Any]:
    """Overall figures: the worst cosine (per output and per channel), where it is, the
    largest error across outputs, and top-1 agreement / accuracy where they apply."""
    if not per_output:
        return {"cosine": 1.0, "max_abs_diff": 0.0}
    name, worst = min(per_output.items(), key=lambda kv: kv[1].cosine)
    vals = list(per_output.values())
    out: dict[str, Any] = {
        "cosine": worst.cosine,
        "worst": {"output": name, "channel": worst.worst_channel if worst.where(name) != name else None,
                  "axis": worst.channel_axis, "where": worst.where(name), "cosine": worst.cosine},
        "output_cosine": min(v.output_cosine for v in vals),
        "max_abs_diff": max(v.max_abs_diff for v in vals),
        "mean_abs_diff": max(v.mean_abs_diff for v in vals),
        "snr_db": min(v.snr_db for v in vals),
        "nonfinite_mismatches": sum(v.mismatched_nan for v in vals),
    }
    tops = [v.top1_agreement for v in vals if v.top1_agreement is not None]
    if tops:
        out["top1_agreement"] = min(tops)
    accs = [(v.accuracy_reference, v.accuracy_candidate) for v in vals if v.accuracy_candidate is not None]
    if accs:
        out["accuracy_reference"], out["accuracy_candidate"] = accs[0]
    return out


def fidelity_problem(per_output: dict[str, OutputFidelity]) -> str | None:
    """Why these results can never pass verification (non-finite differences), or None."""
    for name, f in per_output.items():
        if f.problem:
            return f"output {name!r}: {f.problem}"
    return None


def below_floor(per_output: dict[str, OutputFidelity], floor: float) -> list[str]:
    """One line per output whose headline cosine is below ``floor``, naming output and channel."""
    return [f"{f.where(name)}: cosine {f.cosine:.4f} is below {floor:g}" for name, f in per_output.items() if f.cosine < floor]
