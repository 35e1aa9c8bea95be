"""What each corpus model is for, measured: its inputs and a task metric against FP32.

A `Task` holds the calibration feeds (what tools may fit on), the held-out batches (what
is measured; never given to a tool), one feed for timing, a ``predict(session)`` that runs
the held-out data the way the model is used, and a ``score(reference, candidate)`` that
compares two predictions (the FP32 model's and a tool's) — plus, where the inputs carry a
ground truth (rendered text, rotation, paraphrase partner), the candidate's accuracy on it.

Metrics:

* ``yolov8n``: detections (confidence > 0.25, class-aware NMS at IoU 0.45); F1 of the
  candidate's boxes against FP32's (same class, IoU ≥ 0.5, greedy by confidence).
* ``ocr_det``: the probability map binarised at 0.3 (PP-OCR's threshold), connected
  components with mean score ≥ 0.5 as boxes; box F1 against FP32 (IoU ≥ 0.5) and pixel IoU.
* ``ocr_rec``: CTC greedy decoding with the model's own character list (metadata
  ``character``, blank first, space last); exact string agreement with FP32, and exact
  match with the rendered text (spaces ignored).
* ``ocr_cls``: 0°/180° decision agreement with FP32; accuracy on the true rotation.
* ``minilm_l3``: mean-pooled token embeddings (attention mask); cosine to FP32 (mean,
  min), nearest-neighbour agreement within the held-out set, paraphrase-partner retrieval.
* ``silero_vad``: 512-sample chunks at 16 kHz, each prefixed by the previous chunk's last
  64 samples (as silero's wrapper feeds it), the LSTM state carried from chunk to chunk
  (each model carries its own); max and mean |p − p_FP32| and speech/non-speech decision
  agreement at 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import real_data as D

Feeds = dict[str, np.ndarray]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a[N,4]`` against ``b[M,4]`` (x1, y1, x2, y2) → ``[N, M]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (highest score first)."""
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[_iou(boxes[i:i + 1], boxes[rest])[0] < iou]
    return np.asarray(keep, np.int64)


def match_counts(ref: list[tuple[int, float, np.ndarray]], cand: list[tuple[int, float, np.ndarray]],
                 iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of ``cand`` against ``ref`` (same class, IoU ≥ ``iou``)."""
    used = [False] * len(ref)
    tp = 0
    for c, _, box in sorted(cand, key=lambda d: -d[1]):
        best, best_j = iou, -1
        for j, (rc, _, rbox) in enumerate(ref):
            if used[j] or rc != c:
                continue
            v = float(_iou(box[None], rbox[None])[0, 0])
            if v >= best:
                best, best_j = v, j
        if best_j >= 0:
            used[best_j] = True
            tp += 1
    return tp, len(cand) - tp, len(ref) - tp


def f1(tp: int, fp: int, fn: int) -> float:
    """F1 score; 1.0 when there was nothing to find and nothing was found."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


class Task:
    """Inputs and metric of one corpus model (see the module docstring)."""

    #: ``stacked``: calibration written as one .npz, samples on axis 0; ``feeds``: a folder
    #: of complete feeds, one .npz per sample (scalars and state tensors included).
    calibration_layout = "stacked"
    #: What the held-out and calibration data are (quoted in the report).
    data_note = ""

    def __init__(self, model_path: Path, cache: Path, *, quick: bool, seed: int) -> None:
        self.model_path = model_path
        self.cache = cache
        self.quick = quick
        self.seed = seed
        self.calibration: list[Feeds] = []  # one sample per feed (batch 1)
        self.held_out: list[Feeds] = []

    @property
    def timing_feed(self) -> Feeds:
        """The feed timed for latency: the first held-out batch."""
        return self.held_out[0]

    def predict(self, run: Callable[[Feeds], list[np.ndarray]]) -> Any:
        """Predictions on every held-out batch (``run(feeds)`` → outputs in model order)."""
        return [run(f) for f in self.held_out]

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        raise NotImplementedError

    def headline(self, s: dict[str, float]) -> str:
        raise NotImplementedError


def _stack(samples: list[np.ndarray], name: str, batch: int) -> list[Feeds]:
    return [{name: np.stack(samples[i:i + batch])} for i in range(0, len(samples), batch)]


class YoloTask(Task):
    data_note = ("held-out: scikit-image photos astronaut, camera, coffee, chelsea, motorcycle_left, rocket (whole + "
                 "one crop) and LFW face mosaics 0-47; calibration: brick, grass, gravel, coins, ihc, hubble, horse, "
                 "page, moon, retina (+ crops) and LFW faces 100-147; 320×320 letterboxed, batch 1")

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        from real_fetch import sample_photo

        read = lambda n: sample_photo(n, self.cache)
        self.calibration = [{"images": p[None]} for p in D.photos(D.CALIBRATION, read, self.seed)]
        self.held_out = [{"images": p[None]} for p in D.photos(D.HELD_OUT, read, self.seed)]

    @staticmethod
    def detections(out: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
        o = out[0]  # [4 + classes, anchors]
        scores = o[4:].T
        cls, conf = scores.argmax(1), scores.max(1)
        keep = conf > 0.25
        xywh, cls, conf = o[:4].T[keep], cls[keep], conf[keep]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        kept = nms(boxes + cls[:, None] * 4096.0, conf, 0.45)  # class-aware: classes never overlap
        return [(int(cls[i]), float(conf[i]), boxes[i]) for i in kept]

    def predict(self, run: Callable[[Feeds], list[np.ndarray]]) -> Any:
        return [self.detections(run(f)[0]) for f in self.held_out]

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        tp = fp = fn = 0
        for r, c in zip(ref, cand):
            a, b, d = match_counts(r, c)
            tp, fp, fn = tp + a, fp + b, fn + d
        return {"f1": f1(tp, fp, fn), "reference_boxes": float(sum(len(r) for r in ref)),
                "boxes": float(sum(len(c) for c in cand))}

    def headline(self, s: dict[str, float]) -> str:
        return f"F1 {s['f1']:.3f} ({s['boxes']:.0f} boxes; FP32 {s['reference_boxes']:.0f})"


class OcrDetTask(Task):
    data_note = ("held-out: rendered document pages (another text, mixed font sizes, uneven paper) 480×640; calibration: pages "
                 "from another text; batch 1")

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        n_cal, n_eval = (3, 3) if self.quick else (6, 6)
        self.calibration = [{"x": D.text_page(D.CALIBRATION, self.seed + i)[None]} for i in range(n_cal)]
        self.held_out = [{"x": D.text_page(D.HELD_OUT, self.seed + i)[None]} for i in range(n_eval)]

    @staticmethod
    def boxes(prob: np.ndarray) -> tuple[np.ndarray, list[tuple[int, float, np.ndarray]]]:
        from scipy import ndimage

        p = prob[0, 0]
        bitmap = p > 0.3
        labels, _ = ndimage.label(bitmap)
        out = []
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            ys, xs = sl
            if ys.stop - ys.start < 3 or xs.stop - xs.start < 3:
                continue
            score = float(p[sl][labels[sl] == k].mean())
            if score >= 0.5:
                out.append((0, score, np.array([xs.start, ys.start, xs.stop, ys.stop], np.float32)))
        return bitmap, out

    def predict(self, run: Callable[[Feeds], list[np.ndarray]]) -> Any:
        return [self.boxes(run(f)[0]) for f in self.held_out]

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        tp = fp = fn = 0
        inter = union = 0
        for (rb, rboxes), (cb, cboxes) in zip(ref, cand):
            a, b, d = match_counts(rboxes, cboxes)
            tp, fp, fn = tp + a, fp + b, fn + d
            inter += int((rb & cb).sum())
            union += int((rb | cb).sum())
        return {"box_f1": f1(tp, fp, fn), "pixel_iou": inter / union if union else 1.0,
                "reference_boxes": float(sum(len(r[1]) for r in ref))}

    def headline(self, s: dict[str, float]) -> str:
        return f"box F1 {s['box_f1']:.3f} · pixel IoU {s['pixel_iou']:.3f} ({s['reference_boxes']:.0f} FP32 boxes)"


class _LineTask(Task):
    """Rendered text lines (recogniser and classifier share them)."""

    height, width = 48, 320

    def _lines(self, split: str, n: int) -> tuple[list[str], list[np.ndarray]]:
        rng = np.random.default_rng(self.seed + (7 if split == D.CALIBRATION else 7007))
        texts = D.text_lines(split, n, self.seed)
        return texts, [D.render_line(t, rng, size=int(rng.integers(22, 40))) for t in texts]


class OcrRecTask(_LineTask):
    data_note = ("held-out: rendered lines from a warehouse-report text plus prices, dates and codes (ground truth "
                 "known), 48×320, batches of 8; calibration: lines from a receipt text")

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        n_cal, n_eval = (16, 16) if self.quick else (32, 48)
        _, cal = self._lines(D.CALIBRATION, n_cal)
        self.truth, ev = self._lines(D.HELD_OUT, n_eval)
        self.calibration = [{"x": D.fit_line(im, self.height, self.width)[None]} for im in cal]
        self.held_out = _stack([D.fit_line(im, self.height, self.width) for im in ev], "x", 8)
        meta = {p.key: p.value for p in onnx.load(str(self.model_path), load_external_data=False).metadata_props}
        self.chars = ["", *meta["character"].split("\n"), " "]  # blank first, space last (PP-OCR)

    def decode(self, probs: np.ndarray) -> list[str]:
        out = []
        for row in probs.argmax(-1):
            prev, s = 0, []
            for k in row:
                if k != prev and k != 0:
                    s.append(self.chars[k] if k < len(self.chars) else "?")
                prev = k
            out.append("".join(s).strip())
        return out

    def predict(self, run: Callable[[Feeds], list[np.ndarray]]) -> Any:
        return [s for f in self.held_out for s in self.decode(run(f)[0])]

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        norm = lambda s: "".join(s.split())
        return {"agree": float(np.mean([r == c for r, c in zip(ref, cand)])),
                "exact_vs_truth": float(np.mean([norm(c) == norm(t) for c, t in zip(cand, self.truth)]))}

    def headline(self, s: dict[str, float]) -> str:
        return f"strings = FP32 {100 * s['agree']:.1f}% · exact vs text {100 * s['exact_vs_truth']:.1f}%"


class OcrClsTask(_LineTask):
    data_note = ("held-out: rendered lines (warehouse-report text), every other one rotated 180°, 48×192, batches of "
                 "8; calibration: receipt-text lines, likewise")
    width = 192

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        n_cal, n_eval = (16, 16) if self.quick else (32, 48)

        def prepared(split: str, n: int) -> tuple[list[np.ndarray], list[int]]:
            _, imgs = self._lines(split, n)
            labels = [i % 2 for i in range(n)]
            xs = [D.fit_line(im[::-1, ::-1] if lab else im, self.height, self.width) for im, lab in zip(imgs, labels)]
            return xs, labels

        cal, _ = prepared(D.CALIBRATION, n_cal)
        ev, self.truth = prepared(D.HELD_OUT, n_eval)
        self.calibration = [{"x": x[None]} for x in cal]
        self.held_out = _stack(ev, "x", 8)

    def predict(self, run: Callable[[Feeds], list[np.ndarray]]) -> Any:
        return [int(k) for f in self.held_out for k in run(f)[0].argmax(-1)]

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        return {"agree": float(np.mean(np.equal(ref, cand))), "accuracy": float(np.mean(np.equal(cand, self.truth)))}

    def headline(self, s: dict[str, float]) -> str:
        return f"= FP32 {100 * s['agree']:.1f}% · accuracy {100 * s['accuracy']:.1f}%"


class MiniLmTask(Task):
    data_note = ("held-out: 24 English sentences in 12 paraphrase pairs, one batch (bert-base-uncased WordPiece); "
                 "calibration: 16 other sentences, one per sample")

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        from real_fetch import tokenizer_json

        tok = D.WordPiece.from_tokenizer_json(tokenizer_json(self.cache))
        cal = tok.batch(D.SENTENCES[D.CALIBRATION])
        self.calibration = [{k: v[i:i + 1] for k, v in cal.items()} for i in range(len(D.SENTENCES[D.CALIBRATION]))]
        self.held_out = [tok.batch(D.SENTENCES[D.HELD_OUT])]

    def predict(self, run: Callable[[Feeds], list[np.ndarray]]) -> Any:
        f = self.held_out[0]
        hidden = next(o for o in run(f) if o.ndim == 3)  # the token embeddings [batch, seq, 384]
        m = f["attention_mask"][..., None].astype(np.float32)
        emb = (hidden * m).sum(1) / m.sum(1)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    @staticmethod
    def _neighbours(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        cos = (ref * cand).sum(1)
        nn = self._neighbours(cand)
        partner = np.arange(len(nn)) ^ 1  # pairs are (0, 1), (2, 3), …
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                "nn_agree": float(np.mean(nn == self._neighbours(ref))), "paraphrase_top1": float(np.mean(nn == partner))}

    def headline(self, s: dict[str, float]) -> str:
        return (f"cos min {s['cos_min']:.4f} · NN = FP32 {100 * s['nn_agree']:.0f}% · "
                f"paraphrase top-1 {100 * s['paraphrase_top1']:.0f}%")


class SileroTask(Task):
    calibration_layout = "feeds"

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.eval_seconds = 8.0 if self.quick else 20.0
        self.data_note = (f"held-out: {self.eval_seconds:.0f} s of synthetic speech (a ≈ 210 Hz voice, pauses, noise "
                          "bursts), 512-sample chunks + 64 samples of context at 16 kHz, state carried; calibration: "
                          "every other complete feed (chunk, carried FP32 state, sr) of 6 s of a ≈ 120 Hz voice")
        self.chunks = D.vad_chunks(D.synthetic_speech(D.HELD_OUT, self.eval_seconds, self.seed))
        self.cal_chunks = D.vad_chunks(D.synthetic_speech(D.CALIBRATION, 6.0, self.seed))
        self.held_out = [self._feed(self.chunks[0], np.zeros((2, 1, 128), np.float32))]

    @staticmethod
    def _feed(x: np.ndarray, state: np.ndarray) -> Feeds:
        return {"input": x[None], "state": state, "sr": np.array(D.SAMPLE_RATE, np.int64)}

    def stream(self, run: Callable[[Feeds], list[np.ndarray]], chunks: list[np.ndarray]) -> tuple[np.ndarray, list[Feeds]]:
        """Probabilities of every chunk, the state carried; and the feeds that were run."""
        state = np.zeros((2, 1, 128), np.float32)
        probs, feeds = [], []
        for x in chunks:
            f = self._feed(x, state)
            feeds.append(f)
            out, state = run(f)[:2]
            probs.append(float(np.asarray(out).ravel()[0]))
        return np.asarray(probs), feeds

    def build_calibration(self, run_fp32: Callable[[Feeds], list[np.ndarray]]) -> None:
        """Calibration feeds carry the FP32 model's own state (what the model sees in use)."""
        _, feeds = self.stream(run_fp32, self.cal_chunks)
        self.calibration = feeds[::2]

    def predict(self, run: Callable[[Feeds], list[np.ndarray]]) -> Any:
        return self.stream(run, self.chunks)[0]

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        r, c = np.asarray(ref), np.asarray(cand)
        d = np.abs(r - c)
        return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "decisions_agree": float(np.mean((r > 0.5) == (c > 0.5))),
                "speech_chunks": float(np.sum(r > 0.5)), "chunks": float(len(r))}

    def headline(self, s: dict[str, float]) -> str:
        return (f"max |Δp| {s['max_abs']:.4f} · mean {s['mean_abs']:.5f} · decisions = FP32 "
                f"{100 * s['decisions_agree']:.1f}% (FP32: {s['speech_chunks']:.0f}/{s['chunks']:.0f} speech)")


TASKS: dict[str, type[Task]] = {"ocr_det": OcrDetTask, "ocr_rec": OcrRecTask, "ocr_cls": OcrClsTask,
                                "yolov8n": YoloTask, "silero_vad": SileroTask, "minilm_l3": MiniLmTask}
