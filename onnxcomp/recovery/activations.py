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


def _node_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Every tensor name ``node`` reads, its subgraphs' outer-scope references included."""
    yield from node.input
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in g.node:
                yield from _node_inputs(inner)


def needed_nodes(graph: onnx.GraphProto, names: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes ``names`` depend on, in graph order (one reverse walk over the nodes)."""
    wanted = set(names)
    keep = []
    for node in reversed(graph.node):
        if any(o in wanted for o in node.output):
            keep.append(node)
            wanted.update(_node_inputs(node))
    return keep[::-1]


def expose(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` computing exactly ``names`` (intermediate tensors allowed).

    Nodes none of ``names`` depends on are dropped (onnxruntime would run them all),
    so tapping early tensors costs only the graph's prefix. Tensors without a known
    type are declared float: the tensors we expose (conv / matmul inputs and outputs)
    are float activations.
    """
    names = list(dict.fromkeys(names))
    infos = _value_types(model)
    keep = needed_nodes(model.graph, names)
    used = {n for node in keep for n in _node_inputs(node)} | set(names)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    inits = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
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
                # onnxruntime's graph optimisations keep every graph output (it fuses no node
                # whose output is one), so the tapped tensors survive, and its fused, blocked
                # convolutions run the many passes of `reconstruct` 1.2-1.4x faster.
                self._session = make_session(expose(model, computed), threads=threads, optimize=True, workdir=Path(d))
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


#: Samples per batch `split_batches` aims for when the batch dim is symbolic; row budgets
#: (``max_rows``) are per this many samples.
BATCH_SAMPLES = 64


def split_batches(data: CalibrationData, model: onnx.ModelProto, *, target: int = BATCH_SAMPLES,
                  max_samples: int | None = None, every: int = 5) -> Iterator[tuple[dict[str, np.ndarray], bool]]:
    """Stream ``data`` as ``(feeds, held_out)`` batches: one sample in ``every`` is held out.

    The held-out samples let `reconstruct` choose its ridge and reject refits that do not
    generalise, on samples no refit was fitted on. The split is by sample (a sample's
    rows -- spatial positions, tokens -- are correlated) and the same on every replay.

    * Every input's batch dim symbolic: samples are regrouped into fit and held-out
      batches of up to ``target`` samples (calibration batches are small, 8 by default:
      too small to keep onnxruntime and the ``XᵀX`` products busy); memory stays bounded
      by ``2 · target`` samples.
    * A fixed batch size: batches pass as they are, and batch ``i`` is held out when
      ``i % every == 1`` (so two batches already give one of each).
    """
    from onnxcomp.checking.calibration import required_input_specs

    symbolic = all(not isinstance(s.batch_dim, int) for s in required_input_specs(model))
    pending: dict[bool, list[dict[str, np.ndarray]]] = {False: [], True: []}
    counts = {False: 0, True: 0}
    seen = 0
    for index, (feeds, _) in enumerate(data.iter_with_labels(max_samples)):
        if not symbolic:
            yield feeds, index % every == 1
            continue
        n = len(next(iter(feeds.values())))
        held = (np.arange(seen, seen + n) % every) == 1
        seen += n
        for flag in (False, True):
            part = {k: v[held == flag] for k, v in feeds.items()}
            if not len(next(iter(part.values()))):
                continue
            pending[flag].append(part)
            counts[flag] += len(next(iter(part.values())))
            if counts[flag] >= target:
                yield {k: np.concatenate([p[k] for p in pending[flag]]) for k in feeds}, flag
                pending[flag], counts[flag] = [], 0
    for flag in (False, True):
        if pending[flag]:
            yield {k: np.concatenate([p[k] for p in pending[flag]]) for k in pending[flag][0]}, flag
