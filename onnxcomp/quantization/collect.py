"""Calibration runner: one onnxruntime session, intermediate tensors exposed, batches streamed.

The model is copied once with the observed tensors added as graph outputs; every batch of
the calibration data goes through that single session and updates a `TensorStats` per
tensor. Nothing is kept between batches except the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx

from onnxcomp.checking.runtime import make_session
from onnxcomp.checking.verify import OutputStore
from onnxcomp.errors import CalibrationDataError
from onnxcomp.quantization.calibrators import TensorStats
from onnxcomp.quantization.proxy import ActivationSamples


def expose_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for n in names:
        if n not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=n))
            present.add(n)
    return out


def stream_tensors(
    model: onnx.ModelProto,
    batches: Iterable[dict],
    names: Iterable[str],
    *,
    max_batches: int | None = None,
    progress: Callable[[str], None] | None = None,
    what: str = "tensors",
) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """Run batches through one session of ``model`` with ``names`` exposed; yield per batch
    ``(feeds, values)``, where ``values`` maps every name in ``names`` that the batch has
    (graph inputs come from the feeds) to its array.

    The one calibration loop: every statistic (ranges, histograms, ``XᵀX``) is updated from
    what it yields, so no caller builds its own session or keeps more than one batch.

    Raises:
        CalibrationDataError: No batch could be fed.
    """
    names = list(dict.fromkeys(names))
    input_names = {i.name for i in model.graph.input}
    run_names = [n for n in names if n not in input_names]
    sess = make_session(expose_outputs(model, run_names))
    wanted = {i.name for i in sess.get_inputs()}
    n_batches = 0
    for feeds in batches:
        if max_batches is not None and n_batches >= max_batches:
            break
        outs = sess.run(run_names, {k: v for k, v in feeds.items() if k in wanted}) if run_names else []
        values = dict(zip(run_names, outs))
        values.update({n: feeds[n] for n in names if n in input_names and n in feeds})
        yield feeds, values
        n_batches += 1
        if progress is not None:
            progress(f"calibrating: batch {n_batches}, {len(names)} {what}")
    if n_batches == 0:
        raise CalibrationDataError("calibration data yielded no batch the model can take")


def collect_stats(
    model: onnx.ModelProto,
    batches: Iterable[dict],
    names: Iterable[str],
    *,
    histogram: bool = False,
    channel_stats: Iterable[str] = (),
    max_batches: int | None = None,
    progress: Callable[[str], None] | None = None,
    keep_outputs: int = 0,
    kept: list[dict[str, np.ndarray]] | None = None,
    keep_bytes: int | None = None,
    samples: ActivationSamples | None = None,
    outputs_to: OutputStore | None = None,
) -> dict[str, TensorStats]:
    """Run calibration batches through ``model`` and stream statistics of ``names``.

    Args:
        model: The float model.
        batches: Feed dicts (e.g. a `CalibrationData`).
        names: Tensors to observe (intermediate or graph outputs/inputs).
        histogram: Keep histograms (percentile, entropy, mse calibrators).
        channel_stats: Tensors that also need per-channel |max| over the last axis.
        max_batches: Stop after this many batches.
        progress: Called with a status line per batch.
        keep_outputs: Also append the model's own outputs (and feeds) of the first
            ``keep_outputs`` batches to ``kept`` as ``{"feeds": ..., "outputs": ...}``, so a
            later fidelity check needs no second float session.
        kept: The list receiving them.
        keep_bytes: Keep no more batches once their outputs would pass this many bytes
            (the first batch is always kept): an LM's logits are 50 MB per 256 tokens.
        samples: Also sample the observed tensors of every kept batch into this
            (`ActivationSamples`, for the per-layer error ranking of the float fallback).
        outputs_to: Keep the outputs here instead (``kept`` then gets ``{"feeds": ...}``
            only): an `OutputStore` holds large ones in files, so the references an LM's
            fallback scores against (256 MB of logits) are read back one batch at a time.

    Raises:
        CalibrationDataError: No batch could be fed.
    """
    names = list(dict.fromkeys(names))
    chan = set(channel_stats)
    stats = {n: TensorStats(histogram=histogram, channel_axis_last=n in chan) for n in names}
    model_outputs = [o.name for o in model.graph.output]
    observed = names + ([o for o in model_outputs if o not in names] if keep_outputs else [])
    keeping, kept_bytes = keep_outputs > 0 and kept is not None, 0
    for i, (feeds, values) in enumerate(stream_tensors(model, batches, observed, max_batches=max_batches, progress=progress)):
        for n in names:
            if n in values:
                stats[n].update(values[n])
        if keeping and i < keep_outputs:
            outputs = {o: np.asarray(values[o]) for o in model_outputs}
            size = sum(v.nbytes for v in outputs.values())
            if kept and keep_bytes is not None and kept_bytes + size > keep_bytes:
                keeping = False
                continue
            if outputs_to is not None:
                outputs_to.append(outputs, copy=True)
                kept.append({"feeds": feeds})  # type: ignore[union-attr]
            else:
                # Copies: onnxruntime's output arrays keep its session's whole arena alive
                # (440 MB for two windows of a 135M LM, where the logits are 100 MB).
                kept.append({"feeds": feeds, "outputs": {o: np.array(v, copy=True) for o, v in outputs.items()}})  # type: ignore[union-attr]
            kept_bytes += size
            if samples is not None:
                samples.add({n: values[n] for n in names if n in values})
    return stats
