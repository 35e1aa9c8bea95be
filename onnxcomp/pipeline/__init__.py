"""The pass API, the registry, plugins, presets, the pass manager and its report.

* `onnxcomp.pipeline.pass_api`: `Pass[Options]`, `PassOptions`, `PassResult`,
  `PassContext` (with typed `Records`), the registry and option parsing;
* `onnxcomp.pipeline.steps`: `Pipeline` (nestable; ``until_stable`` for fixed points);
* `onnxcomp.pipeline.presets`: the named pipelines;
* `onnxcomp.pipeline.manager`: `PassManager` and one run of it, `PipelineRun`;
* `onnxcomp.pipeline.plugins`: third-party passes from files, modules, entry points;
* `onnxcomp.pipeline.report`: the report of a run.
"""

from onnxcomp.pipeline.manager import ManagerOptions, PassManager, PipelineRun
from onnxcomp.pipeline.pass_api import (
    NoOptions,
    Pass,
    PassContext,
    PassOptions,
    PassResult,
    Records,
)
from onnxcomp.pipeline.presets import PRESETS, pipeline_for, preset
from onnxcomp.pipeline.registry import (
    get_pass,
    instantiate,
    register_pass,
    registered_passes,
)
from onnxcomp.pipeline.report import PassRecord, Report
from onnxcomp.pipeline.steps import Pipeline, build_pipeline, until_stable

__all__ = [
    "PRESETS",
    "ManagerOptions",
    "NoOptions",
    "Pass",
    "PassContext",
    "PassManager",
    "PassOptions",
    "PassRecord",
    "PassResult",
    "Pipeline",
    "PipelineRun",
    "Records",
    "Report",
    "build_pipeline",
    "get_pass",
    "instantiate",
    "pipeline_for",
    "preset",
    "register_pass",
    "registered_passes",
    "until_stable",
]
