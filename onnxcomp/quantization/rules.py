"""Per-op QDQ placement rules: handlers *mark* tensors; `insert.py` materialises Q/DQ.

A rule is a stateless function ``rule(node, view, plan) -> bool`` registered in an
`onnxcomp.ir.OpRules` table (`STATIC_RULES`, `DYNAMIC_RULES`) for
``(domain, op_type, opset range)``. It records in the `QuantPlan` which inputs of ``node``
read quantized values, which constant weights/biases become int8/int32, which output must
be followed by a Q (so onnxruntime can fuse ``DQ -> op -> Q`` into an integer kernel) and
which tensors must share one scale. It returns True when ``node`` became an integer
"layer" (the unit the sensitivity analysis and the fallback exclude).

Placement follows onnxruntime's CPU QDQ fusions:

* Conv/Gemm/MatMul/Add/Mul: ``DQ(x), DQ(w)[, DQ(b:int32)] -> op -> Q``. A Relu or Clip
  (constant bounds) right after the op gets the Q *after* it and is recorded in
  ``QuantPlan.folded``: when the Q's integer range lies inside the activation's bounds,
  `insert.materialize` drops the activation (the Q clamps exactly as it did), leaving
  ``op -> Q`` for onnxruntime to fuse into an integer kernel.
* Concat: every input and the output share one scale (QLinearConcat, and no requantize),
  unless the calibrated input ranges are more than ``concat_range_ratio`` apart: one
  8-bit scale over ranges 100x apart rounds the small input to a handful of levels (a
  detector's 0-1 class scores concatenated with 0-320 box coordinates), so such a Concat
  stays float and its inputs keep their own scales.
* MaxPool/Resize/Transpose/Reshape/Squeeze/Unsqueeze/Flatten/Split: pass-through when the input
  is quantized; the outputs share the input's scale so onnxruntime drops the DQ/Q pairs and runs
  the op on 8-bit data (a YOLOv8 C2f block's Split: 7 DQ and 14 Q fewer).
* Average pooling, Sigmoid, LeakyRelu: own output scale when the input is 8-bit
  (QLinearAveragePool/QLinearGlobalAveragePool/QLinearSigmoid/QLinearLeakyRelu).
* Gather from a constant table (embeddings): the table becomes int8 per-tensor and the
  Gather reads it directly, ``Gather(int8 table) -> DequantizeLinear`` (what onnxruntime
  would make of ``DQ -> Gather -> Q``, written out so the table is never dequantized whole).
* In the dynamic scheme, MatMul (or Gemm) with a constant 2-D weight becomes
  ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` (fused by onnxruntime into
  DynamicQuantizeMatMul); nothing else around it is touched, so LayerNorm/Softmax/GELU stay
  float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir import OpRules, consumer_map, np_dtype
from onnxcomp.quantization.weightexpr import weight_shape

#: Ops whose output, when it follows a quantized op with no other consumer, carries the Q.
FUSABLE_ACTIVATIONS = ("Relu", "Clip")
#: Ops that read a quantized input inside their integer kernel (no DQ/Q pair in between).
INTEGER_READERS = ("Conv", "Gemm", "MatMul")
PASS_THROUGH = ("MaxPool", "Resize", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Split")


class UnionFind:
    """Shared-scale groups over tensor names."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression keeps finds near O(1)
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k in list(self.parent):
            out.setdefault(self.find(k), []).append(k)
        return out


@dataclass(frozen=True)
class FoldedActivation:
    """A Relu/Clip between a quantized op and its Q: removable when the Q clamps as tightly."""

    node: gs.Node
    low: float
    high: float


@dataclass
class QuantPlan:
    """What the rules decided; consumed by `insert.materialize`.

    Attributes:
        activations: Tensor name -> ids of consumer nodes that read its dequantized value.
        rewire_all: Tensors whose every consumer reads the dequantized value (a Q must
            directly follow the producer for fusion).
        weights: Constant name -> (channel axis or None, ids of consumer nodes).
        biases: (node id, input index) -> (bias name, activation name, weight name).
        shared: Shared-scale groups (may include weight names: then the weight's scale wins).
        dynamic: MatMul nodes for the dynamic-activation scheme.
        gathers: Gather nodes reading a constant table that becomes int8.
        layers: Names of the nodes that became integer layers.
        folded: Output tensor name -> the Relu/Clip producing it, whose Q may absorb it.
        float_concats: Concats left float because their input ranges are too far apart.
    """

    activations: dict[str, set[int]] = field(default_factory=dict)
    rewire_all: set[str] = field(default_factory=set)
    weights: dict[str, tuple[int | None, set[int]]] = field(default_factory=dict)
    biases: dict[tuple[int, int], tuple[str, str, str]] = field(default_factory=dict)
    shared: UnionFind = field(default_factory=UnionFind)
    dynamic: list[gs.Node] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    per_channel: bool = True
    gathers: list[gs.Node] = field(default_factory=list)
    folded: dict[str, FoldedActivation] = field(default_factory=dict)
    float_concats: list[str] = field(default_factory=list)

    def mark_input(self, t: gs.Tensor, consumer: gs.Node) -> None:
        self.activations.setdefault(t.name, set()).add(id(consumer))

    def mark_output(self, t: gs.Tensor) -> None:
        self.activations.setdefault(t.name, set())
        self.rewire_all.add(t.name)

    def mark_weight(self, t: gs.Constant, axis: int | None, consumer: gs.Node) -> None:
        prev = self.weights.get(t.name)
        if prev is not None and prev[0] != axis:
            axis = None  # a weight shared with different channel axes: per-tensor is safe
        ids = prev[1] if prev else set()
        ids.add(id(consumer))
        self.weights[t.name] = (axis, ids)

    def is_marked(self, t: gs.Tensor) -> bool:
        return t.name in self.activations


@dataclass(frozen=True)
class RuleOptions:
    """The options rules read (a view of the pass options)."""

    per_channel: bool = True
    quantize_activation_matmul: bool = False
    min_weight_size: int = 0
    concat_range_ratio: float = 10.0
    quantize_depthwise: bool = False


class GraphView:
    """Read-only facts about the graph that rules need, built once (linear)."""

    def __init__(
        self, graph: gs.Graph, options: RuleOptions, ranges: Mapping[str, tuple[float, float]] | None = None
    ) -> None:
        self.graph = graph
        self.options = options
        self.consumers = consumer_map(graph)
        self.outputs = {t.name for t in graph.outputs}
        #: Calibrated (low, high) per tensor; None while planning which tensors to measure.
        self.ranges = ranges

    @staticmethod
    def is_float_weight(t: gs.Tensor) -> bool:
        # dtype and shape come from the tensor's header: planning must not load weights
        # (a lazily loaded 540 MB decoder would be read into memory by its rules alone).
        if not isinstance(t, gs.Constant):
            return False
        dtype = np_dtype(t.dtype)
        return dtype is not None and dtype.kind == "f"

    @staticmethod
    def is_float_var(t: gs.Tensor) -> bool:
        # Unknown dtype (no shape inference) is treated as float: rules only look at
        # float-producing ops, whose integer inputs (indices, shapes) are constants.
        if not isinstance(t, gs.Variable):
            return False
        return t.dtype is None or np.dtype(t.dtype).kind == "f"

    def fused_output(self, node: gs.Node, plan: QuantPlan) -> gs.Tensor:
        """The tensor a Q should follow: past a lone Relu/Clip consumer (recorded in
        ``plan.folded``), else the output."""
        out = node.outputs[0]
        users = [n for n, _ in self.consumers.get(out.name, ())]
        if len(users) == 1 and out.name not in self.outputs and users[0].op in FUSABLE_ACTIVATIONS:
            act = users[0]
            bounds = activation_bounds(act)
            if bounds is not None:
                plan.folded[act.outputs[0].name] = FoldedActivation(act, *bounds)
                return act.outputs[0]
        return out

    def feeds_integer_layers(self, node: gs.Node) -> bool:
        """True when ``node``'s output, past a lone Relu/Clip, is read only by Conv/Gemm/MatMul."""
        out = node.outputs[0]
        users = [n for n, _ in self.consumers.get(out.name, ())]
        if len(users) == 1 and users[0].op in FUSABLE_ACTIVATIONS and out.name not in self.outputs:
            out = users[0].outputs[0]
            users = [n for n, _ in self.consumers.get(out.name, ())]
        return bool(users) and out.name not in self.outputs and all(u.op in INTEGER_READERS for u in users)


def activation_bounds(act: gs.Node) -> tuple[float, float] | None:
    """The (low, high) a Relu or a Clip with constant bounds clamps to; None otherwise.

    Clip bounds are attributes before opset 11 and optional constant inputs after; a
    bound that is a computed tensor (a raw export's ``Constant`` node not yet folded into
    an initializer) is not constant here, which is why `quantize-int8` cleans up first.
    """
    if act.op == "Relu":
        return 0.0, math.inf
    low, high = float(act.attrs.get("min", -math.inf)), float(act.attrs.get("max", math.inf))
    for i, t in enumerate(act.inputs[1:3], start=1):
        if not t.name:
            continue
        if not isinstance(t, gs.Constant):
            return None
        v = np.asarray(t.values)
        if v.size != 1:
            return None
        if i == 1:
            low = float(v.reshape(()))
        else:
            high = float(v.reshape(()))
    return low, high


Rule = Callable[[gs.Node, GraphView, QuantPlan], bool]

#: Placement rules of the static scheme (QDQ around integer kernels).
STATIC_RULES: OpRules[Rule] = OpRules("static QDQ placement")
#: Rules of the dynamic scheme (dynamic-activation integer MatMul; int8 embedding tables).
DYNAMIC_RULES: OpRules[Rule] = OpRules("dynamic quantization")


def _conv_like(node: gs.Node, view: GraphView, plan: QuantPlan, axis: int | None) -> bool:
    if len(node.inputs) < 2 or not view.is_float_var(node.inputs[0]) or not view.is_float_weight(node.inputs[1]):
        return False  # dynamic weights (or already-quantized inputs) have no integer kernel here
    plan.mark_input(node.inputs[0], node)
    plan.mark_weight(node.inputs[1], axis, node)
    if len(node.inputs) > 2 and node.inputs[2].name:
        b = node.inputs[2]
        if not view.is_float_weight(b):
            return False
        plan.biases[(id(node), 2)] = (b.name, node.inputs[0].name, node.inputs[1].name)
    plan.mark_output(view.fused_output(node, plan))
    return True


@STATIC_RULES.register("Conv", since=1)
def conv_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """Conv: activation in, per-output-channel (axis 0) int8 weight, int32 bias, Q out.

    A depthwise convolution is quantized only inside an 8-bit chain (its output, past a
    Relu/Clip, feeds only Conv/Gemm/MatMul), or with ``quantize_depthwise``: onnxruntime's
    int8 depthwise kernel is slower than its float one (a chain of six measured 0.45-0.84x
    on AVX-512 VNNI, ORT 1.32; pointwise and dense convolutions gain 1.9x and more), so it
    pays only where it saves a DQ/Q pair (MobileNetV2: 0.73x of onnxruntime's speed with
    every depthwise float, 1.0x in chains), not before a hard-swish or an SE gate.
    """
    if not view.options.quantize_depthwise and is_depthwise(node) and not view.feeds_integer_layers(node):
        return False
    return _conv_like(node, view, plan, 0 if view.options.per_channel else None)


def is_depthwise(node: gs.Node) -> bool:
    """A grouped Conv with one input channel per group (and more than one group)."""
    group = int(node.attrs.get("group", 1))
    w = node.inputs[1] if len(node.inputs) > 1 else None
    shape = tuple(w.shape or ()) if w is not None else ()
    return group > 1 and len(shape) >= 2 and shape[1] == 1


@STATIC_RULES.register("ConvTranspose", since=1)
def conv_transpose_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """ConvTranspose: like Conv; weight per-tensor (its output channels are axis 1 per group)."""
    if node.attrs.get("group", 1) != 1:
        return False
    return _conv_like(node, view, plan, 1 if view.options.per_channel else None)


@STATIC_RULES.register("Gemm", since=1)
def gemm_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """Gemm (QGemm): per-output-channel weight, int32 bias when C is a 1-D constant."""
    if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0:
        return False
    a, b = node.inputs[0], node.inputs[1]
    if not view.is_float_var(a) or not view.is_float_weight(b) or len(b.shape) != 2:
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        if not view.is_float_weight(c) or len(c.shape) != 1 or node.attrs.get("beta", 1.0) != 1.0:
            return False
    axis = (0 if node.attrs.get("transB", 0) else 1) if view.options.per_channel else None
    return _conv_like(node, view, plan, axis)


@STATIC_RULES.register("MatMul", since=1)
def matmul_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """MatMul: constant 2-D weight per-tensor (QLinearMatMul); activation x activation
    only with ``quantize_activation_matmul`` (usually slower on CPU)."""
    a, b = node.inputs
    if not view.is_float_var(a):
        return False
    if view.is_float_weight(b) and len(b.shape) == 2:
        plan.mark_input(a, node)
        plan.mark_weight(b, None, node)
    elif view.options.quantize_activation_matmul and view.is_float_var(b):
        plan.mark_input(a, node)
        plan.mark_input(b, node)
    else:
        return False
    plan.mark_output(view.fused_output(node, plan))
    return True


@STATIC_RULES.register("Add", "Mul", since=7)
def binary_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """Add/Mul of two activations that already get a Q (QLinearAdd/QLinearMul).

    Declines constant operands, and operands no other rule quantizes, computed in float (a hard-swish's
    ``x * Clip(x + 3, 0, 6) / 6``, a squeeze-excitation gate): the integer kernel would
    need a QuantizeLinear on that operand, and the DQ/Q pairs around such an island cost
    more than the 8-bit product saves (measured on the PP-OCR classifier).
    """
    a, b = node.inputs
    if not (view.is_float_var(a) and view.is_float_var(b)):
        return False
    if not (plan.is_marked(a) and plan.is_marked(b)):
        return False
    plan.mark_input(a, node)
    plan.mark_input(b, node)
    plan.mark_output(view.fused_output(node, plan))
    return True


@STATIC_RULES.register("Concat", since=4)
def concat_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """Concat: all inputs and the output share one scale (no requantization).

    Declines when no input comes from a quantized op (an 8-bit Concat between float
    layers only adds rounding error), and, once ranges are known, when the inputs' ranges
    are too far apart to share a scale (`disparate_ranges`).
    """
    if not all(view.is_float_var(t) for t in node.inputs) or not any(plan.is_marked(t) for t in node.inputs):
        return False
    if view.ranges is not None and disparate_ranges(node.inputs, view.ranges, view.options.concat_range_ratio):
        plan.float_concats.append(node.name)
        return False
    out = node.outputs[0]
    for t in node.inputs:
        plan.mark_input(t, node)
        plan.shared.union(out.name, t.name)
    plan.mark_output(out)
    return False


def disparate_ranges(
    inputs: Sequence[gs.Tensor], ranges: Mapping[str, tuple[float, float]], max_ratio: float
) -> bool:
    """True when the widest calibrated input range is more than ``max_ratio`` times the
    narrowest: one shared scale would leave the narrow input ``255 / ratio`` levels or fewer."""
    widths = [max(hi, 0.0) - min(lo, 0.0) for lo, hi in (ranges[t.name] for t in inputs if t.name in ranges)]
    if len(widths) < 2:
        return False
    narrow = min(widths)
    return narrow <= 0.0 or max(widths) / narrow > max_ratio


def _pass_through(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    x = node.inputs[0]
    if not plan.is_marked(x) or not view.is_float_var(x):
        return False  # only worth it when the data is already 8-bit
    plan.mark_input(x, node)
    for out in node.outputs:  # Split has several, all on the input's scale
        plan.mark_output(out)
        plan.shared.union(x.name, out.name)
    return False


def _own_scale(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    x = node.inputs[0]
    if not plan.is_marked(x):
        return False
    plan.mark_input(x, node)
    plan.mark_output(node.outputs[0])
    return False


#: Consumers that keep an 8-bit Sigmoid/LeakyRelu output 8-bit (an integer kernel reads it).
ELEMENTWISE_READERS = ("Mul", "Add", *INTEGER_READERS)


def _elementwise_act(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """Sigmoid/LeakyRelu with their own output scale, only when an integer op reads the result.

    A SiLU ``x * Sigmoid(x)`` becomes QLinearSigmoid + QLinearMul. A Sigmoid whose output
    only goes float (a detector head's class scores into a float Concat or a graph output)
    stays float: its 8-bit output would save nothing and round scores near 0 (1e-4) to 0.
    """
    out = node.outputs[0]
    users = [n for n, _ in view.consumers.get(out.name, ())]
    if out.name in view.outputs or not any(u.op in ELEMENTWISE_READERS for u in users):
        return False
    return _own_scale(node, view, plan)


STATIC_RULES.register(*PASS_THROUGH)(_pass_through)
STATIC_RULES.register("AveragePool", "GlobalAveragePool")(_own_scale)
STATIC_RULES.register("Sigmoid", "LeakyRelu")(_elementwise_act)


def gather_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """Gather from a constant 2-D float table (embeddings): int8 table, Gather on int8 rows,
    one DequantizeLinear after it (never a DequantizeLinear of the whole table per run)."""
    table = node.inputs[0]
    if not view.is_float_weight(table) or len(table.shape) != 2 or node.attrs.get("axis", 0) != 0:
        return False
    plan.gathers.append(node)
    return False


STATIC_RULES.register("Gather")(gather_rule)
DYNAMIC_RULES.register("Gather")(gather_rule)


@DYNAMIC_RULES.register("MatMul", since=1)
def dynamic_matmul_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """MatMul with a constant 2-D weight (or one computed from a constant, see
    `onnxcomp.quantization.weightexpr`) -> dynamic-activation integer MatMul.

    Declines small weights (``min_weight_size``): quantizing the activation at run time
    costs more than the integer product saves there.
    """
    a, b = node.inputs
    shape = weight_shape(b)  # a constant, or e.g. Transpose(table) of a tied output projection
    if not view.is_float_var(a) or shape is None:
        return False
    if len(shape) != 2 or math.prod(shape) < view.options.min_weight_size:
        return False
    plan.dynamic.append(node)
    return True


@DYNAMIC_RULES.register("Gemm", since=1)
def dynamic_gemm_rule(node: gs.Node, view: GraphView, plan: QuantPlan) -> bool:
    """Gemm (A x B + C, constant B and 1-D C) -> dynamic integer MatMul plus a bias Add."""
    if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
        return False
    a, b = node.inputs[0], node.inputs[1]
    shape = weight_shape(b)
    if not view.is_float_var(a) or shape is None:
        return False
    if len(shape) != 2 or math.prod(shape) < view.options.min_weight_size:
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        if not view.is_float_weight(c) or len(c.shape) != 1:
            return False
    plan.dynamic.append(node)
    return True


def build_plan(
    graph: gs.Graph,
    registry: OpRules[Rule],
    options: RuleOptions,
    *,
    opset: int,
    skip: Callable[[gs.Node], bool] = lambda n: False,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> QuantPlan:
    """Run the rules over ``graph`` in topological order (the graph must be sorted).

    ``ranges`` (calibrated low/high per tensor) lets range-aware rules decline; without
    it the plan is the widest one, whose marked activations are the ones to measure.
    """
    view = GraphView(graph, options, ranges)
    plan = QuantPlan(per_channel=options.per_channel)
    for node in graph.nodes:
        if skip(node):
            continue
        # The table reads "ai.onnx" as the default domain; nodes spelled that way were
        # never quantized here (domains used to be compared verbatim), and still are not.
        rule = registry.lookup(node.domain, node.op, opset) if node.domain != "ai.onnx" else None
        if rule is not None and rule(node, view, plan):
            plan.layers.append(node.name)
    return plan
