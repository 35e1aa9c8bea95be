"""The ``onnxcomp`` command group (click): ``optimize`` and ``passes`` here, the others registered.

``bench``, ``compare`` and ``gate`` come from `onnxcomp.cli.bench`, ``inspect`` from
`onnxcomp.cli.inspect`; what every command shares (``-v``/``-q``, one-line errors and
exit codes, progress) is in `onnxcomp.cli.common`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from onnxcomp._version import __version__
from onnxcomp.cli.bench import COMMANDS as BENCH_COMMANDS
from onnxcomp.cli.common import State, handle_errors, status_line
from onnxcomp.cli.inspect import COMMANDS as INSPECT_COMMANDS
from onnxcomp.cli.tune import COMMANDS as TUNE_COMMANDS
from onnxcomp.errors import OnnxcompError

log = logging.getLogger("onnxcomp")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="onnxcomp")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final result.")
def main(verbose: int, quiet: bool) -> None:
    """Make ONNX models smaller and faster: verified graph passes, benchmarked side by side."""
    State.verbose, State.quiet = verbose, quiet
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="onnxcomp: %(levelname)s: %(message)s", stream=sys.stderr, force=True)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output path (default: <stem>.opt.onnx beside the input).")
@click.option("--preset", help="Named pipeline: lossless (default), int8, int4, prune, prune-recover, prune-distill-int8.")
@click.option("-p", "--pass", "pass_specs", multiple=True, metavar="PASS[:k=v,...]", help="A pass with options; repeat in pipeline order.")
@click.option("--calibration-data", metavar="PATH|random", help=".npz (keys = input names, samples on each input's batch axis, scalars shared), a folder of them "
              "or of complete feeds (one .npz per sample), or 'random'. Validated before any work.")
@click.option("--train-data", metavar="PATH", help="Training data for distill (same format; optional 'label' array).")
@click.option("--eval-data", metavar="PATH", help="Verify on this data (same format; no pass sees it). Default for lossy pipelines: "
              "a held-out part of the calibration data.")
@click.option("--min-cosine", type=click.FloatRange(-1.0, 1.0), metavar="X",
              help="Fail (exit 1, nothing written) when the worst cosine, per output and per channel, is below X.")
@click.option("--channels", "channel_specs", multiple=True, metavar="OUTPUT:AXIS[=N1,N2,..]",
              help="How fidelity splits an output into channels, e.g. output0:1=4,18 (axis 1 in groups of 4 and 18); "
                   "OUTPUT:none measures it whole (repeatable).")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE_OR_FILE", help="Import passes from a module or .py file (repeatable).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("--strict", is_flag=True, help="Fail instead of rolling back a lossless pass that changes outputs.")
@click.option("--verify", type=click.Choice(["each", "final", "none"]), default="each", show_default=True, help="When to check numerics.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance for lossless passes.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Tolerance relative to each output's largest magnitude.")
@click.option("--allow-unverified", is_flag=True, help="Write the result even if its numerics could not be checked.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything random.")
@click.option("--speed-check/--no-speed-check", default=True, show_default=True,
              help="After a lossy pass, time result vs input on CPU (~1 s); warn when the result is slower.")
@handle_errors
def optimize(model: Path, output: Path | None, preset: str | None, pass_specs: tuple[str, ...], calibration_data: str | None,
             train_data: str | None, eval_data: str | None, min_cosine: float | None, channel_specs: tuple[str, ...],
             plugins: tuple[str, ...], report_path: Path | None, strict: bool, verify: str,
             atol: float, rtol: float, allow_unverified: bool, seed: int, speed_check: bool) -> None:
    """Run a pipeline of passes over MODEL, verify it, write the result.

    Fidelity is measured per output and per channel, on data no pass was fitted on
    (--eval-data, or a held-out part of the calibration data); the console and the
    report name that data. A lossy result below the fidelity floor (worst cosine 0.9)
    is reported as degraded; --min-cosine makes such a result an error.
    """
    from onnxcomp.api import default_output_path
    from onnxcomp.api import optimize as run_optimize
    from onnxcomp.io.outputs import check_output_paths

    out = output or default_output_path(model)
    if model.exists():  # (a missing input is reported as such by the loader, not as a missing output folder)
        check_output_paths([("output", out), ("--report", report_path)], protect=[model])  # before any work
    status, progress = status_line()
    try:
        _, report = run_optimize(
            model, pass_specs, preset=preset, calibration_data=calibration_data, train_data=train_data, eval_data=eval_data,
            output=out, plugins=plugins, strict=strict, verify=verify, atol=atol, rtol=rtol,  # type: ignore[arg-type]
            allow_unverified=allow_unverified, seed=seed, progress=progress, min_cosine=min_cosine, channels=channel_specs,
            speed_check=speed_check,
        )
    finally:
        if status is not None:
            status.stop()
    State.written.append(str(out))
    if report_path is not None:
        try:
            report.write_json(report_path)
        except OnnxcompError as e:  # the model is written: say where, whatever else failed
            raise type(e)(f"{e} (the model was written: {out})") from None
    if not State.quiet:
        report.render()
    click.echo(str(out))


@main.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE_OR_FILE", help="Also list passes from these plugins.")
@handle_errors
def list_passes(as_json: bool, plugins: tuple[str, ...]) -> None:
    """List passes with their summaries and options (types, defaults)."""
    from onnxcomp.pipeline.plugins import load_entry_point_plugins, load_plugin
    from onnxcomp.pipeline.presets import PRESET_SUMMARIES, PRESETS
    from onnxcomp.pipeline.registry import describe_pass, registered_passes

    load_entry_point_plugins()
    for p in plugins:
        load_plugin(p)
    described = [describe_pass(cls) for cls in registered_passes().values()]
    presets = {name: {"summary": PRESET_SUMMARIES.get(name, ""), "steps": pipeline.outline()}
               for name, pipeline in PRESETS.items()}
    if as_json:
        click.echo(json.dumps({"passes": described, "presets": presets}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="passes", title_justify="left", show_lines=False)
    table.add_column("pass")
    table.add_column("lossless")
    table.add_column("summary / options")
    for d in described:
        opts = "\n".join(f"  {o['name']}: {o['type']} = {o['default']!r}" for o in d["options"])
        table.add_row(d["name"], "yes" if d["lossless"] else "no", d["summary"] + ("\n" + opts if opts else ""))
    console = Console()
    console.print(table)
    for name, info in presets.items():
        console.print(f"preset [bold]{name}[/]: {info['summary']}")


for _command in (*BENCH_COMMANDS, *INSPECT_COMMANDS, *TUNE_COMMANDS):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
