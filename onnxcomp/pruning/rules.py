"""Per-op channel-coupling rules, keyed by (domain, op_type, opset range).

A rule answers one question for one node: *if axis ``axis`` of the tensor at ``port``
loses some positions, which other (tensor, axis) of this node must lose the matching
positions, and through which index mapping?* It returns a list of `Link`, or `Frozen`
with the reason when the node cannot be pruned through (the group is then never
pruned: we never guess).

Rules are stateless functions with one signature::

    rule(node: gs.Node, port: Port, axis: int, env: RuleEnv) -> list[Link] | Frozen

``axis`` is non-negative; ``env`` gives static shapes and constant values. Supporting a
new op is one function plus ``@rule("OpType")`` in the module of its family:

* `onnxcomp.pruning.rules_base`: the types, the table `RULES`, `rule` and shared helpers;
* `onnxcomp.pruning.rules_linear`: Conv, ConvTranspose, Gemm, MatMul, normalizations;
* `onnxcomp.pruning.rules_pointwise`: element-wise and unary ops, softmax, Q/DQ,
  pooling, reductions;
* `onnxcomp.pruning.rules_layout`: Concat, Split, Slice, Transpose, (Un)Squeeze,
  Reshape, Flatten, Pad, Resize, Gather, CastLike, Expand, Shape/Size.

This module loads every family, so `lookup` here sees all rules; the names above stay
importable from here.
"""

from __future__ import annotations

from onnxcomp.pruning.rules_base import (
    IN0,
    IN1,
    IN2,
    OUT0,
    RULES,
    Dim,
    Frozen,
    Link,
    Port,
    RuleEnv,
    RuleFn,
    RuleResult,
    rule,
)

# Importing the families registers their rules in RULES.
from onnxcomp.pruning.rules_layout import (
    castlike_rule,
    concat_rule,
    expand_rule,
    flatten_rule,
    gather_rule,
    pad_rule,
    reshape_rule,
    resize_rule,
    shape_rule,
    slice_rule,
    split_rule,
    squeeze_rule,
    transpose_rule,
    unsqueeze_rule,
)
from onnxcomp.pruning.rules_linear import (
    batchnorm_rule,
    conv_rule,
    conv_transpose_rule,
    gemm_rule,
    groupnorm_rule,
    instancenorm_rule,
    layernorm_rule,
    matmul_rule,
)
from onnxcomp.pruning.rules_pointwise import (
    elementwise_rule,
    pool_rule,
    qdq_rule,
    reduce_rule,
    softmax_rule,
    softmax_rule_v1,
    unary_rule,
)


def lookup(domain: str, op: str, opset: int) -> RuleFn | None:
    """The rule for ``(domain, op)`` at ``opset``, or None (the op then freezes groups)."""
    return RULES.lookup(domain, op, opset)


def registered_ops() -> list[tuple[str, str]]:
    """All (domain, op_type) pairs that have a rule."""
    return RULES.ops()


__all__ = [
    "IN0",
    "IN1",
    "IN2",
    "OUT0",
    "RULES",
    "Dim",
    "Frozen",
    "Link",
    "Port",
    "RuleEnv",
    "RuleFn",
    "RuleResult",
    "batchnorm_rule",
    "castlike_rule",
    "concat_rule",
    "conv_rule",
    "conv_transpose_rule",
    "elementwise_rule",
    "expand_rule",
    "flatten_rule",
    "gather_rule",
    "gemm_rule",
    "groupnorm_rule",
    "instancenorm_rule",
    "layernorm_rule",
    "lookup",
    "matmul_rule",
    "pad_rule",
    "pool_rule",
    "qdq_rule",
    "reduce_rule",
    "registered_ops",
    "reshape_rule",
    "resize_rule",
    "rule",
    "shape_rule",
    "slice_rule",
    "softmax_rule",
    "softmax_rule_v1",
    "split_rule",
    "squeeze_rule",
    "transpose_rule",
    "unary_rule",
    "unsqueeze_rule",
]
