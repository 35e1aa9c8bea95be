"""Accuracy recovery after lossy compression (pruning): the building blocks.

* `lstsq` -- streamed ridge least squares (normal equations) and im2col patches, the
  closed-form layer refit behind the ``reconstruct`` pass.
* `activations` -- run a model in onnxruntime with chosen intermediate tensors exposed.
* `layers` -- which layers (Conv / Gemm / MatMul with constant weights) can be refit and
  how to turn their inputs into regression features.
* `torch_graph` -- a small ONNX -> PyTorch interpreter whose parameters are the graph's
  initializers (needs the ``torch`` extra; import it lazily).
* `distill_loop` -- the knowledge-distillation training loop (``torch`` extra).
"""
