"""Speed of ``prune-channels`` models vs. the FP32 original (onnxruntime CPU, interleaved).

Exports the reference models (full size, batch 1), prunes them through the public API
and times original and pruned *interleaved in one process* (A B A B ..., warm-up
first), reporting the ratio of medians. Absolute times are noise on a shared machine;
only ratios are printed as results.

    python bench/prune_speed.py [--models resnet18,mobilenetv2,bert] [--ratio 0.5]
        [--bert-ratio 0.3] [--threads 2] [--rounds 30] [--workdir /tmp/prune_bench]
        [--torch-pruning]

With ``--torch-pruning`` (CNNs only, needs the ``bench`` extra), the same model pruned by
Torch-Pruning (``MagnitudePruner``, L1, same ratio, classifier ignored) is exported and
timed against the original in the same interleaved way, as the peer reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
import onnxcomp
from onnxcomp.ir.cost import model_cost


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def interleaved(a: ort.InferenceSession, b: ort.InferenceSession, feeds: dict, rounds: int, warmup: int = 5) -> tuple[float, float, float]:
    """Median A, median B and median of per-round ratios A/B, timed A B A B ..."""
    for _ in range(warmup):
        a.run(None, feeds)
        b.run(None, feeds)
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a.run(None, feeds)
        t1 = time.perf_counter()
        b.run(None, feeds)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def torch_pruning_model(name: str, ratio: float, path: Path) -> onnx.ModelProto:
    """``name`` pruned by Torch-Pruning at ``ratio`` (L1 magnitude), exported to ONNX."""
    import torch
    import torch_pruning as tp

    net = models.build(name).eval()
    inputs = models.example_inputs(name)
    example = tuple(torch.from_numpy(v) for v in inputs.values())
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(net, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[last])
    pruner.step()
    models.export(name, path, module=net)
    return onnx.load(str(path))


def encoder_params(model: onnx.ModelProto) -> int:
    """Parameters of initializers that are not embeddings (BERT encoder layers)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if "embedding" not in t.name and "pos" not in t.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenetv2,bert")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--bert-ratio", type=float, default=0.3)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--workdir", default="/tmp/prune_bench")
    ap.add_argument("--torch-pruning", action="store_true", help="also time Torch-Pruning's result (CNNs)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"onnxruntime {ort.__version__} CPUExecutionProvider, intra-op threads={args.threads}, batch 1, "
          f"{args.rounds} interleaved rounds")
    for name in args.models.split(","):
        path = work / f"{name}.onnx"
        if not path.exists():
            models.export(name, path)
        ratio = args.bert_ratio if name == "bert" else args.ratio
        calib = work / f"{name}_calib.npz"
        if not calib.exists():
            models.make_calibration(name, calib, n=8)
        t0 = time.perf_counter()
        pruned, _ = onnxcomp.optimize(str(path), passes=[f"prune-channels:ratio={ratio},criterion={args.criterion}"],
                                           calibration_data=str(calib))
        secs = time.perf_counter() - t0
        orig = onnx.load(str(path))
        feeds = {k: v[:1] for k, v in np.load(calib).items() if k in {i.name for i in orig.graph.input}}
        a, b = _session(orig, args.threads), _session(pruned, args.threads)
        oa, ob = a.run(None, feeds), b.run(None, feeds)
        same_shape = all(x.shape == y.shape for x, y in zip(oa, ob))
        ma, mb, r = interleaved(a, b, feeds, args.rounds)
        ca, cb = model_cost(orig), model_cost(pruned)
        shape = {i.name: list(v.shape) for i, v in zip(orig.graph.input, feeds.values())}
        line = (f"{name:12s} ratio={ratio} input={shape} speedup(median of ratios)={r:.2f}x "
                f"(ratio of medians {ma / mb:.2f}x) params {ca.params / 1e6:.2f}M->{cb.params / 1e6:.2f}M "
                f"FLOPs {ca.flops / 1e9:.3f}G->{cb.flops / 1e9:.3f}G same_output_shape={same_shape} prune_time={secs:.1f}s")
        if name == "bert":
            ea, eb = encoder_params(orig), encoder_params(pruned)
            line += f" encoder_params_removed={(1 - eb / ea) * 100:.1f}%"
        print(line, flush=True)
        if args.torch_pruning and name != "bert":
            tpm = torch_pruning_model(name, ratio, work / f"{name}_tp{ratio}.onnx")
            c = _session(tpm, args.threads)
            ma, mc, r = interleaved(a, c, feeds, args.rounds)
            print(f"{'':12s} torch-pruning ratio={ratio}: speedup {r:.2f}x (ratio of medians {ma / mc:.2f}x) "
                  f"params {model_cost(tpm).params / 1e6:.2f}M FLOPs {model_cost(tpm).flops / 1e9:.3f}G", flush=True)


if __name__ == "__main__":
    main()
