"""Reference models for onnxcomp: PyTorch definitions + ONNX export, no downloads.

Models (``MODEL_NAMES``):

* ``resnet18``, ``resnet50``, ``mobilenetv2`` -- torchvision-equivalent CNNs,
  1000 classes, input ``input`` float32 ``[B, 3, 224, 224]``, output ``logits``.
* ``bert`` -- BERT-style sentence encoder (all-MiniLM-L6 shape: 6 layers,
  hidden 384, 12 heads, FFN 1536, vocab 30522), inputs ``input_ids`` and
  ``attention_mask`` (int64 ``[B, S]``), outputs ``last_hidden_state``
  ``[B, S, 384]`` and mean-pooled ``sentence_embedding`` ``[B, 384]``.
* ``vit`` -- ViT-Ti/16 (12 blocks, hidden 192, 3 heads), input
  ``pixel_values`` ``[B, 3, 224, 224]``, output ``logits``.
* ``decoder`` -- Llama-style decoder LM (RMSNorm, rotary positions, SwiGLU,
  grouped-query attention, tied embedding; see :mod:`models.decoder`), input
  ``input_ids`` int64 ``[B, S]`` (``S`` always symbolic), output ``logits``
  ``[B, S, vocab]``. ``decoder_kv`` is the same model with a KV cache: inputs
  ``past_key_values.<i>.key|value`` ``[B, kv_heads, P, head_dim]`` (``P``
  symbolic), outputs ``logits`` and ``present.<i>.key|value``.
* ``digits`` -- residual CNN *trained* on scikit-learn's ``load_digits``,
  input ``input`` ``[B, 1, 8, 8]``, output ``logits`` (see :mod:`models.digits`).

Every model has a ``small=True`` variant for fast tests; the decoders also take
``decoder_size`` (a key of ``DECODER_SIZES``, e.g. ``"135m"``: SmolLM-135M's shape). All random models are
seeded; weights are reproducible for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import digits
from ._onnx_export import DEFAULT_OPSET, cosine, export_module, run_onnx
from .bert import BERT, BERT_SMALL, BertConfig, build_bert
from .decoder import (
    DECODER,
    DECODER_SIZES,
    DECODER_SMALL,
    DecoderConfig,
    build_decoder,
    past_names,
)
from .mobilenetv2 import MOBILENETV2, MOBILENETV2_SMALL, build_mobilenetv2
from .resnet import RESNET18, RESNET18_SMALL, RESNET50, RESNET50_SMALL, build_resnet
from .vit import VIT, VIT_SMALL, build_vit

__all__ = [
    "CAUSAL_LMS",
    "DEFAULT_OPSET",
    "MODEL_NAMES",
    "ModelSpec",
    "build",
    "cosine",
    "digits",
    "example_inputs",
    "export",
    "make_calibration",
    "param_count",
    "run_onnx",
    "spec",
]

MODEL_NAMES: tuple[str, ...] = ("resnet18", "resnet50", "mobilenetv2", "bert", "vit", "digits", "decoder", "decoder_kv")

#: The causal LMs among `MODEL_NAMES` (kind ``"causal_lm"``).
CAUSAL_LMS: tuple[str, ...] = ("decoder", "decoder_kv")


@dataclass(frozen=True)
class ModelSpec:
    """Static description of one model variant.

    Attributes:
        name: Model name.
        kind: ``"image"``, ``"text"``, ``"causal_lm"`` or ``"digits"``.
        input_names: Graph input names, in forward-argument order.
        output_names: Graph output names, in forward-return order.
        image_size: Square image side (image/digits models).
        channels: Image channels.
        vocab_size: Vocabulary size (text models).
        max_seq_len: Longest supported sequence (text models).
    """

    name: str
    kind: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    image_size: int = 0
    channels: int = 3
    vocab_size: int = 0
    max_seq_len: int = 0


_IMAGE_BUILDERS: dict[str, tuple[Callable[..., torch.nn.Module], object, object]] = {
    "resnet18": (build_resnet, RESNET18, RESNET18_SMALL),
    "resnet50": (build_resnet, RESNET50, RESNET50_SMALL),
    "mobilenetv2": (build_mobilenetv2, MOBILENETV2, MOBILENETV2_SMALL),
    "vit": (build_vit, VIT, VIT_SMALL),
}


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def _decoder_config(small: bool, decoder_size: str | None) -> DecoderConfig:
    """The decoder's configuration: ``decoder_size`` when given, else small or default."""
    if decoder_size is None:
        return DECODER_SMALL if small else DECODER
    if decoder_size not in DECODER_SIZES:
        raise ValueError(f"unknown decoder size {decoder_size!r}; expected one of {tuple(DECODER_SIZES)}")
    return DECODER_SIZES[decoder_size]


def spec(name: str, *, small: bool = False, decoder_size: str | None = None) -> ModelSpec:
    """Describe a model's inputs/outputs and sizes without building it.

    Args:
        name: One of :data:`MODEL_NAMES`.
        small: Describe the small variant.
        decoder_size: Decoders only: a key of ``DECODER_SIZES`` (overrides ``small``).

    Returns:
        The :class:`ModelSpec`.
    """
    _check_name(name)
    if name == "bert":
        cfg: BertConfig = BERT_SMALL if small else BERT
        return ModelSpec(
            name,
            "text",
            ("input_ids", "attention_mask"),
            ("last_hidden_state", "sentence_embedding"),
            vocab_size=cfg.vocab_size,
            max_seq_len=cfg.max_position,
        )
    if name in CAUSAL_LMS:
        dcfg = _decoder_config(small, decoder_size)
        pin, pout = past_names(dcfg) if name == "decoder_kv" else ((), ())
        return ModelSpec(
            name, "causal_lm", ("input_ids", *pin), ("logits", *pout), vocab_size=dcfg.vocab_size, max_seq_len=dcfg.max_position
        )
    if name == "digits":
        return ModelSpec(name, "digits", (digits.INPUT_NAME,), ("logits",), image_size=8, channels=1)
    image_cfg = _IMAGE_BUILDERS[name][2 if small else 1]
    input_name = "pixel_values" if name == "vit" else "input"
    return ModelSpec(name, "image", (input_name,), ("logits",), image_size=image_cfg.image_size)  # type: ignore[attr-defined]


def build(name: str, *, small: bool = False, seed: int = 0, decoder_size: str | None = None) -> torch.nn.Module:
    """Build a model in eval mode.

    Args:
        name: One of :data:`MODEL_NAMES`.
        small: Build the small test variant.
        seed: Seed of the random initialisation. For ``digits`` it is the
            training seed; the trained weights come from the cache (trained
            on first use, see :func:`models.digits.train_or_load`).
        decoder_size: Decoders only: a key of ``DECODER_SIZES`` (overrides ``small``).

    Returns:
        The module, in eval mode.
    """
    _check_name(name)
    if name == "digits":
        return digits.train_or_load(small=small, seed=seed)[0]
    if name == "bert":
        return build_bert(BERT_SMALL if small else BERT, seed)
    if name in CAUSAL_LMS:
        return build_decoder(_decoder_config(small, decoder_size), seed)
    builder, full_cfg, small_cfg = _IMAGE_BUILDERS[name]
    return builder(small_cfg if small else full_cfg, seed)


def param_count(model: torch.nn.Module) -> int:
    """Number of parameters (BN running statistics excluded, as in torchvision)."""
    return sum(p.numel() for p in model.parameters())


def _random_inputs(
    s: ModelSpec, batch: int, seq_len: int, rng: np.random.Generator, dcfg: DecoderConfig = DECODER
) -> dict[str, np.ndarray]:
    if s.kind == "image":
        x = rng.standard_normal((batch, s.channels, s.image_size, s.image_size), dtype=np.float32)
        return {s.input_names[0]: x}
    if seq_len < 1 or seq_len > s.max_seq_len:
        raise ValueError(f"seq_len must be in [1, {s.max_seq_len}] for {s.name}, got {seq_len}")
    # Ids 0..999 are left out as "special/padding" tokens, as in real vocabularies.
    low = 1000 if s.vocab_size > 2000 and s.kind == "text" else 1
    ids = rng.integers(low, s.vocab_size, size=(batch, seq_len), dtype=np.int64)
    if s.kind == "causal_lm":
        out = {"input_ids": ids}
        if len(s.input_names) > 1:  # KV cache: a past as long as the new tokens
            for n in s.input_names[1:]:
                out[n] = rng.standard_normal((batch, dcfg.num_kv_heads, seq_len, dcfg.head_dim), dtype=np.float32)
        return out
    mask = np.ones((batch, seq_len), dtype=np.int64)
    # Row 0 is full length; other rows are right-padded to random lengths so
    # masking (attention and mean pooling) is actually exercised.
    for i in range(1, batch):
        length = int(rng.integers(max(1, seq_len // 2), seq_len + 1))
        mask[i, length:] = 0
        ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def example_inputs(
    name: str, *, small: bool = False, batch: int = 1, seq_len: int = 32, seed: int = 0, decoder_size: str | None = None
) -> dict[str, np.ndarray]:
    """Seeded example inputs keyed by ONNX input name.

    Images are standard-normal float32 (i.e. already "normalised" pixels);
    BERT gets random token ids with right-padding on rows 1..B-1; digits gets
    real (normalised) test-split images.

    Args:
        name: One of :data:`MODEL_NAMES`.
        small: Shapes of the small variant.
        batch: Batch size.
        seq_len: Sequence length (BERT only).
        seed: RNG seed.
        decoder_size: Decoders only: a key of ``DECODER_SIZES`` (overrides ``small``).

    Returns:
        Mapping input name -> array.
    """
    s = spec(name, small=small, decoder_size=decoder_size)
    if s.kind == "digits":
        return {s.input_names[0]: digits.sample_inputs(batch, seed)}
    return _random_inputs(s, batch, seq_len, np.random.default_rng(seed), _decoder_config(small, decoder_size))


def make_calibration(
    name: str, path: str | Path, *, n: int = 16, small: bool = False, seq_len: int = 32, seed: int = 0, decoder_size: str | None = None
) -> Path:
    """Write an ``.npz`` of ``n`` calibration samples stacked on axis 0.

    Keys are exactly the graph input names. For ``digits`` the samples are
    real training-split images; for the other models they are random inputs
    drawn from a stream independent of :func:`example_inputs` (so calibration
    and evaluation inputs differ for the same seed).

    Args:
        name: One of :data:`MODEL_NAMES`.
        path: Destination file (written exactly there, ``.npz`` not appended).
        n: Number of samples.
        small: Shapes of the small variant.
        seq_len: Sequence length (BERT only).
        seed: RNG seed.
        decoder_size: Decoders only: a key of ``DECODER_SIZES`` (overrides ``small``).

    Returns:
        ``path``.
    """
    s = spec(name, small=small, decoder_size=decoder_size)
    if s.kind == "digits":
        return digits.calibration_npz(path, n=n, seed=seed)
    arrays = _random_inputs(s, n, seq_len, np.random.default_rng([seed, 0xCA1B]), _decoder_config(small, decoder_size))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def export(
    name: str,
    path: str | Path,
    *,
    small: bool = False,
    batch: int = 1,
    seq_len: int = 32,
    keep_batchnorm: bool = False,
    dynamic_batch: bool = False,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    module: torch.nn.Module | None = None,
    decoder_size: str | None = None,
) -> Path:
    """Export a model to a single self-contained ONNX file.

    Uses torch 2.13's dynamo exporter by default (see :mod:`models._onnx_export`).

    Args:
        name: One of :data:`MODEL_NAMES`.
        path: Destination ``.onnx`` path.
        small: Export the small variant.
        batch: Static batch size (ignored for the traced example when
            ``dynamic_batch``; torch.export specialises size-1 dims, so a
            batch of at least 2 is traced then).
        seq_len: Static sequence length (BERT).
        keep_batchnorm: Export without the onnxscript optimizer so
            ``BatchNormalization`` nodes are kept (raw, unoptimised graph).
            Default is the normal optimised export (BN folded into Conv).
        dynamic_batch: Make the batch dim symbolic (``"batch"``); for BERT the
            sequence dim becomes symbolic (``"seq"``) as well.
        seed: Seed of the weights (see :func:`build`).
        opset: Target ONNX opset.
        exporter: ``"dynamo"`` or ``"torchscript"`` (legacy exporter; with
            ``keep_batchnorm`` it gives Conv(no bias)+BatchNormalization
            without the dynamo raw-graph artefacts).
        module: Export this module instead of ``build(name, ...)`` -- e.g. a
            pruned or fine-tuned copy -- with exactly the same input/output
            names, example inputs and dynamic axes as the original.
        decoder_size: Decoders only: a key of ``DECODER_SIZES`` (overrides ``small``).

    Returns:
        The written path.
    """
    s = spec(name, small=small, decoder_size=decoder_size)
    model = module if module is not None else build(name, small=small, seed=seed, decoder_size=decoder_size)
    trace_batch = max(batch, 2) if dynamic_batch else batch
    trace_seq = max(seq_len, 2) if (dynamic_batch and s.kind == "text") else seq_len
    inputs = example_inputs(name, small=small, batch=trace_batch, seq_len=trace_seq, seed=seed, decoder_size=decoder_size)
    dynamic_axes = None
    dynamic_max = None
    if s.kind == "causal_lm":
        # Sequence (and past) lengths are always symbolic: a causal LM is fed prompts of
        # any length and, with a cache, one token at a time.
        inputs = example_inputs(name, small=small, batch=trace_batch, seq_len=max(seq_len, 2), seed=seed, decoder_size=decoder_size)
        b = {0: "batch"} if dynamic_batch else {}
        dynamic_axes = {n: ({**b, 1: "seq"} if n == "input_ids" else {**b, 2: "past"}) for n in s.input_names}
    elif dynamic_batch:
        axes = {0: "batch", 1: "seq"} if s.kind == "text" else {0: "batch"}
        dynamic_axes = {n: axes for n in s.input_names}
        dynamic_max = {"seq": s.max_seq_len} if s.kind == "text" else None
    return export_module(
        model,
        inputs,
        path,
        output_names=s.output_names,
        keep_batchnorm=keep_batchnorm,
        dynamic_axes=dynamic_axes,
        dynamic_max=dynamic_max,
        opset=opset,
        exporter=exporter,
    )
