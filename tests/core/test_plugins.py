"""Third-party passes: a ``--plugin`` file and an entry point of an installed distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

PLUGIN_SOURCE = textwrap.dedent(
    '''
    import onnx_graphsurgeon as gs
    from onnxcomp import Pass, PassResult, register_pass


    @register_pass("{name}")
    class SwapReluForMaxZero(Pass):
        """Replace Relu by Max(x, 0) (same outputs)."""

        lossless = True

        def run(self, graph, ctx):
            import numpy as np

            n = 0
            for node in list(graph.nodes):
                if node.op == "Relu":
                    zero = gs.Constant(node.name + "_zero", np.zeros((), np.float32))
                    node.op = "Max"
                    node.inputs = [node.inputs[0], zero]
                    n += 1
            return PassResult(modified=n > 0, stats={{"rewritten": n}})
    '''
)


def _cli(*args: str, env_extra: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "onnxcomp", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_plugin_file_runs_in_pipeline(tmp_path: Path, relu_model: onnx.ModelProto) -> None:
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(PLUGIN_SOURCE.format(name="swap-relu"))
    model = tmp_path / "m.onnx"
    onnx.save(relu_model, str(model))
    r = _cli("optimize", str(model), "--plugin", str(plugin), "-p", "dce", "-p", "swap-relu", "-o", str(tmp_path / "out.onnx"))
    assert r.returncode == 0, r.stderr
    assert _ops(tmp_path / "out.onnx") == ["Max", "Identity"]
    listed = _cli("passes", "--json", "--plugin", str(plugin))
    names = {p["name"]: p for p in json.loads(listed.stdout)["passes"]}
    assert names["swap-relu"]["summary"] == "Replace Relu by Max(x, 0) (same outputs)."


def test_entry_point_plugin_from_installed_distribution(tmp_path: Path, relu_model: onnx.ModelProto) -> None:
    site = tmp_path / "site"
    pkg = site / "acme_passes"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN_SOURCE.format(name="acme-swap-relu"))
    dist = site / "acme_passes-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-passes\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[onnxcomp.passes]\nacme = acme_passes\n")
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    model = tmp_path / "m.onnx"
    onnx.save(relu_model, str(model))
    r = _cli("optimize", str(model), "-p", "acme-swap-relu", "-o", str(tmp_path / "out.onnx"), env_extra=env)
    assert r.returncode == 0, r.stderr
    assert _ops(tmp_path / "out.onnx")[0] == "Max"
    # Without the distribution on the path the pass is unknown (exit 2, list of known passes).
    r2 = _cli("optimize", str(model), "-p", "acme-swap-relu", "-o", str(tmp_path / "out2.onnx"))
    assert r2.returncode == 2 and "unknown pass 'acme-swap-relu'" in r2.stderr and "dce" in r2.stderr
    assert not (tmp_path / "out2.onnx").exists()


def test_broken_plugin_is_a_usage_error(tmp_path: Path, relu_model: onnx.ModelProto) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('oops')\n")
    model = tmp_path / "m.onnx"
    onnx.save(relu_model, str(model))
    r = _cli("optimize", str(model), "--plugin", str(plugin))
    assert r.returncode == 2
    assert "plugin" in r.stderr and "oops" in r.stderr and "Traceback" not in r.stderr
    r = _cli("optimize", str(model), "--plugin", str(tmp_path / "missing.py"))
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.parametrize("dup", ["dce"])
def test_plugin_cannot_shadow_builtin(tmp_path: Path, relu_model: onnx.ModelProto, dup: str) -> None:
    plugin = tmp_path / "shadow.py"
    plugin.write_text(PLUGIN_SOURCE.format(name=dup))
    model = tmp_path / "m.onnx"
    onnx.save(relu_model, str(model))
    r = _cli("optimize", str(model), "--plugin", str(plugin))
    assert r.returncode == 2 and "already registered" in r.stderr
