"""ONNX export helper shared by every model (torch 2.13 dynamo exporter).

Why the dynamo (``torch.export``-based) exporter:

* It is the default of ``torch.onnx.export`` since torch 2.9. The legacy
  TorchScript exporter (``dynamo=False``) still exists in 2.13 but emits a
  ``DeprecationWarning`` ("The feature will be removed").
* With ``optimize=True`` (default) the onnxscript optimizer constant-folds,
  fuses Conv+BatchNormalization, removes redundant nodes and lifts constants
  to initializers -- the clean graph a user gets from a plain export.
* With ``optimize=False`` the graph is left exactly as translated: every
  ``BatchNormalization`` (inference mode) survives, plus ``Constant`` nodes
  and shape-computing subgraphs -- a realistic "raw export" for the
  compression passes to clean up. That is what ``keep_batchnorm=True`` uses.

``external_data=False`` keeps each model in a single ``.onnx`` file (every
model here is far below the 2 GB protobuf limit). Note the dynamo exporter's
default is ``external_data=True``, which writes a ``<file>.data`` side file
even for tiny models.

The legacy exporter is still selectable (``exporter="torchscript"``): its
graphs look like most ONNX files found in the wild (Conv without bias input +
BatchNormalization with ``training=PRESERVE, do_constant_folding=False``;
``Flatten``/``GlobalAveragePool``; Identity nodes where two initializers have
equal values), which is a useful second graph "dialect" for testing passes.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

DEFAULT_OPSET = 18
"""Opset of exported graphs. 18 is >= 17 (LayerNormalization is a single op),
is what both torch 2.13 exporters handle natively, and sits well inside
onnxruntime 1.32's range while staying conservative for other ONNX tooling.
The dynamo exporter's own default is 20; for these models the only visible
difference is that GELU is spelled Div/Erf/Add/Mul instead of the opset-20
``Gelu`` op. Pass ``opset=20`` to :func:`export_module` to get that."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints, warnings and log chatter."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def export_module(
    model: torch.nn.Module,
    example_inputs: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    output_names: Sequence[str],
    keep_batchnorm: bool = False,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    dynamic_max: Mapping[str, int] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> Path:
    """Export ``model`` to a single self-contained ONNX file.

    Args:
        model: Module in eval mode; ``forward`` takes the inputs positionally
            in the order of ``example_inputs``.
        example_inputs: Input name -> example array. Names become the graph
            input names.
        path: Destination ``.onnx`` file (parent dirs are created).
        output_names: Names for the graph outputs, in forward's return order.
        keep_batchnorm: Skip the onnxscript optimizer so BatchNormalization
            nodes (and other raw-export artefacts) stay in the graph.
        dynamic_axes: Input name -> {axis: symbolic name}. The same symbolic
            name on several inputs means the same dimension.
        dynamic_max: Optional symbolic name -> upper bound (e.g. BERT's
            ``seq`` is bounded by the position table).
        opset: Target ONNX opset.
        exporter: ``"dynamo"`` (default, torch.export based) or
            ``"torchscript"`` (legacy, deprecated in torch >= 2.9).

    Returns:
        The written path.
    """
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(example_inputs)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example_inputs[n])) for n in names)

    model.eval()
    if exporter == "torchscript":
        _export_torchscript(model, args, path, names, output_names, keep_batchnorm, dynamic_axes, opset)
        onnx.checker.check_model(str(path))
        return path

    dynamic_shapes = None
    if dynamic_axes:
        dims: dict[str, torch.export.Dim] = {}
        for axes in dynamic_axes.values():
            for sym in axes.values():
                if sym not in dims:
                    hi = (dynamic_max or {}).get(sym)
                    dims[sym] = torch.export.Dim(sym, max=hi) if hi else torch.export.Dim(sym)
        # torch.export wants one spec per positional arg (None = fully static).
        specs = [{ax: dims[sym] for ax, sym in dynamic_axes[n].items()} if n in dynamic_axes else None for n in names]
        # torch.export binds the specs to forward's signature: a ``*args`` tail (the
        # decoder's past keys/values) takes one nested tuple of specs.
        params = list(inspect.signature(model.forward).parameters.values())
        star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
        dynamic_shapes = tuple(specs) if star is None or star >= len(specs) else (*specs[:star], tuple(specs[star:]))

    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            model,
            args,
            input_names=names,
            output_names=list(output_names),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            optimize=not keep_batchnorm,
            external_data=False,
        )
        program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    return path


def _export_torchscript(
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: list[str],
    output_names: Sequence[str],
    keep_batchnorm: bool,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    opset: int,
) -> None:
    # PRESERVE exports BN as an inference-mode BatchNormalization (the model
    # is in eval mode); disabling constant folding stops the exporter from
    # folding BN into the preceding Conv.
    extra = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False} if keep_batchnorm else {}
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=names,
            output_names=list(output_names),
            opset_version=opset,
            dynamo=False,
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None,
            **extra,
        )


def run_onnx(path: str | Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file with onnxruntime on CPU.

    Args:
        path: Model file.
        inputs: Feed dict keyed by graph input names.

    Returns:
        The outputs in graph order.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(inputs))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened (1.0 for two all-zero arrays)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb + 1e-300))
