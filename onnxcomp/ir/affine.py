"""Per-channel affine maps folded into the weights of the op that produces the channels.

If ``x = W ⊛ a + b`` is linear in constant weights ``W`` with per-output-channel bias
``b``, then ``x·s + t`` (``s``, ``t`` vectors over x's channels) is the same op with
W' = W·s and b' = b·s + t:

* ``Conv``: W is [M, C/g, k…], output channel = W axis 0 → ``W'[m] = W[m]·s[m]``.
* ``ConvTranspose``: W is [C, M/g, k…]; output channel ``m = gi·(M/g) + j`` lives in
  W axis 1 *within group gi*, so W is viewed as [g, C/g, M/g, k…] and scaled by
  ``s`` reshaped to [g, 1, M/g, 1…].
* ``Gemm`` (2-D output [N, M]): columns of op(B) are output channels, i.e. rows of B when
  ``transB=1``, columns otherwise; ``Y·s + t = α·A·(op(B)·s) + (β·C·s + t)`` so the new C is
  ``β·C·s + t`` with ``beta = 1``.
* ``MatMul`` with a constant 2-D right operand: its channel is the *last* axis. A pure
  scale (t = 0) folds at any rank (``(A·W)·s = A·(W·s)``); with a shift, only a 2-D
  MatMul becomes ``Gemm(A, W·s, t)`` (higher ranks need reshapes: the caller decides).
* inference ``BatchNormalization`` (``y = x·γ/σ + (β − μ·γ/σ)``, σ = sqrt(var + ε)):
  γ' = γ·s, β' = β·s + t.

Which axis of the producer's output is "the channel" is the caller's business (BN and
Conv: axis 1; MatMul: the last): `fold_channel_affine` takes ``s`` and ``t`` as vectors
over the producer's own output channels. Math is done in float64 and cast back to the
weight dtype; weights are never modified in place (a weight may be shared by other
nodes, and graphsurgeon snapshots share numpy arrays): new constants are created.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxcomp.ir.graph import constant_value, np_dtype

#: ``fresh(base) -> name``: new unique names (see `onnxcomp.ir.unique_namer`).
Namer = Callable[[str], str]

_FLOATS = (np.float16, np.float32, np.float64)


def _const(t: gs.Tensor) -> np.ndarray | None:
    """The value of ``t`` if constant, as a possibly read-only view: only read here, and
    every result is a new array, so a weight is loaded with one copy."""
    return constant_value(t, readonly=True)


def batchnorm_affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) in float64 with ``BN(x) = x·s + t`` over axis 1, for an inference BN with
    constant parameters; None otherwise (training mode, non-constant or odd parameters)."""
    if len(bn.inputs) < 5 or bn.attrs.get("training_mode", 0):
        return None
    vals = [_const(t) for t in bn.inputs[1:5]]
    if any(v is None for v in vals):
        return None
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in vals)  # type: ignore[arg-type]
    if not (gamma.shape == beta.shape == mean.shape == var.shape):
        return None
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def float_weight(t: gs.Tensor) -> np.ndarray | None:
    """The value of constant ``t`` if it is a float16/32/64 tensor, else None."""
    v = _const(t)
    if v is None or v.dtype not in _FLOATS:
        return None
    return v


def float_weight_meta(t: gs.Tensor) -> tuple[np.dtype, tuple[int, ...]] | None:
    """(dtype, shape) of what `float_weight` would return, without loading the payload
    where the constant's metadata tells: deciding whether a fold applies needs only these,
    and loading every MatMul weight of a transformer to find out costs more than the fold."""
    if isinstance(t, gs.Constant) and (type(t._values) is LazyValues or isinstance(t._values, np.ndarray)):
        dtype = np_dtype(t.dtype)
        if dtype not in _FLOATS:
            return None
        return dtype, tuple(int(d) for d in t.shape)  # type: ignore[return-value]
    v = float_weight(t)  # a Constant node's attribute, or an unusual payload: look at it
    return None if v is None else (v.dtype, v.shape)


def output_channels(node: gs.Node) -> int | None:
    """How many output channels a foldable producer has (from weight metadata), or None
    when `fold_channel_affine` could not fold into ``node`` at all."""
    if node.op == "BatchNormalization":
        meta = float_weight_meta(node.inputs[1]) if len(node.inputs) >= 5 else None
        return None if meta is None or len(meta[1]) != 1 else meta[1][0]
    if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    meta = float_weight_meta(node.inputs[1])
    if meta is None:
        return None
    shape = meta[1]
    if node.op == "Conv":
        return shape[0] if len(shape) >= 3 else None
    if node.op == "ConvTranspose":
        return shape[1] * int(node.attrs.get("group", 1)) if len(shape) >= 3 else None
    if len(shape) != 2:
        return None
    if node.op == "Gemm":
        return shape[0] if node.attrs.get("transB", 0) else shape[1]
    return shape[1]  # MatMul


def fold_channel_affine(node: gs.Node, s: np.ndarray, t: np.ndarray, fresh: Namer) -> bool:
    """Make ``node`` compute ``node(...)·s + t`` (``s``, ``t``: float64 vectors over its
    output channels) by rewriting its weights; False (and nothing changed) if it cannot."""
    folder = _FOLDERS.get(node.op)
    return folder is not None and folder(node, s, t, fresh)


def _fold_conv(node: gs.Node, s: np.ndarray, t: np.ndarray, fresh: Namer) -> bool:
    meta = float_weight_meta(node.inputs[1])
    if meta is None or len(meta[1]) < 3:
        return False
    dtype, shape = meta
    group = int(node.attrs.get("group", 1))
    if node.op == "Conv":
        if shape[0] != s.size:
            return False
        view_shape, s_view = shape, s.reshape((-1,) + (1,) * (len(shape) - 1))
    else:  # ConvTranspose: [C, M/g, k...]; output channel m = gi * (M/g) + j
        m_per_g = shape[1]
        if m_per_g * group != s.size or shape[0] % group:
            return False
        view_shape = (group, shape[0] // group, m_per_g) + shape[2:]
        s_view = s.reshape((group, 1, m_per_g) + (1,) * (len(shape) - 2))
    bias = _bias(node, 2, s.size)
    if bias is None:
        return False
    if not np.all(s == 1):  # a bias alone never loads the weight
        w = float_weight(node.inputs[1])
        assert w is not None
        node.inputs[1] = gs.Constant(fresh(node.inputs[1].name), _scaled(w, view_shape, s_view))
    name = node.inputs[2].name if len(node.inputs) > 2 and node.inputs[2].name else node.name or "bias"
    _set_input(node, 2, gs.Constant(fresh(name), (bias * s + t).astype(dtype)))
    return True


def _set_input(node: gs.Node, pos: int, tensor: gs.Tensor) -> None:
    if len(node.inputs) > pos:
        node.inputs[pos] = tensor
    else:
        node.inputs.append(tensor)


def _scaled(w: np.ndarray, view_shape: tuple[int, ...], s_view: np.ndarray) -> np.ndarray:
    """``w`` (viewed as ``view_shape``) times float64 ``s_view``, back in ``w``'s dtype and shape.

    The same numbers as ``(w.astype(float64).reshape(view_shape) * s_view).astype(w.dtype)``
    (each product is exact-input float64, rounded once to ``w.dtype``), but in one ufunc
    pass with no float64 copy of the weight: less than half the time on a ResNet's weights.
    """
    out = np.empty(w.shape, dtype=w.dtype)
    np.multiply(w.reshape(view_shape), s_view, out=out.reshape(view_shape), dtype=np.float64, casting="same_kind")
    return out


def _bias(node: gs.Node, pos: int, n: int) -> np.ndarray | None:
    """The node's bias as float64 [n] (zeros when absent), or None if not constant."""
    if len(node.inputs) <= pos or not node.inputs[pos].name:
        return np.zeros(n)
    b = _const(node.inputs[pos])
    if b is None or b.size != n:
        return None
    return b.astype(np.float64).reshape(-1)


def _fold_gemm(node: gs.Node, s: np.ndarray, t: np.ndarray, fresh: Namer) -> bool:
    meta = float_weight_meta(node.inputs[1])
    if meta is None or len(meta[1]) != 2:
        return False
    dtype, shape = meta
    trans_b = int(node.attrs.get("transB", 0))
    if (shape[0] if trans_b else shape[1]) != s.size:
        return False
    beta = float(node.attrs.get("beta", 1.0))
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = _const(node.inputs[2])
        if c is None:
            return False
        try:
            c_new = np.broadcast_to(beta * c.astype(np.float64), np.broadcast_shapes(c.shape, (s.size,))) * s + t
        except ValueError:
            return False
    else:
        c_new = t
    if not np.all(s == 1):
        b = float_weight(node.inputs[1])
        assert b is not None
        b_new = b.astype(np.float64) * (s[:, None] if trans_b else s[None, :])
        node.inputs[1] = gs.Constant(fresh(node.inputs[1].name), b_new.astype(dtype))
    _set_input(node, 2, gs.Constant(fresh(node.name or "gemm_c"), np.ascontiguousarray(c_new).astype(dtype)))
    node.attrs["beta"] = 1.0
    return True


def _fold_matmul(node: gs.Node, s: np.ndarray, t: np.ndarray, fresh: Namer) -> bool:
    meta = float_weight_meta(node.inputs[1])
    a_shape = node.inputs[0].shape
    if meta is None or len(meta[1]) != 2 or meta[1][1] != s.size:
        return False
    dtype = meta[0]
    shift = bool(np.any(t != 0))
    if shift and (a_shape is None or len(a_shape) != 2):
        return False  # a bias needs Gemm, which is 2-D only
    if not np.all(s == 1):
        w = float_weight(node.inputs[1])
        assert w is not None
        node.inputs[1] = gs.Constant(fresh(node.inputs[1].name), (w.astype(np.float64) * s[None, :]).astype(dtype))
    if shift:
        node.op = "Gemm"
        node.attrs = {"alpha": 1.0, "beta": 1.0}
        node.inputs.append(gs.Constant(fresh(node.name or "gemm_c"), t.astype(dtype)))
    return True


def _fold_batchnorm(node: gs.Node, s: np.ndarray, t: np.ndarray, fresh: Namer) -> bool:
    """BN(x)·s + t = (x − μ)·(γ·s)/σ + (β·s + t): new γ and β, mean and var untouched."""
    if len(node.inputs) < 5 or node.attrs.get("training_mode", 0) or len(node.outputs) != 1:
        return False
    gamma, beta = float_weight(node.inputs[1]), float_weight(node.inputs[2])
    if gamma is None or beta is None or gamma.shape != (s.size,) or beta.shape != (s.size,):
        return False
    node.inputs[1] = gs.Constant(fresh(node.inputs[1].name), (gamma.astype(np.float64) * s).astype(gamma.dtype))
    node.inputs[2] = gs.Constant(fresh(node.inputs[2].name), (beta.astype(np.float64) * s + t).astype(beta.dtype))
    return True


_FOLDERS: dict[str, Callable[[gs.Node, np.ndarray, np.ndarray, Namer], bool]] = {
    "Conv": _fold_conv,
    "ConvTranspose": _fold_conv,
    "Gemm": _fold_gemm,
    "MatMul": _fold_matmul,
    "BatchNormalization": _fold_batchnorm,
}
