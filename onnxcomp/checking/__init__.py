"""Checking results: calibration data, the onnxruntime session factory, numeric
verification and fidelity metrics."""
