"""The tools compared by `bench/run.py`: onnxcomp presets and the peers people use today.

Every tool is a `Tool` — a stateless adapter that takes the FP32 model (and, where it
needs them, calibration data, training data or the PyTorch module) and writes one ONNX
file. The registry `TOOLS` is ordered as the report's rows are.

Peers and how they are driven (their documented default flows; nothing is fine-tuned):

* onnxruntime ``quantize_static``: ``quant_pre_process`` (the documented pre-step: shape
  inference + basic optimisation), then QDQ format, per-channel weights, MinMax calibration
  on the same calibration samples onnxcomp gets; once with onnxruntime's default types
  (S8S8) and once with UINT8 activations (U8S8).
* onnxruntime ``quantize_dynamic`` (transformers only): pre-process, then INT8 weights
  with activations quantized at run time.
* onnx-simplifier (``onnxsim.simplify``) as the cleanup peer.
* Torch-Pruning: ``MagnitudePruner`` with L2-magnitude importance at the same channel
  ratio, applied to the PyTorch model, then exported exactly as `models.export` does.
  The classifier head is kept (its output is the model output). On transformers only the
  FFN expansion layers are pruned (hidden size and attention head layout kept) because
  the encoder's output width is the model's output.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite_config import ModelSetting, SuiteConfig

#: Families (report grouping).
REFERENCE, ONNXCOMP, PEER = "reference", "onnxcomp", "peer"


class ToolTimeout(Exception):
    """A tool ran past `SuiteConfig.tool_timeout_s`."""


@dataclass(frozen=True)
class ToolInputs:
    """What a tool may use. Paths exist; ``train_npz`` only for the trained model."""

    model: str
    setting: ModelSetting
    config: SuiteConfig
    fp32_path: Path
    calib_npz: Path
    train_npz: Path | None
    out_path: Path


@dataclass
class ToolOutput:
    """What a tool produced: the written model plus notes for the report."""

    path: Path
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    """One row kind of the report.

    Attributes:
        key: Stable id used in the JSON (``onnxcomp:int8``).
        label: Name shown in the table and the plot.
        family: `ONNXCOMP` or `PEER`.
        category: What it competes on: ``cleanup``, ``int8``, ``prune``, ``prune+int8``,
            ``recover``. The "where onnxcomp loses" analysis compares within a category.
        applies: Whether the tool runs on a model (e.g. ``quantize_dynamic`` only on
            transformers, distillation only on the trained model).
        run: The adapter; writes ``inputs.out_path``.
    """

    key: str
    label: str
    family: str
    category: str
    applies: Callable[[ModelSetting], bool]
    run: Callable[[ToolInputs], ToolOutput]


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `ToolTimeout` in the main thread after ``seconds`` (0: no limit).

    SIGALRM interrupts Python code between bytecodes; a single long C call finishes
    first, which is acceptable for a benchmark harness.
    """
    if seconds <= 0:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
        raise ToolTimeout(f"ran longer than the {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- onnxcomp


def _onnxcomp(preset: str, extra: Callable[[ToolInputs], list[str]] | None = None, *, train: bool = False):
    """An adapter running ``onnxcomp.optimize`` with ``preset`` (+ pass specs)."""

    def run(inp: ToolInputs) -> ToolOutput:
        import onnxcomp

        specs = extra(inp) if extra else []
        _, report = onnxcomp.optimize(
            inp.fp32_path,
            specs,
            preset=preset,
            calibration_data=str(inp.calib_npz),
            train_data=str(inp.train_npz) if train and inp.train_npz else None,
            output=inp.out_path,
            seed=inp.config.seed,
        )
        rolled = [p.name for p in report.passes if p.rolled_back]
        notes = [f"rolled back: {', '.join(rolled)}"] if rolled else []
        notes += [w for w in report.warnings][:3]
        details = {
            "pipeline": [p.name for p in report.passes],
            "verification": report.verification,
            "seconds_by_pass": _seconds_by_pass(report),
        }
        return ToolOutput(inp.out_path, notes, details)

    return run


def _seconds_by_pass(report: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in report.passes:
        out[p.name] = round(out.get(p.name, 0.0) + float(p.seconds), 3)
    return out


def _prune_spec(inp: ToolInputs) -> list[str]:
    return [f"prune-channels:ratio={inp.config.ratio}"]


def _prune_int8_spec(inp: ToolInputs) -> list[str]:
    # The "prune" preset followed by INT8: quantize-int8 is not in the preset, so the
    # manager appends it after the final cleanup.
    return [f"prune-channels:ratio={inp.config.ratio}", "quantize-int8"]


# --------------------------------------------------------------------------- onnxruntime


def _calibration_reader(inp: ToolInputs) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over the calibration ``.npz``.

    Batches are cut to the model's batch size exactly as onnxcomp cuts them, so both
    quantizers see the same samples.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    from onnxcomp.checking.calibration import CalibrationData

    model = onnx.load(str(inp.fp32_path), load_external_data=False)
    data = CalibrationData.from_source(str(inp.calib_npz), model, batch_size=inp.setting.batch)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(data)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(data)

    return _Reader()


def _preprocess(inp: ToolInputs, notes: list[str]) -> Path:
    """onnxruntime's documented pre-quantization step; falls back to the raw model."""
    from onnxruntime.quantization import quant_pre_process

    pre = inp.out_path.with_name(inp.out_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(inp.fp32_path), str(pre))
        return pre
    except Exception as e:  # the peer's own step failing is a fact worth reporting
        notes.append(f"quant_pre_process failed ({_first_line(e)}); quantized the raw export")
        return inp.fp32_path


def _ort_static(activations: str):
    """quantize_static with INT8 (S8S8, onnxruntime's default) or UINT8 (U8S8) activations.

    Both are run because onnxruntime's docs name U8S8 as the faster choice on x86 CPUs
    without VNNI and S8S8 as the default; reporting only one would pick the peer's setting.
    """

    def run(inp: ToolInputs) -> ToolOutput:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        notes: list[str] = []
        src = _preprocess(inp, notes)
        act = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
        quantize_static(
            str(src),
            str(inp.out_path),
            _calibration_reader(inp),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=act,
            weight_type=QuantType.QInt8,
        )
        types = "U8S8" if activations == "uint8" else "S8S8 (default)"
        return ToolOutput(inp.out_path, notes, {"format": "QDQ", "per_channel": True, "types": types})

    return run


def _ort_dynamic(inp: ToolInputs) -> ToolOutput:
    from onnxruntime.quantization import quantize_dynamic

    notes: list[str] = []
    src = _preprocess(inp, notes)
    quantize_dynamic(str(src), str(inp.out_path))
    return ToolOutput(inp.out_path, notes, {"weight_type": "QInt8 (default)"})


# --------------------------------------------------------------------------- onnxsim


def _onnxsim(inp: ToolInputs) -> ToolOutput:
    import onnx
    import onnxsim

    model = onnx.load(str(inp.fp32_path))
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim's own check failed (outputs differ from the input model)")
    onnx.save(simplified, str(inp.out_path))
    return ToolOutput(inp.out_path)


# --------------------------------------------------------------------------- Torch-Pruning


def _export_like_models(name: str, module: Any, path: Path, setting: ModelSetting, small: bool, seed: int) -> None:
    """Export a (pruned) module exactly as `models.export` exports the original."""
    import models

    models.export(name, path, small=small, batch=setting.batch, seq_len=setting.seq_len,
                  dynamic_batch=setting.dynamic_batch, seed=seed, module=module)


def _ignored_layers(module: Any, transformer: bool) -> list[Any]:
    """Layers Torch-Pruning must not shrink (their output width is fixed by the task).

    CNNs: the final classifier. Transformers: everything except FFN expansion layers
    (Linear with out_features > in_features, other than the last Linear, which is the
    classifier of ViT), so hidden size, heads and the output keep their width.
    """
    from torch import nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not transformer:
        return linears[-1:]
    # The classifier head (ViT: 192 -> 1000) also widens, so it is named explicitly.
    keep = [m for m in linears if m.out_features <= m.in_features or m is linears[-1]]
    keep += [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Embedding))]
    return keep


def _torch_pruning(inp: ToolInputs) -> ToolOutput:
    import torch
    import torch_pruning as tp

    import models

    cfg, st = inp.config, inp.setting
    module = models.build(inp.model, small=cfg.small, seed=cfg.seed).eval()
    ex = models.example_inputs(inp.model, small=cfg.small, batch=max(st.batch, 1), seq_len=st.seq_len, seed=cfg.seed)
    example = tuple(torch.from_numpy(v) for v in ex.values())
    before = sum(p.numel() for p in module.parameters())
    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        module,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=cfg.ratio,
        ignored_layers=_ignored_layers(module, st.is_transformer),
    )
    with torch.no_grad():
        pruner.step()
    prune_s = time.perf_counter() - t0
    after = sum(p.numel() for p in module.parameters())
    _export_like_models(inp.model, module, inp.out_path, st, cfg.small, cfg.seed)
    notes = ["FFN layers only" if st.is_transformer else "classifier kept",
             f"tool time = pruning {prune_s:.1f} s + ONNX export"]
    return ToolOutput(inp.out_path, notes, {"prune_seconds": round(prune_s, 3), "torch_params_before": before,
                                            "torch_params_after": after, "importance": "L2 magnitude"})


# --------------------------------------------------------------------------- registry


def _always(_: ModelSetting) -> bool:
    return True


def _transformer(s: ModelSetting) -> bool:
    return s.is_transformer


def _trained(s: ModelSetting) -> bool:
    return s.name == "digits"


TOOLS: tuple[Tool, ...] = (
    Tool("onnxcomp:lossless", "onnxcomp lossless", ONNXCOMP, "cleanup", _always, _onnxcomp("lossless")),
    Tool("onnxsim", "onnxsim", PEER, "cleanup", _always, _onnxsim),
    Tool("onnxcomp:int8", "onnxcomp int8", ONNXCOMP, "int8", _always, _onnxcomp("int8")),
    Tool("ort:quantize_static", "ORT quantize_static S8S8", PEER, "int8", _always, _ort_static("int8")),
    Tool("ort:quantize_static_u8", "ORT quantize_static U8S8", PEER, "int8", _always, _ort_static("uint8")),
    Tool("ort:quantize_dynamic", "ORT quantize_dynamic", PEER, "int8", _transformer, _ort_dynamic),
    Tool("onnxcomp:prune", "onnxcomp prune", ONNXCOMP, "prune", _always, _onnxcomp("prune", _prune_spec)),
    Tool("torch-pruning", "Torch-Pruning", PEER, "prune", _always, _torch_pruning),
    Tool("onnxcomp:prune+int8", "onnxcomp prune+int8", ONNXCOMP, "prune+int8", _always,
         _onnxcomp("prune", _prune_int8_spec)),
    Tool("onnxcomp:prune-recover", "onnxcomp prune-recover", ONNXCOMP, "recover", _always,
         _onnxcomp("prune-recover", _prune_spec)),
    Tool("onnxcomp:prune-distill-int8", "onnxcomp prune-distill-int8", ONNXCOMP, "recover", _trained,
         _onnxcomp("prune-distill-int8", _prune_spec, train=True)),
)


def tool_by_key(key: str) -> Tool:
    """The registered tool ``key``.

    Raises:
        KeyError: No such tool.
    """
    for t in TOOLS:
        if t.key == key:
            return t
    raise KeyError(f"unknown tool {key!r}; known: {', '.join(t.key for t in TOOLS)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def run_tool(tool: Tool, inp: ToolInputs) -> tuple[ToolOutput | None, float, str | None]:
    """Run one tool under the time limit; never raises for a tool's own failure.

    Returns:
        ``(output or None, wall seconds, error line or None)``.
    """
    inp.out_path.parent.mkdir(parents=True, exist_ok=True)
    inp.out_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        with time_limit(inp.config.tool_timeout_s):
            out = tool.run(inp)
        if not out.path.exists():
            raise RuntimeError(f"tool reported success but wrote no model at {out.path}")
        return out, time.perf_counter() - t0, None
    except Exception as e:  # ToolTimeout included: a failed tool is a row, never a crashed run
        return None, time.perf_counter() - t0, _first_line(e)


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (for error cells)."""
    return _first_line(e)
