"""Realistic calibration / held-out inputs for the recovery measurements (`bench/recovery_heldout.py`).

* OCR direction classifier ``[N, 3, 48, 192]``: text lines rendered with PIL (DejaVu fonts
  when installed, else PIL's default font), half of them upside down, resized and
  normalised as PP-OCR does (``(x/255 − 0.5) / 0.5``); synthetic stripes without PIL.
* OCR recogniser ``[N, 3, 48, 320]``: upright rendered text lines, normalised like the classifier's.
* OCR detector ``[N, 3, H, W]``: a page of rendered text lines, ImageNet-normalised.
* YOLOv8n ``[N, 3, 320, 320]``: random crops of the photos shipped by scikit-learn and
  matplotlib (``china.jpg``, ``flower.jpg``, ``grace_hopper.jpg``), RGB in [0, 1].
* ImageNet CNNs ``[N, 3, 224, 224]``: the same photo crops, ImageNet-normalised.
* MiniLM: token ids in ``[1000, 30522)`` between ``[CLS]`` (101) and ``[SEP]`` (102),
  attention mask ones.

Every builder takes a seed; calibration and held-out sets use different seeds, so no
sample is shared. Written as one ``.npz`` per set (keys = input names).
"""

from __future__ import annotations

import glob
import string
from pathlib import Path

import numpy as np

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def _photos() -> list[np.ndarray]:
    """RGB uint8 photos that ship inside installed packages (may be empty)."""
    from PIL import Image

    pats = ["**/sklearn/datasets/images/*.jpg", "**/matplotlib/mpl-data/sample_data/grace_hopper.jpg"]
    import site
    import sys

    roots = {*site.getsitepackages(), *[p for p in sys.path if p.endswith("site-packages")]}
    found: list[np.ndarray] = []
    seen: set[str] = set()
    for root in roots:
        for pat in pats:
            for f in glob.glob(str(Path(root) / pat), recursive=True):
                if Path(f).name not in seen:
                    seen.add(Path(f).name)
                    found.append(np.asarray(Image.open(f).convert("RGB")))
    return found


def photo_crops(n: int, size: int, seed: int) -> np.ndarray:
    """``[n, 3, size, size]`` float32 RGB in [0, 1]: random crops (scale, flip) of the photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        if not photos:  # no photo installed: smooth random colour fields
            base = rng.random((3, 8, 8)).astype(np.float32)
            out[i] = np.asarray(Image.fromarray((base.transpose(1, 2, 0) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255
            continue
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) / 255
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = arr.transpose(2, 0, 1)
    return out


def imagenet(n: int, seed: int, size: int = 224) -> dict[str, np.ndarray]:
    """ImageNet-normalised photo crops for the reference CNNs (input name ``input``)."""
    return {"input": ((photo_crops(n, size, seed) - _MEAN) / _STD).astype(np.float32)}


def yolo(n: int, seed: int, size: int = 320) -> dict[str, np.ndarray]:
    """Photo crops in [0, 1] for YOLOv8 (input ``images``)."""
    return {"images": photo_crops(n, size, seed)}


def _fonts() -> list[str]:
    return sorted(glob.glob("/usr/share/fonts/**/DejaVu*.ttf", recursive=True))


def _text(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "  .,-:/"
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(4, 18)))).strip() or "text"


def _render_line(rng: np.random.Generator, fonts: list[str]) -> np.ndarray:
    """One text line, black-ish on light background, as an RGB uint8 image."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.integers(20, 40))
    font = ImageFont.truetype(fonts[rng.integers(len(fonts))], size) if fonts else ImageFont.load_default()
    text = _text(rng)
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0] + 12, box[3] - box[1] + 12
    bg = tuple(int(v) for v in rng.integers(170, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 90, size=3))
    img = Image.new("RGB", (max(w, 8), max(h, 8)), bg)
    ImageDraw.Draw(img).text((6 - box[0], 6 - box[1]), text, fill=fg, font=font)
    arr = np.asarray(img, dtype=np.float32)
    return np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255)


def _ocr_crops(n: int, seed: int, width: int, rotate_half: bool) -> np.ndarray:
    """``[n, 3, 48, width]`` rendered text lines, resized to height 48, padded right, in
    PP-OCR's [-1, 1] range; with ``rotate_half`` about half are turned 180°."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    out = np.zeros((n, 3, 48, width), dtype=np.float32)
    for i in range(n):
        line = _render_line(rng, fonts)
        h, w = line.shape[:2]
        new_w = min(width, max(1, round(w * 48 / h)))
        img = np.asarray(Image.fromarray(line.astype(np.uint8)).resize((new_w, 48), Image.BILINEAR), dtype=np.float32)
        if rotate_half and rng.random() < 0.5:
            img = img[::-1, ::-1]
        out[i, :, :, :new_w] = ((img / 255 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def ocr_cls(n: int, seed: int) -> dict[str, np.ndarray]:
    """PP-OCR direction classifier crops ``[n, 3, 48, 192]`` (half rotated 180°), input ``x``."""
    return {"x": _ocr_crops(n, seed, 192, rotate_half=True)}


def ocr_rec(n: int, seed: int) -> dict[str, np.ndarray]:
    """PP-OCR recogniser crops ``[n, 3, 48, 320]`` (upright text lines, padded right), input ``x``."""
    return {"x": _ocr_crops(n, seed, 320, rotate_half=False)}


def ocr_det(n: int, seed: int, height: int = 320, width: int = 320) -> dict[str, np.ndarray]:
    """PP-OCR detector pages ``[n, 3, H, W]``: several rendered lines on a page, input ``x``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    out = np.empty((n, 3, height, width), dtype=np.float32)
    for i in range(n):
        page = np.full((height, width, 3), rng.integers(190, 256), dtype=np.float32)
        for _ in range(int(rng.integers(3, 9))):
            line = _render_line(rng, fonts)
            h, w = line.shape[:2]
            if w > width - 4 or h > height - 4:
                scale = min((width - 4) / w, (height - 4) / h)
                line = np.asarray(Image.fromarray(line.astype(np.uint8)).resize((max(1, int(w * scale)), max(1, int(h * scale)))), dtype=np.float32)
                h, w = line.shape[:2]
            y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            page[y : y + h, x : x + w] = line
        out[i] = (page.transpose(2, 0, 1) / 255 - _MEAN) / _STD
    return {"x": out}


def minilm(n: int, seed: int, seq: int = 32) -> dict[str, np.ndarray]:
    """Token ids ``[n, seq]`` (int64, ``[CLS] … [SEP]``) and an all-ones attention mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30522, size=(n, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones((n, seq), dtype=np.int64)}


BUILDERS = {"ocr_cls": ocr_cls, "ocr_rec": ocr_rec, "ocr_det": ocr_det, "yolo": yolo, "imagenet": imagenet, "minilm": minilm}


def write(kind: str, path: Path, n: int, seed: int) -> Path:
    """Build ``n`` samples of ``kind`` with ``seed`` and save them to ``path`` (.npz)."""
    np.savez(path, **BUILDERS[kind](n, seed))
    return path
