"""Refittable layers: Conv, Gemm and MatMul nodes with constant weights.

Each rule turns one node into a `LinearLayer` that knows how to cut its input batch into
regression features, its output batch into targets, and how to write a solved
``[G, F(+1), C/G]`` weight block back into the graph's constants:

* **Conv** ``Y[n, o, p] = Σ_{c,k} W[o, c, k] · X[n, g(o)·Cg + c, p·s + k·d − pad] + B[o]``:
  features are im2col patches (a 1×1 stride-1 conv's patches are just the channels),
  one problem per group.
* **Gemm** (``transA = 0``) ``Y = α·A·B' + β·C``: features are the rows of ``A``; the
  solved matrix is ``α·B'`` and the solved bias ``β·C``.
* **MatMul** ``Y = A · B`` with a 2-D constant ``B``: rows of ``A`` (leading axes flattened),
  no intercept (a following ``Add`` owns the bias, and its input is what we match).

Rules live in `RULES`, an `onnxcomp.ir.OpRules` table keyed by ``(domain, op_type)`` and
opset range, as stateless functions ``rule(node, opset) -> LinearLayer | None``; a rule
returns None (and says why in a comment) when a node is outside what it can refit exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir import OpRules
from onnxcomp.recovery.lstsq import ConvGeometry, conv_patches, conv_targets


@dataclass
class LinearLayer:
    """A node whose output is linear in its (activation) input.

    Attributes:
        node: The graph node.
        kind: ``conv``, ``gemm`` or ``matmul``.
        x: Name of the activation input.
        y: Name of the output.
        out_axis: Channel axis of the output (1 for conv, last for gemm/matmul).
        groups: Independent problems (conv groups).
        features: Features per group, without the intercept.
        outputs: Output channels.
        bias: Whether the layer has (or may get) a bias that is fitted too.
        geometry: Conv geometry (conv only).
    """

    node: gs.Node
    kind: str
    x: str
    y: str
    out_axis: int
    groups: int
    features: int
    outputs: int
    bias: bool
    geometry: ConvGeometry | None = None

    # ---------------------------------------------------------------- features
    def rows(self, x: np.ndarray) -> int:
        """How many regression rows one input batch yields."""
        if self.kind == "conv":
            assert self.geometry is not None
            g = self.geometry
            nd = len(g.kernel)
            out = 1
            for i in range(nd):
                span = g.dilations[i] * (g.kernel[i] - 1) + 1
                out *= (x.shape[2 + i] + g.pads[i] + g.pads[i + nd] - span) // g.strides[i] + 1
            return x.shape[0] * out
        return int(np.prod(x.shape[:-1]))

    def design(self, x: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Features ``[G, M, F]`` from an input batch (optionally only some rows)."""
        if self.kind == "conv":
            assert self.geometry is not None
            return conv_patches(x, self.geometry, positions)
        rows = x.reshape(-1, x.shape[-1])
        return (rows if positions is None else rows[positions])[None]

    def targets(self, y: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Targets ``[G, M, C/G]`` from an output batch, rows aligned with `design`."""
        if self.kind == "conv":
            return conv_targets(y, self.groups, positions)
        rows = y.reshape(-1, y.shape[-1])
        return (rows if positions is None else rows[positions])[None]

    # ----------------------------------------------------------------- weights
    def current(self) -> np.ndarray:
        """The layer's weights now, as a ``[G, F(+1), C/G]`` float64 block."""
        n = self.node
        if self.kind == "conv":
            w = np.asarray(n.inputs[1].values, dtype=np.float64)
            cg = self.outputs // self.groups
            blocks = w.reshape(self.groups, cg, -1).transpose(0, 2, 1)
            if self.bias:
                b = _const_bias(n, 2, self.outputs)
                blocks = np.concatenate([blocks, b.reshape(self.groups, 1, cg)], axis=1)
            return blocks
        if self.kind == "gemm":
            alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
            b = np.asarray(n.inputs[1].values, dtype=np.float64)
            w = alpha * (b.T if n.attrs.get("transB", 0) else b)
            if self.bias:
                c = beta * _const_bias(n, 2, self.outputs)
                w = np.concatenate([w, c[None]], axis=0)
            return w[None]
        return np.asarray(n.inputs[1].values, dtype=np.float64)[None]

    def assign(self, block: np.ndarray) -> None:
        """Write a solved ``[G, F(+1), C/G]`` block into the node's constants.

        The node keeps its op, attributes and wiring; a Conv/Gemm without a bias input
        gets one (a new constant) when the bias was fitted.
        """
        n = self.node
        f = self.features
        if self.kind == "conv":
            w_old = n.inputs[1]
            w = block[:, :f, :].transpose(0, 2, 1).reshape(w_old.shape)
            _set_const(n, 1, w.astype(w_old.values.dtype))
            if self.bias:
                b = block[:, f, :].reshape(-1)
                _set_or_add_bias(n, 2, b.astype(w_old.values.dtype), f"{n.name or self.y}_recon_bias")
            return
        if self.kind == "gemm":
            alpha = float(n.attrs.get("alpha", 1.0))
            b_old = n.inputs[1]
            w = block[0, :f, :] / alpha
            if n.attrs.get("transB", 0):
                w = w.T
            _set_const(n, 1, w.astype(b_old.values.dtype))
            if self.bias:
                beta = float(n.attrs.get("beta", 1.0))
                c = block[0, f, :]
                if len(n.inputs) > 2 and n.inputs[2].name:
                    _set_const(n, 2, (c / beta).reshape(n.inputs[2].shape).astype(b_old.values.dtype))
                else:
                    # No C yet: add one with β = 1 so the fitted intercept is exact.
                    n.attrs["beta"] = 1.0
                    _set_or_add_bias(n, 2, c.astype(b_old.values.dtype), f"{n.name or self.y}_recon_bias")
            return
        b_old = n.inputs[1]
        _set_const(n, 1, block[0].astype(b_old.values.dtype))


def _const_bias(node: gs.Node, index: int, size: int) -> np.ndarray:
    if len(node.inputs) > index and node.inputs[index].name:
        return np.broadcast_to(np.asarray(node.inputs[index].values, dtype=np.float64).reshape(-1), (size,)).copy()
    return np.zeros(size)


def _set_const(node: gs.Node, index: int, values: np.ndarray) -> None:
    """Replace a constant input by a fresh constant of the same name.

    A fresh `gs.Constant` (not an in-place edit) keeps other consumers of a shared
    initializer -- which rules exclude anyway -- and graph copies independent.
    """
    old = node.inputs[index]
    node.inputs[index] = gs.Constant(old.name, np.ascontiguousarray(values))


def _set_or_add_bias(node: gs.Node, index: int, values: np.ndarray, name: str) -> None:
    if len(node.inputs) > index and node.inputs[index].name:
        _set_const(node, index, values.reshape(node.inputs[index].shape))
        return
    while len(node.inputs) < index:
        node.inputs.append(gs.Variable.empty())
    const = gs.Constant(name, np.ascontiguousarray(values))
    if len(node.inputs) > index:
        node.inputs[index] = const
    else:
        node.inputs.append(const)


# ------------------------------------------------------------------------- rules

Rule = Callable[[gs.Node, int], "LinearLayer | None"]

#: The refit rules, keyed by (domain, op type, opset range).
RULES: OpRules[Rule] = OpRules("refittable layers")


def _is_const(t: object) -> bool:
    return isinstance(t, gs.Constant) and np.asarray(t.values).dtype.kind == "f"


def _sole_consumer(t: gs.Tensor, node: gs.Node) -> bool:
    # A weight shared with another node cannot be refit for this node alone.
    return all(o is node for o in t.outputs)


def _activation(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Variable) and bool(t.name)


@RULES.register("Conv")
def _conv_rule(node: gs.Node, opset: int) -> LinearLayer | None:
    if len(node.inputs) < 2 or not _activation(node.inputs[0]) or not _is_const(node.inputs[1]):
        return None
    w = node.inputs[1]
    if not _sole_consumer(w, node) or w.values.ndim < 3:
        return None
    has_b = len(node.inputs) > 2 and bool(node.inputs[2].name)
    if has_b and (not _is_const(node.inputs[2]) or not _sole_consumer(node.inputs[2], node)):
        return None
    # SAME_* padding depends on the input size; the refit would be exact but computing
    # the pads here would duplicate onnxruntime's rule. Rare after export; decline.
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    nd = w.values.ndim - 2
    kernel = tuple(int(k) for k in w.values.shape[2:])
    geo = ConvGeometry(
        kernel=kernel,
        strides=tuple(node.attrs.get("strides", [1] * nd)),
        dilations=tuple(node.attrs.get("dilations", [1] * nd)),
        pads=tuple(node.attrs.get("pads", [0] * (2 * nd))),
        group=int(node.attrs.get("group", 1)),
    )
    cout = int(w.values.shape[0])
    return LinearLayer(
        node=node, kind="conv", x=node.inputs[0].name, y=node.outputs[0].name, out_axis=1,
        groups=geo.group, features=int(np.prod(w.values.shape[1:])), outputs=cout, bias=True, geometry=geo,
    )


@RULES.register("Gemm")
def _gemm_rule(node: gs.Node, opset: int) -> LinearLayer | None:
    if len(node.inputs) < 2 or not _activation(node.inputs[0]) or not _is_const(node.inputs[1]):
        return None
    # transA = 1 would make the features the columns of A; exported models never do it.
    if node.attrs.get("transA", 0) or float(node.attrs.get("alpha", 1.0)) == 0.0:
        return None
    b = node.inputs[1]
    if not _sole_consumer(b, node) or b.values.ndim != 2:
        return None
    k, n_out = b.values.shape[::-1] if node.attrs.get("transB", 0) else b.values.shape
    fit_bias = True
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        # Only a per-output bias can be refit; a constant C of another shape (or a
        # computed C) stays as is and is part of what the target must explain.
        if not _is_const(c) or not _sole_consumer(c, node) or c.values.size != n_out or float(node.attrs.get("beta", 1.0)) == 0.0:
            return None
    return LinearLayer(
        node=node, kind="gemm", x=node.inputs[0].name, y=node.outputs[0].name, out_axis=-1,
        groups=1, features=int(k), outputs=int(n_out), bias=fit_bias,
    )


@RULES.register("MatMul")
def _matmul_rule(node: gs.Node, opset: int) -> LinearLayer | None:
    if len(node.inputs) != 2 or not _activation(node.inputs[0]) or not _is_const(node.inputs[1]):
        return None
    b = node.inputs[1]
    # Batched constant weights ([H, K, N]) are H separate layers sharing an input;
    # 1-D weights drop the output axis. Neither occurs for plain linear layers.
    if not _sole_consumer(b, node) or b.values.ndim != 2:
        return None
    k, n_out = b.values.shape
    return LinearLayer(
        node=node, kind="matmul", x=node.inputs[0].name, y=node.outputs[0].name, out_axis=-1,
        groups=1, features=int(k), outputs=int(n_out), bias=False,
    )


def match_layer(node: gs.Node, opset: int) -> LinearLayer | None:
    """The refittable view of ``node``, or None when no rule covers it."""
    rule = RULES.lookup(node.domain, node.op, opset)
    return None if rule is None else rule(node, opset)
