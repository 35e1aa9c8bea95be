"""The speed check of ``optimize``: is a lossy result really faster than its input?

A lossy pipeline trades fidelity for speed; when the result is *slower* on the target
execution provider (INT8 QDQ that the EP does not fuse, pruning that breaks a fused
pattern), the trade is all loss and the user should hear it. `check_speed` times input
and result the way ``bench`` does — one session each, warm-up, interleaved rounds (A B,
B A, …), the median of per-round ratios (`onnxcomp.perf.timing`) — but briefly (about
`DURATION_S` seconds of rounds, at least `MIN_ROUNDS`, or `SLOW_MIN_ROUNDS` for models
whose round alone takes longer), and `slower_warning` turns a ratio
below `SLOWER_BELOW` into a warning. ``bench`` / ``compare`` remain the tools for a real
measurement; this check is short and its ratio is noisy by a few percent.

A causal LM exported with a KV cache (`onnxcomp.perf.decode.KvLayout`) is timed the way it
is used: whole greedy generations (a `DECODE_PROMPT`-token prefill, then `DECODE_TOKENS`
tokens with the cache fed back), and the ratio is the decode phase's. Weight-only 4-bit
quantization speeds up the memory-bound decode steps, not a compute-bound prefill: on
SmolLM2-135M a 4-bit result ran a 256-token prefill at 0.97x and decoded at 1.9x, so a
prefill-only check would have reported it as no faster. The prefill ratio is reported too.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp.checking.calibration import required_input_specs
from onnxcomp.checking.runtime import make_session, parse_ep, providers_for
from onnxcomp.errors import UsageError, one_line
from onnxcomp.io.files import model_nbytes, save_model
from onnxcomp.ir.weightless import references_files
from onnxcomp.perf.decode import DecodeRunner, KvLayout, prompt_ids
from onnxcomp.perf.feeds import make_feeds
from onnxcomp.perf.timing import (
    InterleavedTimer,
    make_runner,
    paired_ratio,
    timed_rounds,
)

log = logging.getLogger("onnxcomp")

#: Seconds of timed rounds (after warm-up).
DURATION_S = 1.0
#: Rounds at least, even when they take longer than `DURATION_S`.
MIN_ROUNDS = 5
#: Untimed runs of each model first.
WARMUP = 3
#: A model whose weights in memory reach this size is timed from a file (`_session_source`):
#: on the 2.35 GB chain of bench/big_model_memory.py the speed check was the run's peak,
#: and so it was for SmolLM2's 172 MB int8 result (lending it copies every payload out of
#: the protobuf: 1.33 GB peak, 142 MB less from a file).
FILE_BYTES = 64 << 20
#: Fewest timed rounds of models whose round takes longer than `DURATION_S` (see `_rounds`).
SLOW_MIN_ROUNDS = 3
#: A result at less than this fraction of the input's speed is reported as slower
#: (below 1.0 by more than the noise of a one-second interleaved measurement).
SLOWER_BELOW = 0.95
#: Models with a KV cache: prompt tokens (batch 1) and greedy tokens per timed generation.
DECODE_PROMPT = 32
DECODE_TOKENS = 16


def measure_speed(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    *,
    ep: str = "cpu",
    data: str | os.PathLike[str] | None = None,
    seed: int = 0,
    duration_s: float = DURATION_S,
    min_rounds: int = MIN_ROUNDS,
    warmup: int = WARMUP,
) -> dict[str, Any]:
    """Time ``candidate`` against ``reference`` interleaved on one EP.

    Args:
        reference: The input model.
        candidate: The optimized model (same graph inputs).
        ep: Execution provider (``cpu``, ``cuda``, …, as for ``bench``).
        data: Calibration ``.npz`` / folder whose first sample (first batch where the
            model's batch is fixed) is the input; None: generated inputs (symbolic dims 1).
            A model with a KV cache generates from a random prompt instead (speed does
            not depend on the tokens).
        seed: Seed of generated inputs (and of the prompt).
        duration_s: Seconds of timed rounds.
        min_rounds: Fewest timed rounds.
        warmup: Untimed runs of each model first.

    Returns:
        ``{"ratio": r, "ep": provider, "rounds": n, "input_ms": p50, "result_ms": p50, "timed": what}``;
        ``ratio`` is the median over rounds of input time ÷ result time (> 1: faster).
        For a model with a KV cache ``timed`` is ``"decode"``: the times and ``ratio`` are
        those of the decode steps of each generation, and ``prefill_ratio`` is added.
    """

    ep_name, device_id = parse_ep(ep)
    providers = providers_for(ep_name)
    # One sample where the batch dim is free: the check must stay short on a large model
    # whose calibration batches are long (a 135M-parameter LM on 8 x 256 tokens took
    # minutes), and batch-1 latency is what the warning is about.
    layout = _kv_layout(reference)
    if layout is None:
        fixed_batch = any(s.fixed_batch is not None for s in required_input_specs(reference))
        feeds = make_feeds(reference, data=data, seed=seed, batch=None if fixed_batch else 1)
    # Two sessions timed in turn must not spin (see onnxcomp.perf.timing).
    with tempfile.TemporaryDirectory(prefix="onnxcomp-speed-") as tmp:  # mapped files outlive their names
        sessions = [make_session(_session_source(m, Path(tmp) / str(i)), providers=providers, spinning=False, device_id=device_id)
                    for i, m in enumerate((reference, candidate))]
    if layout is None:
        timer = InterleavedTimer([make_runner(s, feeds, s.get_providers(), device_id) for s in sessions])
        ms = _rounds(timer, duration_s=duration_s, min_rounds=min_rounds, warmup=warmup)
        return {
            "ratio": paired_ratio(ms[:, 0], ms[:, 1]),
            "ep": sessions[1].get_providers()[0],
            "rounds": int(ms.shape[0]),
            "input_ms": float(np.median(ms[:, 0])),
            "result_ms": float(np.median(ms[:, 1])),
            "timed": "run",
        }
    prompt = prompt_ids(layout, reference, batch=1, shape=(layout.batch or 1, DECODE_PROMPT), seed=seed)
    runners = [DecodeRunner(s, layout, prompt, DECODE_TOKENS, providers=s.get_providers(), device_id=device_id) for s in sessions]
    n = _rounds(InterleavedTimer(runners), duration_s=duration_s, min_rounds=min_rounds, warmup=warmup).shape[0]
    # Each call of a runner records its prefill and decode times; the timed rounds are the last n.
    decode = [np.asarray(r.decode_ms[-n:]) for r in runners]
    prefill = [np.asarray(r.prefill_ms[-n:]) for r in runners]
    return {
        "ratio": paired_ratio(decode[0], decode[1]),
        "ep": sessions[1].get_providers()[0],
        "rounds": n,
        "input_ms": float(np.median(decode[0])),
        "result_ms": float(np.median(decode[1])),
        "timed": "decode",
        "prompt_tokens": int(prompt.shape[1]),
        "decode_tokens": DECODE_TOKENS,
        "prefill_ratio": paired_ratio(prefill[0], prefill[1]),
    }


def _kv_layout(model: onnx.ModelProto) -> KvLayout | None:
    """The KV-cache layout of a causal LM, or None for any other model (timed by plain runs)."""
    try:
        return KvLayout.detect(model)
    except UsageError:
        return None


def _session_source(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto | str:
    """``model``, or its copy in ``folder`` with external data when its weights in memory
    reach `FILE_BYTES`.

    onnxruntime maps external data and lets the mapping go once its kernels have packed
    the weights; weights lent from memory stay beside their packed copy. (A model whose
    weights are still in a file already reaches onnxruntime as one, see `make_session`.)
    """
    if references_files(model) or model_nbytes(model) < FILE_BYTES:
        return model
    folder.mkdir()
    path = folder / "model.onnx"
    save_model(model, path, external_data=True)
    return str(path)


def _rounds(timer: InterleavedTimer, *, duration_s: float, min_rounds: int, warmup: int) -> np.ndarray:
    """Milliseconds of ``(rounds, 2)`` timed rounds: about ``duration_s`` of them, at least ``min_rounds``.

    One warm-up round first (allocations, caches), then one timed round, which says what a
    round costs. A fast model gets the full warm-up and rounds until ``duration_s`` has
    passed. A model whose round takes longer than ``duration_s`` (a 135M-parameter LM on
    256 tokens: 2.6 s) gets no more warm-up and `SLOW_MIN_ROUNDS` rounds, the probe
    included: runs that long vary by a few percent only, and a fixed schedule of
    ``warmup`` + 10 rounds took over 30 s there.
    """
    timer.warmup(1)
    probe = timer.rounds(1)
    per_round_s = float(probe.sum()) / 1000
    if per_round_s * (warmup - 1) <= duration_s:  # cheap: the full warm-up, the probe discarded
        timer.warmup(warmup - 1)
        probe = probe[:0]
    if per_round_s > duration_s:
        min_rounds = min(min_rounds, SLOW_MIN_ROUNDS)
    rounds = max(min_rounds, math.ceil(duration_s / max(per_round_s, 1e-6))) - len(probe)
    if rounds * per_round_s <= 2 * duration_s:  # cheap: by the clock, in case the probe was slow
        rest = timed_rounds(timer, rounds=None, duration_s=duration_s, min_rounds=rounds)
    else:
        rest = timed_rounds(timer, rounds=rounds, duration_s=duration_s)
    return np.concatenate([probe, rest])


def slower_warning(speed: dict[str, Any], below: float = SLOWER_BELOW) -> str | None:
    """The warning for a result slower than its input, or None."""
    ratio = speed.get("ratio")
    if ratio is None or ratio >= below:
        return None
    what = " decoding" if speed.get("timed") == "decode" else ""
    return (f"result is {ratio:.2f}x the speed of the input{what} on {speed['ep']} "
            f"(a lossy result that is slower; check with `onnxcomp compare`)")


def check_speed(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    *,
    ep: str = "cpu",
    data: Any = None,
    seed: int = 0,
) -> tuple[dict[str, Any], str | None]:
    """`measure_speed`, never failing the run: a model that cannot be timed gives ``{"skipped": why}``.

    Args:
        reference: The input model.
        candidate: The optimized model.
        ep: Execution provider.
        data: The run's calibration source; a path is used for the input, anything else
            (``"random"``, arrays, readers) means generated inputs.
        seed: Seed of generated inputs.

    Returns:
        The report's ``speed`` entry (with the check's ``seconds``) and the warning (None
        when not slower).
    """
    path = data if isinstance(data, (str, os.PathLike)) and str(data) != "random" else None
    start = time.perf_counter()
    try:
        speed = measure_speed(reference, candidate, ep=ep, data=path, seed=seed)
    except Exception as e:  # noqa: BLE001 - a measurement only: nothing that stops it (onnxruntime errors too) may fail the run
        log.info("speed check skipped: %s", one_line(e, 300))
        return {"skipped": one_line(e, 300)}, None
    speed["seconds"] = round(time.perf_counter() - start, 3)  # the check's own cost, sessions included
    warning = slower_warning(speed)
    if warning:
        log.warning(warning)
    return speed, warning
