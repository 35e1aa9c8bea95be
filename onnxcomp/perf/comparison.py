"""``compare``: fidelity of a candidate against a reference, side by side with their speed."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxcomp.checking.calibration import CalibrationData, required_input_specs
from onnxcomp.checking.metrics import ChannelSplit, FidelityAccumulator, OutputFidelity, summarize
from onnxcomp.checking.runtime import open_session, parse_ep, providers_for
from onnxcomp.errors import CalibrationDataError, InvalidModelError, UsageError, one_line
from onnxcomp.io.files import load_model
from onnxcomp.perf.benchmark import BenchResult, bench
from onnxcomp.perf.feeds import feed_shapes, make_feeds, parse_shape_specs
from onnxcomp.perf.render import default_console, elide_middle, fit_table, table
from onnxcomp.perf.timing import ProgressFn


@dataclass
class CompareResult:
    """Fidelity of a candidate against a reference, side by side with their speed."""

    reference: str
    candidate: str
    outputs: dict[str, OutputFidelity]
    overall: dict[str, Any]
    samples: int
    data: str
    labelled: bool
    bench: BenchResult | None

    @property
    def speedup(self) -> float | None:
        """Reference p50 ÷ candidate p50 (> 1: the candidate is faster)."""
        return self.bench.models[1].ratio_to_first if self.bench else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``compare --json`` document)."""
        d: dict[str, Any] = {
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "samples": self.samples,
            "labelled": self.labelled,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "overall": self.overall,
            "speedup": self.speedup,
        }
        if self.bench is not None:
            ref, cand = self.bench.models
            d.update({
                "ep": self.bench.ep, "providers": self.bench.providers, "threads": self.bench.threads,
                "rounds": self.bench.rounds,
                "latency_ms": {"reference": ref.latency.to_dict(), "candidate": cand.latency.to_dict()},
                "paired_speedup": cand.paired_ratio_to_first,
                "size_bytes": {"reference": ref.size_bytes, "candidate": cand.size_bytes},
                "warnings": cand.warnings,
                "node_placement": {"reference": ref.node_placement, "candidate": cand.node_placement},
            })
        return d

    def render(self, console: Any | None = None) -> None:
        """A rich table of per-output fidelity and the latency line."""
        console = console or default_console()
        title = f"{Path(self.candidate).name} vs {Path(self.reference).name} on {self.samples} samples ({self.data})"

        def build(width: int) -> Any:
            t = table(title, console)
            for col in ("output", "cosine", "max |diff|", "mean |diff|", "SNR dB", "top-1", "accuracy"):
                t.add_column(col, justify="left" if col == "output" else "right", no_wrap=col != "output")
            for name, f in self.outputs.items():
                acc = (f"{f.accuracy_reference:.4f}→{f.accuracy_candidate:.4f}"
                       if f.accuracy_candidate is not None and f.accuracy_reference is not None else "–")
                t.add_row(elide_middle(name, width), f"{f.cosine:.6f}", f"{f.max_abs_diff:.3g}", f"{f.mean_abs_diff:.3g}",
                          f"{f.snr_db:.1f}", f"{f.top1_agreement:.4f}" if f.top1_agreement is not None else "–", acc)
            return t

        t = fit_table(build, console, max((len(n) for n in self.outputs), default=1))
        console.print(t)
        worst = self.overall.get("worst") or {}
        if worst.get("where") and worst["where"] != worst.get("output"):
            console.print(f"worst: {worst['where']}, cosine {worst['cosine']:.6f} (whole output: {self.outputs[worst['output']].output_cosine:.6f})")
        if self.bench is not None:
            ref, cand = self.bench.models
            console.print(f"latency p50 {ref.latency.p50:.3f} ms → {cand.latency.p50:.3f} ms: speedup ×{self.speedup:.3f} "
                          f"({self.bench.providers[0]}, threads={self.bench.threads or 'default'}, {self.bench.rounds} "
                          f"interleaved rounds, inputs {cand.input_shapes})")
            for w in cand.warnings:
                console.print(f"[yellow]warning[/]: {w}")


def align_outputs(ref_names: list[str], cand_names: list[str]) -> dict[str, str]:
    """Candidate output name per reference output: same name, else same position."""
    if set(ref_names) <= set(cand_names):
        return {n: n for n in ref_names}
    if len(ref_names) == len(cand_names):
        return dict(zip(ref_names, cand_names))
    raise UsageError(f"outputs differ: reference {ref_names}, candidate {cand_names}")


def fidelity_on(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    providers: Sequence[str],
    device_id: int = 0,
    threads: int | None = None,
    data: str | os.PathLike[str] | None = None,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_samples: int = 512,
    seed: int = 0,
    channels: Mapping[str, ChannelSplit] | None = None,
) -> tuple[dict[str, OutputFidelity], int, bool]:
    """Stream batches through both models (one session each) and accumulate fidelity
    (per output and per channel; ``channels`` overrides an output's channel split).

    Returns:
        ``(per-output fidelity, samples seen, whether labels were present)``.

    Raises:
        InvalidModelError: A model cannot be loaded or run on the inputs.
        UsageError: The outputs cannot be paired up.
        CalibrationDataError: ``data`` is unusable or yields no complete batch.
    """
    # Both files pass load_model's checks (clear errors, safe external data) before onnxruntime opens them.
    ref_model = load_model(reference, load_external_data=False)
    cand_model = load_model(candidate, load_external_data=False)
    rs = open_session(str(reference), providers, threads=threads, spinning=False, device_id=device_id)
    cs = open_session(str(candidate), providers, threads=threads, spinning=False, device_id=device_id)
    ref_names = [o.name for o in rs.get_outputs()]
    mapping = align_outputs(ref_names, [o.name for o in cs.get_outputs()])
    unknown = sorted(set(channels or {}) - set(ref_names))
    if unknown:
        raise UsageError(f"--channels: the reference has no output {unknown[0]!r} (outputs: {', '.join(ref_names)})")
    if data is not None:
        calib = CalibrationData.from_source(data, ref_model, batch_size=batch, role="eval")
        batches: Any = calib.iter_with_labels(max_samples=max_samples)
    else:
        # Two batches of 8 (where the batch dim is symbolic): enough samples for top-1 agreement
        # to mean something, cheap enough for a CI job.
        symbolic = any(s.shape and s.fixed_batch is None for s in required_input_specs(ref_model))
        fb = batch or (8 if symbolic else None)
        batches = [(make_feeds(ref_model, batch=fb, shapes=shapes, seed=seed + i), None) for i in range(2)]
    accs: dict[str, FidelityAccumulator] = {}
    samples, labelled = 0, False
    cand_inputs = {i.name for i in cs.get_inputs()}
    for feeds, labels in batches:
        try:
            ro = rs.run(ref_names, feeds)
            co = dict(zip([o.name for o in cs.get_outputs()], cs.run(None, {k: v for k, v in feeds.items() if k in cand_inputs})))
        except Exception as e:
            raise InvalidModelError(f"onnxruntime cannot run the models on inputs {feed_shapes(feeds)}: {one_line(e, 300)}") from None
        labelled = labelled or labels is not None
        for name, r in zip(ref_names, ro):
            r, c = np.asarray(r), np.asarray(co[mapping[name]])
            if r.shape == c.shape and r.dtype.kind in "fiub" and r.size:
                if name not in accs:
                    accs[name] = FidelityAccumulator((channels or {}).get(name), name)
                accs[name].add(r, c, labels)
        samples += int(next(iter(feeds.values())).shape[0]) if feeds else 1
    if samples == 0:
        raise CalibrationDataError(f"{data} yielded no complete batch for the reference model")
    del cand_model
    return {k: a.result() for k, a in accs.items()}, samples, labelled


def compare(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    ep: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    shapes: Sequence[str] | Mapping[str, Sequence[int]] | None = None,
    max_samples: int = 512,
    speed: bool = True,
    rounds: int | None = None,
    duration_s: float = 5.0,
    warmup: int = 10,
    progress: ProgressFn | None = None,
    seed: int = 0,
    channels: Mapping[str, ChannelSplit] | None = None,
) -> CompareResult:
    """Fidelity of ``candidate`` against ``reference`` plus their latency ratio.

    Fidelity (cosine per output and per channel — the worst is the output's ``cosine`` —,
    max/mean |diff|, SNR, top-1 agreement for class-score outputs, accuracy when ``data``
    has a ``label`` array; see `onnxcomp.checking.metrics`) is computed on up to
    ``max_samples`` samples of ``data`` — or on two generated batches — with both models
    running on ``ep``. Speed is `bench` of the pair, interleaved, on the first batch.

    Returns:
        A `CompareResult`; ``to_dict()`` is the ``compare --json`` document.
    """
    ep_name, device_id = parse_ep(ep)
    providers = providers_for(ep_name)
    shape_map = parse_shape_specs(shapes)
    outputs, n, labelled = fidelity_on(reference, candidate, providers=providers, device_id=device_id, threads=threads,
                                       data=data, batch=batch, shapes=shape_map, max_samples=max_samples, seed=seed,
                                       channels=channels)
    result = None
    if speed:
        result = bench([reference, candidate], ep=ep, threads=threads, batch=batch, shapes=shape_map, data=data,
                       warmup=warmup, rounds=rounds, duration_s=duration_s, progress=progress, seed=seed)
    return CompareResult(reference=str(reference), candidate=str(candidate), outputs=outputs, overall=summarize(outputs),
                         samples=n, data=str(data) if data is not None else "generated", labelled=labelled, bench=result)
