"""``python -m onnxcomp`` runs the CLI."""

from onnxcomp.cli import main

main()
