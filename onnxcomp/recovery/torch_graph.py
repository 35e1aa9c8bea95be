"""A small ONNX -> PyTorch interpreter whose parameters *are* the graph's initializers.

`OnnxModule(model)` walks the (topologically sorted) ONNX nodes in ``forward`` and calls
one stateless torch function per node from `onnxcomp.recovery.torch_ops.OPS`, an
`onnxcomp.ir.OpRules` table keyed by ``(domain, op_type)`` with a minimum opset. Float
initializers that act as weights (inputs of Conv / Gemm / MatMul, BatchNormalization and
LayerNormalization scale and bias, and non-scalar operands of Add / Sub / Mul) become
``nn.Parameter``s; every other initializer (BatchNorm running statistics, scalars such as
GELU's ``1/√2``, shapes, indices) is a frozen buffer. `export_initializers` returns the
parameters under their ONNX names, so training changes initializer *values* and never the
graph structure.

The interpreter runs in float32 with eager shape arithmetic (``Shape`` / ``Gather`` /
``Reshape`` see real tensors), which is all that distillation needs: no tracing, no
export. BatchNormalization always uses its running statistics (inference semantics):
the student is trained as it will be deployed.

An op without a rule raises `UsageError` naming it, before any training starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from onnxcomp.errors import UsageError
from onnxcomp.recovery.torch_ops import OPS, OpFn


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """``node``'s attributes as the `onnxcomp.recovery.torch_ops` functions get them."""
    out: dict[str, Any] = {}
    for attr in node.attribute:
        v = onnx.helper.get_attribute_value(attr)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[attr.name] = v
    out["_n_outputs"] = len(node.output)
    return out


#: (op_type, input index) pairs whose float initializers are weights worth training.
_WEIGHT_SLOTS = {
    ("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2), ("Gemm", 1), ("Gemm", 2),
    ("MatMul", 0), ("MatMul", 1), ("BatchNormalization", 1), ("BatchNormalization", 2),
    ("LayerNormalization", 1), ("LayerNormalization", 2), ("InstanceNormalization", 1), ("InstanceNormalization", 2),
}
_BIAS_OPS = {"Add", "Sub", "Mul"}


def trainable_initializers(model: onnx.ModelProto) -> set[str]:
    """Names of the float initializers that act as weights (see module docstring)."""
    floats = {t.name for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)}
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    out: set[str] = set()
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in floats:
                continue
            if (node.op_type, k) in _WEIGHT_SLOTS or (node.op_type in _BIAS_OPS and sizes[name] > 1):
                out.add(name)
    return out


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of ``model`` the interpreter has no rule for (sorted, unique)."""
    opset = _opset(model)
    bad = set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        if OPS.lookup(node.domain, node.op_type, opset) is None:
            bad.add(node.op_type if not node.domain else f"{node.domain}.{node.op_type}")
    return sorted(bad)


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


class OnnxModule(nn.Module):
    """A trainable torch view of an ONNX graph (no control flow, no subgraphs).

    Args:
        model: The ONNX model (not mutated; its initializers are copied once).
        trainable: Names of initializers to make parameters (default:
            `trainable_initializers`); the others become buffers.

    Raises:
        UsageError: The graph uses an op the interpreter cannot run (the message lists
            every such op type).
    """

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str] | None = None) -> None:
        super().__init__()
        bad = unsupported_ops(model)
        if bad:
            raise UsageError(f"the torch interpreter cannot run op(s): {', '.join(bad)}")
        self.opset = _opset(model)
        train = set(trainable_initializers(model) if trainable is None else trainable)
        self.params = nn.ParameterDict()
        self._key: dict[str, str] = {}  # ONNX name -> parameter/buffer attribute key
        for k, init in enumerate(model.graph.initializer):
            arr = numpy_helper.to_array(init)
            key = f"t{k}"
            self._key[init.name] = key
            t = torch.from_numpy(np.array(arr, copy=True))
            if init.name in train:
                self.params[key] = nn.Parameter(t)
            else:
                self.register_buffer(key, t, persistent=False)
        self._constants: dict[str, Tensor] = {}
        self._nodes: list[tuple[OpFn, list[str], list[str], dict[str, Any], str]] = []
        for node in model.graph.node:
            if node.op_type == "Constant":
                attrs = _attrs(node)
                value = next((attrs[k] for k in ("value", "value_float", "value_int", "value_floats", "value_ints") if k in attrs), None)
                self._constants[node.output[0]] = torch.from_numpy(np.array(value))
                continue
            fn = OPS.lookup(node.domain, node.op_type, self.opset)
            assert fn is not None  # unsupported_ops() found a rule for every other node
            self._nodes.append((fn, list(node.input), list(node.output), _attrs(node), node.op_type))
        init_names = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in init_names]
        self.output_names = [o.name for o in model.graph.output]
        self.trainable_names = sorted(n for n in train if n in self._key)

    def tensor(self, name: str) -> Tensor:
        """The parameter or buffer holding initializer ``name``."""
        key = self._key[name]
        return self.params[key] if key in self.params else getattr(self, key)

    def forward(self, feeds: dict[str, Tensor], capture: Sequence[str] = ()) -> dict[str, Tensor]:
        """Run the graph.

        Args:
            feeds: Graph inputs by name.
            capture: Extra (intermediate) tensor names to return.

        Returns:
            The graph outputs and the captured tensors, by name.
        """
        env: dict[str, Tensor] = dict(self._constants)
        for name in self._key:
            env[name] = self.tensor(name)
        env.update(feeds)
        for fn, ins, outs, attrs, op_type in self._nodes:
            args = [env[n] if n else None for n in ins]
            result = fn(args, attrs, self.opset)
            if isinstance(result, torch.Tensor):
                env[outs[0]] = result
            else:
                for n, r in zip(outs, result):
                    if n:
                        env[n] = r
        wanted = list(dict.fromkeys([*self.output_names, *capture]))
        return {n: env[n] for n in wanted}

    def export_initializers(self, only_trainable: bool = True) -> dict[str, np.ndarray]:
        """Current values of the initializers by ONNX name (numpy, original dtypes)."""
        names = self.trainable_names if only_trainable else list(self._key)
        return {n: self.tensor(n).detach().cpu().numpy().copy() for n in names}


def write_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the named initializers' values replaced (structure kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(numpy_helper.to_array(init).dtype), init.name))
    return out
