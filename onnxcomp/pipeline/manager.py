"""The pass manager: runs a pipeline and enforces the pass contract.

After every pass that reports ``modified``: dead-node cleanup + toposort, export,
``onnx.checker`` (full check, with shape inference), and a numeric check in onnxruntime.

* A **lossless** pass whose outputs drift beyond tolerance (or whose result fails the
  checker or cannot run) is rolled back with a warning naming the pass and the output;
  with ``strict`` it is an error instead.
* A **lossy** pass is not rolled back; its fidelity against the input model (cosine,
  errors, top-1 agreement) goes into its report row. Later lossless passes are checked
  against the last accepted model, not the input.
* Any exception inside a pass becomes a `PassError` naming the pass and the passes that
  ran before it, chained with ``from``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnx
import onnx_graphsurgeon as gs

from onnxcomp._version import __version__
from onnxcomp.checking.calibration import CalibrationData
from onnxcomp.ir.cost import GraphCost, graph_cost, model_cost
from onnxcomp.errors import InvalidModelError, OnnxcompError, PassError, UnverifiedError, VerificationError, one_line
from onnxcomp.ir.convert import ModelMeta, export_parts, fill_payloads, pending_arrays, to_graph
from onnxcomp.ir.graph import remove_dead_nodes, toposort
from onnxcomp.io.hygiene import normalize
from onnxcomp.checking.metrics import summarize
from onnxcomp.pipeline.pass_api import Pass, PassContext, PassResult, instantiate
from onnxcomp.pipeline.presets import FixedPoint, preset_steps
from onnxcomp.pipeline.report import PassRecord, Report
from onnxcomp.ir.weightless import references_files, structure_skeleton
from onnxcomp.checking.verify import Tolerance, Verifier, drift, verification_feeds
from onnxcomp.checking.verify import fidelity as verify_fidelity

log = logging.getLogger("onnxcomp")


@dataclass
class PassGroup:
    """Passes repeated until one full sweep changes nothing."""

    passes: list[Pass]
    max_iterations: int = 8


Step = "Pass | PassGroup"


def build_pipeline(preset: str | None, specs: Sequence["str | Pass | tuple"] = ()) -> list["Pass | PassGroup"]:
    """Turn ``--preset`` and ``-p`` specs into pipeline steps.

    ``-p`` alone runs exactly those passes, in order. With a preset, a ``-p`` naming a
    pass the preset contains overrides that pass's options everywhere in the preset; any
    other ``-p`` is appended after the preset.
    """
    if specs and preset is None:
        return [instantiate(s) for s in specs]
    steps = list(preset_steps(preset or "lossless"))
    overrides: dict[str, Pass] = {}
    extra: list[Pass] = []
    names_in_preset = {n for s in steps for n in (s.passes if isinstance(s, FixedPoint) else (s,))}
    for spec in specs:
        p = instantiate(spec)
        (overrides.__setitem__(p.name, p) if p.name in names_in_preset else extra.append(p))

    def make(name: str) -> Pass:
        if name in overrides:
            return overrides[name]
        return instantiate(name)

    out: list[Pass | PassGroup] = []
    for s in steps:
        if isinstance(s, FixedPoint):
            out.append(PassGroup([make(n) for n in s.passes], s.max_iterations))
        else:
            out.append(make(s))  # type: ignore[arg-type]
    return out + extra


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
    """

    strict: bool = False
    verify: Literal["each", "final", "none"] = "each"
    tolerance: Tolerance = field(default_factory=Tolerance)
    allow_unverified: bool = False
    seed: int = 0




def _fingerprint(graph: gs.Graph) -> int:
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


def _check_structure(model: "onnx.ModelProto | bytes | str", full: bool, lent: Collection[str] = ()) -> None:
    """``onnx.checker`` on a model (its weightless skeleton), serialized bytes, or a path.

    A ModelProto is checked as `structure_skeleton` of it: large weights become typed
    inputs, so the checker neither serializes nor parses gigabytes it does not look at
    (and models over 2 GB need no spill to disk). ``lent`` names initializers that are
    payload-free headers of an export in progress.
    """
    from onnxcomp.io.files import PROTO_LIMIT, save_model

    if isinstance(model, (bytes, str)):
        onnx.checker.check_model(model, full_check=full)
        return
    skeleton = structure_skeleton(model, lent)
    if skeleton.ByteSize() < PROTO_LIMIT:  # cheap here: the skeleton holds no large weights
        onnx.checker.check_model(skeleton.SerializeToString(), full_check=full)
        return
    with tempfile.TemporaryDirectory(prefix="onnxcomp-check-") as d:
        path = Path(d) / "model.onnx"
        save_model(skeleton, path, external_data=True)
        onnx.checker.check_model(str(path), full_check=full)


class PassManager:
    """Runs pipeline steps over a model with checks after every pass."""

    def __init__(
        self,
        steps: Sequence["Pass | PassGroup"],
        *,
        options: ManagerOptions | None = None,
        calibration: CalibrationData | None = None,
        train_data: CalibrationData | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.steps = list(steps)
        self.options = options or ManagerOptions()
        self.calibration = calibration
        self.train_data = train_data
        self.progress = progress

    # ------------------------------------------------------------------ public
    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, Report]:
        """Run the pipeline on ``model`` (not mutated); return the result and a report."""
        self.verifier: Verifier | None = None
        try:
            return self._run(model)
        finally:
            if self.verifier is not None:
                self.verifier.close()

    def _run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, Report]:
        t_start = time.perf_counter()
        opts = self.options
        report = Report(onnxcomp_version=__version__, seed=opts.seed)
        # A cheap structural check now; the (costly) full check of the input runs only
        # if a result fails the full check, to tell a pass's bug from a pre-existing one.
        # The checker also enforces unique names and sorted nodes, so hygiene (a clear
        # error for duplicates or cycles, a sorted copy of unsorted graphs) runs only when
        # the check fails: on a valid model its walk over every node is wasted.
        try:
            _check_structure(model, full=False)
        except Exception as e:
            model, hygiene = normalize(model)  # raises its own clear error if that was it
            report.warnings.extend(hygiene.warnings)
            if not hygiene.sorted_graphs:
                raise InvalidModelError(f"input model is not valid ONNX: {one_line(e)}") from e
            try:
                _check_structure(model, full=False)
            except Exception as e2:
                raise InvalidModelError(f"input model is not valid ONNX: {one_line(e2)}") from e2
        self._input = model
        self._full_check = True
        self._lend_weights = not references_files(model)
        self._report = report

        graph, meta = to_graph(model)
        self.meta: ModelMeta = meta
        ctx = PassContext(
            original_model=model,
            meta=meta,
            calibration=self.calibration,
            train_data=self.train_data,
            seed=opts.seed,
            progress=self.progress,
        )
        if opts.verify != "none":
            feeds = verification_feeds(model, self.calibration, seed=opts.seed)
            self.verifier = Verifier(model, feeds, tolerance=opts.tolerance)
            if self.verifier.small:
                # Most pipelines change something, and then the reference run is on the
                # critical path: start it now, beside the import and the first passes.
                # (Larger inputs start it at the first change: a wasted run costs more.)
                self.verifier.prefetch()
        self.baseline: list | None = None  # last accepted outputs; None = the input's
        self.ran: list[str] = []
        self._flops = 0
        self._last_model: onnx.ModelProto | None = None
        self._baseline_model: onnx.ModelProto | None = None
        self.check_seconds = 0.0
        self._costs: dict[int, GraphCost] = {}  # graph fingerprint -> its graph_cost
        self._settled: tuple[gs.Graph, int] | None = None  # a graph and its fingerprint after the last pass

        for step in self.steps:
            if isinstance(step, PassGroup):
                graph = self._run_group(step, graph, ctx, report)
            else:
                graph, _ = self._run_one(step, graph, ctx, report)

        # No accepted change: the result is the input itself (no re-export, nothing to run).
        result = self._last_model if self._last_model is not None else model
        report.verification = self._final_verification(result, report)
        report.seconds = time.perf_counter() - t_start
        report.check_seconds = self.check_seconds
        return result, report

    # ----------------------------------------------------------------- helpers
    def _context_msg(self) -> str:
        return f"passes before it: {', '.join(self.ran) if self.ran else '(none)'}"

    def _execute(self, p: Pass, graph: gs.Graph, ctx: PassContext) -> PassRecord:
        """Run one pass with error wrapping and the ``modified`` truthfulness check."""
        if self.progress:
            self.progress(f"running {p.name}")
        # Between passes only the manager touches the graph, and never its structure: the
        # fingerprint the previous pass left behind is still this graph's.
        settled = self._settled
        fingerprint = settled[1] if settled is not None and settled[0] is graph else _fingerprint(graph)
        # Most passes of a fixed-point sweep change nothing: reuse the last count.
        before = self._costs.get(fingerprint)
        if before is None:
            before = graph_cost(graph, flops=False)
            self._costs = {fingerprint: before}
        t0 = time.perf_counter()
        try:
            result = p.run(graph, ctx)
        except PassError:
            raise
        except OnnxcompError as e:
            e.args = (f"pass '{p.name}': {e}",)
            raise
        except Exception as e:
            raise PassError(f"pass '{p.name}' failed: {type(e).__name__}: {one_line(e)} ({self._context_msg()})") from e
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{p.name}' returned {type(result).__name__}, not PassResult ({self._context_msg()})")
        if not result.modified and _fingerprint(graph) != fingerprint:
            raise PassError(f"pass '{p.name}' reported modified=False but changed the graph ({self._context_msg()})")
        self._settled = (graph, fingerprint)
        self.ran.append(p.name)
        record = PassRecord(
            name=p.name, seconds=0.0, modified=bool(result.modified), nodes_before=before.nodes, nodes_after=before.nodes,
            params_before=before.params, params_after=before.params, bytes_before=before.bytes, bytes_after=before.bytes,
            lossless=p.lossless, stats=dict(result.stats),
        )
        if result.modified:
            if self.verifier is not None:
                self.verifier.prefetch()  # a check is coming: start the reference run now
            remove_dead_nodes(graph)
            toposort(graph)
            after = graph_cost(graph, flops=False)
            self._settled = (graph, _fingerprint(graph))
            self._costs = {self._settled[1]: after}
            record.nodes_after, record.params_after, record.bytes_after = after.nodes, after.params, after.bytes
        record.seconds = time.perf_counter() - t0
        return record

    def _check(self, graph: gs.Graph, lossless: bool) -> tuple[onnx.ModelProto | None, str | None, dict | None]:
        """Export and check the graph: ``(candidate, problem or None, fidelity summary)``.

        Lossless changes are compared with the last accepted outputs (tolerance);
        lossy ones are accepted and their fidelity against the input is returned.
        """
        opts = self.options
        t0 = time.perf_counter()
        try:
            # Large weights stay out of the checked model until it is accepted: the checker
            # sees their types and shapes, onnxruntime borrows their arrays (see skeleton).
            candidate, pending = export_parts(graph, self.meta)
            try:
                _check_structure(candidate, full=self._full_check, lent=pending)
            except Exception:
                if not self._full_check or self._input_passes_full_check():
                    raise
                _check_structure(candidate, full=False, lent=pending)
        except Exception as e:
            self.check_seconds += time.perf_counter() - t0
            return None, f"result is not valid ONNX: {one_line(e)}", None
        fidelity = None
        problem = None
        if self.verifier is not None and opts.verify == "each" and self.verifier.may_verify:
            if self._lend_weights:
                wait = self.verifier.start_evaluate(candidate, lent=pending_arrays(pending, self.verifier.cache))
                fill_payloads(candidate, pending)  # while onnxruntime works; wasted only if rejected
                outs, err = wait()
            else:  # weights on disk: onnxruntime maps them from a file (see skeleton.references_files)
                fill_payloads(candidate, pending)
                outs, err = self.verifier.evaluate(candidate)
            # The candidate may have started before the reference run was known to work
            # (the two overlap); if the input itself cannot run there is nothing to compare.
            if self.verifier.can_verify:
                problem, fidelity = self._compare(candidate, outs, err, lossless)
        else:
            fill_payloads(candidate, pending)
        self.check_seconds += time.perf_counter() - t0
        if problem is not None:
            return None, problem, None
        return candidate, None, fidelity

    def _compare(self, candidate: onnx.ModelProto, outs: list, err: str | None, lossless: bool) -> tuple[str | None, dict | None]:
        """``(problem or None, fidelity summary)`` of a candidate's outputs (or its run error)."""
        if err:
            return err, None
        assert self.verifier is not None
        baseline = self.baseline if self.baseline is not None else self.verifier.reference_outputs
        bad = drift(baseline, outs, self.options.tolerance) if lossless else None
        if bad:
            return bad[1], None
        self.baseline = outs
        self._baseline_model = candidate
        return None, summarize(verify_fidelity(self.verifier.reference_outputs, outs))

    def _input_passes_full_check(self) -> bool:
        """Full-check the input once; if it fails, fall back to structural checks for good."""
        try:
            _check_structure(self._input, full=True)
            return True
        except Exception as e:
            self._full_check = False
            msg = f"input model fails onnx's full check ({one_line(e)}); checking structure only"
            log.warning(msg)
            self._report.warnings.append(msg)
            return False

    def _run_group(self, group: PassGroup, graph: gs.Graph, ctx: PassContext, report: Report) -> gs.Graph:
        """A fixed-point group, checked once when it has converged.

        Checking the group's result instead of every pass keeps the cleanup preset about
        as cheap as one check. If that check fails, the group is replayed from its start
        with a check after every pass, so the culprit is rolled back and named exactly as
        if it had been checked on its own (passes are deterministic, so the replay
        reproduces the failure). Lossy passes in a group are checked individually.
        """
        if not all(p.lossless for p in group.passes):
            return self._run_group_checking_each(group, graph, ctx, report)
        first_record, ran_before = len(report.passes), list(self.ran)
        any_change = False
        for _ in range(group.max_iterations):
            changed = False
            for p in group.passes:
                record = self._execute(p, graph, ctx)
                report.passes.append(record)
                if record.modified:
                    changed = any_change = True
                    ctx.invalidate_analyses()
            if not changed:
                break
        if not any_change:
            return graph
        candidate, problem, _ = self._check(graph, lossless=True)
        if problem is None:
            self._last_model = candidate
            return graph
        del report.passes[first_record:]
        self.ran = ran_before
        ctx.invalidate_analyses()
        # Replay from the last accepted model: the graph as it was when the group started
        # (re-importing it only on this rare path is cheaper than copying every time).
        start, _ = to_graph(self._last_model if self._last_model is not None else self._input)
        return self._run_group_checking_each(group, start, ctx, report)

    def _run_group_checking_each(self, group: PassGroup, graph: gs.Graph, ctx: PassContext, report: Report) -> gs.Graph:
        """A fixed-point group with a check (and possible rollback) after every pass."""
        for _ in range(group.max_iterations):
            changed = False
            for p in group.passes:
                graph, modified = self._run_one(p, graph, ctx, report)
                changed |= modified
            if not changed:
                break
        return graph

    def _run_one(self, p: Pass, graph: gs.Graph, ctx: PassContext, report: Report) -> tuple[gs.Graph, bool]:
        """Run one pass and check it on its own (rolling back a failing lossless pass)."""
        opts = self.options
        snapshot = graph.copy()
        record = self._execute(p, graph, ctx)
        report.passes.append(record)
        if not record.modified:
            return graph, False
        ctx.invalidate_analyses()
        candidate, problem, fidelity = self._check(graph, lossless=p.lossless)
        if problem is not None:
            where = f"pass '{p.name}' {problem} ({self._context_msg()})"
            if not p.lossless or opts.strict:
                raise PassError(where)
            log.warning("rolled back %s", where)
            report.warnings.append(f"rolled back {where}")
            record.rolled_back, record.modified, record.note = True, False, problem[:80]
            record.nodes_after, record.params_after, record.bytes_after = record.nodes_before, record.params_before, record.bytes_before
            return snapshot, False
        if not p.lossless:
            record.fidelity = fidelity
            if candidate is not None:
                record.flops_before = self._flops or model_cost(self._last_model or ctx.original_model).flops
                record.flops_after = self._flops = model_cost(candidate).flops
        self._last_model = candidate
        return graph, True

    def _final_verification(self, result: onnx.ModelProto, report: Report) -> dict:
        opts = self.options
        if self.verifier is None:
            if not opts.allow_unverified:
                raise UnverifiedError("verification was disabled (--verify none); pass --allow-unverified to write an unverified model")
            return {"verified": False, "reason": "verification disabled"}
        if result is self._input:
            names = [o.name for o in result.graph.output]
            exact = {"cosine": 1.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0}
            return {"verified": True, "identical_to_input": True, **exact, "outputs": {n: dict(exact) for n in names}, "within_tolerance": True}
        if not self.verifier.can_verify:
            if not opts.allow_unverified:
                raise UnverifiedError(f"could not verify the result: {self.verifier.unverifiable}; pass --allow-unverified to write it anyway")
            report.warnings.append(f"not verified: {self.verifier.unverifiable}")
            return {"verified": False, "reason": self.verifier.unverifiable}
        if result is self._baseline_model:
            outs, err = self.baseline, None  # already evaluated when it was accepted
        else:
            outs, err = self.verifier.evaluate(result)
        if err:
            raise VerificationError(f"final model: {err} ({self._context_msg()})")
        per = verify_fidelity(self.verifier.reference_outputs, outs)
        out = {"verified": True, **summarize(per), "outputs": {k: v.to_dict() for k, v in per.items()}}
        if all(r.lossless for r in report.passes if r.modified):
            bad = drift(self.verifier.reference_outputs, outs, opts.tolerance)
            out["within_tolerance"] = bad is None
            if bad is not None:
                raise VerificationError(f"lossless pipeline {bad[1]} ({self._context_msg()})")
        return out
