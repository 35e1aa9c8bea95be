"""Layer weights that are a small expression over a constant, evaluated only when needed.

A dynamic MatMul's weight need not be a constant to be quantized, only computable at
compile time. Two forms are kept as expressions on purpose, so that no float copy of a
large weight lives in memory (or in a session) beside the weight it is computed from:

* ``Transpose(table)``: a tied output projection reads the embedding table that the
  Gather also reads (`fold-constants` leaves it, folding would hold the table twice);
* ``Mul(w, s)``: SmoothQuant's rescaled weight, ``diag(s) W`` for a per-row (per-column
  for ``Gemm transB``) factor ``s``, until the layer is quantized (`apply_smoothing` with
  ``defer=True``): two thirds of a decoder's weights, kept lazily in the input file
  instead of as 400 MB of new arrays.

`weight_value` evaluates an expression with numpy (the same float32 products a fold would
compute), without caching anything on the graph; `fold_weights` makes them constants where
a layer stays float.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir import np_dtype, peek_values

#: Ops an expression may chain, at most this many deep.
MAX_DEPTH = 3


def _is_transpose_2d(node: gs.Node) -> bool:
    perm = node.attrs.get("perm")
    return node.op == "Transpose" and len(node.inputs) == 1 and (perm is None or list(perm) == [1, 0])


def _factor(node: gs.Node) -> gs.Constant | None:
    """The constant factor of ``Mul(expr, factor)`` when it keeps the expression's shape."""
    if node.op != "Mul" or len(node.inputs) != 2:
        return None
    f = node.inputs[1]
    if not isinstance(f, gs.Constant) or len(f.shape) > 2:
        return None
    return f


def weight_shape(t: gs.Tensor, depth: int = 0) -> tuple[int, ...] | None:
    """The shape of float weight ``t`` (a constant or an expression over one), else None.

    Read from headers only: no payload is loaded.
    """
    if isinstance(t, gs.Constant):
        dtype = np_dtype(t.dtype)
        return tuple(int(d) for d in t.shape) if dtype is not None and dtype.kind == "f" else None
    if depth >= MAX_DEPTH or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
        return None
    if _is_transpose_2d(node):
        inner = weight_shape(node.inputs[0], depth + 1)
        return inner[::-1] if inner is not None and len(inner) == 2 else None
    factor = _factor(node)
    if factor is not None:
        inner = weight_shape(node.inputs[0], depth + 1)
        if inner is None or len(factor.shape) > len(inner):
            return None
        dims = tuple(int(d) for d in factor.shape)
        ok = all(f in (1, d) for f, d in zip(dims[::-1], inner[::-1]))
        return inner if ok else None
    return None


def is_weight(t: gs.Tensor) -> bool:
    """Whether ``t`` is a float constant or a weight expression (see the module docstring)."""
    return weight_shape(t) is not None


def weight_value(t: gs.Tensor) -> np.ndarray:
    """The float32 value of weight ``t`` (see `is_weight`), computed now and not cached on the graph."""
    if isinstance(t, gs.Constant):
        return np.asarray(peek_values(t, readonly=True), dtype=np.float32)
    node = t.inputs[0]
    inner = weight_value(node.inputs[0])
    if node.op == "Transpose":
        return np.ascontiguousarray(inner.T)
    return (inner * np.asarray(peek_values(node.inputs[1]), dtype=np.float32)).astype(np.float32, copy=False)


def scaled_weight(graph: gs.Graph, w: gs.Tensor, factor: np.ndarray, name: str) -> gs.Variable:
    """``Mul(w, factor)`` added to ``graph``; its output (named ``name``), a weight expression."""
    shape = weight_shape(w)
    out = gs.Variable(name, dtype=np.float32, shape=list(shape) if shape is not None else None)
    graph.nodes.append(gs.Node("Mul", f"{name}_Mul", {}, [w, gs.Constant(f"{name}_factor", factor.astype(np.float32))], [out]))
    return out


def fold_weights(graph: gs.Graph, layers: Collection[str]) -> int:
    """Make the weight expressions read by the MatMul/Gemm nodes named in ``layers`` constants
    (layers left float: onnxruntime would otherwise fold them itself, reading weights it
    was lent); how many were. The expressions' nodes are left to dead-code removal."""
    wanted = set(layers)
    done = 0
    for node in graph.nodes:
        if node.name not in wanted or node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        t = node.inputs[1]
        if isinstance(t, gs.Constant) or not is_weight(t):
            continue
        name, t.name = t.name, f"{t.name}_expression"  # the constant keeps the weight's name
        node.inputs[1] = gs.Constant(name, weight_value(t))
        done += 1
    return done
