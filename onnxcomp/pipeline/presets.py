"""Named pipelines. Pass names here are the stable public names."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.errors import UsageError

#: The lossless cleanup group, repeated until no pass changes the graph. Order matters
#: only for speed: identities first expose constants, folding exposes BN/CSE chances.
CLEANUP = ("eliminate-identity", "fold-constants", "fold-batchnorm", "cse", "dce")


@dataclass(frozen=True)
class FixedPoint:
    """A group of passes repeated until a full sweep changes nothing (or ``max_iterations``)."""

    passes: tuple[str, ...]
    max_iterations: int = 8


Step = "str | FixedPoint"

PRESETS: dict[str, tuple[object, ...]] = {
    "lossless": (FixedPoint(CLEANUP),),
    "int8": (FixedPoint(CLEANUP), "quantize-int8"),
    "prune": (FixedPoint(CLEANUP), "prune-channels", FixedPoint(CLEANUP)),
    "prune-recover": (FixedPoint(CLEANUP), "prune-channels", "reconstruct", FixedPoint(CLEANUP)),
    "prune-distill-int8": (FixedPoint(CLEANUP), "prune-channels", "distill", FixedPoint(CLEANUP), "quantize-int8"),
}

PRESET_SUMMARIES = {
    "lossless": "cleanup only: identities, constants, BatchNorm folding, CSE, dead code (default)",
    "int8": "cleanup, then static INT8 quantization (QDQ) with calibration",
    "prune": "cleanup, structured channel pruning, cleanup",
    "prune-recover": "cleanup, pruning, training-free layer-wise reconstruction",
    "prune-distill-int8": "cleanup, pruning, knowledge distillation (torch), INT8",
}


def preset_steps(name: str) -> tuple[object, ...]:
    """The steps of preset ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
