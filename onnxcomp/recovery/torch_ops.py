"""Torch implementations of ONNX ops: what `onnxcomp.recovery.torch_graph` interprets a graph with.

`OPS` is an `onnxcomp.ir.OpRules` table keyed by ``(domain, op_type)`` with a minimum
opset (no upper bound: a function that must follow a later opset's change reads the opset
it is given). Each entry is a stateless function ``fn(inputs, attributes, opset)``:

* ``inputs``: the node's input tensors in order, None for an absent optional input;
* ``attributes``: the node's attributes as Python values (strings decoded, tensors as
  numpy arrays) plus ``"_n_outputs"``, the node's output count (for ``Split``);
* the result: one tensor, or a sequence of them for a node with several outputs.

The functions run eagerly (shape ops compute on real tensors) and are differentiable
wherever the op is. A case one cannot express exactly raises `UsageError` naming it,
rather than computing something else.

Importing this module needs PyTorch (the ``torch`` extra).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from onnxcomp.errors import UsageError
from onnxcomp.ir import OpRules

Tensor = torch.Tensor
#: ``fn(inputs, attributes, opset) -> output(s)``; absent optional inputs are None.
OpFn = Callable[[list["Tensor | None"], dict[str, Any], int], "Tensor | Sequence[Tensor]"]

#: Torch implementations of ONNX ops, each from a minimum opset on (no upper bound: a
#: function that must follow a later opset's change reads the opset it is given).
OPS: OpRules[OpFn] = OpRules("torch interpreter")


def op(name: str, min_opset: int = 1, domain: str = "") -> Callable[[OpFn], OpFn]:
    """Register ``fn`` as the implementation of ``(domain, name)`` from ``min_opset`` on."""
    return OPS.register(name, domain=domain, since=min_opset)


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


# ---------------------------------------------------------------- elementwise


def _unary(name: str, fn: Callable[[Tensor], Tensor]) -> None:
    op(name)(lambda i, a, o: fn(i[0]))


for _n, _f in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Identity": lambda x: x, "Floor": torch.floor, "Ceil": torch.ceil, "Not": torch.logical_not,
    "Softplus": F.softplus, "HardSwish": F.hardswish, "Sin": torch.sin, "Cos": torch.cos,
}.items():
    _unary(_n, _f)

for _n, _f in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or,
}.items():
    op(_n)(lambda i, a, o, _f=_f: _f(i[0], i[1]))


@op("Div")
def _div(i: list, a: dict, o: int) -> Tensor:
    x, y = i[0], i[1]
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _fold(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[list, dict, int], Tensor]:
    """A variadic ONNX op (Max/Min/Sum) as a left fold of a binary torch function."""

    def run(i: list, a: dict, o: int) -> Tensor:
        return functools.reduce(fn, i[1:], i[0])

    return run


op("Max")(_fold(torch.maximum))
op("Min")(_fold(torch.minimum))
op("Sum")(_fold(torch.add))


@op("Where")
def _where(i: list, a: dict, o: int) -> Tensor:
    return torch.where(i[0].bool(), i[1], i[2])


@op("LeakyRelu")
def _leaky(i: list, a: dict, o: int) -> Tensor:
    return F.leaky_relu(i[0], a.get("alpha", 0.01))


@op("Elu")
def _elu(i: list, a: dict, o: int) -> Tensor:
    return F.elu(i[0], a.get("alpha", 1.0))


@op("HardSigmoid")
def _hsig(i: list, a: dict, o: int) -> Tensor:
    return torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0)


@op("Gelu", 20)
def _gelu(i: list, a: dict, o: int) -> Tensor:
    return F.gelu(i[0], approximate=a.get("approximate", "none"))


@op("Clip")
def _clip(i: list, a: dict, o: int) -> Tensor:
    if o < 11:
        lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
        return torch.clamp(i[0], lo, hi)
    lo = i[1] if len(i) > 1 and i[1] is not None else None
    hi = i[2] if len(i) > 2 and i[2] is not None else None
    return torch.clamp(i[0], lo, hi)


@op("Cast")
def _cast(i: list, a: dict, o: int) -> Tensor:
    to = a["to"]
    if to not in _DTYPES:
        raise UsageError(f"Cast to ONNX type {to} is not supported by the torch interpreter")
    return i[0].to(_DTYPES[to])


@op("CastLike", 15)
def _cast_like(i: list, a: dict, o: int) -> Tensor:
    return i[0].to(i[1].dtype)


@op("Dropout")
def _dropout(i: list, a: dict, o: int) -> Tensor:
    return i[0]


# ------------------------------------------------------------------- linear


def _pads_for(x: Tensor, kernel: Sequence[int], a: dict) -> list[int]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]`` including ``auto_pad`` resolution."""
    nd = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        strides = a.get("strides", [1] * nd)
        dil = a.get("dilations", [1] * nd)
        begins, ends = [], []
        for d in range(nd):
            size = x.shape[2 + d]
            out = -(-size // strides[d])
            total = max(0, (out - 1) * strides[d] + dil[d] * (kernel[d] - 1) + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        return begins + ends
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(a.get("pads", [0] * (2 * nd)))


def _apply_pads(x: Tensor, pads: list[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """Pad asymmetrically with F.pad; return the symmetric padding left for the kernel."""
    nd = len(pads) // 2
    if pads[:nd] == pads[nd:]:
        return x, pads[:nd]
    torch_pads: list[int] = []
    for d in reversed(range(nd)):
        torch_pads += [pads[d], pads[d + nd]]
    return F.pad(x, torch_pads, value=value), [0] * nd


@op("Conv")
def _conv(i: list, a: dict, o: int) -> Tensor:
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    nd = w.dim() - 2
    x, pad = _apply_pads(x, _pads_for(x, w.shape[2:], a))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=a.get("strides", [1] * nd), padding=pad, dilation=a.get("dilations", [1] * nd),
              groups=a.get("group", 1))


@op("Gemm")
def _gemm(i: list, a: dict, o: int) -> Tensor:
    x, w = i[0], i[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return y


@op("MatMul")
def _matmul(i: list, a: dict, o: int) -> Tensor:
    return torch.matmul(i[0], i[1])


@op("BatchNormalization")
def _bn(i: list, a: dict, o: int) -> Tensor:
    return F.batch_norm(i[0], i[3], i[4], i[1], i[2], training=False, eps=a.get("epsilon", 1e-5))


@op("LayerNormalization", 17)
def _ln(i: list, a: dict, o: int) -> Tensor:
    x = i[0]
    axis = a.get("axis", -1) % x.dim()
    shape = list(x.shape[axis:])
    scale = i[1].expand(shape) if i[1] is not None else None
    bias = i[2].expand(shape) if len(i) > 2 and i[2] is not None else None
    return F.layer_norm(x, shape, scale, bias, eps=a.get("epsilon", 1e-5))


# ------------------------------------------------------------------ pooling


def _pool(x: Tensor, a: dict, kind: str) -> Tensor:
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = a.get("strides", [1] * nd)
    pads = _pads_for(x, kernel, a)
    if kind == "max":
        x, pad = _apply_pads(x, pads, value=-math.inf)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(x, kernel, strides, pad, dilation=a.get("dilations", [1] * nd), ceil_mode=bool(a.get("ceil_mode", 0)))
    count_pad = bool(a.get("count_include_pad", 0))
    if pads[:nd] != pads[nd:] and not count_pad:
        raise UsageError("AveragePool with asymmetric pads and count_include_pad=0 is not supported by the torch interpreter")
    x, pad = _apply_pads(x, pads)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(x, kernel, strides, pad, ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=count_pad)


op("MaxPool")(lambda i, a, o: _pool(i[0], a, "max"))
op("AveragePool")(lambda i, a, o: _pool(i[0], a, "avg"))
op("GlobalAveragePool")(lambda i, a, o: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True))
op("GlobalMaxPool")(lambda i, a, o: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True))


# -------------------------------------------------------------- reductions


def _axes(i: list, a: dict, o: int, attr_until: int) -> list[int] | None:
    if o < attr_until:
        return a.get("axes")
    return _ints(i[1]) if len(i) > 1 and i[1] is not None else None


def _reduce(fn: Callable[..., Tensor], attr_until: int) -> OpFn:
    def run(i: list, a: dict, o: int) -> Tensor:
        axes = _axes(i, a, o, attr_until)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return i[0]
            axes = list(range(i[0].dim()))
        return fn(i[0], dim=tuple(axes), keepdim=keep)

    return run


op("ReduceMean")(_reduce(torch.mean, 18))
op("ReduceSum")(_reduce(torch.sum, 13))
op("ReduceMax")(_reduce(torch.amax, 18))
op("ReduceMin")(_reduce(torch.amin, 18))


@op("Softmax")
def _softmax(i: list, a: dict, o: int) -> Tensor:
    x = i[0]
    if o >= 13:
        return torch.softmax(x, dim=a.get("axis", -1))
    axis = a.get("axis", 1) % x.dim()  # opset < 13: softmax over the flattened tail
    return torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


@op("LogSoftmax", 13)
def _log_softmax(i: list, a: dict, o: int) -> Tensor:
    return torch.log_softmax(i[0], dim=a.get("axis", -1))


# --------------------------------------------------------- shape handling


@op("Flatten")
def _flatten(i: list, a: dict, o: int) -> Tensor:
    x = i[0]
    axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@op("Reshape", 5)
def _reshape(i: list, a: dict, o: int) -> Tensor:
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return x.reshape(shape)


@op("Transpose")
def _transpose(i: list, a: dict, o: int) -> Tensor:
    perm = a.get("perm", list(reversed(range(i[0].dim()))))
    return i[0].permute(*perm)


@op("Shape")
def _shape(i: list, a: dict, o: int) -> Tensor:
    dims = list(i[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


@op("Size")
def _size(i: list, a: dict, o: int) -> Tensor:
    return torch.tensor(i[0].numel(), dtype=torch.int64)


@op("Gather")
def _gather(i: list, a: dict, o: int) -> Tensor:
    x, idx = i[0], i[1].long()
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


@op("Unsqueeze")
def _unsqueeze(i: list, a: dict, o: int) -> Tensor:
    axes = a.get("axes") if o < 13 else _ints(i[1])
    x = i[0]
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


@op("Squeeze")
def _squeeze(i: list, a: dict, o: int) -> Tensor:
    axes = a.get("axes") if o < 13 else (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    x = i[0]
    if axes is None:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


@op("Concat")
def _concat(i: list, a: dict, o: int) -> Tensor:
    return torch.cat([t for t in i if t is not None], dim=a["axis"])


@op("Split")
def _split(i: list, a: dict, o: int) -> list[Tensor]:
    x = i[0]
    axis = a.get("axis", 0)
    sizes = a.get("split") if o < 13 else (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    n = a["_n_outputs"]
    if not sizes:
        sizes = [-(-x.shape[axis] // n)] * n
        sizes[-1] = x.shape[axis] - sum(sizes[:-1])
    return list(torch.split(x, sizes, dim=axis))


@op("Slice", 10)
def _slice(i: list, a: dict, o: int) -> Tensor:
    x = i[0]
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise UsageError("Slice with negative steps is not supported by the torch interpreter")
        size = x.shape[ax]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[ax % x.dim()] = slice(s, e, st)
    return x[tuple(index)]


@op("Expand", 8)
def _expand(i: list, a: dict, o: int) -> Tensor:
    shape = _ints(i[1])
    x = i[0]
    target = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return x.expand(target)


@op("Tile", 6)
def _tile(i: list, a: dict, o: int) -> Tensor:
    return i[0].repeat(*_ints(i[1]))


@op("ConstantOfShape", 9)
def _const_of_shape(i: list, a: dict, o: int) -> Tensor:
    value = a.get("value")
    v = torch.from_numpy(np.array(value)).reshape(-1) if value is not None else torch.zeros(1)
    return v.expand(_ints(i[0])).clone()


@op("Range", 11)
def _range(i: list, a: dict, o: int) -> Tensor:
    return torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype)


@op("Pad", 11)
def _pad(i: list, a: dict, o: int) -> Tensor:
    x = i[0]
    pads = _ints(i[1])
    if len(i) > 3 and i[3] is not None:
        raise UsageError("Pad with explicit axes is not supported by the torch interpreter")
    value = float(i[2].item()) if len(i) > 2 and i[2] is not None and i[2].numel() else 0.0
    mode = a.get("mode", "constant")
    nd = x.dim()
    torch_pads: list[int] = []
    for d in reversed(range(nd)):
        torch_pads += [pads[d], pads[d + nd]]
    return F.pad(x, torch_pads, mode=mode, value=value) if mode == "constant" else F.pad(x, torch_pads, mode=mode)
