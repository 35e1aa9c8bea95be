"""``onnxcomp tune``: search pass configurations for the fastest model within a budget."""

from __future__ import annotations

from pathlib import Path

import click

from onnxcomp.cli.common import State, handle_errors, progress_bar


def default_tuned_path(model: Path) -> Path:
    """``<stem>.tuned.onnx`` beside the input."""
    return model.with_name(model.stem + ".tuned.onnx")


@click.command("tune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calibration-data", metavar="PATH|random", help="What passes fit on (.npz, a folder of them, or 'random').")
@click.option("--eval-data", metavar="PATH", help="What every candidate is scored and verified on (required; no pass sees it).")
@click.option("--train-data", metavar="PATH", help="Training data: adds distill to the search space.")
@click.option("--metric", default="cosine", show_default=True, metavar="cosine|accuracy|perplexity|MODULE:FUNCTION",
              help="What the budget is about; a custom f(outputs, data) -> float, higher is better.")
@click.option("--max-drop", type=float, metavar="X", help="Budget: absolute drop of the metric (accuracy as a fraction: 0.005 = half a point).")
@click.option("--min-cosine", type=click.FloatRange(-1.0, 1.0), metavar="Y", help="Budget: worst cosine, per output and per channel.")
@click.option("--confidence", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.95, show_default=True,
              help="--max-drop on accuracy: a candidate must fit with this one-sided confidence (drop + z paired "
              "standard errors); 0.5: the measured drop.")
@click.option("--ep", default="cpu", show_default=True, help="Execution provider candidates are timed on (cpu, cuda, cuda:1, ...).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads per worker (default: onnxruntime's; cores ÷ workers with --workers).")
@click.option("--trials", type=click.IntRange(min=1), default=30, show_default=True, help="Trials in the study (presets included).")
@click.option("--time-budget", "time_budget", type=click.FloatRange(min=0.0, min_open=True), metavar="MINUTES",
              help="Stop starting new trials after this many minutes.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Local worker processes, each pinned to its own cores.")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS", help="Run trials as Ray tasks on a cluster (pip install 'onnxcomp[ray]').")
@click.option("--storage", metavar="URL", help="Optuna storage, the trial journal (default: sqlite:///<stem>.tune.db here); "
              "the same command resumes it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler and of every pass.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where the chosen model goes (default: <stem>.tuned.onnx beside the input).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="JSON report: pareto, trials, presets, best.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="PNG: every trial, the front, the presets.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), help="The Pareto front as a Markdown table.")
@click.option("--timing", "timing_s", type=click.FloatRange(min=0.05), default=2.0, show_default=True, metavar="SECONDS",
              help="Interleaved timing per trial.")
@handle_errors
def tune(model: Path, calibration_data: str | None, eval_data: str | None, train_data: str | None, metric: str,
         max_drop: float | None, min_cosine: float | None, confidence: float, ep: str, threads: int | None, trials: int,
         time_budget: float | None, workers: int, ray_address: str | None, storage: str | None, seed: int,
         output: Path | None, report_path: Path | None, plot_path: Path | None, markdown_path: Path | None,
         timing_s: float) -> None:
    """Find the fastest model within a metric budget: search pruning, quantization and
    recovery options, each candidate built and verified like `optimize`, scored on
    --eval-data and timed against MODEL, interleaved, on --ep.

    Writes the fastest candidate within the budget; exit 1 and nothing written when no
    candidate meets it. Run the same command again to resume an interrupted tune.
    """
    from onnxcomp.errors import UsageError
    from onnxcomp.io.outputs import check_output_paths
    from onnxcomp.tune import tune as run_tune

    if eval_data is None:
        raise UsageError("tune needs --eval-data: candidates are scored on data no pass was fitted on")
    if max_drop is None and min_cosine is None:
        raise UsageError("give a budget: --max-drop X (absolute drop of the metric) or --min-cosine Y")
    out = output or default_tuned_path(model)
    if model.exists():
        check_output_paths([("output", out), ("--report", report_path), ("--plot", plot_path), ("--markdown", markdown_path)],
                           protect=[model, *(Path(p) for p in (calibration_data, eval_data, train_data) if p)])
    with progress_bar("tune") as bar:
        def progress(done: int, total: int, message: str) -> None:
            if bar is not None:
                bar(done / total, f"trial {done}/{total}, {message}")

        result = run_tune(model, calibration_data=calibration_data, eval_data=eval_data, train_data=train_data,
                          metric=metric, max_drop=max_drop, min_cosine=min_cosine, confidence=confidence, ep=ep, threads=threads, trials=trials,
                          time_budget_min=time_budget, workers=workers, ray=ray_address, storage=storage, seed=seed,
                          output=out, timing_s=timing_s, progress=progress)
    State.written.append(str(out))
    for path, write in ((report_path, result.write_json), (markdown_path, result.write_markdown), (plot_path, result.write_plot)):
        if path is not None:
            write(path)
            State.written.append(str(path))
    if not State.quiet:
        click.echo(result.markdown().rstrip(), err=True)
    best = result.best
    assert best is not None
    click.echo(f"{out}: trial {best.number} ({best.label}), latency ratio {best.latency_ratio:.3f} "
               f"(×{1 / best.latency_ratio:.2f} faster), {metric} {best.result['metric']:.6g}")


COMMANDS = [tune]
