"""Named pipelines. Pass and preset names here are the stable public names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onnxcomp.errors import UsageError
from onnxcomp.pipeline.pass_api import Pass
from onnxcomp.pipeline.steps import Pipeline, build_pipeline, until_stable

#: The lossless cleanup passes. Order matters only for speed: identities first expose
#: constants, folding exposes BN/CSE chances.
CLEANUP = ("eliminate-identity", "fold-constants", "fold-batchnorm", "cse", "dce")

#: The cleanup group: the cleanup passes repeated until none changes the graph.
CLEANUP_GROUP = until_stable(*CLEANUP)

PRESETS: dict[str, Pipeline] = {
    "lossless": Pipeline((CLEANUP_GROUP,)),
    "int8": Pipeline((CLEANUP_GROUP, "quantize-int8")),
    "int4": Pipeline((CLEANUP_GROUP, "quantize-weights")),
    "prune": Pipeline((CLEANUP_GROUP, "prune-channels", CLEANUP_GROUP)),
    "prune-recover": Pipeline((CLEANUP_GROUP, "prune-channels", "reconstruct", CLEANUP_GROUP)),
    "prune-distill-int8": Pipeline((CLEANUP_GROUP, "prune-channels", "distill", CLEANUP_GROUP, "quantize-int8")),
}

PRESET_SUMMARIES = {
    "lossless": "cleanup only: identities, constants, BatchNorm folding, CSE, dead code (default)",
    "int8": "cleanup, then static INT8 quantization (QDQ) with calibration",
    "int4": "cleanup, then block-wise 4-bit weight-only quantization (MatMulNBits; rtn, or gptq/awq with calibration)",
    "prune": "cleanup, structured channel pruning, cleanup",
    "prune-recover": "cleanup, pruning, training-free layer-wise reconstruction",
    "prune-distill-int8": "cleanup, pruning, knowledge distillation (torch), INT8",
}


def preset(name: str) -> Pipeline:
    """The pipeline of preset ``name`` (pass names, not instances)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def pipeline_for(preset_name: str | None, specs: Sequence["str | Pass | tuple[str, dict[str, Any]]"] = ()) -> Pipeline:
    """The pipeline of ``--preset`` and ``-p``: the specs alone when no preset is named,
    else the preset (``lossless`` by default) with the specs applied (see `build_pipeline`)."""
    if specs and preset_name is None:
        return build_pipeline(None, specs)
    return build_pipeline(preset(preset_name or "lossless"), specs)
