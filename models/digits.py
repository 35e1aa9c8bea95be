"""A small residual CNN trained on scikit-learn's bundled ``load_digits``.

This is the one *trained* model of the package: pruning/quantisation
experiments need a model whose accuracy can actually drop and recover.
Training is seeded, single-threaded and deterministic on CPU, takes ~10-20 s
for the full model (~3-6 s small), and the result (weights, metadata and the train/test split as
``.npz``) is cached so tests and benchmarks never retrain.

Cache location: ``$ONNXCOMP_CACHE/models`` if ``ONNXCOMP_CACHE`` is set, else
``~/.cache/onnxcomp/models``. Each entry is keyed by a hash of the
architecture + training recipe + seed, so changing the recipe never serves
stale weights.

Data: 1797 8x8 grayscale images (values 0..16), 10 classes. Fixed stratified
three-way split (``random_state=0``): 898 train / 449 validation / 450 test
(50/25/25). The model is trained on the training split only; the validation
split is for choosing among compressed candidates (``onnxcomp tune
--eval-data``), the test split for the final check, so neither has been seen
by the weights, and each is large enough that a 0.5-point accuracy budget
allows two errors (one image is 0.22 points). Inputs are scaled to [0, 1]
then standardised with the *training* mean/std (``(x/16 - MEAN) / STD``),
stored as ``float32 [N, 1, 8, 8]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .resnet import BasicBlock

INPUT_NAME = "input"
LABEL_KEY = "label"
NUM_CLASSES = 10
SPLIT_SEED = 0
#: Fractions of the 1797 images held out for the test and validation splits.
TEST_SIZE = VAL_SIZE = 0.25
# Bump when the cache layout, data pipeline or numerics of training change
# (v2: training pinned to one thread; v3: train/validation/test 50/25/25, was train/test 80/20).
_CACHE_VERSION = 3
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and training recipe (everything that affects the weights)."""

    channels: tuple[int, int, int] = (32, 64, 128)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_shift: int = 1  # random +/- pixel translation augmentation


FULL = TrainConfig()
SMALL = TrainConfig(channels=(8, 16, 32), epochs=15)


class DigitsNet(nn.Module):
    """Stem conv + three residual stages (8x8 -> 4x4 -> 2x2) + GAP + linear."""

    def __init__(self, channels: tuple[int, int, int] = FULL.channels):
        super().__init__()
        c0, c1, c2 = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
        self.stage1 = BasicBlock(c0, c0)
        self.stage2 = BasicBlock(c0, c1, 2, nn.Sequential(nn.Conv2d(c0, c1, 1, 2, bias=False), nn.BatchNorm2d(c1)))
        self.stage3 = BasicBlock(c1, c2, 2, nn.Sequential(nn.Conv2d(c1, c2, 1, 2, bias=False), nn.BatchNorm2d(c2)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised ``[B, 1, 8, 8]`` images to ``[B, 10]`` logits."""
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsData:
    """The fixed train/validation/test split, raw-scaled to [0, 1] and the normalisation."""

    x_train: np.ndarray  # float32 [N, 1, 8, 8] in [0, 1], not standardised
    y_train: np.ndarray  # int64 [N]
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Standardise [0, 1]-scaled images exactly as the model was trained."""
        return ((x - self.mean) / self.std).astype(np.float32)


_DATA: DigitsData | None = None


def load_data() -> DigitsData:
    """Load ``sklearn.datasets.load_digits`` and apply the fixed three-way split.

    Returns:
        The split (memoised; the dataset ships with scikit-learn, no download).
    """
    global _DATA
    if _DATA is None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0)[:, None]
        y = d.target.astype(np.int64)
        x_rest, x_te, y_rest, y_te = train_test_split(x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
        x_tr, x_va, y_tr, y_va = train_test_split(x_rest, y_rest, test_size=VAL_SIZE / (1 - TEST_SIZE),
                                                  random_state=SPLIT_SEED, stratify=y_rest)
        _DATA = DigitsData(x_tr, y_tr, x_va, y_va, x_te, y_te, float(x_tr.mean()), float(x_tr.std()))
    return _DATA


def _write_npz(path: str | Path, x: np.ndarray, y: np.ndarray | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
    if y is not None:
        arrays[LABEL_KEY] = y.astype(np.int64)
    # np.savez appends ".npz" to names without it; write through a file object
    # so the caller's exact path is honoured, atomically (readers may race).
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def test_split_npz(path: str | Path) -> Path:
    """Write the normalised test split (450 images) as ``.npz``.

    Args:
        path: Destination file.

    Returns:
        ``path``; keys ``"input"`` (float32 [N, 1, 8, 8]) and ``"label"`` (int64 [N]).
    """
    d = load_data()
    return _write_npz(path, d.normalise(d.x_test), d.y_test)


def validation_split_npz(path: str | Path) -> Path:
    """Write the normalised validation split (449 images) as ``.npz``.

    Neither trained on nor part of the test split: the data to choose among
    compressed candidates on (``onnxcomp tune --eval-data``), keeping the test
    split for the final check.

    Args:
        path: Destination file.

    Returns:
        ``path``; keys ``"input"`` (float32 [N, 1, 8, 8]) and ``"label"`` (int64 [N]).
    """
    d = load_data()
    return _write_npz(path, d.normalise(d.x_val), d.y_val)


def train_split_npz(path: str | Path) -> Path:
    """Write the normalised training split (898 images) as ``.npz``.

    Useful as calibration data (e.g. for static quantisation) and for
    fine-tuning after pruning.

    Args:
        path: Destination file.

    Returns:
        ``path``; keys ``"input"`` (float32 [N, 1, 8, 8]) and ``"label"`` (int64 [N]).
    """
    d = load_data()
    return _write_npz(path, d.normalise(d.x_train), d.y_train)


def calibration_npz(path: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Write ``n`` seeded-random normalised training images (key ``"input"`` only).

    Args:
        path: Destination file.
        n: Number of images (capped at the training-set size).
        seed: Seed for choosing the images.

    Returns:
        ``path``.
    """
    d = load_data()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d.x_train), size=min(n, len(d.x_train)), replace=False)
    return _write_npz(path, d.normalise(d.x_train[idx]), None)


def sample_inputs(batch: int, seed: int = 0) -> np.ndarray:
    """Return ``batch`` seeded-random normalised *test* images, ``[batch, 1, 8, 8]``."""
    d = load_data()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d.x_test), size=batch, replace=batch > len(d.x_test))
    return d.normalise(d.x_test[idx])


# ----------------------------------------------------------------------- training


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Resolve the model cache directory.

    Args:
        cache_dir: Explicit directory; if None uses ``$ONNXCOMP_CACHE/models``
            or ``~/.cache/onnxcomp/models``.

    Returns:
        The directory (not created).
    """
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ONNXCOMP_CACHE")
    return Path(env) / "models" if env else Path.home() / ".cache" / "onnxcomp" / "models"


def _cache_entry(cfg: TrainConfig, seed: int, cache_dir: str | Path | None) -> Path:
    key = json.dumps({"v": _CACHE_VERSION, "cfg": dataclasses.asdict(cfg), "seed": seed}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root(cache_dir) / f"digits-{digest}"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        # mkstemp creates 0600 files; cached artefacts should be shareable
        # like any normally created file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and a single thread; restore after.

    One thread because (a) CPU reductions are split differently for different
    thread counts, so pinning it makes the weights independent of the
    machine's core count, and (b) on a busy machine multi-threaded OpenMP
    kernels on these tiny 8x8 tensors slow down dramatically (measured: 930 s
    with 2 threads vs 20 s with 1 at load 8-12 on 2 cores), while an idle
    machine gains little from a second thread.
    """
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(prev_threads)
            torch.use_deterministic_algorithms(prev_det)


def _random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero = background fill)."""
    if max_shift <= 0:
        return x
    k = 2 * max_shift + 1
    padded = nn.functional.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, k, (x.shape[0], 2), generator=g)
    out = torch.empty_like(x)
    # Loop over the k*k possible offsets (9 for 1 px), not over samples.
    for dy in range(k):
        for dx in range(k):
            sel = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, dy : dy + 8, dx : dx + 8]
    return out


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on normalised inputs ``x`` with labels ``y``."""
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train(cfg: TrainConfig = FULL, seed: int = 0, *, verbose: bool = False) -> tuple[DigitsNet, float, float]:
    """Train a :class:`DigitsNet` from scratch (no caching).

    SGD + Nesterov momentum, one-cycle LR schedule, weight decay and +/-1 px
    random shifts. Deterministic for a given seed and thread count.

    Args:
        cfg: Architecture and recipe.
        seed: Seed for init, shuffling and augmentation.
        verbose: Print one line per epoch.

    Returns:
        ``(model in eval mode, test accuracy, training seconds)``.
    """
    d = load_data()
    x_tr = torch.from_numpy(d.x_train)
    y_tr = torch.from_numpy(d.y_train)
    x_te, y_te = d.normalise(d.x_test), d.y_test
    t0 = time.perf_counter()
    with _deterministic(seed):
        model = DigitsNet(cfg.channels)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
        steps_per_epoch = -(-len(x_tr) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.15
        )
        for epoch in range(cfg.epochs):
            model.train()
            perm = torch.randperm(len(x_tr), generator=g)
            for i in range(0, len(x_tr), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                xb = (_random_shift(x_tr[idx], cfg.max_shift, g) - d.mean) / d.std
                loss = nn.functional.cross_entropy(model(xb), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if verbose:
                print(f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.4f} test acc {evaluate(model, x_te, y_te):.4f}")
    seconds = time.perf_counter() - t0
    return model.eval(), evaluate(model, x_te, y_te), seconds


def train_or_load(
    cache_dir: str | Path | None = None,
    *,
    small: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    verbose: bool = False,
) -> tuple[nn.Module, float]:
    """Return the trained digits model, training and caching it on first use.

    Args:
        cache_dir: Cache directory (see :func:`cache_root`).
        small: Use the narrow 8-16-32 variant (15 epochs, ~3 s) instead of
            32-64-128 (30 epochs, ~10-20 s).
        seed: Training seed; each seed is cached separately.
        epochs: Override the number of epochs (e.g. 1 for a quick test); a
            different recipe gets its own cache entry.
        verbose: Print training progress.

    Returns:
        ``(model in eval mode, test accuracy)``.
    """
    cfg = SMALL if small else FULL
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    entry = _cache_entry(cfg, seed, cache_dir)
    weights, meta_file = entry / "weights.pt", entry / "meta.json"
    if weights.exists() and meta_file.exists():
        model = DigitsNet(cfg.channels)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval(), float(json.loads(meta_file.read_text())["test_accuracy"])

    _log.info("training digits model (%s, seed %d); cache entry %s", cfg.channels, seed, entry)
    model, acc, seconds = train(cfg, seed, verbose=verbose)
    entry.mkdir(parents=True, exist_ok=True)
    d = load_data()
    _atomic_write(weights, lambda f: torch.save(model.state_dict(), f))
    test_split_npz(entry / "test.npz")
    validation_split_npz(entry / "val.npz")
    train_split_npz(entry / "train.npz")
    meta = {
        "test_accuracy": acc,
        "validation_accuracy": evaluate(model, d.normalise(d.x_val), d.y_val),
        "train_seconds": round(seconds, 2),
        "torch_threads": 1,
        "torch_version": torch.__version__,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "normalisation": {"mean": d.mean, "std": d.std},
        "n_train": len(d.y_train),
        "n_validation": len(d.y_val),
        "n_test": len(d.y_test),
    }
    # meta.json is written last: its presence marks a complete cache entry.
    _atomic_write(meta_file, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return model, acc


def cache_info(cache_dir: str | Path | None = None, *, small: bool = False, seed: int = 0) -> dict | None:
    """Metadata of the cached model (accuracy, training time, recipe), or None if not trained yet."""
    meta_file = _cache_entry(SMALL if small else FULL, seed, cache_dir) / "meta.json"
    return json.loads(meta_file.read_text()) if meta_file.exists() else None


def onnx_path(
    cache_dir: str | Path | None = None, *, small: bool = False, keep_batchnorm: bool = False, seed: int = 0
) -> Path:
    """Path of the cached ONNX export of the trained model, exporting it on first use.

    Args:
        cache_dir: Cache directory (see :func:`cache_root`).
        small: Narrow variant.
        keep_batchnorm: Export with BatchNormalization nodes kept.
        seed: Training seed.

    Returns:
        Path to ``model.onnx`` (or ``model.bn.onnx``) inside the cache entry;
        batch dimension is dynamic, input ``"input"``, output ``"logits"``.
    """
    from ._onnx_export import export_module

    model, _ = train_or_load(cache_dir, small=small, seed=seed)
    entry = _cache_entry(SMALL if small else FULL, seed, cache_dir)
    path = entry / ("model.bn.onnx" if keep_batchnorm else "model.onnx")
    if not path.exists():
        tmp = entry / f".{path.name}.{os.getpid()}.tmp"
        export_module(
            model,
            {INPUT_NAME: sample_inputs(2, seed)},
            tmp,
            output_names=["logits"],
            keep_batchnorm=keep_batchnorm,
            dynamic_axes={INPUT_NAME: {0: "batch"}},
        )
        os.replace(tmp, path)
    return path


# The public name starts with "test"; stop pytest from collecting it as a test
# when a test module does ``from models.digits import test_split_npz``.
test_split_npz.__test__ = False  # type: ignore[attr-defined]
