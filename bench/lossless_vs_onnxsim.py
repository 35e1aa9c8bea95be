"""Compare onnxcomp's ``lossless`` preset with onnx-simplifier (onnxsim).

For each reference export (ResNet-style, MobileNet-style, BERT-style; the default
optimised export and the raw ``keep_batchnorm=True`` export) this prints: node counts of
the input, of onnxsim's result and of ours; each tool's median wall time (runs interleaved
A B A B in one process, so machine noise hits both alike) and the ratio; and the max abs
output difference of each result against the input model in onnxruntime on generated inputs.

Usage::

    python bench/lossless_vs_onnxsim.py [--rounds 3] [--small] [--models resnet18,mobilenetv2,bert]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


def _max_abs_diff(ref: onnx.ModelProto, cand: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    from onnxcomp.verify import evaluate

    a, b = evaluate(ref, [feeds])[0], evaluate(cand, [feeds])[0]
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="use the small model variants")
    parser.add_argument("--models", default="resnet18,mobilenetv2,bert")
    parser.add_argument("--verify", default="each", choices=["each", "final", "none"], help="onnxcomp verification mode")
    args = parser.parse_args()

    import onnxsim

    import models
    import onnxcomp
    from onnxcomp.calibration import generate_inputs

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            for keep_bn in (False, True):
                path = Path(d) / f"{name}{'_bn' if keep_bn else ''}.onnx"
                models.export(name, path, small=args.small, keep_batchnorm=keep_bn)
                model = onnx.load(str(path))
                feeds = generate_inputs(model, seed=0)
                t_sim, t_ours = [], []
                sim_model = ours = None
                for _ in range(args.rounds):  # interleaved: A B A B ...
                    t0 = time.perf_counter()
                    sim_model, ok = onnxsim.simplify(model)
                    t_sim.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    ours, _ = onnxcomp.optimize(model, preset="lossless", verify=args.verify, allow_unverified=args.verify == "none")
                    t_ours.append(time.perf_counter() - t0)
                assert sim_model is not None and ours is not None
                ms, mo = statistics.median(t_sim), statistics.median(t_ours)
                rows.append(
                    (
                        path.stem,
                        len(model.graph.node),
                        len(sim_model.graph.node),
                        len(ours.graph.node),
                        ms,
                        mo,
                        ms / mo,
                        _max_abs_diff(model, sim_model, feeds),
                        _max_abs_diff(model, ours, feeds),
                    )
                )
                print(f"done {path.stem}", flush=True)

    head = ("model", "nodes in", "onnxsim", "onnxcomp", "sim s", "ours s", "sim/ours", "sim maxdiff", "ours maxdiff")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.1e} | {r[8]:.1e} |")
    print(f"(median of {args.rounds} interleaved rounds; small={args.small}; onnxcomp verify={args.verify}; "
          "onnxruntime CPU EP; batch 1; images 3x224x224 (32x32 small), BERT seq 32)")


if __name__ == "__main__":
    main()
