"""INT8 post-training quantization building blocks used by the ``quantize-int8`` pass.

* `calibrators`: streamed tensor statistics and the minmax/percentile/entropy/mse calibrators;
* `collect`: the calibration runner (one onnxruntime session, batches streamed);
* `rules`: the per-op QDQ placement rules (they only *mark*);
* `insert`: the one place that materialises Q/DQ and dynamic-MatMul nodes;
* `smoothquant`: activation-outlier scale migration into weights;
* `sensitivity`: per-layer sensitivity and greedy float fallback.
"""
