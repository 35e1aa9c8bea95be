"""Realistic inputs for the real-model corpus: rendered text, photos, speech, sentences.

Calibration and held-out inputs never share a source: different texts, different photos,
different synthetic voices and different sentences (each builder takes a ``split``).

* Text: lines rendered with Pillow's bundled FreeType font (``ImageFont.load_default(size)``,
  Pillow ≥ 10.1), dark ink on light, slightly noisy paper, plus the exact string (ground truth).
* Photos: scikit-image's bundled sample photos and its LFW face crops tiled into mosaics.
* Speech: source-filter syllables (a pulse train through three vowel formants, gliding
  between two vowels), fricatives, pauses, room noise and non-speech noise bursts; 16 kHz,
  framed as silero's own wrapper frames it (512 new samples + 64 of context).
* Sentences: short English sentences in paraphrase pairs (neighbours are meaningful),
  tokenized with the bert-base-uncased WordPiece vocabulary.

The WordPiece tokenizer is written out here (BERT's basic tokenizer + greedy longest-match
sub-words, about 30 lines) because the ``tokenizers`` package is not a dependency of the
benchmark environment; its vocabulary and settings come from the pinned ``tokenizer.json``.
"""

from __future__ import annotations

import io
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CALIBRATION, HELD_OUT = "calibration", "held-out"

# --------------------------------------------------------------------------- text

#: Two disjoint texts: calibration lines come from the first, held-out lines from the second.
_TEXTS = {
    CALIBRATION: (
        "Please keep this receipt for your records. Items may be returned within thirty days "
        "with proof of purchase. Store hours are Monday to Saturday from nine until six. "
        "Ask our staff about the loyalty card and weekly offers on fresh bread and coffee."
    ),
    HELD_OUT: (
        "Quarterly report of the northern warehouse. Shipments rose after the new loading dock "
        "opened in March. Invoice totals include freight and insurance. Contact the accounts "
        "office for copies of signed delivery notes and the updated price list."
    ),
}


def text_lines(split: str, n: int, seed: int) -> list[str]:
    """``n`` short lines (1-3 words, or a number, date or code) from ``split``'s text (they fit 48×320)."""
    rng = np.random.default_rng(seed + (0 if split == CALIBRATION else 1000))
    words = _TEXTS[split].split()
    out: list[str] = []
    for i in range(n):
        if i % 4 == 3:  # receipts and forms are full of numbers
            kind = i % 3
            out.append(
                f"Total {rng.integers(1, 999)}.{rng.integers(0, 99):02d} EUR" if kind == 0 else
                f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/20{rng.integers(10, 30)}" if kind == 1 else
                f"No. {rng.integers(10000, 99999)}-{chr(65 + rng.integers(0, 26))}")
        else:
            k = int(rng.integers(1, 4))
            start = int(rng.integers(0, len(words) - k))
            out.append(" ".join(words[start:start + k]))
    return out


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font


def render_line(text: str, rng: np.random.Generator, size: int = 30) -> np.ndarray:
    """``text`` rendered on light paper: an RGB ``uint8`` image just larger than the text."""
    from PIL import Image, ImageDraw

    font = _font(size)
    l, t, r, b = font.getbbox(text)
    pad = int(rng.integers(4, 10))
    img = Image.new("RGB", (r - l + 2 * pad, b - t + 2 * pad), tuple(int(v) for v in rng.integers(215, 256, 3)))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(img).text((pad - l, pad - t), text, font=font, fill=ink)
    a = np.asarray(img, np.float32) + rng.normal(0, 6, (img.height, img.width, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def ocr_normalize(img: np.ndarray) -> np.ndarray:
    """HWC uint8 → CHW float32 in [-1, 1] (PP-OCR: mean 0.5, std 0.5)."""
    return ((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def fit_line(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """PP-OCR's recogniser/classifier resize: height fixed, aspect kept, right-padded with 0 (normalized)."""
    from PIL import Image

    h, w = img.shape[:2]
    new_w = max(1, min(width, int(np.ceil(height * w / h))))
    resized = np.asarray(Image.fromarray(img).resize((new_w, height), Image.BILINEAR))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :new_w] = ocr_normalize(resized)
    return out


def text_page(split: str, seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A document-like page (several rendered lines of mixed sizes) as PP-OCR detector input ``[3, H, W]``."""
    rng = np.random.default_rng(seed + (0 if split == CALIBRATION else 1000))
    yy, xx = np.mgrid[0:height, 0:width]
    paper = 225 + 20 * (xx / width) * rng.uniform(-1, 1) + 15 * (yy / height) * rng.uniform(-1, 1)
    page = np.repeat(paper[..., None], 3, axis=2) + rng.normal(0, 4, (height, width, 3))
    y = int(rng.integers(10, 40))
    for line in text_lines(split, 12, seed):
        img = render_line(line, rng, size=int(rng.integers(18, 40)))
        h, w = img.shape[:2]
        if y + h > height - 5:
            break
        w = min(w, width - 20)
        x = int(rng.integers(5, max(6, width - w - 5)))
        page[y:y + h, x:x + w] = img[:, :w]
        y += h + int(rng.integers(4, 30))
    return ocr_normalize(np.clip(page, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- photos

#: scikit-image sample photos per split (people and faces only in some: detection counts vary).
PHOTOS = {
    CALIBRATION: ("brick.png", "grass.png", "gravel.png", "coins.png", "ihc.png", "hubble_deep_field.jpg",
                  "horse.png", "page.png", "moon.png", "retina.jpg"),
    HELD_OUT: ("astronaut.png", "camera.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg"),
}
#: LFW face crops (``lfw_subset.npy``: 200 grey 25×25 faces): first half held-out, second half calibration.
_FACES = {HELD_OUT: slice(0, 100), CALIBRATION: slice(100, 200)}


def _rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def letterbox(img: np.ndarray, size: int = 320) -> np.ndarray:
    """YOLOv8's input: aspect kept, padded with grey 114, RGB in [0, 1], ``[3, size, size]``."""
    from PIL import Image

    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    out = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return (out.astype(np.float32) / 255.0).transpose(2, 0, 1)


def photos(split: str, read: callable, seed: int, mosaics: int = 3) -> list[np.ndarray]:
    """Photos of ``split`` as YOLO inputs ``[3, 320, 320]``: each photo whole and one random crop, plus face mosaics.

    ``read(name)`` returns the bytes of ``skimage/data/<name>``.
    """
    rng = np.random.default_rng(seed + (0 if split == CALIBRATION else 1000))
    out: list[np.ndarray] = []
    for name in PHOTOS[split]:
        img = _rgb(read(name))
        out.append(letterbox(img))
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 0.8)), int(w * rng.uniform(0.5, 0.8))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(letterbox(img[y:y + ch, x:x + cw]))
    faces = np.load(io.BytesIO(read("lfw_subset.npy")))[_FACES[split]]
    per = 16  # a 4×4 grid of 80×80 faces
    from PIL import Image

    for m in range(min(mosaics, len(faces) // per)):
        grid = np.zeros((320, 320), np.uint8)
        for k in range(per):
            face = (faces[m * per + k] * 255).astype(np.uint8)
            big = np.asarray(Image.fromarray(face).resize((80, 80), Image.BILINEAR))
            grid[(k // 4) * 80:(k // 4 + 1) * 80, (k % 4) * 80:(k % 4 + 1) * 80] = big
        out.append(letterbox(np.repeat(grid[..., None], 3, axis=2)))
    return out


# --------------------------------------------------------------------------- speech

SAMPLE_RATE = 16000
#: Vowel formants F1-F3 (Hz), typical adult values (Peterson & Barney).
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240),
           (660, 1720, 2410), (440, 1020, 2240))


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    """A two-pole resonance (one formant) applied to ``x``."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / sr)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / sr), r * r], x)


def _syllable(rng: np.random.Generator, f0_base: float, sr: int) -> np.ndarray:
    """One voiced syllable (source-filter): a pulse train at a falling pitch, two vowels' formants, an optional fricative."""
    from scipy.signal import lfilter

    m = int(rng.uniform(0.15, 0.3) * sr)
    f0 = f0_base * (1 + rng.uniform(-0.2, 0.2)) * np.linspace(1.05, 0.9, m) * (1 + 0.01 * rng.standard_normal(m))
    pulses = np.diff(np.floor(np.cumsum(f0 / sr)), prepend=0)  # one impulse per pitch period
    source = lfilter([1], [1, -0.9], lfilter([1], [1, -0.97], pulses))  # glottal spectral tilt
    y = np.zeros(m)
    half = m // 2
    for seg in (slice(0, half), slice(half, m)):  # a vowel glide: two vowels per syllable
        f1, f2, f3 = _VOWELS[int(rng.integers(len(_VOWELS)))]
        x = source[seg]
        y[seg] = _resonator(x, f1, 90, sr) + 0.5 * _resonator(x, f2, 110, sr) + 0.25 * _resonator(x, f3, 160, sr)
    y = np.diff(y, prepend=0)  # lip radiation
    y *= np.minimum(1, np.minimum(np.arange(m), m - np.arange(m)) / (0.03 * sr))
    y *= rng.uniform(0.2, 0.5) / (np.abs(y).max() + 1e-9)
    if rng.random() < 0.4:  # a fricative consonant before the vowel
        fm = int(rng.uniform(0.04, 0.1) * sr)
        fric = _resonator(np.diff(rng.normal(0, 1, fm + 1)), rng.uniform(3000, 6000), 1500, sr) * np.hanning(fm)
        y = np.concatenate([fric * rng.uniform(0.03, 0.1) / (np.abs(fric).max() + 1e-9), y])
    return y


def synthetic_speech(split: str, seconds: float, seed: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio: utterances of syllables, pauses, room noise, non-speech noise bursts; float32 in [-1, 1].

    The calibration voice is low (≈ 120 Hz), the held-out voice high (≈ 210 Hz).
    """
    rng = np.random.default_rng(seed + (0 if split == CALIBRATION else 1000))
    f0_base = 120.0 if split == CALIBRATION else 210.0
    n = int(seconds * sr)
    audio = rng.normal(0, 0.002, n)  # room noise
    pos = int(rng.uniform(0.2, 0.5) * sr)
    while pos < n - sr // 4:
        if rng.random() < 0.15:  # a non-speech event: a broadband noise burst
            m = int(rng.uniform(0.2, 0.5) * sr)
            seg = rng.normal(0, 0.05, m) * np.hanning(m)
        else:
            parts = []
            for _ in range(int(rng.integers(3, 8))):
                parts += [_syllable(rng, f0_base, sr), np.zeros(int(rng.uniform(0, 0.05) * sr))]
            seg = np.concatenate(parts)
        end = min(n, pos + len(seg))
        audio[pos:end] += seg[:end - pos]
        pos = end + int(rng.uniform(0.3, 1.0) * sr)  # a pause
    return np.clip(audio, -1, 1).astype(np.float32)


def vad_chunks(audio: np.ndarray, chunk: int = 512, context: int = 64) -> list[np.ndarray]:
    """Silero's framing: ``chunk`` new samples prefixed by the last ``context`` samples of the previous chunk."""
    out, prev = [], np.zeros(context, np.float32)
    for i in range(0, len(audio) - chunk + 1, chunk):
        out.append(np.concatenate([prev, audio[i:i + chunk]]).astype(np.float32))
        prev = audio[i + chunk - context:i + chunk]
    return out


# --------------------------------------------------------------------------- sentences

#: Paraphrase pairs (consecutive sentences say the same thing), disjoint between splits.
SENTENCES = {
    CALIBRATION: (
        "The train to the airport leaves every twenty minutes.",
        "Trains for the airport depart three times an hour.",
        "She forgot her umbrella at the office again.",
        "Once more she left the umbrella at work.",
        "This soup needs a little more salt.",
        "The soup is not salty enough.",
        "Our team won the match in the final minute.",
        "We scored the winning goal just before the end.",
        "The library closes early on public holidays.",
        "On holidays the library shuts sooner than usual.",
        "He is learning to play the violin.",
        "He takes violin lessons these days.",
        "Prices for fresh vegetables went up this winter.",
        "Vegetables became more expensive during the cold months.",
        "Please send me the slides after the meeting.",
        "Could you share the presentation once the meeting is over?",
    ),
    HELD_OUT: (
        "The cat is sleeping on the warm windowsill.",
        "A cat naps in the sun by the window.",
        "How do I reset my password?",
        "I need to change my forgotten login password.",
        "The concert was cancelled because of the storm.",
        "Bad weather forced the organisers to call off the show.",
        "He drinks two cups of coffee every morning.",
        "Each morning he has a couple of coffees.",
        "The new phone has a much better camera.",
        "Photos from the latest phone look far sharper.",
        "Our flight was delayed by three hours.",
        "The plane took off three hours late.",
        "Children should eat more fruit and vegetables.",
        "Kids need a diet with plenty of fruit and greens.",
        "The museum is free on the first Sunday of the month.",
        "Entry to the museum costs nothing on the first Sunday.",
        "She finished the marathon in under four hours.",
        "Her marathon time was below four hours.",
        "The bridge will be closed for repairs next week.",
        "Next week the bridge shuts for maintenance work.",
        "I would like a table for two by the window.",
        "Can we get a window seat for two people?",
        "The company hired fifty new engineers this year.",
        "Fifty engineers joined the firm in the past year.",
    ),
}


@dataclass
class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split on punctuation, greedy sub-words."""

    vocab: dict[str, int]
    unk: str = "[UNK]"
    prefix: str = "##"
    max_chars: int = 100

    @classmethod
    def from_tokenizer_json(cls, data: bytes) -> WordPiece:
        model = json.loads(data)["model"]
        return cls(model["vocab"], model.get("unk_token", "[UNK]"), model.get("continuing_subword_prefix", "##"),
                   model.get("max_input_chars_per_word", 100))

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            cur = ""
            for c in chunk:
                if unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def tokenize(self, text: str) -> list[int]:
        """``[CLS] sub-word ids [SEP]``."""
        ids = [self.vocab["[CLS]"]]
        for w in self._words(text):
            if len(w) > self.max_chars:
                ids.append(self.vocab[self.unk])
                continue
            start, pieces = 0, []
            while start < len(w):
                end = len(w)
                while end > start:
                    piece = (self.prefix if start else "") + w[start:end]
                    if piece in self.vocab:
                        break
                    end -= 1
                if end == start:
                    pieces = [self.vocab[self.unk]]
                    break
                pieces.append(self.vocab[piece])
                start = end
            ids += pieces
        return [*ids, self.vocab["[SEP]"]]

    def batch(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask`` (int64), right-padded with 0 to the longest."""
        rows = [self.tokenize(t) for t in texts]
        n = max(len(r) for r in rows)
        ids = np.zeros((len(rows), n), np.int64)
        mask = np.zeros((len(rows), n), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}
