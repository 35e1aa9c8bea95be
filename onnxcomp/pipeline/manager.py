"""The pass manager: runs a pipeline over a model and enforces the pass contract.

The data path of one run (`PassManager.run`)::

    input ModelProto --(structure check; hygiene only if it fails)--> to_graph
      -> for each step: pass.run(graph, ctx) -> cleanup + sort
                        -> Candidate.export(graph) -> Checker.check -> accept / roll back
      -> Checker.final(result) -> (result ModelProto, Report)

Verification data (`onnxcomp.checking.select_verification_data`): a lossy pipeline's passes
see only the *fit* part of the calibration data, and the checker verifies on the held-out
rest (or on ``eval_data``), so the fidelity reported is measured on data no pass fitted.

After every pass that reports ``modified``: dead-node cleanup + toposort, export as a
`Candidate`, and the `Checker` (``onnx.checker`` full check, numeric check in onnxruntime).

* A **lossless** pass whose outputs drift beyond tolerance (or whose result fails the
  checker or cannot run) is rolled back with a warning naming the pass and the output;
  with ``strict`` it is an error instead.
* A **lossy** pass is not rolled back; its fidelity against the input model goes into its
  report row. Later lossless passes are checked against the last accepted model.
* A lossless ``until_stable`` pipeline (the cleanup group) is checked once, when it has
  converged; if that check fails it is replayed with a check after every pass, so the
  culprit is still found and named.
* Any exception inside a pass becomes a `PassError` naming the pass and the passes that
  ran before it, chained with ``from``.

The manager holds only configuration; everything one run learns lives in a `PipelineRun`,
so one manager may run several models at once (e.g. in threads).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import onnx
import onnx_graphsurgeon as gs

from onnxcomp._version import __version__
from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.checking.checker import Checker, Verdict, check_structure
from onnxcomp.checking.metrics import FIDELITY_FLOOR, ChannelSplit
from onnxcomp.checking.verify import Tolerance
from onnxcomp.checking.verify_data import select_verification_data
from onnxcomp.errors import InvalidModelError, OnnxcompError, PassError, one_line
from onnxcomp.io.hygiene import normalize
from onnxcomp.ir.candidate import Candidate
from onnxcomp.ir.convert import to_graph
from onnxcomp.ir.cost import GraphCost, graph_cost, model_cost
from onnxcomp.ir.graph import remove_dead_nodes, toposort
from onnxcomp.pipeline.pass_api import Pass, PassContext, PassResult
from onnxcomp.pipeline.report import PassRecord, Report
from onnxcomp.pipeline.steps import Pipeline, Step

log = logging.getLogger("onnxcomp")


@dataclass
class ManagerOptions:
    """How the manager checks passes.

    Attributes:
        strict: Fail (instead of rolling back) when a lossless pass changes outputs.
        verify: ``each`` (after every modifying pass), ``final`` (once, at the end) or
            ``none`` (structure checks only; the result is reported as unverified).
        tolerance: Allowed numeric drift for lossless passes.
        allow_unverified: Accept a result whose numerics could not be checked (e.g. the
            model has custom ops with no onnxruntime kernel).
        seed: Seed for the context RNG and generated inputs.
        channels: Channel splits per output name for fidelity (``--channels``).
        floor: A lossy result whose worst cosine is below this is reported ``degraded``.
        min_cosine: A result whose worst cosine is below this fails (nothing written).
    """

    strict: bool = False
    verify: Literal["each", "final", "none"] = "each"
    tolerance: Tolerance = field(default_factory=Tolerance)
    allow_unverified: bool = False
    seed: int = 0
    channels: dict[str, ChannelSplit] = field(default_factory=dict)
    floor: float = FIDELITY_FLOOR
    min_cosine: float | None = None


def fingerprint(graph: gs.Graph) -> int:
    """Cheap structural identity of a graph (linear): ops, attributes' identity, wiring.

    Used to catch a pass that reports ``modified=False`` yet changed the graph, which
    would otherwise skip verification. Constants count by identity and shape, not by
    payload: merely *reading* a lazily loaded weight must not look like a change, and
    hashing gigabytes of weights per pass would not be cheap.
    """
    # Order-insensitive (a sum of node hashes): re-sorting nodes is not a change.
    h = hash((len(graph.nodes), tuple(map(id, graph.inputs)), tuple(map(id, graph.outputs))))
    constant = gs.Constant
    for n in graph.nodes:
        ins, attrs = n.inputs, n.attrs
        shapes = tuple([tuple(t.shape) for t in ins if type(t) is constant])
        h += hash((n.op, n.domain, tuple(map(id, ins)), tuple(map(id, n.outputs)), tuple(attrs), tuple(map(id, attrs.values())), shapes))
    return h & 0xFFFFFFFFFFFFFFFF


class PassManager:
    """Runs a pipeline over models, with checks after every pass (see the module docstring).

    Args:
        pipeline: The steps (a `Pipeline`, or a sequence of passes and pipelines).
        options: How passes are checked.
        calibration: Calibration data for passes and verification. A lossy pipeline fits
            its passes on part of it and is verified on the rest (see
            `onnxcomp.checking.select_verification_data`).
        train_data: Training data for recovery passes.
        eval_data: Data to verify on instead (no pass sees it).
        progress: Receives a status line as each pass starts.
    """

    def __init__(
        self,
        pipeline: "Pipeline | list[Step] | tuple[Step, ...]",
        *,
        options: ManagerOptions | None = None,
        calibration: CalibrationData | None = None,
        train_data: CalibrationData | None = None,
        eval_data: CalibrationData | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(tuple(pipeline))
        self.options = options or ManagerOptions()
        self.calibration = calibration
        self.train_data = train_data
        self.eval_data = eval_data
        self.progress = progress

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, Report]:
        """Run the pipeline on ``model`` (not mutated); return the result and a report."""
        return PipelineRun(self, model).run()


class PipelineRun:
    """One run of a `PassManager`'s pipeline over one model: all per-run state."""

    def __init__(self, manager: PassManager, model: onnx.ModelProto) -> None:
        self.manager = manager
        self.options = manager.options
        self.report = Report(onnxcomp_version=__version__, seed=self.options.seed)
        self.input = self._valid_input(model)
        self.ran: list[str] = []  # names of the passes run so far, for error messages
        self.last_model: onnx.ModelProto | None = None  # last accepted result; None = the input
        self.check_seconds = 0.0
        self._flops = 0  # FLOPs of the last lossy result (0: not computed yet)
        self._costs: dict[int, GraphCost] = {}  # graph fingerprint -> its graph_cost
        self._settled: tuple[gs.Graph, int] | None = None  # a graph and its fingerprint after the last pass

    def _valid_input(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model``, or its sorted copy; a clear error if it is not valid ONNX.

        A cheap structural check now; the (costly) full check of the input runs only if a
        result fails the full check, to tell a pass's bug from a pre-existing one. The
        checker also enforces unique names and sorted nodes, so hygiene (a clear error for
        duplicates or cycles, a sorted copy of unsorted graphs) runs only when the check
        fails: on a valid model its walk over every node is wasted.
        """
        try:
            check_structure(model, full=False)
            return model
        except Exception as e:
            model, hygiene = normalize(model)  # raises its own clear error if that was it
            self.report.warnings.extend(hygiene.warnings)
            if not hygiene.sorted_graphs:
                raise InvalidModelError(f"input model is not valid ONNX: {one_line(e)}") from e
        try:
            check_structure(model, full=False)
        except Exception as e2:
            raise InvalidModelError(f"input model is not valid ONNX: {one_line(e2)}") from e2
        return model

    def run(self) -> tuple[onnx.ModelProto, Report]:
        """Import, run every step, verify the result."""
        t_start = time.perf_counter()
        opts, manager = self.options, self.manager
        graph, self.meta = to_graph(self.input)
        data = None
        fit = manager.calibration
        if opts.verify != "none":
            data = select_verification_data(
                self.input, manager.calibration, eval_data=manager.eval_data, lossy=not manager.pipeline.lossless,
                seed=opts.seed, warn=self.report.warnings.append,
            )
            fit = data.fit
        self.ctx = PassContext(
            original_model=self.input,
            meta=self.meta,
            calibration=fit,
            # The same data given for training: training must not see the held-out part either.
            train_data=fit if manager.train_data is manager.calibration else manager.train_data,
            seed=opts.seed,
            progress=manager.progress,
        )
        self.checker = Checker(
            self.input, verify=opts.verify, tolerance=opts.tolerance, data=data, warn=self.report.warnings.append,
            channels=opts.channels, floor=opts.floor, min_cosine=opts.min_cosine,
        )
        try:
            self._run_checked(manager.pipeline, graph)
            # No accepted change: the result is the input itself (no re-export, nothing to run).
            result = self.last_model if self.last_model is not None else self.input
            lossless = all(r.lossless for r in self.report.passes if r.modified)
            t_final = time.perf_counter()
            self.report.verification = self.checker.final(result, allow_unverified=opts.allow_unverified, lossless=lossless, context=self._context())
            self.check_seconds += time.perf_counter() - t_final
        finally:
            self.checker.close()
        self.report.seconds = time.perf_counter() - t_start
        self.report.check_seconds = self.check_seconds
        return result, self.report

    # ----------------------------------------------------------------- steps
    def _run_checked(self, step: Step, graph: gs.Graph, replay: bool = False) -> tuple[gs.Graph, bool]:
        """Run a step with checks; return the (possibly rolled back) graph and whether it changed.

        A lossless ``until_stable`` pipeline is checked once, when converged (unless it is
        being replayed after that check failed); anything else is checked pass by pass.
        """
        if isinstance(step, Pass):
            return self._run_one(step, graph)
        assert isinstance(step, Pipeline)
        if step.until_stable and step.lossless and not replay:
            return self._run_group_checked_once(step, graph)
        changed_any = False
        for _ in range(step.sweeps):
            changed = False
            for s in step.steps:
                graph, modified = self._run_checked(s, graph, replay)
                changed |= modified
            changed_any |= changed
            if not changed:
                break
        return graph, changed_any

    def _run_unchecked(self, step: Step, graph: gs.Graph) -> bool:
        """Run a step without checks (inside a group checked once); whether it changed."""
        if isinstance(step, Pass):
            record = self._execute(step, graph)
            self.report.passes.append(record)
            if record.modified:
                self.ctx.invalidate_analyses()
            return record.modified
        assert isinstance(step, Pipeline)
        changed_any = False
        for _ in range(step.sweeps):
            changed = False
            for s in step.steps:
                changed |= self._run_unchecked(s, graph)
            changed_any |= changed
            if not changed:
                break
        return changed_any

    def _run_group_checked_once(self, group: Pipeline, graph: gs.Graph) -> tuple[gs.Graph, bool]:
        """A lossless group, checked once when it has converged.

        Checking the group's result instead of every pass keeps the cleanup preset about as
        cheap as one check. If that check fails, the group is replayed from its start with a
        check after every pass, so the culprit is rolled back and named exactly as if it had
        been checked on its own (passes are deterministic, so the replay reproduces the
        failure).
        """
        first_record, ran_before = len(self.report.passes), list(self.ran)
        if not self._run_unchecked(group, graph):
            return graph, False
        verdict = self._check(graph, lossless=True)
        if verdict.problem is None:
            self.last_model = verdict.model
            return graph, True
        del self.report.passes[first_record:]
        self.ran = ran_before
        self.ctx.invalidate_analyses()
        # Replay from the last accepted model: the graph as it was when the group started
        # (re-importing it only on this rare path is cheaper than copying every time).
        start, _ = to_graph(self.last_model if self.last_model is not None else self.input)
        return self._run_checked(group, start, replay=True)

    def _run_one(self, p: Pass, graph: gs.Graph) -> tuple[gs.Graph, bool]:
        """Run one pass and check it on its own (rolling back a failing lossless pass)."""
        snapshot = graph.copy()
        record = self._execute(p, graph)
        self.report.passes.append(record)
        if not record.modified:
            return graph, False
        self.ctx.invalidate_analyses()
        verdict = self._check(graph, lossless=p.lossless)
        if verdict.problem is not None:
            where = f"pass '{p.name}' {verdict.problem} ({self._context()})"
            if not p.lossless or self.options.strict:
                raise PassError(where)
            log.warning("rolled back %s", where)
            self.report.warnings.append(f"rolled back {where}")
            record.rolled_back, record.modified, record.note = True, False, verdict.problem[:80]
            record.nodes_after, record.params_after, record.bytes_after = record.nodes_before, record.params_before, record.bytes_before
            return snapshot, False
        if not p.lossless:
            record.fidelity = verdict.fidelity
            if verdict.model is not None:
                # FLOPs need shapes: inferred on the models (without weights), counted on
                # the graphs in hand (the snapshot is the graph of the last accepted model).
                record.flops_before = self._flops or model_cost(self.last_model or self.input, snapshot).flops
                record.flops_after = self._flops = model_cost(verdict.model, graph).flops
        self.last_model = verdict.model
        return graph, True

    # ---------------------------------------------------------------- helpers
    def _context(self) -> str:
        return f"passes before it: {', '.join(self.ran) if self.ran else '(none)'}"

    def _check(self, graph: gs.Graph, lossless: bool) -> Verdict:
        """Export the graph as a `Candidate` and have the checker judge it."""
        t0 = time.perf_counter()
        try:
            try:
                # Large weights stay out of the checked model until it is accepted.
                candidate = Candidate.export(graph, self.meta)
            except Exception as e:
                return Verdict.rejected(f"result is not valid ONNX: {one_line(e)}")
            return self.checker.check(candidate, lossless)
        finally:
            self.check_seconds += time.perf_counter() - t0

    def _execute(self, p: Pass, graph: gs.Graph) -> PassRecord:
        """Run one pass with error wrapping and the ``modified`` truthfulness check."""
        ctx = self.ctx
        if self.manager.progress:
            self.manager.progress(f"running {p.name}")
        # Between passes only the manager touches the graph, and never its structure: the
        # fingerprint the previous pass left behind is still this graph's.
        settled = self._settled
        known = settled[1] if settled is not None and settled[0] is graph else fingerprint(graph)
        # Most passes of a fixed-point sweep change nothing: reuse the last count.
        before = self._costs.get(known)
        if before is None:
            before = graph_cost(graph, flops=False)
            self._costs = {known: before}
        if not p.lossless:
            self.checker.expect_lossy_pass()
        t0 = time.perf_counter()
        try:
            result = p.run(graph, ctx)
        except PassError:
            raise
        except OnnxcompError as e:
            e.args = (f"pass '{p.name}': {e}",)
            raise
        except Exception as e:
            raise PassError(f"pass '{p.name}' failed: {type(e).__name__}: {one_line(e)} ({self._context()})") from e
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{p.name}' returned {type(result).__name__}, not PassResult ({self._context()})")
        if not result.modified and fingerprint(graph) != known:
            raise PassError(f"pass '{p.name}' reported modified=False but changed the graph ({self._context()})")
        self._settled = (graph, known)
        self.ran.append(p.name)
        record = PassRecord(
            name=p.name, seconds=0.0, modified=bool(result.modified), nodes_before=before.nodes, nodes_after=before.nodes,
            params_before=before.params, params_after=before.params, bytes_before=before.bytes, bytes_after=before.bytes,
            lossless=p.lossless, stats=dict(result.stats),
        )
        if result.modified:
            self.checker.expect_check()  # a check is coming: start the reference run now
            remove_dead_nodes(graph)
            toposort(graph)
            after = graph_cost(graph, flops=False)
            self._settled = (graph, fingerprint(graph))
            self._costs = {self._settled[1]: after}
            record.nodes_after, record.params_after, record.bytes_after = after.nodes, after.params, after.bytes
        record.seconds = time.perf_counter() - t0
        return record
