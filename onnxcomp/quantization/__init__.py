"""INT8 post-training quantization building blocks used by the ``quantize-int8`` pass.

* `calibrators`: streamed tensor statistics and the minmax/percentile/entropy/mse calibrators;
* `collect`: the calibration runner (one onnxruntime session, batches streamed);
* `rules`: the per-op QDQ placement rules (they only *mark*);
* `insert`: the one place that materialises Q/DQ and dynamic-MatMul nodes;
* `smoothquant`: activation-outlier scale migration into weights;
* `sensitivity`: per-layer sensitivity and greedy float fallback;
* `proxy`: per-layer error energy of dynamic quantization, to rank layers for the fallback;
* `weightexpr`: layer weights computed from a constant (``Transpose(table)``, deferred
  SmoothQuant ``Mul(w, s)``), evaluated one at a time when a layer is quantized;
* `blockwise`, `hessian`, `gptq`, `awq`, `weightonly`: block-wise 4/8-bit weight-only
  quantization (``quantize-weights``): RTN and packing, streamed ``XᵀX``, GPTQ, AWQ scale
  search, and the graph rewrites (MatMulNBits / block-wise DequantizeLinear, AWQ folds).

Passes import these names from ``onnxcomp.quantization`` itself.
"""

from onnxcomp.quantization.awq import search_scales as search_awq_scales
from onnxcomp.quantization.blockwise import (
    BlockQuant,
    dequantize_linear_arrays,
    matmulnbits_arrays,
    pack_codes,
    rtn,
    unpack_codes,
)
from onnxcomp.quantization.calibrators import (
    CALIBRATORS,
    QParams,
    TensorStats,
    activation_qparams,
    calibrate_range,
    weight_qparams,
)
from onnxcomp.quantization.collect import collect_stats
from onnxcomp.quantization.gptq import gptq, layer_error
from onnxcomp.quantization.hessian import InputMoments, collect_moments
from onnxcomp.quantization.insert import materialize, weight_params
from onnxcomp.quantization.proxy import ActivationSamples, layer_error_energy
from onnxcomp.quantization.rules import (
    DYNAMIC_RULES,
    STATIC_RULES,
    QuantPlan,
    RuleOptions,
    build_plan,
)
from onnxcomp.quantization.sensitivity import (
    Evaluator,
    FallbackResult,
    Score,
    fallback,
    layer_costs,
    ranked_fallback,
)
from onnxcomp.quantization.smoothquant import (
    SmoothSite,
    apply_smoothing,
    find_sites,
    smooth,
    smoothing_scales,
)
from onnxcomp.quantization.weightexpr import fold_weights
from onnxcomp.quantization.weightonly import (
    WeightSite,
    apply_input_scale,
    emit_matmulnbits,
    emit_qdq,
    find_weight_sites,
)

__all__ = [
    "CALIBRATORS",
    "DYNAMIC_RULES",
    "STATIC_RULES",
    "ActivationSamples",
    "BlockQuant",
    "Evaluator",
    "FallbackResult",
    "InputMoments",
    "QParams",
    "QuantPlan",
    "RuleOptions",
    "Score",
    "SmoothSite",
    "TensorStats",
    "WeightSite",
    "activation_qparams",
    "apply_input_scale",
    "apply_smoothing",
    "build_plan",
    "calibrate_range",
    "collect_moments",
    "collect_stats",
    "dequantize_linear_arrays",
    "emit_matmulnbits",
    "emit_qdq",
    "fallback",
    "find_sites",
    "find_weight_sites",
    "fold_weights",
    "gptq",
    "layer_costs",
    "layer_error",
    "layer_error_energy",
    "materialize",
    "matmulnbits_arrays",
    "pack_codes",
    "ranked_fallback",
    "rtn",
    "search_awq_scales",
    "smooth",
    "smoothing_scales",
    "unpack_codes",
    "weight_params",
    "weight_qparams",
]
