"""``optimize --speed-check``: a lossy result slower than its input is said so (warning + report)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.cli import main
from onnxcomp.perf.speed_check import SLOWER_BELOW, slower_warning
from onnxcomp.pipeline.registry import isolated_registry

ROOT = Path(__file__).resolve().parents[2]

#: MatMuls by a 256×256 identity: exact results, ~1 ms of work against a Relu's microseconds.
CHAIN = 60

_PLUGIN = '''
import numpy as np
import onnx_graphsurgeon as gs
from onnxcomp import Pass, PassResult, register_pass

CHAIN = {chain}


@register_pass("add-identity-chain")
class AddIdentityChain(Pass):
    """Multiply the output by the identity CHAIN times: same numbers, much slower."""

    lossless = False

    def run(self, graph, ctx):
        out = graph.outputs[0]
        producer = out.inputs[0]
        prev = gs.Variable("chain_in", dtype=np.float32, shape=out.shape)
        producer.outputs = [prev]
        eye = gs.Constant("eye", np.eye(256, dtype=np.float32))
        for i in range(CHAIN):
            nxt = out if i == CHAIN - 1 else gs.Variable(f"chain_{{i}}", dtype=np.float32, shape=out.shape)
            graph.nodes.append(gs.Node("MatMul", inputs=[prev, eye], outputs=[nxt]))
            prev = nxt
        return PassResult(modified=True)


@register_pass("drop-identity-chain")
class DropIdentityChain(Pass):
    """Feed the final Relu from the graph input: same numbers (the chain was the identity), much faster."""

    lossless = False

    def run(self, graph, ctx):
        relu = graph.outputs[0].inputs[0]
        relu.inputs[0] = graph.inputs[0]
        return PassResult(modified=True)
'''

_IDS = itertools.count()


def _model(chain: int) -> onnx.ModelProto:
    """x[1,256] -> (MatMul by identity) x chain -> Relu -> y."""
    nodes, prev = [], "x"
    for i in range(chain):
        nodes.append(helper.make_node("MatMul", [prev, "eye"], [f"m{i}"]))
        prev = f"m{i}"
    nodes.append(helper.make_node("Relu", [prev], ["y"]))
    inits = [numpy_helper.from_array(np.eye(256, dtype=np.float32), "eye")] if chain else []
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _optimize(tmp_path: Path, model: onnx.ModelProto, *args: str) -> tuple[int, dict, str]:
    src = tmp_path / "in.onnx"
    src.write_bytes(model.SerializeToString())
    plugin = tmp_path / f"chain_plugin_{next(_IDS)}.py"
    plugin.write_text(_PLUGIN.format(chain=CHAIN))
    report = tmp_path / "r.json"
    with isolated_registry():
        res = CliRunner().invoke(main, ["optimize", str(src), "-o", str(tmp_path / "out.onnx"), "--plugin", str(plugin),
                                        "--report", str(report), *args])
    assert res.exit_code == 0, res.output
    return res.exit_code, json.loads(report.read_text()), res.stderr


def test_slower_lossy_result_warns_and_reports_the_ratio(tmp_path: Path) -> None:
    # A real process: the warning must reach the user's stderr through the CLI's logging.
    src = tmp_path / "in.onnx"
    src.write_bytes(_model(0).SerializeToString())
    plugin = tmp_path / "chain_plugin_subprocess.py"
    plugin.write_text(_PLUGIN.format(chain=CHAIN))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(src), "-o", str(tmp_path / "out.onnx"),
                           "--plugin", str(plugin), "-p", "add-identity-chain", "--report", str(tmp_path / "r.json")],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report, stderr = json.loads((tmp_path / "r.json").read_text()), proc.stderr
    speed = report["speed"]
    assert speed["ep"] == "CPUExecutionProvider" and speed["rounds"] >= 5
    assert 0 < speed["ratio"] < 0.5, speed  # ~60 MatMuls against one Relu
    assert speed["result_ms"] > speed["input_ms"]
    expected = f"result is {speed['ratio']:.2f}x the speed of the input on CPUExecutionProvider"
    assert any(w.startswith(expected) for w in report["warnings"]), report["warnings"]
    assert expected in " ".join(stderr.split())


def test_faster_lossy_result_reports_the_ratio_without_warning(tmp_path: Path) -> None:
    _, report, stderr = _optimize(tmp_path, _model(CHAIN), "-p", "drop-identity-chain")
    assert report["speed"]["ratio"] > 2.0, report["speed"]
    assert not any("the speed of the input" in w for w in report["warnings"])
    assert "the speed of the input" not in stderr


def test_no_speed_check_and_lossless_runs_do_not_time(tmp_path: Path) -> None:
    _, report, stderr = _optimize(tmp_path, _model(0), "-p", "add-identity-chain", "--no-speed-check")
    assert report["speed"] is None and "the speed of the input" not in stderr
    _, report, _ = _optimize(tmp_path, _model(2), "-p", "eliminate-identity")
    assert report["speed"] is None  # nothing lossy changed the model: nothing to trade


@pytest.mark.parametrize(("ratio", "warns"), [(0.72, True), (SLOWER_BELOW - 0.001, True), (SLOWER_BELOW, False), (1.3, False)])
def test_slower_warning_threshold(ratio: float, warns: bool) -> None:
    w = slower_warning({"ratio": ratio, "ep": "CPUExecutionProvider"})
    assert (w is not None) == warns
    if warns:
        assert w.startswith(f"result is {ratio:.2f}x the speed of the input on CPUExecutionProvider")
    assert slower_warning({"skipped": "cannot run"}) is None


def test_schedule_follows_the_cost_of_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round longer than the check's duration gets SLOW_MIN_ROUNDS rounds, not warm-up + 10;
    a large model is timed from a file (here: every model)."""
    from onnxcomp.perf import speed_check

    w = np.eye(64, dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    slow = speed_check.measure_speed(model, model, duration_s=1e-9)
    assert slow["rounds"] == speed_check.SLOW_MIN_ROUNDS and slow["ratio"] > 0
    monkeypatch.setattr(speed_check, "FILE_BYTES", 0)
    fast = speed_check.measure_speed(model, model, duration_s=0.05)
    assert fast["rounds"] >= speed_check.MIN_ROUNDS and 0.5 < fast["ratio"] < 2
