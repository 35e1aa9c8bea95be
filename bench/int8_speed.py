"""INT8 speed and fidelity: onnxcomp ``quantize-int8`` vs FP32 vs onnxruntime's quantizers.

Usage::

    python bench/int8_speed.py [cnn] [digits] [bert] [densenet] [--threads 2] [--rounds 30]

* ``cnn``: ResNet-18 and MobileNetV2 (224x224, batch 1): FP32, onnxruntime
  ``quantize_static`` (QDQ, per-channel, MinMax) and onnxcomp (``--cnn-spec``), timed
  interleaved in one process; cosine of the logits against FP32.
* ``digits``: the trained digits classifier, top-1 accuracy FP32 vs INT8 on its test split.
* ``bert``: BERT-style encoder with synthetic activation-outlier channels injected into
  LayerNorm gains (compensated in the next weights, so FP32 outputs are unchanged),
  batch 8, sequence 32: FP32, onnxruntime ``quantize_dynamic`` and onnxcomp (auto mode);
  mean sentence-embedding cosine.
* ``densenet``: time to calibrate+quantize a synthetic 120-conv DenseNet-like graph, minus
  the time of running the calibration data through it.

Timing is interleaved in one process (every round runs each model once, in a shuffled order)
after warm-up; we quote the median over rounds of the paired per-round ratio. Speed lives here,
never in unit tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxcomp  # noqa: E402


def session(path: str | Path, threads: int) -> ort.InferenceSession:
    """A timing session as `onnxcomp bench` opens one: fully optimized, no thread spinning.

    Spinning intra-op threads of the session that ran last steal the cores from the next
    one in an interleaved round: on raw MobileNetV2 at 2 threads that made a 4.4 ms model
    read 25 ms and turned structurally identical INT8 graphs into 0.79x of each other.
    """
    from onnxcomp.checking.runtime import open_session

    return open_session(str(path), ["CPUExecutionProvider"], threads=threads, spinning=False)


def interleaved(paths: dict[str, Path], feeds: dict[str, np.ndarray], threads: int, rounds: int) -> dict[str, float]:
    """Median latency (ms) of each model, measured interleaved in one process.

    Each round runs every model once, in a shuffled order (a fixed A B C order showed a
    position bias of up to 20% on a shared machine). Ratios are best taken per round, see
    `paired_ratio`.
    """
    sess = {k: session(p, threads) for k, p in paths.items()}
    for s in sess.values():  # warm-up
        for _ in range(3):
            s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sess}
    order = list(sess)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            t = time.perf_counter()
            sess[k].run(None, feeds)
            times[k].append((time.perf_counter() - t) * 1e3)
    interleaved.last = times  # type: ignore[attr-defined]
    return {k: float(np.median(v)) for k, v in times.items()}


def paired_ratio(a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b) from the last `interleaved` run."""
    t = interleaved.last  # type: ignore[attr-defined]
    return float(np.median(np.asarray(t[a]) / np.asarray(t[b])))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


class _Reader:
    """A minimal onnxruntime CalibrationDataReader over an npz (batch 1)."""

    def __init__(self, npz: Path, names: list[str], batch: int = 1) -> None:
        z = np.load(npz)
        self.arrays = {n: z[n] for n in names}
        self.batch = batch
        self.i = 0

    def get_next(self):
        n = len(next(iter(self.arrays.values())))
        if self.i >= n:
            return None
        out = {k: v[self.i : self.i + self.batch] for k, v in self.arrays.items()}
        self.i += self.batch
        return out

    def rewind(self) -> None:
        self.i = 0


def ort_static(src: Path, dst: Path, npz: Path, names: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst), _Reader(npz, names), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
    )


def bench_cnn(work: Path, threads: int, rounds: int, spec: str) -> None:
    import models

    for name in ("resnet18", "mobilenetv2"):
        fp = work / f"{name}.onnx"
        cal = work / f"{name}_cal.npz"
        models.export(name, fp)
        models.make_calibration(name, cal, n=16)
        ours = work / f"{name}.onnxcomp.int8.onnx"
        t = time.perf_counter()
        onnxcomp.optimize(str(fp), preset="int8", passes=[spec], calibration_data=str(cal), output=str(ours))
        t_ours = time.perf_counter() - t
        peer = work / f"{name}.ort.int8.onnx"
        t = time.perf_counter()
        ort_static(fp, peer, cal, ["input"])
        t_peer = time.perf_counter() - t
        z = np.load(cal)
        x = {"input": z["input"][:1]}
        lat = interleaved({"fp32": fp, "ort_static": peer, "onnxcomp": ours}, x, threads, rounds)
        ref = [session(fp, threads).run(None, {"input": z["input"][i : i + 1]})[0] for i in range(8)]
        cos, agg = {}, {}
        for k, p in (("ort_static", peer), ("onnxcomp", ours)):
            s = session(p, threads)
            got = [s.run(None, {"input": z["input"][i : i + 1]})[0] for i in range(len(ref))]
            cos[k] = min(cosine(r, g) for r, g in zip(ref, got))
            agg[k] = cosine(np.concatenate(ref), np.concatenate(got))
        print(
            f"{name} [{spec}]: 224x224 b1 {threads} threads | median ms fp32 {lat['fp32']:.2f} ort_static {lat['ort_static']:.2f} "
            f"onnxcomp {lat['onnxcomp']:.2f} | speedup vs fp32 (paired median): ort {paired_ratio('fp32', 'ort_static'):.2f}x, "
            f"onnxcomp {paired_ratio('fp32', 'onnxcomp'):.2f}x | onnxcomp speed relative to ort_static "
            f"{paired_ratio('ort_static', 'onnxcomp'):.2f} | cosine over 8 imgs ort {agg['ort_static']:.4f} onnxcomp {agg['onnxcomp']:.4f}, "
            f"worst single img ort {cos['ort_static']:.4f} onnxcomp {cos['onnxcomp']:.4f} "
            f"| quantize time onnxcomp {t_ours:.1f}s ort {t_peer:.1f}s",
            flush=True,
        )


def bench_digits(work: Path, threads: int) -> None:
    import models

    fp = work / "digits.onnx"
    models.export("digits", fp)
    cal = work / "digits_cal.npz"
    models.make_calibration("digits", cal, n=128)
    test = work / "digits_test.npz"
    models.digits.test_split_npz(test)
    ours = work / "digits.int8.onnx"
    onnxcomp.optimize(str(fp), preset="int8", calibration_data=str(cal), output=str(ours))
    z = np.load(test)
    x, y = z["input"], z["label"]
    acc = {}
    for k, p in (("fp32", fp), ("int8", ours)):
        s = session(p, threads)
        b = s.get_inputs()[0].shape[0]
        b = b if isinstance(b, int) else len(x)
        preds = np.concatenate([s.run(None, {"input": x[i : i + b]})[0].argmax(1) for i in range(0, len(x) - len(x) % b, b)])
        acc[k] = float((preds == y[: len(preds)]).mean() * 100)
    print(f"digits: top-1 fp32 {acc['fp32']:.2f}% int8 {acc['int8']:.2f}% (drop {acc['fp32'] - acc['int8']:.2f} points, n={len(x)})", flush=True)


def inject_outliers(model: onnx.ModelProto, channels: int = 6, factor: float = 40.0, seed: int = 0) -> onnx.ModelProto:
    """Give a few hidden channels of every LayerNorm output ``factor``x larger values, the
    pattern of pretrained encoders (random-init models lack it).

    The gains/biases of those channels are scaled; the rows of the consuming MatMul
    weights are divided by ``factor`` so the projections stay in range, while the residual
    stream (post-LN: the LayerNorm output feeds the next residual Add) carries the outliers.
    The result is the FP32 reference the quantized model is compared with.
    """
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    cons: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    chosen = None
    done: set[str] = set()
    for n in model.graph.node:
        if n.op_type != "LayerNormalization" or len(n.input) < 3 or n.input[1] not in inits or n.input[2] not in inits:
            continue
        g = numpy_helper.to_array(inits[n.input[1]]).copy()
        b = numpy_helper.to_array(inits[n.input[2]]).copy()
        if chosen is None:
            chosen = rng.choice(g.size, channels, replace=False)
        g[chosen] *= factor
        b[chosen] *= factor
        # Fresh tensors: exporters may share one gain/bias tensor between norms.
        gn, bn = f"{n.input[1]}_outlier_{n.name}", f"{n.input[2]}_outlier_{n.name}"
        model.graph.initializer.extend([numpy_helper.from_array(g, gn), numpy_helper.from_array(b, bn)])
        n.input[1], n.input[2] = gn, bn
        for u in cons.get(n.output[0], []):
            if u.op_type == "MatMul" and u.input[1] in inits and u.input[1] not in done:
                w = numpy_helper.to_array(inits[u.input[1]]).copy()
                w[chosen, :] /= factor
                inits[u.input[1]].CopyFrom(numpy_helper.from_array(w, u.input[1]))
                done.add(u.input[1])
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def bench_bert(work: Path, threads: int, rounds: int) -> None:
    import models
    from onnxruntime.quantization import QuantType, quantize_dynamic

    raw = work / "bert_raw.onnx"
    models.export("bert", raw, batch=8, seq_len=32)
    m = onnx.load(raw)
    fp = work / "bert.onnx"
    onnx.save(inject_outliers(m), fp)
    cal = work / "bert_cal.npz"
    models.make_calibration("bert", cal, n=32)
    z = np.load(cal)
    names = [i.name for i in session(fp, 1).get_inputs()]
    ours = work / "bert.int8.onnx"
    t = time.perf_counter()
    onnxcomp.optimize(str(fp), preset="int8", calibration_data=str(cal), output=str(ours))
    t_ours = time.perf_counter() - t
    peer = work / "bert.ortdyn.onnx"
    quantize_dynamic(str(fp), str(peer), weight_type=QuantType.QInt8)
    feeds = {k: z[k][:8] for k in names}
    lat = interleaved({"fp32": fp, "ort_dynamic": peer, "onnxcomp": ours}, feeds, threads, rounds)
    out_name = "sentence_embedding"
    ref_s = session(fp, threads)
    idx = [o.name for o in ref_s.get_outputs()].index(out_name)
    cos = {}
    for k, p in (("ort_dynamic", peer), ("onnxcomp", ours)):
        s = session(p, threads)
        vals = []
        for i in range(0, len(z[names[0]]) - 7, 8):
            f = {n: z[n][i : i + 8] for n in names}
            r, c = ref_s.run(None, f)[idx], s.run(None, f)[idx]
            vals += [cosine(r[j], c[j]) for j in range(len(r))]
        cos[k] = float(np.mean(vals))
    print(
        f"bert (outliers injected): b8 s32 {threads} threads | median ms fp32 {lat['fp32']:.2f} ort_dynamic {lat['ort_dynamic']:.2f} "
        f"onnxcomp {lat['onnxcomp']:.2f} | speedup vs fp32 (paired median): ort_dynamic {paired_ratio('fp32', 'ort_dynamic'):.2f}x onnxcomp "
        f"{paired_ratio('fp32', 'onnxcomp'):.2f}x | mean embedding cosine ort_dynamic {cos['ort_dynamic']:.4f} onnxcomp {cos['onnxcomp']:.4f} "
        f"| quantize time {t_ours:.1f}s",
        flush=True,
    )


def densenet_like(n_blocks: int = 4, layers_per_block: int = 30, growth: int = 16, hw: int = 28) -> onnx.ModelProto:
    """Synthetic DenseNet-like graph: 120 Conv+Relu with Concat feature reuse."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    c = 32
    cur = "input"
    k = 0

    def conv(x: str, cin: int, cout: int, ksize: int) -> str:
        nonlocal k
        k += 1
        w = (rng.standard_normal((cout, cin, ksize, ksize)) * np.sqrt(2.0 / (cin * ksize * ksize))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{k}"))
        nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[ksize // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"))
        return f"r{k}"

    cur = conv(cur, 3, c, 3)
    for blk in range(n_blocks):
        feats = [cur]
        for _ in range(layers_per_block - (1 if blk == 0 else 0)):
            x = feats[0] if len(feats) == 1 else f"cat{k}"
            if len(feats) > 1:
                nodes.append(helper.make_node("Concat", feats, [x], name=f"concat{k}", axis=1))
            cin = c + growth * (len(feats) - 1)
            feats.append(conv(x, cin, growth, 3))
        nodes.append(helper.make_node("Concat", feats, [f"blk{blk}"], name=f"blockcat{blk}", axis=1))
        cin = c + growth * (len(feats) - 1)
        cur = f"blk{blk}"
        if blk < n_blocks - 1:
            nodes.append(helper.make_node("MaxPool", [cur], [f"pool{blk}"], name=f"pool{blk}", kernel_shape=[2, 2], strides=[2, 2]))
            cur = f"pool{blk}"
        c = cin
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"], name="gap"))
    g = helper.make_graph(
        nodes, "densenet_like", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("gap", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def bench_densenet(work: Path) -> None:
    from onnxcomp.pipeline.pass_api import PassContext
    from onnxcomp.checking.calibration import CalibrationData
    from onnxcomp.ir.convert import to_graph
    from onnxcomp.checking.runtime import make_session
    from onnxcomp.passes.quantize_int8 import QuantizeInt8, QuantizeInt8Options

    model = densenet_like()
    n_conv = sum(1 for n in model.graph.node if n.op_type == "Conv")
    x = np.random.default_rng(0).standard_normal((16, 3, 28, 28)).astype(np.float32)
    cal = CalibrationData.from_source({"input": x}, model)
    for calib in ("minmax", "entropy"):
        graph, meta = to_graph(model)
        ctx = PassContext(original_model=model, meta=meta, calibration=cal)
        t = time.perf_counter()
        res = QuantizeInt8(QuantizeInt8Options(calibrator=calib)).run(graph, ctx)
        total = time.perf_counter() - t
        # The data-running share: one session exposing every quantized activation, all batches.
        from onnxcomp.quantization.collect import expose_outputs

        names = [n.output[0] for n in model.graph.node if n.op_type in ("Relu", "Concat", "MaxPool", "GlobalAveragePool")]
        t = time.perf_counter()
        s = make_session(expose_outputs(model, names))
        for f in cal:
            s.run(None, f)
        run_t = time.perf_counter() - t
        print(
            f"  stats: {res.stats}\n"
            f"densenet-like ({n_conv} convs, 16 samples 3x28x28, calibrator {calib}): quantize-int8 {total:.2f}s total, "
            f"running calibration data {run_t:.2f}s, overhead {total - run_t:.2f}s (estimated cosine {res.stats.get('estimated_cosine')})",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="*", default=["cnn", "digits", "bert", "densenet"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--cnn-spec", default="quantize-int8",
        help="quantize-int8 options for the CNNs (default: the pass defaults)",
    )
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="int8-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider, workdir {work}", flush=True)
    if "densenet" in a.what:
        bench_densenet(work)
    if "digits" in a.what:
        bench_digits(work, a.threads)
    if "cnn" in a.what:
        bench_cnn(work, a.threads, a.rounds, a.cnn_spec)
    if "bert" in a.what:
        bench_bert(work, a.threads, a.rounds)


if __name__ == "__main__":
    main()
