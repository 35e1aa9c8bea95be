"""What a user reads: progress lines in logs (stderr not a terminal), tables at 80 columns."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from onnxcomp.checking.metrics import OutputFidelity
from onnxcomp.cli import main
from onnxcomp.cli.common import LineProgress
from onnxcomp.cli.inspect import groups_table
from onnxcomp.perf.benchmark import BenchResult, ModelBench
from onnxcomp.perf.comparison import CompareResult
from onnxcomp.perf.render import elide_middle, fmt_g
from onnxcomp.perf.timing import LatencyStats
from onnxcomp.pipeline.registry import isolated_registry

from ._cases import relu_model, save

# --------------------------------------------------------------------------- progress

_SLOW_PASS = '''
import time
from onnxcomp import Pass, PassResult, register_pass

@register_pass("slow-steps")
class SlowSteps(Pass):
    """Sends a progress message every 20 ms for at least 1.5 s, changes nothing.

    Each message carries the milliseconds since the pass started, so the test can judge
    the rate limit by the clock, not by step counts that stretch on a loaded machine.
    """

    lossless = True

    def run(self, graph, ctx):
        t0 = time.monotonic()
        for i in range(75):
            ctx.progress(f"slow-steps: step {i + 1}/75 at {round((time.monotonic() - t0) * 1000)} ms")
            time.sleep(0.02)
        return PassResult(modified=False)
'''

_PLUGIN_IDS = itertools.count()
_LINE = re.compile(r"onnxcomp: \[(\d+) s\] (.*)")


def _run_slow(tmp_path: Path, *extra: str, interval: str) -> list[str]:
    # A fresh module name each time: an imported plugin module would not register again.
    plugin = tmp_path / f"slow_plugin_{next(_PLUGIN_IDS)}.py"
    plugin.write_text(_SLOW_PASS)
    src = save(relu_model(), tmp_path)
    with isolated_registry():
        res = CliRunner().invoke(main, [*extra, "optimize", str(src), "-o", str(tmp_path / "out.onnx"), "--plugin", str(plugin),
                                        "-p", "slow-steps"], env={"ONNXCOMP_PROGRESS_INTERVAL": interval})
    assert res.exit_code == 0, res.output
    return [line for line in res.stderr.splitlines() if _LINE.fullmatch(line)]


def test_progress_lines_in_logs_are_rate_limited(tmp_path: Path) -> None:
    lines = _run_slow(tmp_path, interval="0.3")
    messages = [_LINE.fullmatch(line).group(2) for line in lines]  # type: ignore[union-attr]
    steps = [m for m in messages if m.startswith("slow-steps: step ")]
    at_ms = [int(m.split(" at ")[1].split()[0]) for m in steps]
    # At least 1.5 s of work at one line per 0.3 s: a handful of lines, not the 75
    # messages (more time under load allows proportionally more lines, never one per step).
    assert len(steps) >= 3 and at_ms == sorted(at_ms), lines
    assert len(lines) <= at_ms[-1] / 300 + 2, lines
    # Judged by the messages' own clock, 40 ms of slack for when a line is taken. The last
    # message may be printed late by the background flush, so its own time can be close
    # to the one before (the line still comes an interval later).
    assert min(b - a for a, b in itertools.pairwise(at_ms[:-1])) >= 260, lines


def test_no_progress_lines_with_quiet_or_in_short_runs(tmp_path: Path) -> None:
    assert _run_slow(tmp_path, "-q", interval="0.3") == []
    assert _run_slow(tmp_path, interval="5") == []  # the first line comes after one interval


def test_line_progress_prints_latest_message_at_most_once_per_interval() -> None:
    now = [0.0]
    out: list[str] = []
    lines = LineProgress(5.0, clock=lambda: now[0], write=out.append, background=False)
    for t in range(21):
        now[0] = float(t)
        lines.update(f"message {t}")
    assert out == [f"onnxcomp: [{t} s] message {t}" for t in (5, 10, 15, 20)]
    lines.update("pending")
    now[0] = 30.0
    lines._print_if_due()  # what the background thread does
    assert out[-1] == "onnxcomp: [30 s] pending"
    lines.stop()
    lines.update("after stop")
    now[0] = 100.0
    lines._print_if_due()
    assert out[-1] == "onnxcomp: [30 s] pending"


# --------------------------------------------------------------------------- tables


def _render(renderable_or_result, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    if hasattr(renderable_or_result, "render"):
        renderable_or_result.render(console)
    else:
        console.print(renderable_or_result)
    return console.export_text().splitlines()


def _bench_result() -> BenchResult:
    def one(name: str, p50: float) -> ModelBench:
        stats = LatencyStats.from_samples(np.array([p50, p50 * 1.1, p50 * 0.95, p50 * 1.3]))
        return ModelBench(path=f"/models/{name}", latency=stats, samples_ms=[], batch=1, input_shapes={"input": [1, 3, 224, 224]},
                          size_bytes=123_456_789, host_memory_mb=1234.5, ratio_to_first=0.1234)
    return BenchResult(models=[one("resnet18.onnx", 12.345), one("resnet18.pruned.quantize-int8.recovered.onnx", 123.45)],
                       ep="cpu", providers=["CPUExecutionProvider"], threads=None, warmup=10, rounds=123, seconds=5.0)


def _table_lines(lines: list[str]) -> list[str]:
    """The table rows: lines that hold a number column, not the wrapped prose after the table."""
    return [line for line in lines if re.search(r"\d\.\d", line) and not line.startswith(("inputs:", "latency p50"))]


def test_bench_table_fits_80_columns_with_every_number_whole() -> None:
    result = _bench_result()
    lines = _render(result)
    assert all(len(line) <= 80 for line in lines)
    rows = _table_lines(lines)
    assert len(rows) == 2, lines  # one line per model: nothing wrapped
    for m, row in zip(result.models, rows):
        s = m.latency
        for number in (fmt_g(s.p50), fmt_g(s.p90), fmt_g(s.p99), fmt_g(s.mean), fmt_g(s.stdev), "0.123", "117.7 MB", "1234.5"):
            assert f" {number} " in f" {row} ", (number, row)
    assert rows[0].startswith("resnet18.onnx")
    assert rows[1].startswith("resnet18.") and rows[1].split()[0].endswith(".onnx") and "…" in rows[1]


def test_compare_table_fits_80_columns() -> None:
    outputs = {"logits": OutputFidelity(0.999912, 0.0123, 0.00123, 34.5, 0.9375, 0.71, 0.70),
               "sentence_embedding_of_a_rather_long_output_name": OutputFidelity(0.98, 12.3, 1.2, 20.1)}
    result = CompareResult(reference="a/resnet18.onnx", candidate="a/resnet18.int8.onnx", outputs=outputs, overall={},
                           samples=64, data="calib.npz", labelled=True, bench=_bench_result())
    lines = _render(result)
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if line.startswith(("logits", "sentence"))]
    assert len(rows) == 2
    assert "0.999912" in rows[0] and "0.7100→0.7000" in rows[0] and "0.9375" in rows[0]
    assert rows[1].startswith("sentence_") and rows[1].split()[0].endswith("_name")


def test_inspect_names_take_one_line_each_at_80_columns() -> None:
    label = "model.0.auto_model.encoder.layer.11.attention.output.dense.weight"
    node = "/model/model.0/auto_model/encoder/layer.11/attention/output/dense/MatMul"
    rows = [{"id": 7, "root": "onnx::MatMul_1234[axis 1]", "root_node": node, "label": label, "channels": 384, "units": 12,
             "unit_size": 32, "tensors": 26, "params": [], "prunable": False,
             "frozen_by": ["reaches graph output 'last_hidden_state'", "Reshape with a constant shape"]}]
    lines = _render(groups_table(rows, "channel groups of bert.onnx", Console(width=80)))
    assert all(len(line) <= 80 for line in lines)
    body = [line for line in lines if line.strip() and not line.startswith(("channel groups", "id ", "─", "group:", "whole"))]
    # label, root weight and node: one line each (the status may wrap beside them).
    assert len(body) <= 4, lines
    assert body[0].split()[1].startswith("model.0.") and body[0].split()[1].endswith("dense.weight")
    assert "onnx::MatMul_1234[axis 1]" in body[1] and body[2].split()[0] == "node"
    assert "frozen: reaches graph" in body[0]
    assert "(+1" in "".join(lines) and "more)" in "".join(lines)
    assert "--json has them whole" in " ".join(" ".join(lines).split())


def _conv_pair() -> onnx.ModelProto:
    """Conv -> Relu -> Conv: one prunable group (the first conv's output channels)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("c1.w", (16, 3, 3, 3)), ("c2.w", (8, 16, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "c2.w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_inspect_cli_output_fits_80_columns(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(_conv_pair().SerializeToString())
    res = CliRunner().invoke(main, ["inspect", str(p)], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    assert all(len(line) <= 80 for line in res.stdout.splitlines())
    assert "prunable" in res.stdout and "c1.w[axis 0]" in res.stdout


def test_elide_middle_keeps_both_ends() -> None:
    assert elide_middle("short", 10) == "short"
    cut = elide_middle("layer4.1.conv2.weight", 12)
    assert len(cut) == 12 and cut.startswith("layer") and cut.endswith("weight") and "…" in cut
