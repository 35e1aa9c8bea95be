"""The graph and what is computed from it: the public toolbox of passes.

* `onnxcomp.ir.convert`: ModelProto <-> onnx-graphsurgeon graph (`to_graph`, `to_model`),
  keeping what graphsurgeon would drop (`ModelMeta`);
* `onnxcomp.ir.graph`: constant access, static shapes, rewiring, sorting, dead-node cleanup;
* `onnxcomp.ir.shapes`: shape inference on weightless models and the one dims reader;
* `onnxcomp.ir.weightless`: models without their large weights, for the checker, shape
  inference and onnxruntime;
* `onnxcomp.ir.rules`: tables of per-op rules keyed by (domain, op type, opset range);
* `onnxcomp.ir.cost`: nodes, parameters, bytes and FLOPs;
* `onnxcomp.ir.control_flow`: an ``If`` with a constant condition replaced by its branch;
* `onnxcomp.ir.affine`: per-channel affine maps (BatchNormalization, scale and bias)
  folded into the weights of the op producing the channels;
* `onnxcomp.ir.constant_eval`: numpy evaluation of standard ops on constants, with size
  checks before allocating.

Passes (built-in and third-party) import these names from ``onnxcomp.ir`` itself.
"""

from onnxcomp.ir.convert import ModelMeta, set_metadata, to_graph, to_model
from onnxcomp.ir.cost import GraphCost, graph_cost, model_cost
from onnxcomp.ir.graph import (
    RANDOM_OPS,
    STANDARD_DOMAINS,
    bypass,
    cleanup_after_rewrite,
    constant_nbytes,
    constant_node_value,
    constant_value,
    consumer_map,
    count_nodes,
    default_opset,
    has_subgraph,
    is_graph_input,
    is_graph_output,
    is_standard,
    iter_graphs,
    np_dtype,
    onnx_elem_type,
    peek_values,
    remove_dead_nodes,
    replace_uses,
    same_dtype,
    static_shape,
    tensor_map,
    toposort,
    unique_namer,
)
from onnxcomp.ir.shapes import Dim, annotate_shapes, can_add_initializers, dims_of, export_node, infer_shapes, tensor_dims
from onnxcomp.ir.rules import OpRule, OpRules
from onnxcomp.ir.control_flow import inline_if, taken_branch
from onnxcomp.ir.affine import batchnorm_affine, float_weight, float_weight_meta, fold_channel_affine, output_channels
from onnxcomp.ir.constant_eval import (
    EvalContext,
    EvalDeclined,
    EvalTooLarge,
    find_eval_rule,
    is_numeric_dtype,
    own_dims_target,
    partial_shape_value,
    shape_op_value,
)

__all__ = [
    "RANDOM_OPS",
    "STANDARD_DOMAINS",
    "Dim",
    "GraphCost",
    "ModelMeta",
    "annotate_shapes",
    "bypass",
    "can_add_initializers",
    "cleanup_after_rewrite",
    "constant_nbytes",
    "constant_node_value",
    "constant_value",
    "consumer_map",
    "count_nodes",
    "default_opset",
    "dims_of",
    "export_node",
    "graph_cost",
    "has_subgraph",
    "infer_shapes",
    "is_graph_input",
    "is_graph_output",
    "is_standard",
    "iter_graphs",
    "model_cost",
    "np_dtype",
    "onnx_elem_type",
    "peek_values",
    "remove_dead_nodes",
    "replace_uses",
    "same_dtype",
    "set_metadata",
    "static_shape",
    "tensor_dims",
    "tensor_map",
    "to_graph",
    "to_model",
    "toposort",
    "unique_namer",
    "OpRule",
    "OpRules",
    "EvalContext",
    "EvalDeclined",
    "EvalTooLarge",
    "find_eval_rule",
    "is_numeric_dtype",
    "shape_op_value",
    "batchnorm_affine",
    "float_weight",
    "float_weight_meta",
    "fold_channel_affine",
    "output_channels",
    "inline_if",
    "taken_branch",
    "own_dims_target",
    "partial_shape_value",
]
