"""Measuring speed: input feeds, interleaved timing, bench, compare and the CI gate."""
