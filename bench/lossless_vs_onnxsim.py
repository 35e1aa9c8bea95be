"""Compare onnxcomp's ``lossless`` preset with onnx-simplifier (onnxsim).

For each reference export (ResNet-style, MobileNet-style, BERT-style; the default
optimised export and the raw ``keep_batchnorm=True`` export) this prints: node counts of
the input, of onnxsim's result and of ours; median wall times (runs interleaved A B C A B C
in one process, so machine noise hits all alike) of onnxsim (its default, no numeric
check, and ``check_n=1``, which compares outputs once), of ``onnxcomp.optimize`` (every
check on: the full checker and a numeric check in onnxruntime), of ``optimize`` with
``verify="none"`` (checker only; the like-for-like match of onnxsim's default) and of
the bare lossless passes (the same fixed-point loop without any checks: what the passes
themselves cost); and the max abs output difference of each result against the input
model in onnxruntime on generated inputs.

With ``--cli`` it also times what a user runs: ``onnxsim IN OUT`` against
``onnxcomp optimize IN -o OUT`` as subprocesses (interpreter start, imports, load, save).

Usage::

    PYTHONPATH=. python bench/lossless_vs_onnxsim.py [--rounds 3] [--small] [--models resnet18,mobilenetv2,bert] [--cli]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


def _max_abs_diff(ref: onnx.ModelProto, cand: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    from onnxcomp.checking.verify import evaluate

    a, b = evaluate(ref, [feeds])[0], evaluate(cand, [feeds])[0]
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def _passes_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The lossless cleanup group to a fixed point, with no checks at all (not even the
    checker): import, the passes with the manager's cleanup and sort between them, export."""
    from onnxcomp.ir.convert import to_graph, to_model
    from onnxcomp.ir.graph import remove_dead_nodes, toposort
    from onnxcomp.pipeline.pass_api import PassContext
    from onnxcomp.pipeline.registry import instantiate
    from onnxcomp.pipeline.presets import CLEANUP

    graph, meta = to_graph(model)
    ctx = PassContext(original_model=model, meta=meta)
    passes = [instantiate(name) for name in CLEANUP]
    for _ in range(8):
        changed = False
        for p in passes:
            if p.run(graph, ctx).modified:
                remove_dead_nodes(graph)
                toposort(graph)
                ctx.invalidate_analyses()
                changed = True
        if not changed:
            break
    return to_model(graph, meta)


def _cli_seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _cli_rows(paths: list[Path], rounds: int) -> list[tuple[str, float, float]]:
    """Median end-to-end seconds of both command lines per model, interleaved."""
    sim = shutil.which("onnxsim")
    if sim is None:
        raise SystemExit("--cli needs the onnxsim console script on PATH")
    rows = []
    for path in paths:
        t_sim, t_ours = [], []
        for _ in range(rounds):
            t_sim.append(_cli_seconds([sim, str(path), str(path.with_suffix(".sim.onnx"))]))
            t_ours.append(_cli_seconds([sys.executable, "-m", "onnxcomp", "-q", "optimize", str(path), "-o", str(path.with_suffix(".ours.onnx"))]))
        rows.append((path.stem, statistics.median(t_sim), statistics.median(t_ours)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="use the small model variants")
    parser.add_argument("--models", default="resnet18,mobilenetv2,bert")
    parser.add_argument("--verify", default="each", choices=["each", "final", "none"], help="onnxcomp verification mode")
    parser.add_argument("--cli", action="store_true", help="also time both command lines end to end")
    args = parser.parse_args()

    import onnxsim

    import models
    import onnxcomp
    from onnxcomp.checking.calibration import generate_inputs

    rows = []
    cli_rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as d:
        paths: list[Path] = []
        for name in args.models.split(","):
            for keep_bn in (False, True):
                path = Path(d) / f"{name}{'_bn' if keep_bn else ''}.onnx"
                models.export(name, path, small=args.small, keep_batchnorm=keep_bn)
                paths.append(path)
                model = onnx.load(str(path))
                feeds = generate_inputs(model, seed=0)
                t_sim, t_simck, t_ours, t_unver, t_bare = [], [], [], [], []
                sim_model = ours = None
                _passes_only(model)  # warm-up: imports and first-use costs
                for _ in range(args.rounds):  # interleaved: A B C A B C ...
                    t0 = time.perf_counter()
                    sim_model, ok = onnxsim.simplify(model)
                    t_sim.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    onnxsim.simplify(model, check_n=1)  # onnxsim with a numeric check, like ours
                    t_simck.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    ours, _ = onnxcomp.optimize(model, preset="lossless", verify=args.verify, allow_unverified=args.verify == "none")
                    t_ours.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()  # ours without the numeric check (like onnxsim's default)
                    onnxcomp.optimize(model, preset="lossless", verify="none", allow_unverified=True)
                    t_unver.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    _passes_only(model)
                    t_bare.append(time.perf_counter() - t0)
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
                        statistics.median(t_simck),
                        statistics.median(t_simck) / mo,
                        statistics.median(t_unver),
                        ms / statistics.median(t_unver),
                        statistics.median(t_bare),
                        _max_abs_diff(model, sim_model, feeds),
                        _max_abs_diff(model, ours, feeds),
                    )
                )
                print(f"done {path.stem}", flush=True)
        if args.cli:
            cli_rows = _cli_rows(paths, args.rounds)

    head = ("model", "nodes in", "onnxsim", "onnxcomp", "sim s", "ours s", "sim/ours", "sim check_n=1 s", "sim-checked/ours",
            "ours verify=none s", "sim/ours-none", "passes-only s", "sim maxdiff", "ours maxdiff")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.2f} | {r[7]:.3f} | {r[8]:.2f} | {r[9]:.3f} "
              f"| {r[10]:.2f} | {r[11]:.3f} | {r[12]:.1e} | {r[13]:.1e} |")
    print(f"(median of {args.rounds} interleaved rounds; small={args.small}; onnxcomp verify={args.verify}; "
          "onnxruntime CPU EP; batch 1; images 3x224x224 (32x32 small), BERT seq 32)")
    if cli_rows:
        print("\n| model | `onnxsim IN OUT` s | `onnxcomp optimize IN -o OUT` s | sim/ours |\n|---|---|---|---|")
        for name, ts, to in cli_rows:
            print(f"| {name} | {ts:.2f} | {to:.2f} | {ts / to:.2f} |")
        print(f"(command lines end to end, median of {args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
