"""How reliable is `onnxcomp gate`? Run it 20× on A vs an identical copy, 20× on A vs B.

* A: ResNet-18 (``models.export("resnet18")``; a synthetic ResNet-ish conv stack of similar
  cost if the ``models`` package is not importable), batch 1, 3×224×224.
* A_copy: a byte copy of A. The gate must pass (exit 0) every time.
* B: A plus a redundant parallel branch — a 7×7 stride-1 convolution over the input,
  reduced to a scalar, multiplied by zero and added to the logits — so B computes exactly
  A's outputs but does ~20 % more work. onnxruntime cannot fold the branch away (it
  depends on the input, and ``x * 0`` is not simplified because of NaN semantics). The
  script first *measures* B's slowdown with `onnxcomp.bench` (interleaved) and prints it.
  The gate must report a regression (exit 1) every time at ``--max-slowdown 0.10``.
* C: A with weights perturbed by noise: ``--min-cosine 0.99`` must fail it (exit 1).

Every gate is a separate ``onnxcomp gate`` process, as in CI; runs alternate A/A_copy and
A/B so machine drift hits both series alike. Prints a tally and each run's slowdown, CI,
rounds and seconds.

Usage::

    python bench/gate_reliability.py [--runs 20] [--workdir /tmp/gate-rel] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def synthetic_resnetish(path: Path) -> None:
    """A plain conv stack of ResNet-18-like cost (~1.8 GMAC) for when `models` is unavailable."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, cin, hw = "input", 3, 224
    plan = [(64, 7, 2)] + [(64, 3, 1)] * 4 + [(128, 3, 2)] + [(128, 3, 1)] * 3 + [(256, 3, 2)] + [(256, 3, 1)] * 3 + \
        [(512, 3, 2)] + [(512, 3, 1)] * 3
    for i, (cout, k, s) in enumerate(plan):
        w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32), f"w{i}")
        inits.append(w)
        p = k // 2
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, cin = f"r{i}", cout
    inits.append(numpy_helper.from_array((rng.standard_normal((512, 1000)) / 23).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
    g = helper.make_graph(nodes, "resnetish", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def export_a(path: Path) -> str:
    """ResNet-18 from `models`, else the synthetic stack; returns which."""
    sys.path.insert(0, str(ROOT))
    try:
        import models  # noqa: PLC0415

        models.export("resnet18", path)
        return "resnet18 (models.export)"
    except Exception as e:  # models not importable or not finished: fall back
        print(f"models.export unavailable ({type(e).__name__}: {e}); using a synthetic conv stack", file=sys.stderr)
        synthetic_resnetish(path)
        return "synthetic ResNet-ish conv stack"


def add_dead_branch(src: Path, dst: Path, channels: int) -> None:
    """B = A + (ReduceMean(Conv7x7_stride1(input)) * 0): same outputs, more work."""
    m = onnx.load(src)
    g = m.graph
    inp = g.input[0].name
    out = g.output[0].name
    rng = np.random.default_rng(1)
    cin = g.input[0].type.tensor_type.shape.dim[1].dim_value
    g.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((channels, cin, 7, 7)) * 0.05).astype(np.float32), "dead_w"),
        numpy_helper.from_array(np.zeros((), np.float32), "dead_zero"),
    ])
    # Rename the producer of the graph output so the Add can take over its name.
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == out:
                n.output[i] = out + "_live"
        for i, o in enumerate(n.input):
            if o == out:
                n.input[i] = out + "_live"
    g.node.extend([
        helper.make_node("Conv", [inp, "dead_w"], ["dead_c"], kernel_shape=[7, 7], pads=[3, 3, 3, 3]),
        helper.make_node("ReduceMean", ["dead_c"], ["dead_r"], keepdims=0),
        helper.make_node("Mul", ["dead_r", "dead_zero"], ["dead_z"]),
        helper.make_node("Add", [out + "_live", "dead_z"], [out]),
    ])
    onnx.checker.check_model(m)
    onnx.save(m, dst)


def perturb(src: Path, dst: Path, scale: float) -> None:
    """C = A with every float weight w → w + scale·std(w)·N(0, 1)."""
    m = onnx.load(src)
    rng = np.random.default_rng(2)
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 16:
            t.CopyFrom(numpy_helper.from_array((a + scale * a.std() * rng.standard_normal(a.shape)).astype(np.float32), t.name))
    onnx.save(m, dst)


def run_gate(a: Path, b: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "onnxcomp", "-q", "gate", str(a), str(b), "--json", "-", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        doc = {"error": (p.stderr or p.stdout).strip()[-300:]}
    doc["rc"], doc["wall_s"] = p.returncode, wall
    return doc


def fmt(d: dict) -> str:
    if "slowdown" not in d:
        return f"rc={d['rc']} {d.get('error', '')}"
    lo, hi = d["ci"]
    return (f"rc={d['rc']} slowdown {100 * d['slowdown']:+6.2f}% CI [{100 * lo:+6.2f}%, {100 * hi:+6.2f}%] "
            f"{d['rounds']:4d} rounds {d['decided_by']:<26} {d['wall_s']:5.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/onnxcomp-gate-reliability"))
    ap.add_argument("--channels", type=int, default=52, help="Output channels of B's dead 7×7 conv (sets B's extra cost).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-slowdown", type=float, default=0.10)
    ap.add_argument("--max-time", type=float, default=30.0)
    ap.add_argument("--record-runs", type=int, default=0,
                    help="Also test record mode: record A once, then gate the record vs A_copy and vs B this many times.")
    args = ap.parse_args()

    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    a, a_copy, b, c = wd / "A.onnx", wd / "A_copy.onnx", wd / "B.onnx", wd / "C.onnx"
    source = export_a(a) if not a.exists() else "existing A.onnx"
    shutil.copyfile(a, a_copy)
    add_dead_branch(a, b, args.channels)
    perturb(a, c, 0.3)

    import onnxcomp

    r = onnxcomp.bench([str(a), str(b)], threads=args.threads, duration_s=20.0, warmup=3)
    sd = 1 / r.models[1].paired_ratio_to_first - 1
    print(f"A = {source}; B measured slowdown (bench, interleaved, threads={args.threads}, {r.rounds} rounds): "
          f"{100 * sd:+.1f}% (p50 {r.models[0].latency.p50:.1f} → {r.models[1].latency.p50:.1f} ms)")
    cmp = onnxcomp.compare(str(a), str(b), speed=False)
    print(f"B vs A outputs: cosine {cmp.overall['cosine']:.9f}, max |diff| {cmp.overall['max_abs_diff']:.3g}")

    extra = ["--max-slowdown", str(args.max_slowdown), "--threads", str(args.threads), "--max-time", str(args.max_time)]
    same, slower = [], []
    for i in range(args.runs):
        same.append(run_gate(a, a_copy, extra))
        print(f"[{i + 1:2d}] A vs A_copy  {fmt(same[-1])}", flush=True)
        slower.append(run_gate(a, b, extra))
        print(f"[{i + 1:2d}] A vs B       {fmt(slower[-1])}", flush=True)
    fid = run_gate(a, c, extra + ["--min-cosine", "0.99"])
    cos = (fid.get("fidelity") or {}).get("cosine")
    print(f"A vs C (perturbed weights, --min-cosine 0.99): rc={fid['rc']} cosine={cos}")

    rec_same, rec_slower = [], []
    if args.record_runs:
        rec = wd / "baseline.json"
        p = subprocess.run([sys.executable, "-m", "onnxcomp", "gate", "--record", str(rec), str(a), "--threads", str(args.threads),
                            "--max-time", str(args.max_time)], capture_output=True, text=True)
        print(f"record A: rc={p.returncode} {p.stderr.strip()[-200:]}")
        rec_extra = [e for e in extra if e != "--min-cosine"]
        for i in range(args.record_runs):
            rec_same.append(run_gate(rec, a_copy, rec_extra))
            print(f"[{i + 1:2d}] record vs A_copy  {fmt(rec_same[-1])}", flush=True)
            rec_slower.append(run_gate(rec, b, rec_extra))
            print(f"[{i + 1:2d}] record vs B       {fmt(rec_slower[-1])}", flush=True)

    ok_same = sum(d["rc"] == 0 for d in same)
    ok_slower = sum(d["rc"] == 1 for d in slower)
    walls = [d["wall_s"] for d in same + slower] or [0.0]
    print(f"\nTALLY  A vs A_copy pass: {ok_same}/{len(same)}   A vs B regression: {ok_slower}/{len(slower)}   "
          f"C fidelity regression: {'yes' if fid['rc'] == 1 else 'NO'}   gate wall time: median {np.median(walls):.1f} s, "
          f"max {max(walls):.1f} s")
    ok_rec = True
    if rec_same:
        rs, rb = sum(d["rc"] == 0 for d in rec_same), sum(d["rc"] == 1 for d in rec_slower)
        ok_rec = rs == len(rec_same) and rb == len(rec_slower)
        print(f"RECORD MODE  record vs A_copy pass: {rs}/{len(rec_same)}   record vs B regression: {rb}/{len(rec_slower)}")
    return 0 if ok_same == len(same) and ok_slower == len(slower) and fid["rc"] == 1 and ok_rec else 1


if __name__ == "__main__":
    sys.exit(main())
