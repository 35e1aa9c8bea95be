"""Settings of the side-by-side benchmark (`bench/run.py`): models, shapes, rounds.

One place states every measurement condition that RESULTS.md quotes: batch and sequence
length per model, how many calibration and evaluation samples, how long each model's
variants are timed, the pruning ratio, the thread count and the execution provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Models of the quick run: two CNNs, the transformer, the trained model.
QUICK_MODELS: tuple[str, ...] = ("resnet18", "mobilenetv2", "bert", "digits")
#: Models of the full run (every reference model).
FULL_MODELS: tuple[str, ...] = ("resnet18", "resnet50", "mobilenetv2", "vit", "bert", "digits")
#: Models whose Torch-Pruning / quantize_dynamic treatment is the transformer one.
TRANSFORMERS: frozenset[str] = frozenset({"bert", "vit"})


@dataclass(frozen=True)
class ModelSetting:
    """How one model is exported, calibrated, evaluated and timed.

    Attributes:
        name: Model name in `models.MODEL_NAMES`.
        batch: Batch size of the exported graph and of the timed inputs.
        seq_len: Sequence length (BERT only).
        dynamic_batch: Export with a symbolic batch dim (the trained digits model, so that
            accuracy is evaluated on the whole test split in batches).
        calib_samples: Calibration samples written by `models.make_calibration`.
        eval_samples: Held-out samples for fidelity (digits: the whole test split).
    """

    name: str
    batch: int = 1
    seq_len: int = 32
    dynamic_batch: bool = False
    calib_samples: int = 16
    eval_samples: int = 16

    @property
    def is_transformer(self) -> bool:
        """BERT and ViT get transformer treatment (quantize_dynamic, FFN-only Torch-Pruning)."""
        return self.name in TRANSFORMERS

    def shape_text(self) -> str:
        """Input shapes in words, for the report."""
        if self.name == "bert":
            return f"input_ids/attention_mask int64 [{self.batch}, {self.seq_len}]"
        if self.name == "digits":
            return f"input float32 [{self.batch}, 1, 8, 8]"
        return f"float32 [{self.batch}, 3, 224, 224]"


@dataclass(frozen=True)
class SuiteConfig:
    """One benchmark run.

    Attributes:
        models: Models to run, in order.
        small: Use the models' ``small=True`` variants (harness debugging only; never for
            committed results).
        ratio: Channel pruning ratio for every pruning tool (fraction of channels removed).
        threads: onnxruntime intra-op threads of every timed session.
        ep: onnxruntime execution provider of the timing and fidelity sessions.
        warmup: Untimed runs per variant before interleaved timing.
        duration_s: Length of the interleaved timed phase per model.
        min_rounds: Fewest interleaved rounds per model.
        tool_timeout_s: Wall-clock limit of one tool invocation (a slower tool is a failed row).
        settings: Per-model settings (`ModelSetting`) keyed by name.
        seed: Seed of weights, inputs and every tool that takes one.
    """

    models: tuple[str, ...]
    small: bool = False
    ratio: float = 0.5
    threads: int = 2
    ep: str = "cpu"
    warmup: int = 5
    duration_s: float = 10.0
    min_rounds: int = 20
    tool_timeout_s: float = 600.0
    settings: dict[str, ModelSetting] = field(default_factory=dict)
    seed: int = 0

    def setting(self, name: str) -> ModelSetting:
        """The `ModelSetting` of ``name`` (defaults when not listed)."""
        return self.settings.get(name, ModelSetting(name))


def _settings(quick: bool) -> dict[str, ModelSetting]:
    n_img = 16 if quick else 64
    return {
        "resnet18": ModelSetting("resnet18", calib_samples=n_img, eval_samples=n_img),
        "resnet50": ModelSetting("resnet50", calib_samples=n_img, eval_samples=n_img),
        "mobilenetv2": ModelSetting("mobilenetv2", calib_samples=n_img, eval_samples=n_img),
        "vit": ModelSetting("vit", calib_samples=n_img, eval_samples=n_img),
        # Issue 4's transformer setting: batch 8 x sequence 32, padded rows included.
        "bert": ModelSetting("bert", batch=8, seq_len=32, calib_samples=16 if quick else 64,
                             eval_samples=32 if quick else 128),
        # The trained model: accuracy on the whole 450-image test split, batches of 8.
        "digits": ModelSetting("digits", batch=8, dynamic_batch=True, calib_samples=64, eval_samples=450),
    }


def make_config(
    *,
    quick: bool,
    models: tuple[str, ...] | None = None,
    small: bool = False,
    ratio: float = 0.5,
    threads: int = 2,
    duration_s: float | None = None,
    tool_timeout_s: float | None = None,
    seed: int = 0,
) -> SuiteConfig:
    """The configuration of a quick or full run, with explicit overrides.

    Args:
        quick: Few-minute run (fewer models, samples and timed rounds).
        models: Override the model list.
        small: Use the small model variants (harness debugging).
        ratio: Pruning ratio.
        threads: onnxruntime intra-op threads.
        duration_s: Override the timed phase length per model.
        tool_timeout_s: Override the per-tool time limit.
        seed: Seed for everything random.

    Returns:
        The `SuiteConfig`.

    Raises:
        ValueError: An unknown model name or an out-of-range number.
    """
    from models import MODEL_NAMES

    chosen = models or (QUICK_MODELS if quick else FULL_MODELS)
    unknown = [m for m in chosen if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(MODEL_NAMES)}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"--ratio must be in (0, 1), got {ratio}")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    cfg = SuiteConfig(
        models=tuple(chosen),
        small=small,
        ratio=ratio,
        threads=threads,
        warmup=3 if quick else 10,
        duration_s=20.0 if quick else 45.0,
        min_rounds=30 if quick else 60,
        tool_timeout_s=600.0 if quick else 1200.0,
        settings=_settings(quick),
        seed=seed,
    )
    if duration_s is not None:
        cfg = replace(cfg, duration_s=duration_s)
    if tool_timeout_s is not None:
        cfg = replace(cfg, tool_timeout_s=tool_timeout_s)
    return cfg
