"""The one version string of onnxcomp."""

__version__ = "0.1.0"
