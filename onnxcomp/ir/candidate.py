"""`Candidate`: a pass's result exported as a model whose large weights are not written yet.

A check needs the model three ways, and none of them should copy every weight:

* the checker (``onnx.checker``) needs types and shapes only: `Candidate.skeleton`;
* onnxruntime can borrow the weights as arrays: `Candidate.lent_arrays`;
* the writer needs the complete model, each weight copied into it once, and only once the
  candidate is accepted: `Candidate.finish`.

The candidate owns its pending weights until `finish` writes them, so whoever holds it
cannot hand out a model with empty payloads by mistake.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.ir.convert import (
    ModelMeta,
    Pending,
    export_parts,
    fill_payloads,
    pending_arrays,
)
from onnxcomp.ir.weightless import ArrayCache, structure_skeleton


class Candidate:
    """An exported graph whose large weights (``pending``) are held back until `finish`.

    Create one with `Candidate.export`. Until `finish` runs, ``model`` has payload-free
    headers for the pending weights; afterwards it is complete and ``pending`` is empty.
    """

    def __init__(self, model: onnx.ModelProto, pending: Pending) -> None:
        self._model = model
        self._pending = pending

    @classmethod
    def export(cls, graph: gs.Graph, meta: ModelMeta) -> "Candidate":
        """Export ``graph`` (see `onnxcomp.ir.convert.export_parts`)."""
        model, pending = export_parts(graph, meta)
        return cls(model, pending)

    @property
    def header_model(self) -> onnx.ModelProto:
        """The model as it is now: complete after `finish`, else with payload-free headers
        for the pending weights (what onnxruntime reads together with `lent_arrays`)."""
        return self._model

    def skeleton(self) -> onnx.ModelProto:
        """The model without its large weights (typed inputs instead): for ``onnx.checker``."""
        return structure_skeleton(self._model, self._pending)

    def lent_arrays(self, cache: ArrayCache | None = None) -> dict[str, np.ndarray]:
        """The pending weights as arrays, for onnxruntime to borrow (no copy where possible)."""
        return pending_arrays(self._pending, cache)

    def finish(self) -> onnx.ModelProto:
        """Write the pending weights into the model (once) and return the complete model."""
        if self._pending:
            fill_payloads(self._model, self._pending)
            self._pending = {}
        return self._model
