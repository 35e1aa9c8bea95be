"""INT8 post-training quantization building blocks used by the ``quantize-int8`` pass.

* `calibrators`: streamed tensor statistics and the minmax/percentile/entropy/mse calibrators;
* `collect`: the calibration runner (one onnxruntime session, batches streamed);
* `rules`: the per-op QDQ placement rules (they only *mark*);
* `insert`: the one place that materialises Q/DQ and dynamic-MatMul nodes;
* `smoothquant`: activation-outlier scale migration into weights;
* `sensitivity`: per-layer sensitivity and greedy float fallback.

Passes import these names from ``onnxcomp.quantization`` itself.
"""

from onnxcomp.quantization.calibrators import (
    CALIBRATORS,
    QParams,
    TensorStats,
    activation_qparams,
    calibrate_range,
    weight_qparams,
)
from onnxcomp.quantization.collect import collect_stats
from onnxcomp.quantization.insert import materialize, weight_params
from onnxcomp.quantization.rules import DYNAMIC_RULES, STATIC_RULES, QuantPlan, RuleOptions, build_plan
from onnxcomp.quantization.sensitivity import Evaluator, FallbackResult, Score, fallback
from onnxcomp.quantization.smoothquant import SmoothSite, find_sites, smooth

__all__ = [
    "CALIBRATORS",
    "DYNAMIC_RULES",
    "STATIC_RULES",
    "Evaluator",
    "FallbackResult",
    "QParams",
    "QuantPlan",
    "RuleOptions",
    "Score",
    "SmoothSite",
    "TensorStats",
    "activation_qparams",
    "build_plan",
    "calibrate_range",
    "collect_stats",
    "fallback",
    "find_sites",
    "materialize",
    "smooth",
    "weight_params",
    "weight_qparams",
]
