"""Fixtures for the pruning tests: tiny graphs built with onnx.helper, small reference models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))


class Builder:
    """Builds a float32 graph node by node with seeded random initializers."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def w(self, name: str, *shape: int, values: np.ndarray | None = None) -> str:
        v = values if values is not None else self.rng.standard_normal(shape).astype(np.float32) * 0.5
        self.inits.append(numpy_helper.from_array(np.asarray(v), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"n_{outputs[0]}", domain=domain, **attrs))
        return outputs[0]

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3, group: int = 1) -> str:
        w = self.w(f"{name}.w", cout, cin // group, k, k)
        b = self.w(f"{name}.b", cout)
        return self.node("Conv", [x, w, b], [name], pads=[k // 2] * 4, group=group)

    def model(self, inputs: dict[str, list], outputs: dict[str, list | None], opset: int = 17,
              extra_opsets: tuple = ()) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
            self.inits,
        )
        ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
        m = helper.make_model(g, opset_imports=ops)
        m.ir_version = 8
        return m


@pytest.fixture
def builder() -> Builder:
    return Builder()


_SPECS = {"resnet18_bn": ("resnet18", {"keep_batchnorm": True}), "mobilenetv2": ("mobilenetv2", {}), "bert": ("bert", {})}


class _LazyModels:
    """Exports a small reference model on first use (each xdist worker only what it needs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}

    def __getitem__(self, key: str) -> Path:
        if key not in self.paths:
            models = pytest.importorskip("models")
            name, kw = _SPECS[key]
            p = self.root / f"{key}.onnx"
            models.export(name, p, small=True, **kw)
            self.paths[key] = p
        return self.paths[key]


@pytest.fixture(scope="session")
def small_models(tmp_path_factory) -> _LazyModels:
    """Small reference models, exported lazily once per session (skipped without `models`)."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    pytest.importorskip("models")
    return _LazyModels(tmp_path_factory.mktemp("prune_models"))
