"""Perplexity of causal language models: the fidelity measure that matters for decoder LMs.

A model is treated as a causal LM when it takes integer ``input_ids [B, S]`` and returns a
3-D float output named ``logits [B, S, vocab]``. Its perplexity on a
batch of token ids is ``exp(mean NLL)`` of predicting token ``t + 1`` from the logits at
``t`` (labels = input_ids shifted by one), skipping positions an ``attention_mask`` marks
as padding. KV-cache inputs (``past_*``) are fed empty (length 0), ``attention_mask`` as
ones (unless the data has it), ``position_ids`` as ``0 .. S-1``. Sums are streamed: one
batch of logits in memory at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.checking.metrics import CHUNK

#: Names of the token-id input of causal LMs.
IDS = "input_ids"


@dataclass(frozen=True)
class LMInterface:
    """How to feed a causal LM and where its logits are."""

    logits: str
    extra_inputs: tuple[tuple[str, int, tuple[int | str, ...]], ...]  #: (name, elem type, dims) of the other inputs


def _dims(t: onnx.TypeProto) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in t.tensor_type.shape.dim)


def causal_lm_interface(model: onnx.ModelProto) -> LMInterface | None:
    """The interface if ``model`` looks like a causal LM (see the module docstring), else None."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    ids = next((i for i in inputs if i.name == IDS), None)
    if ids is None or ids.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or len(_dims(ids.type)) != 2:
        return None
    # An encoder's hidden states are 3-D floats too: only an output called "logits" counts.
    outs = [o for o in g.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(_dims(o.type)) == 3]
    logits = next((o for o in outs if o.name == "logits"), None)
    if logits is None:
        return None
    extra = tuple((i.name, i.type.tensor_type.elem_type, _dims(i.type)) for i in inputs if i.name != IDS)
    known = ("past", "attention_mask", "position_ids")
    if any(not any(k in name for k in known) for name, _, _ in extra):
        return None  # an input we would not know how to feed
    return LMInterface(logits.name, extra)


def lm_feeds(iface: LMInterface, ids: np.ndarray, given: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Feeds for one forward pass over ``ids [B, S]`` without a cache."""
    feeds = {IDS: ids}
    b, s = ids.shape
    for name, elem, dims in iface.extra_inputs:
        if given is not None and name in given:
            feeds[name] = given[name]
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if "attention_mask" in name:
            feeds[name] = np.ones((b, s), dtype)
        elif "position_ids" in name:
            feeds[name] = np.broadcast_to(np.arange(s, dtype=dtype), (b, s)).copy()
        else:  # past keys/values: batch from ids, the symbolic length 0, the rest as declared
            shape = [b if i == 0 else (d if isinstance(d, int) and d > 0 else 0) for i, d in enumerate(dims)]
            feeds[name] = np.zeros(shape, dtype)
    return feeds


class PerplexityAccumulator:
    """Streamed negative log-likelihood of next-token prediction."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.tokens = 0

    def add(self, logits: np.ndarray, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one batch: ``logits [B, S, V]`` predicting ``ids[:, 1:]``."""
        self.add_targets(logits[:, :-1], ids[:, 1:], None if mask is None else mask[:, 1:])

    def add_targets(self, logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one batch of ``logits [B, S, V]`` and the token ``targets [B, S]`` they predict.

        The log-softmax is taken in float64 over a few positions at a time: a float64 copy
        of a whole batch of LM logits (and its exponent) would cost several times its size.
        """
        keep = np.ones(targets.shape, bool) if mask is None else mask.astype(bool)
        step = max(1, CHUNK // max(logits.shape[-1], 1))
        for b in range(logits.shape[0]):
            for start in range(0, logits.shape[1], step):
                z = logits[b, start:start + step].astype(np.float64)
                z -= z.max(axis=-1, keepdims=True)
                t = targets[b, start:start + step].astype(np.int64)
                logp = z[np.arange(len(t)), t] - np.log(np.exp(z).sum(axis=-1))
                self.nll -= float(logp[keep[b, start:start + step]].sum())
        self.tokens += int(keep.sum())

    @property
    def perplexity(self) -> float:
        """``exp(mean NLL)`` (nan before any token)."""
        return float(np.exp(self.nll / self.tokens)) if self.tokens else float("nan")


def paired_perplexity(
    model: onnx.ModelProto, feeds: list[Mapping[str, np.ndarray]], reference: list[Mapping[str, np.ndarray]], candidate: list[Mapping[str, np.ndarray]]
) -> dict[str, float | int] | None:
    """Perplexity of two models' logits already computed on the same ``feeds`` (None: not a causal LM).

    Used by the optimize report, which has both models' outputs on its verification feeds
    at hand, so no model runs again.
    """
    iface = causal_lm_interface(model)
    if iface is None or not feeds:
        return None
    ra, ca = PerplexityAccumulator(), PerplexityAccumulator()
    for f, r, c in zip(feeds, reference, candidate):
        if IDS not in f or iface.logits not in r or iface.logits not in c:
            return None
        ids = np.asarray(f[IDS])
        mask = f.get("attention_mask")
        ra.add(r[iface.logits], ids, mask)
        ca.add(c[iface.logits], ids, mask)
    ref, cand = ra.perplexity, ca.perplexity
    return {"reference": round(ref, 4), "candidate": round(cand, 4), "increase": round(cand / ref - 1.0, 6), "tokens": ra.tokens}


def compare_perplexity(
    reference: str,
    candidate: str,
    data: str,
    *,
    providers: list[str],
    threads: int | None = None,
    batch: int | None = None,
    max_samples: int = 512,
) -> dict[str, float | int | str]:
    """``compare --metric perplexity``: both models' perplexity on the token ids of ``data``.

    Raises:
        UsageError: The reference is not a causal LM (see `causal_lm_interface`).
    """
    from onnxcomp.checking.calibration import CalibrationData
    from onnxcomp.checking.runtime import open_session
    from onnxcomp.errors import UsageError
    from onnxcomp.io.files import load_model

    ref_model = load_model(reference, load_external_data=False)
    iface = causal_lm_interface(ref_model)
    if iface is None:
        raise UsageError(f"--metric perplexity needs a causal LM (int input_ids [B, S] -> logits [B, S, V]); {reference} is not one")
    sessions = [open_session(str(p), providers, threads=threads, spinning=False) for p in (reference, candidate)]
    calib = CalibrationData.from_source(data, ref_model, batch_size=batch)
    batches = (feeds for feeds, _ in calib.iter_with_labels(max_samples=max_samples))
    acc = [PerplexityAccumulator() for _ in sessions]
    for feeds in batches:
        ids = np.asarray(feeds[IDS])
        run_feeds = lm_feeds(iface, ids, feeds)
        for sess, a in zip(sessions, acc):
            wanted = {i.name for i in sess.get_inputs()}
            (logits,) = sess.run([iface.logits], {k: v for k, v in run_feeds.items() if k in wanted})
            a.add(logits, ids, run_feeds.get("attention_mask"))
    ref, cand = acc[0].perplexity, acc[1].perplexity
    return {"reference": ref, "candidate": cand, "increase": cand / ref - 1.0, "tokens": acc[0].tokens, "data": str(data)}
