"""``onnxcomp bench``, ``onnxcomp compare`` and ``onnxcomp gate`` (registered on the group by `onnxcomp.cli.main`).

Exit codes: 0 success / gate pass, 1 gate regression, 2 bad input or usage (one line on
stderr, no traceback). ``bench`` with several models: a model that cannot be loaded or run
is a row saying why, the others are still timed, the table and ``--json`` are still written,
and the exit code is 1; 2 when no model could be timed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from onnxcomp.cli.common import State, handle_errors, progress_bar
from onnxcomp.errors import UsageError
from onnxcomp.io.outputs import check_output_paths, write_text_atomic

_EP_HELP = "Execution provider: cpu, cuda, tensorrt, openvino, … (cuda:1 picks a device)."


def _input_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by the three commands: EP, threads, inputs."""
    opts = [
        click.option("--ep", default="cpu", show_default=True, help=_EP_HELP),
        click.option("--batch", type=int, help="Size of a free batch dim (symbolic, unnamed or -1) of generated inputs (default 1)."),
        click.option("--shape", "shapes", multiple=True, metavar="NAME=DxDx…",
                     help="Shape of an input with dynamic dims, e.g. input=1x3x224x224 (repeatable)."),
        click.option("--data", type=str, metavar="PATH",
                     help=".npz (keys = input names, samples on each input's batch axis; optional 'label') or a folder of them."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for generated inputs."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _check_data(data: str | None) -> None:
    """A missing ``--data`` is a usage error before any model is loaded."""
    if data is not None and not Path(data).exists():
        raise UsageError(f"--data {data} not found (expected an .npz file or a folder of them)")


def _check_models(paths: tuple[Path, ...] | list[Path], outputs: tuple[tuple[str, Path | None], ...] = ()) -> None:
    """A missing model, or an output that cannot be written, is a usage error before anything is loaded."""
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p} not found")
    check_output_paths(outputs, protect=paths)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON (non-finite numbers as null), atomically; ``-`` prints it."""
    from onnxcomp.pipeline.report import json_default, json_safe

    text = json.dumps(json_safe(doc), indent=2, default=json_default, allow_nan=False)
    if str(path) == "-":
        click.echo(text)
        return
    write_text_atomic(path, text + "\n")


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_input_options
@click.option("--threads", type=int, help="Intra-op threads per session (default: onnxruntime's choice).")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per model first.")
@click.option("--rounds", type=int, help="Exact number of timed rounds (default: run for --duration).")
@click.option("--duration", type=float, default=5.0, show_default=True, help="Seconds of timed rounds when --rounds is not given.")
@click.option("--placement/--no-placement", default=None,
              help="Report which EP ran each op type (onnxruntime profiling). Default: on for non-CPU EPs.")
@click.option("--decode", type=int, metavar="N",
              help="Causal LMs with a KV cache: prefill latency and decode tokens/s over N greedy tokens "
                   "(prompt: --shape of the token input, default 1x32).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON here ('-' = stdout).")
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Append a Markdown table here (e.g. \"$GITHUB_STEP_SUMMARY\").")
@handle_errors
def bench(models: tuple[Path, ...], ep: str, batch: int | None, shapes: tuple[str, ...], data: str | None, seed: int,
          threads: int | None, warmup: int, rounds: int | None, duration: float, placement: bool | None,
          decode: int | None, json_out: Path | None, md_out: Path | None) -> None:
    """Time MODELS interleaved (A B, B A, …) on one EP: p50/p90/p99/mean, ratio to the first.

    A model that cannot be loaded or run is a row saying why; the others are still timed
    and the exit code is 1 (2 when none could be timed). With --decode N every model must
    have a KV cache (else exit 2); each round is one whole generation per model.
    """
    from onnxcomp.perf.benchmark import bench as run_bench

    _check_models(models, (("--json", json_out), ("--markdown", md_out)))
    _check_data(data)
    if warmup < 0 or duration <= 0:
        raise UsageError("--warmup must be >= 0 and --duration > 0")
    with progress_bar("bench") as progress:
        result = run_bench(list(models), ep=ep, threads=threads, batch=batch, shapes=shapes, data=data, warmup=warmup,
                           rounds=rounds, duration_s=duration, placement=placement, progress=progress, seed=seed,
                           keep_going=True, decode=decode)
    if json_out is not None:
        _write_json(json_out, result.to_dict())
    if md_out is not None:
        with open(md_out, "a", encoding="utf-8") as f:
            f.write(result.to_markdown())
    if not State.quiet and str(json_out) != "-":
        result.render()
    if result.failed:
        names = ", ".join(Path(m.path).name for m in result.failed)
        click.echo(f"onnxcomp: {len(result.failed)} of {len(result.models)} model(s) not timed: {names}", err=True)
        sys.exit(1)


@click.command()
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@_input_options
@click.option("--threads", type=int, help="Intra-op threads per session (default: onnxruntime's choice).")
@click.option("--max-samples", type=int, default=512, show_default=True, help="Samples of --data used for fidelity.")
@click.option("--rounds", type=int, help="Exact number of timed rounds (default: run for --duration).")
@click.option("--duration", type=float, default=5.0, show_default=True, help="Seconds of timed rounds.")
@click.option("--no-speed", is_flag=True, help="Fidelity only; skip timing.")
@click.option("--channels", "channel_specs", multiple=True, metavar="OUTPUT:AXIS[=N1,N2,..]",
              help="How fidelity splits an output into channels (as for optimize; repeatable).")
@click.option("--metric", type=click.Choice(["fidelity", "perplexity"]), default="fidelity", show_default=True,
              help="perplexity: also next-token perplexity of both causal LMs on --data's input_ids.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON here ('-' = stdout).")
@handle_errors
def compare(reference: Path, candidate: Path, ep: str, batch: int | None, shapes: tuple[str, ...], data: str | None,
            seed: int, threads: int | None, max_samples: int, rounds: int | None, duration: float, no_speed: bool,
            channel_specs: tuple[str, ...], metric: str, json_out: Path | None) -> None:
    """Fidelity of CANDIDATE against REFERENCE (cosine, errors, SNR, top-1, accuracy) and the speed ratio."""
    from onnxcomp.perf.comparison import compare as run_compare

    _check_models([reference, candidate], (("--json", json_out),))
    _check_data(data)
    if max_samples < 1 or duration <= 0:
        raise UsageError("--max-samples must be >= 1 and --duration > 0")
    from onnxcomp.checking.metrics import parse_channel_spec

    try:
        channels = dict(parse_channel_spec(c) for c in channel_specs)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with progress_bar("compare") as progress:
        result = run_compare(reference, candidate, data, ep=ep, threads=threads, batch=batch, shapes=shapes,
                             max_samples=max_samples, speed=not no_speed, rounds=rounds, duration_s=duration,
                             progress=progress, seed=seed, channels=channels)
    ppl = _perplexity(reference, candidate, data, ep, threads, batch, max_samples) if metric == "perplexity" else None
    if json_out is not None:
        _write_json(json_out, {**result.to_dict(), **({"perplexity": ppl} if ppl else {})})
    if not State.quiet and str(json_out) != "-":
        result.render()
        if ppl:
            click.echo(f"perplexity {ppl['reference']:.4f} → {ppl['candidate']:.4f} ({ppl['increase']:+.2%}) on {ppl['tokens']} tokens of {ppl['data']}")


def _perplexity(reference: Path, candidate: Path, data: str | None, ep: str, threads: int | None, batch: int | None,
                max_samples: int) -> dict:
    """``--metric perplexity`` (causal LMs; labels are the input_ids shifted by one)."""
    from onnxcomp.checking.perplexity import compare_perplexity
    from onnxcomp.checking.runtime import parse_ep, providers_for

    if data is None or data == "random":
        raise UsageError("--metric perplexity needs --data with input_ids (held-out text, tokenized)")
    return compare_perplexity(str(reference), str(candidate), data, providers=providers_for(parse_ep(ep)[0]), threads=threads,
                              batch=batch, max_samples=max_samples)


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="BASELINE CANDIDATE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-slowdown", type=float, default=0.10, show_default=True, help="Allowed slowdown as a fraction (0.10 = 10%).")
@click.option("--min-cosine", type=float, help="Fail if the candidate's worst output cosine vs the baseline is below this.")
@_input_options
@click.option("--threads", type=int, default=1, show_default=True,
              help="Intra-op threads per session; 1 keeps two interleaved sessions from contending for cores.")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Coverage of the interval on the slowdown.")
@click.option("--max-time", type=float, default=30.0, show_default=True, help="Seconds of measurement at most (then decide on the point estimate).")
@click.option("--min-rounds", type=int, default=20, show_default=True, help="Rounds before the first look.")
@click.option("--max-rounds", type=int, default=2000, show_default=True, help="Rounds at most.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs per model first (more on GPUs with autotuning).")
@click.option("--record", "record_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Record mode: time the one MODEL against the reference workload and write a baseline .json here.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the verdict as JSON here ('-' = stdout).")
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Append a Markdown summary here (e.g. \"$GITHUB_STEP_SUMMARY\").")
@handle_errors
def gate(models: tuple[Path, ...], max_slowdown: float, min_cosine: float | None, ep: str, batch: int | None,
         shapes: tuple[str, ...], data: str | None, seed: int, threads: int, confidence: float, max_time: float,
         min_rounds: int, max_rounds: int, warmup: int, record_out: Path | None, json_out: Path | None,
         md_out: Path | None) -> None:
    """Latency-regression gate: exit 0 pass, 1 regression, 2 usage/input error.

    \b
    onnxcomp gate BASELINE.onnx CANDIDATE.onnx --max-slowdown 0.10 [--min-cosine 0.99]
    onnxcomp gate --record baseline.json MODEL.onnx       (keep a baseline for later runs)
    onnxcomp gate baseline.json CANDIDATE.onnx            (normalised by a reference workload)

    Both models run interleaved; the slowdown is the median of paired ratios with a
    bootstrap confidence interval. Pass when the interval lies below --max-slowdown, fail
    when above; while it straddles, measure more, up to --max-time, then decide on the
    point estimate.
    """
    from onnxcomp.perf.gate import gate as run_gate
    from onnxcomp.perf.gate_record import record_baseline
    from onnxcomp.perf.gate_stats import Budget

    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    _check_models(models, (("--json", json_out), ("--markdown", md_out), ("--record", record_out)))
    _check_data(data)
    budget = Budget(min_rounds=min_rounds, max_rounds=max_rounds, max_time_s=max_time)
    if record_out is not None:
        if len(models) != 1:
            raise UsageError(f"--record takes exactly one MODEL, got {len(models)}")
        with progress_bar("record") as progress:
            rec = record_baseline(models[0], record_out, ep=ep, threads=threads, batch=batch, shapes=shapes, data=data,
                                  budget=budget, warmup=warmup, progress=progress, seed=seed)
        if not State.quiet:
            click.echo(f"recorded {models[0]}: {rec['normalized_cost']:.4f}× the reference workload "
                       f"({rec['rounds']} rounds, {rec['providers'][0]}, threads={threads}) → {record_out}", err=True)
        return
    if len(models) != 2:
        raise UsageError(f"gate takes BASELINE and CANDIDATE (or --record OUT MODEL), got {len(models)} path(s)")
    with progress_bar("gate") as progress:
        result = run_gate(models[0], models[1], max_slowdown, min_cosine=min_cosine, ep=ep, threads=threads, batch=batch,
                          shapes=shapes, data=data, confidence=confidence, budget=budget, warmup=warmup,
                          progress=progress, seed=seed)
    if json_out is not None:
        _write_json(json_out, result.to_dict())
    if md_out is not None:
        with open(md_out, "a", encoding="utf-8") as f:
            f.write(result.to_markdown())
    if not State.quiet and str(json_out) != "-":
        result.render()
    sys.exit(result.exit_code)


COMMANDS = [bench, compare, gate]
