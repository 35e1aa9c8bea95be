"""Calibration runner: one onnxruntime session, intermediate tensors exposed, batches streamed.

The model is copied once with the observed tensors added as graph outputs; every batch of
the calibration data goes through that single session and updates a `TensorStats` per
tensor. Nothing is kept between batches except the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx

from onnxcomp.errors import CalibrationDataError
from onnxcomp.quantization.calibrators import TensorStats
from onnxcomp.checking.runtime import make_session


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

    Raises:
        CalibrationDataError: No batch could be fed.
    """
    names = list(dict.fromkeys(names))
    chan = set(channel_stats)
    stats = {n: TensorStats(histogram=histogram, channel_axis_last=n in chan) for n in names}
    input_names = {i.name for i in model.graph.input}
    run_names = [n for n in names if n not in input_names]
    model_outputs = [o.name for o in model.graph.output]
    if keep_outputs:
        run_names += [o for o in model_outputs if o not in run_names]
    sess = make_session(expose_outputs(model, run_names))
    n_batches = 0
    for feeds in batches:
        if max_batches is not None and n_batches >= max_batches:
            break
        wanted = {i.name for i in sess.get_inputs()}
        outs = sess.run(run_names, {k: v for k, v in feeds.items() if k in wanted}) if run_names else []
        for n, arr in zip(run_names, outs):
            if n in stats:
                stats[n].update(arr)
        if n_batches < keep_outputs and kept is not None:
            got = dict(zip(run_names, outs))
            kept.append({"feeds": feeds, "outputs": {o: got[o] for o in model_outputs}})
        for n in names:
            if n in input_names and n in feeds:
                stats[n].update(feeds[n])
        n_batches += 1
        if progress is not None:
            progress(f"calibrating: batch {n_batches}, {len(names)} tensors")
    if n_batches == 0:
        raise CalibrationDataError("calibration data yielded no batch the model can take")
    return stats
