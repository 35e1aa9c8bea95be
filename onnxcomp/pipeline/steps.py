"""Pipelines: ordered steps, where a step is a pass or a nested pipeline.

A pipeline with ``until_stable`` repeats its steps until one full sweep changes nothing
(the lossless cleanup group is one). Presets are pipelines of pass *names*;
`build_pipeline` turns a preset and ``-p`` specs into a pipeline of pass *instances*.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

from onnxcomp.pipeline.pass_api import Pass
from onnxcomp.pipeline.registry import instantiate

#: A step of a pipeline: a pass (a name in presets, an instance once built) or a pipeline.
Step = Union[str, Pass, "Pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """Steps run in order; with ``until_stable``, repeated until a sweep changes nothing.

    Attributes:
        steps: Passes (names or instances) and nested pipelines.
        until_stable: Repeat the steps until no pass reports a change.
        max_iterations: At most this many sweeps when ``until_stable``.
    """

    steps: tuple[Step, ...]
    until_stable: bool = False
    max_iterations: int = 8

    @property
    def sweeps(self) -> int:
        """How many sweeps may run (one unless ``until_stable``)."""
        return self.max_iterations if self.until_stable else 1

    def passes(self) -> Iterator[Step]:
        """Every pass of the pipeline, nested pipelines included, in order."""
        for step in self.steps:
            if isinstance(step, Pipeline):
                yield from step.passes()
            else:
                yield step

    @property
    def lossless(self) -> bool:
        """Whether every pass is lossless (instances only; names are not resolved)."""
        return all(isinstance(p, Pass) and p.lossless for p in self.passes())

    def outline(self) -> list[Any]:
        """The step names as JSON: a nested list for each nested pipeline."""
        return [step.outline() if isinstance(step, Pipeline) else (step if isinstance(step, str) else step.name) for step in self.steps]


def until_stable(*steps: Step, max_iterations: int = 8) -> Pipeline:
    """A pipeline repeated until a full sweep changes nothing."""
    return Pipeline(tuple(steps), until_stable=True, max_iterations=max_iterations)


def build_pipeline(preset: Pipeline | None, specs: Sequence["str | Pass | tuple[str, dict[str, Any]]"] = ()) -> Pipeline:
    """Turn a preset and ``-p`` specs into a pipeline of pass instances.

    Without a preset, the specs alone are the pipeline, in order. With one, a spec naming
    a pass the preset contains overrides that pass's options everywhere in the preset;
    any other spec is appended after the preset.
    """
    if preset is None:
        return Pipeline(tuple(instantiate(s) for s in specs))
    names_in_preset = {p if isinstance(p, str) else p.name for p in preset.passes()}
    overrides: dict[str, Pass] = {}
    extra: list[Pass] = []
    for spec in specs:
        p = instantiate(spec)
        if p.name in names_in_preset:
            overrides[p.name] = p
        else:
            extra.append(p)

    def build(step: Step) -> Step:
        if isinstance(step, Pipeline):
            return Pipeline(tuple(build(s) for s in step.steps), step.until_stable, step.max_iterations)
        if isinstance(step, Pass):
            return step
        return overrides[step] if step in overrides else instantiate(step)

    return Pipeline(tuple(build(s) for s in preset.steps) + tuple(extra))
