"""Peak memory of ``onnxcomp optimize`` on a model larger than 2 GB (external data).

Generates a MatMul chain (``--layers`` weights of ``--width``² float32, with Identity and
Dropout nodes in between so the lossless preset has something to remove) whose weights
live in ``model.onnx.data``, runs the real CLI in a subprocess and reports the child's
peak RSS (``ru_maxrss`` of the waited-for child) against the model size. Also checks that
the input data file is byte-identical afterwards (sha256 before/after).

Heavy: the default (35 × 4096² float32 ≈ 2.35 GB) needs ~10 GB of free RAM and disk in
``--workdir``. Use ``--layers 5`` for a quick smoke run. ``-p PASS`` runs those passes
instead of the lossless preset, e.g. ``-p quantize-weights`` (4-bit streaming
quantization; the target is a peak below 1.5× the larger of input and output). Measured
2026-12-06 on the shared 2-core VM (35 layers, 2.35 GB): 1.37× (verification runs input and
result one session at a time; the speed check times the in-memory result from a file).

    python bench/big_model_memory.py [--layers 35] [--width 4096] [--workdir /tmp/onnxcomp-big] [-p quantize-weights]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def build(folder: Path, layers: int, width: int, seed: int = 0) -> Path:
    """Write the model and its data file one weight at a time (never all in memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data_name = "model.onnx.data"
    nodes, inits = [], []
    prev = "x"
    offset = 0
    with (folder / data_name).open("wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((width, width), dtype=np.float32) / np.float32(np.sqrt(width)))
            f.write(w.tobytes())
            t = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[width, width], data_location=TensorProto.EXTERNAL)
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(w.nbytes))):
                t.external_data.add(key=k, value=v)
            offset += w.nbytes
            inits.append(t)
            del w
            nodes.append(helper.make_node("Identity", [prev], [f"id{i}"]))
            nodes.append(helper.make_node("MatMul", [f"id{i}", f"W{i}"], [f"mm{i}"]))
            nodes.append(helper.make_node("Dropout", [f"mm{i}"], [f"dr{i}"]))
            nodes.append(helper.make_node("Tanh", [f"dr{i}"], [f"h{i}"]))
            prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    return folder / "model.onnx"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=35)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/onnxcomp-big"))
    ap.add_argument("--keep", action="store_true", help="Keep the generated files.")
    ap.add_argument("--json", type=Path, help="Write the result here.")
    ap.add_argument("-p", "--pass", dest="passes", action="append", default=[], help="Run this pass (repeatable) instead of the lossless preset.")
    args = ap.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    t0 = time.perf_counter()
    model = build(args.workdir, args.layers, args.width)
    data = model.with_name("model.onnx.data")
    size = model.stat().st_size + data.stat().st_size
    digest, mtime = sha256(data), data.stat().st_mtime_ns
    print(f"built {size / 2**30:.2f} GiB model in {time.perf_counter() - t0:.0f}s", flush=True)

    out = args.workdir / "out.onnx"
    cmd = [sys.executable, "-m", "onnxcomp", "-q", "optimize", str(model), "-o", str(out)]
    for p in args.passes:
        cmd += ["-p", p]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    out_size = sum(p.stat().st_size for p in (out, out.with_name("out.onnx.data")) if p.exists())
    result = {
        "model_bytes": size,
        "peak_rss_bytes": peak,
        "peak_over_model": round(peak / size, 3),
        "peak_over_larger_of_input_output": round(peak / max(size, 1), 3),  # filled in below once the output exists
        "passes": args.passes or ["lossless preset"],
        "exit_code": proc.returncode,
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
        "seconds": round(seconds, 1),
        "output_bytes": out_size,
        "input_data_unchanged": sha256(data) == digest and data.stat().st_mtime_ns == mtime,
        "layers": args.layers,
        "width": args.width,
    }
    result["peak_over_larger_of_input_output"] = round(peak / max(size, out_size), 3)
    if proc.returncode == 0:
        m = onnx.load(str(out), load_external_data=False)
        result["output_nodes"] = len(m.graph.node)
        result["input_nodes"] = 4 * args.layers + 1
        result["output_ops"] = sorted({n.op_type for n in m.graph.node})
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0 if proc.returncode == 0 and result["input_data_unchanged"] else 1


if __name__ == "__main__":
    sys.exit(main())
