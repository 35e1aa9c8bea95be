"""The command line (click)."""

from onnxcomp.cli.main import main

__all__ = ["main"]
