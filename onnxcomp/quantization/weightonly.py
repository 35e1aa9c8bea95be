"""Weight-only quantization in the graph: which weights, the nodes that replace them, AWQ folds.

* `find_weight_sites`: MatMul/Gemm with a constant 2-D float weight, and (optionally)
  Gather from a constant 2-D float table (embeddings);
* `emit_matmulnbits` / `emit_qdq`: the one place that writes the quantized nodes, either
  onnxruntime's ``com.microsoft`` ``MatMulNBits`` / ``GatherBlockQuantized`` or a standard
  block-wise ``DequantizeLinear`` (opset 21) in front of the unchanged node;
* `apply_input_scale`: moves an AWQ ``1/s`` onto the layers' input, folded into the
  producer (RMSNorm/LayerNorm gain, or the columns of a producing MatMul) when every reader
  of the input is scaled alike, else an inserted ``Mul``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir import is_graph_output, peek_values
from onnxcomp.quantization.blockwise import (
    BlockQuant,
    dequantize_linear_arrays,
    matmulnbits_arrays,
    packed_constant,
)

MS_DOMAIN = "com.microsoft"


@dataclass
class WeightSite:
    """One weight to quantize: the node that reads it and how to see it as ``[N, K]``."""

    node: gs.Node
    kind: str  #: "matmul", "gemm" or "gather"
    weight_index: int  #: input slot of the weight
    transposed: bool  #: stored as [N, K] (Gemm transB=1, Gather tables, tied projections), else [K, N]
    tied: bool = False  #: the MatMul reads ``Transpose(table)`` (a tied output projection)

    @property
    def weight(self) -> gs.Constant:
        """The weight constant (read fresh: AWQ folds may have replaced it)."""
        t = self.node.inputs[self.weight_index]
        return t.inputs[0].inputs[0] if self.tied else t

    @property
    def node_reads_nk(self) -> bool:
        """Whether the node's weight input is laid out ``[N, K]``."""
        return self.transposed and not self.tied

    @property
    def activation(self) -> gs.Tensor:
        """The layer input (MatMul/Gemm) or the indices (Gather)."""
        return self.node.inputs[1 if self.kind == "gather" else 0]

    def w_nk(self) -> np.ndarray:
        """The weight as float32 ``[N, K]``: rows are output channels (table rows for Gather)."""
        # Not cached on the constant: a pass streaming weights one by one holds one at a time.
        w = np.asarray(peek_values(self.weight, readonly=True), dtype=np.float32)
        return w if self.transposed else w.T


def _float_matrix(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant) and len(t.shape) == 2 and np.dtype(t.dtype) == np.float32


def _site(node: gs.Node, embeddings: bool) -> WeightSite | None:
    if node.domain not in (None, "", "ai.onnx"):
        return None
    ins = node.inputs
    if node.op == "MatMul" and len(ins) == 2 and not isinstance(ins[0], gs.Constant):
        if _float_matrix(ins[1]):
            return WeightSite(node, "matmul", 1, False)
        tr = ins[1].inputs[0] if ins[1].inputs else None
        if tr is not None and tr.op == "Transpose" and list(tr.attrs.get("perm", [1, 0])) == [1, 0] and _float_matrix(tr.inputs[0]):
            return WeightSite(node, "matmul", 1, True, tied=True)  # x @ table.T (tied output projection)
    if node.op == "Gemm" and len(ins) >= 2 and _float_matrix(ins[1]) and not isinstance(ins[0], gs.Constant):
        a = node.attrs
        if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
            return None
        if len(ins) == 3 and not (isinstance(ins[2], gs.Constant) and len(ins[2].shape) == 1):
            return None
        return WeightSite(node, "gemm", 1, bool(a.get("transB", 0)))
    if embeddings and node.op == "Gather" and _float_matrix(ins[0]) and int(node.attrs.get("axis", 0)) == 0:
        return WeightSite(node, "gather", 0, True)
    return None


def find_weight_sites(
    graph: gs.Graph, *, min_weight_size: int, exclude: Sequence[str] = (), embeddings: bool = True, block_size: int = 1
) -> list[WeightSite]:
    """The weights `quantize-weights` would replace, in graph order.

    Args:
        graph: The graph.
        min_weight_size: Weights with fewer elements are left float.
        exclude: Glob patterns over node names and weight names.
        embeddings: Also Gather from constant tables.
        block_size: A MatMul/Gemm needs K >= block_size (one full block at least).
    """
    out = []
    for node in graph.nodes:
        site = _site(node, embeddings)
        if site is None or math.prod(site.weight.shape) < min_weight_size:  # from the header: no weight is loaded
            continue
        if any(fnmatch.fnmatchcase(n, p) for p in exclude for n in (node.name, site.weight.name)):
            continue
        k = site.weight.shape[1 if site.transposed else 0]
        if k < block_size:
            continue
        out.append(site)
    return out


def _rewire(node: gs.Node, replacement: gs.Node) -> None:
    """Let ``replacement`` produce ``node``'s outputs; ``node`` becomes dead.

    Its inputs are let go too, so its weight is freed now rather than at the graph's
    cleanup (a pass writing sites one by one holds one float weight at a time).
    """
    replacement.outputs = list(node.outputs)
    node.outputs.clear()
    node.inputs.clear()


def emit_matmulnbits(graph: gs.Graph, site: WeightSite, bq: BlockQuant, *, accuracy_level: int, name: str) -> int:
    """Replace ``site`` by MatMulNBits (MatMul/Gemm; a Gemm bias becomes an ``Add``) or GatherBlockQuantized.

    Returns the bytes of the new constants.
    """
    arrays = matmulnbits_arrays(bq)
    nbytes = sum(v.nbytes for v in arrays.values())
    node = site.node
    consts = {k: gs.Constant(f"{name}.{k}", v) for k, v in arrays.items()}
    n, k = bq.codes.shape[0], bq.k
    if site.kind == "gather":
        data = gs.Constant(f"{name}.data", arrays["B"].reshape(n, -1))
        ins = [data, node.inputs[1], consts["scales"]] + ([consts["zero_points"]] if "zero_points" in consts else [])
        attrs = {"gather_axis": 0, "quantize_axis": 1, "block_size": bq.block_size, "bits": bq.bits}
        new = gs.Node("GatherBlockQuantized", name=name, inputs=ins, attrs=attrs, domain=MS_DOMAIN)
        _rewire(node, new)
        graph.nodes.append(new)
        return nbytes
    ins = [node.inputs[0], consts["B"], consts["scales"]] + ([consts["zero_points"]] if "zero_points" in consts else [])
    attrs = {"K": k, "N": n, "bits": bq.bits, "block_size": bq.block_size, "accuracy_level": accuracy_level}
    new = gs.Node("MatMulNBits", name=name, inputs=ins, attrs=attrs, domain=MS_DOMAIN)
    bias = node.inputs[2] if site.kind == "gemm" and len(node.inputs) == 3 else None
    _rewire(node, new)
    if bias is not None:
        out = new.outputs[0]
        mid = gs.Variable(f"{name}.nobias", dtype=out.dtype, shape=out.shape)
        new.outputs = [mid]
        graph.nodes.append(gs.Node("Add", name=f"{name}.bias", inputs=[mid, bias], outputs=[out]))
    graph.nodes.append(new)
    return nbytes


def emit_qdq(graph: gs.Graph, site: WeightSite, bq: BlockQuant, *, name: str) -> int:
    """Feed ``site``'s node from a block-wise DequantizeLinear (opset 21) of the codes.

    Returns the bytes of the new constants (4-bit codes count half a byte).
    """
    arrays = dequantize_linear_arrays(bq)  # [K, N] layout, blocks along axis 0
    axis = 0
    if site.node_reads_nk:  # the node reads [N, K]: blocks along axis 1
        arrays = {key: np.ascontiguousarray(v.T) for key, v in arrays.items()}
        axis = 1
    ins = [packed_constant(f"{name}.x", arrays["x"]), gs.Constant(f"{name}.scale", arrays["scale"])]
    if "zero_point" in arrays:
        ins.append(packed_constant(f"{name}.zero_point", arrays["zero_point"]))
    shape = list(arrays["x"].shape)
    out = gs.Variable(f"{name}.dq", dtype=np.float32, shape=shape)
    graph.nodes.append(gs.Node("DequantizeLinear", name=name, inputs=ins, outputs=[out], attrs={"axis": axis, "block_size": bq.block_size}))
    site.node.inputs[site.weight_index] = out
    return sum(v.size * bq.bits // 8 if v.dtype.itemsize == 1 else v.nbytes for v in arrays.values())


def _scaled_constant(c: gs.Constant, factor: np.ndarray, name: str) -> gs.Constant | None:
    """A new constant ``c * factor`` over the last axis, or None if ``c`` can't take it."""
    v = np.asarray(c.values)
    if v.dtype != np.float32 or any(d != 1 for d in v.shape[:-1]) or (v.ndim and v.shape[-1] not in (1, factor.size)):
        return None
    return gs.Constant(name, (v * factor).astype(np.float32))  # broadcasts over the last axis


def _fold_into_matmul(prod: gs.Node, inv_s: np.ndarray, name: str) -> bool:
    """Scale the output columns of a MatMul with a constant ``[K', K]`` weight; False if it isn't one."""
    if prod.op != "MatMul" or not _float_matrix(prod.inputs[1]) or prod.inputs[1].shape[1] != inv_s.size:
        return False
    w = np.asarray(prod.inputs[1].values, dtype=np.float32)
    prod.inputs[1] = gs.Constant(f"{name}.prev", (w * inv_s[None, :]).astype(np.float32))
    return True


def apply_input_scale(graph: gs.Graph, x: gs.Variable, readers: Sequence[gs.Node], inv_s: np.ndarray, name: str) -> str:
    """Make ``readers`` see ``x * inv_s`` (per last-axis channel). Returns how: the fold target or ``"mul"``.

    Folds into the producer of ``x`` when all of ``x``'s readers are in ``readers`` and ``x``
    is not a graph output: a ``Mul`` by a constant gain (RMSNorm), a
    ``LayerNormalization`` (scale and bias), a ``MatMul`` with a constant weight (its
    output columns), or such a MatMul behind one side of a gating ``Mul``. Otherwise inserts one ``Mul`` read by ``readers`` only.
    """
    inv_s = inv_s.astype(np.float32)
    prod = x.inputs[0] if x.inputs else None
    exclusive = set(map(id, x.outputs)) <= set(map(id, readers)) and not is_graph_output(graph, x)
    if exclusive and prod is not None:
        if prod.op == "Mul" and len(prod.inputs) == 2:
            consts = [i for i, t in enumerate(prod.inputs) if isinstance(t, gs.Constant)]
            if len(consts) == 1:
                new = _scaled_constant(prod.inputs[consts[0]], inv_s, f"{name}.gain")
                if new is not None:
                    prod.inputs[consts[0]] = new
                    return "norm"
        last_axis = int(prod.attrs.get("axis", -1)) in (-1, len(x.shape or ()) - 1)
        if prod.op == "LayerNormalization" and last_axis and all(isinstance(t, gs.Constant) for t in prod.inputs[1:]):
            for i in range(1, len(prod.inputs)):
                prod.inputs[i] = gs.Constant(f"{name}.ln{i}", (np.asarray(prod.inputs[i].values) * inv_s).astype(np.float32))
            return "norm"
        if prod.op == "Mul" and len(prod.inputs) == 2:
            # A gated product (SwiGLU: silu(gate) * up): scale the branch that is a MatMul.
            for t in prod.inputs:
                up = t.inputs[0] if t.inputs else None
                if up is not None and len(t.outputs) == 1 and not is_graph_output(graph, t) and _fold_into_matmul(up, inv_s, name):
                    return "matmul"
        if _fold_into_matmul(prod, inv_s, name):
            return "matmul"
    out = gs.Variable(f"{name}.scaled", dtype=x.dtype, shape=x.shape)
    graph.nodes.append(gs.Node("Mul", name=f"{name}.awq", inputs=[x, gs.Constant(f"{name}.inv_s", inv_s)], outputs=[out]))
    for r in readers:
        r.inputs = [out if t is x else t for t in r.inputs]
    return "mul"
