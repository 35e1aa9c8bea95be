"""SmoothQuant-style scale migration from activation outlier channels into weights.

Pretrained transformers have a few hidden channels whose activations are 10-100x larger
than the rest; a per-tensor activation scale sized for them leaves the other channels with
a handful of levels. For ``Y = X W`` (W is K x N, input channels on rows) and a per-channel
factor ``s_j > 0``::

    Y = (X diag(1/s)) (diag(s) W)

is exact in real arithmetic. With ``a_j = max|X_j|`` (calibrated) and ``w_j = max_k |W_jk|``
(over every layer reading X), ``s_j = a_j^alpha / w_j^(1 - alpha)`` equalises the two ranges
(alpha = 0.5 splits the difficulty evenly): the activation becomes easy to quantize per
tensor, and the weight, quantized per output column, absorbs the outliers.

Only activations with outlier channels (largest channel range >= ``OUTLIER_RATIO`` x the
median) are smoothed. Where ``X / s`` goes:

* ``X = LayerNormalization(x; gamma, beta)`` read only by the smoothed layers: fold into
  the norm, ``gamma' = gamma / s``, ``beta' = beta / s`` (free at run time);
* otherwise one ``Mul(X, 1/s)`` feeding the smoothed layers (other readers of X, e.g. the
  residual Add of a post-LN block, keep the unscaled X). One elementwise multiply per
  smoothed tensor is negligible next to the MatMuls it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir import consumer_map, peek_values, toposort
from onnxcomp.quantization.calibrators import TensorStats
from onnxcomp.quantization.weightexpr import scaled_weight, weight_shape, weight_value


@dataclass(frozen=True)
class SmoothSite:
    """Layers (MatMul / Gemm with a constant weight) that read the same activation."""

    tensor: gs.Tensor
    layers: tuple[gs.Node, ...]


def _transposed(node: gs.Node) -> bool:
    return node.op == "Gemm" and bool(node.attrs.get("transB", 0))


def _weight_in_rows(node: gs.Node) -> np.ndarray:
    """The layer's weight as K x N (input channels on rows), read without caching it on
    the graph (`weight_value`): a lazily loaded weight stays on disk for whoever needs it next."""
    w = weight_value(node.inputs[1])
    return w.T if _transposed(node) else w


def _rows(node: gs.Node) -> int:
    """K, the input channels of the layer's weight, from its header."""
    shape = weight_shape(node.inputs[1])
    assert shape is not None and len(shape) == 2  # `find_sites` only takes such layers
    return int(shape[1] if _transposed(node) else shape[0])


def _set_weight_rows(graph: gs.Graph, node: gs.Node, s: np.ndarray, tag: str, defer: bool) -> None:
    """Scale the layer's weight rows (input channels) by ``s``: a new constant, or with
    ``defer`` a ``Mul(w, s)`` evaluated when the layer is quantized (`weightexpr`)."""
    old = node.inputs[1]
    name = f"{old.name}_smoothed_{tag}"  # per layer: the original may be shared with layers we do not smooth
    if defer:
        node.inputs[1] = scaled_weight(graph, old, s[None, :] if _transposed(node) else s[:, None], name)
        return
    w_rows = _weight_in_rows(node) * s[:, None]
    w = w_rows.T if _transposed(node) else w_rows
    node.inputs[1] = gs.Constant(name, np.ascontiguousarray(w.astype(np.float32)))


def find_sites(layers: list[gs.Node]) -> list[SmoothSite]:
    """Group layers by the activation they read (linear in the number of layers)."""
    by_input: dict[int, list[gs.Node]] = {}
    tensors: dict[int, gs.Tensor] = {}
    for n in layers:
        if n.op not in ("MatMul", "Gemm") or len(n.inputs) < 2:
            continue
        shape = weight_shape(n.inputs[1])
        if shape is None or len(shape) != 2:
            continue
        x = n.inputs[0]
        by_input.setdefault(id(x), []).append(n)
        tensors[id(x)] = x
    return [SmoothSite(tensors[k], tuple(v)) for k, v in by_input.items()]


#: Sites whose largest channel range is below this multiple of the median channel range
#: have no outliers worth migrating; skipping them saves the run-time Mul.
OUTLIER_RATIO = 6.0


def smoothing_scales(
    sites: list[SmoothSite], stats: dict[str, TensorStats], alpha: float, *, outlier_ratio: float = OUTLIER_RATIO
) -> dict[str, np.ndarray]:
    """The migration factors ``s`` of every site with outlier channels, by the name of the
    activation it reads (the graph is not changed; see `apply_smoothing`)."""
    out: dict[str, np.ndarray] = {}
    for site in sites:
        st = stats.get(site.tensor.name)
        if st is None or st.channel_absmax is None:
            continue
        a = st.channel_absmax
        if a.size == 0 or a.max() < outlier_ratio * max(float(np.median(a)), 1e-12):
            continue
        if any(_rows(n) != a.size for n in site.layers):
            continue
        wmax = np.zeros(a.size, dtype=np.float32)
        for n in site.layers:  # one weight in memory at a time
            np.maximum(wmax, np.abs(_weight_in_rows(n)).max(axis=1), out=wmax)
        s = np.power(np.maximum(a, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
        out[site.tensor.name] = np.clip(s, 1e-4, 1e4).astype(np.float32)
    return out


def apply_smoothing(graph: gs.Graph, sites: list[SmoothSite], scales: dict[str, np.ndarray], *, defer: bool = False) -> int:
    """Rewrite the sites that have a factor in ``scales`` (`smoothing_scales`); how many were.

    ``defer``: the scaled weights become ``Mul(w, s)`` expressions (`onnxcomp.quantization.weightexpr`)
    that the quantizer evaluates one at a time, instead of new float arrays held from now
    on (for a decoder LM, two thirds of its weights); a layer left float needs
    `onnxcomp.quantization.weightexpr.fold_weights`.
    """
    consumers = consumer_map(graph)
    outputs = {t.name for t in graph.outputs}
    done = 0
    for site in sites:
        s = scales.get(site.tensor.name)
        if s is None:
            continue
        x = site.tensor
        tag = f"{done}"
        producer = x.inputs[0] if x.inputs else None
        foldable = (
            producer is not None and producer.op == "LayerNormalization" and producer.attrs.get("axis", -1) == -1
            and len(consumers.get(x.name, ())) == len(site.layers) and x.name not in outputs
            and all(isinstance(t, gs.Constant) for t in producer.inputs[1:] if t.name)
        )
        if foldable:
            for idx in (1, 2):
                if len(producer.inputs) > idx and producer.inputs[idx].name:
                    old = producer.inputs[idx]
                    producer.inputs[idx] = gs.Constant(
                        f"{old.name}_smoothed_{tag}", (peek_values(old).astype(np.float32) / s).astype(np.float32)
                    )
        else:
            xs = gs.Variable(f"{x.name}_smoothed_{tag}", dtype=np.float32, shape=x.shape)
            inv = gs.Constant(f"{x.name}_smooth_inv_{tag}", (1.0 / s).astype(np.float32))
            graph.nodes.append(gs.Node("Mul", f"{x.name}_SmoothQuant_{tag}", {}, [x, inv], [xs]))
            for n in site.layers:
                n.inputs[0] = xs
        for n in site.layers:
            _set_weight_rows(graph, n, s, f"{n.name}", defer)
        done += 1
    if done:
        toposort(graph)
    return done


def smooth(
    graph: gs.Graph, sites: list[SmoothSite], stats: dict[str, TensorStats], alpha: float, *, outlier_ratio: float = OUTLIER_RATIO
) -> int:
    """Migrate scales at every site with outlier channels; returns how many were smoothed."""
    return apply_smoothing(graph, sites, smoothing_scales(sites, stats, alpha, outlier_ratio=outlier_ratio))
