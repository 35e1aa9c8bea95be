"""Run a model in onnxruntime with chosen intermediate tensors exposed as outputs.

One session per model version: the ``reconstruct`` pass makes one teacher session for
the whole run and one student session per refit *stage*, never one per node or batch.
"""

from __future__ import annotations

import tempfile
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.checking.runtime import make_session

if typing.TYPE_CHECKING:
    from onnxcomp.checking.calibration import CalibrationData


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({vi.name: vi for vi in model.graph.output})
    infos.update({vi.name: vi for vi in model.graph.input})
    return infos


def expose(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are exactly ``names`` (intermediate tensors allowed).

    Tensors without a known type are declared float: the tensors we expose (conv /
    matmul inputs and outputs) are float activations.
    """
    names = list(dict.fromkeys(names))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    infos = _value_types(model)
    del out.graph.output[:]
    for n in names:
        vi = infos.get(n)
        if vi is not None and vi.type.HasField("tensor_type"):
            elem = vi.type.tensor_type.elem_type
        else:
            elem = onnx.TensorProto.FLOAT
        out.graph.output.append(onnx.helper.make_tensor_value_info(n, elem, None))
    return out


class TensorTap:
    """An onnxruntime session over ``model`` that returns the tensors ``names``.

    Args:
        model: The model (not mutated).
        names: Tensors to return (graph inputs, intermediates or outputs).
        threads: Intra-op threads (None: onnxruntime's default).
    """

    def __init__(self, model: onnx.ModelProto, names: Iterable[str], *, threads: int | None = None) -> None:
        self.names = list(dict.fromkeys(names))
        inputs = {i.name for i in model.graph.input}
        self._passthrough = [n for n in self.names if n in inputs]
        computed = [n for n in self.names if n not in inputs]
        self._session: ort.InferenceSession | None = None
        if computed:
            with tempfile.TemporaryDirectory(prefix="onnxcomp-tap-") as d:
                # Optimisations are off: fused kernels may drop the intermediates we want.
                self._session = make_session(expose(model, computed), threads=threads, optimize=False, workdir=Path(d))
            self._inputs = {i.name for i in self._session.get_inputs()}
            self._outputs = [o.name for o in self._session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on one batch of feeds (extra keys ignored); returns every tapped tensor."""
        return self.run_subset(feeds, self.names)

    def run_subset(self, feeds: dict[str, np.ndarray], names: Iterable[str]) -> dict[str, np.ndarray]:
        """Return only ``names`` (a subset of the tapped tensors).

        onnxruntime then executes only the part of the graph those tensors need.
        """
        names = list(dict.fromkeys(names))
        out = {n: feeds[n] for n in names if n in self._passthrough}
        wanted = [n for n in names if n not in out]
        if wanted:
            assert self._session is not None, f"tensors {wanted} are not tapped"
            vals = self._session.run(wanted, {k: v for k, v in feeds.items() if k in self._inputs})
            out.update(zip(wanted, vals))
        return out


def merged_batches(data: "CalibrationData", model: onnx.ModelProto, *, target: int = 256,
                   max_samples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stream ``data``'s batches, merging consecutive ones up to ``target`` samples.

    Calibration batches follow the model's batch size (8 for a symbolic batch dim):
    far too small to keep onnxruntime and the ``XᵀX`` matmuls busy. When every input's
    batch dim is symbolic, consecutive batches are concatenated (memory stays bounded
    by ``target`` samples); a model with a fixed batch size gets its batches as they are.
    """
    from onnxcomp.checking.calibration import required_input_specs

    symbolic = all(not isinstance(s.batch_dim, int) for s in required_input_specs(model))
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for feeds, _ in data.iter_with_labels(max_samples):
        if not symbolic:
            yield feeds
            continue
        pending.append(feeds)
        count += len(next(iter(feeds.values())))
        if count >= target:
            yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            pending, count = [], 0
    if pending:
        yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
