"""``bench --decode N``: prefill latency and decode speed of causal LMs with a KV cache.

A decoder exported with a cache takes the new tokens plus the keys and values of every
earlier position (``past_key_values.<i>.key|value [B, H, P, D]``) and returns the logits
plus the caches grown by the new tokens (``present.<i>.key|value [B, H, P + S, D]``).
Generation is one *prefill* run on the prompt (``P = 0``) and then one run per new token
with the previous run's presents fed back as the pasts.

`KvLayout.detect` reads that layout from the model's inputs and outputs (names and
shapes), so nothing but the model is needed:

* the token input: the integer rank-2 input (``input_ids``);
* past inputs: float inputs whose name says ``past`` or ``cache``; each is paired with the
  output of the same name where ``past_key_values``/``past`` reads ``present``, else, when
  the counts agree, with the outputs after the logits in order;
* the cache axis: the past input's one free dim after the batch dim (named ``past``…);
* the logits: the first float output that is not a present;
* ``attention_mask`` ``[B, P + S]`` (ones) and ``position_ids`` ``[B, S]`` (``P .. P+S-1``)
  are fed when the model has them; any other input is an error naming it.

One *generation* — prefill, then ``N`` greedy steps (the argmax of the last logits is the
next token) — is one call of a `DecodeRunner`. `onnxcomp.perf.benchmark.bench` times these
calls interleaved with the other models' like every other bench, and each runner records
the prefill time and the decode time of its calls. On CUDA-memory EPs the caches stay on
the device (IO binding: presents are bound as the next step's pasts, only the last logits
come to the host).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.checking.runtime import CUDA_DEVICE_EPS
from onnxcomp.errors import UsageError
from onnxcomp.io.files import load_model
from onnxcomp.perf.placement import ep_warnings
from onnxcomp.perf.prepare import PreparedModel, warm_session
from onnxcomp.perf.timing import LatencyStats, paired_ratio

_PAST = re.compile(r"past|cache", re.IGNORECASE)
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
#: Prompt length when ``--shape`` does not give the token input's.
DEFAULT_PROMPT = 32


def _dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _present_name(past: str) -> str:
    return past.replace("past_key_values", "present").replace("past", "present")


@dataclass(frozen=True)
class KvLayout:
    """Where a causal LM takes its tokens and caches (see the module docstring).

    Attributes:
        tokens: The token input (``input_ids``).
        token_dtype: Its numpy dtype.
        logits: The logits output.
        pasts: Past inputs, in model order.
        presents: The output that feeds each past.
        cache_axis: The cache-length axis of the pasts (and presents).
        cache_shapes: Each past's shape with batch 0 and an empty cache (other dims fixed).
        cache_dtypes: Each past's numpy dtype.
        attention_mask: The ``attention_mask`` input, if any, and its dtype.
        position_ids: The ``position_ids`` input, if any, and its dtype.
        batch: A fixed batch size of the token input, else None.
    """

    tokens: str
    token_dtype: np.dtype
    logits: str
    pasts: tuple[str, ...]
    presents: tuple[str, ...]
    cache_axis: int
    cache_shapes: tuple[tuple[int, ...], ...]
    cache_dtypes: tuple[np.dtype, ...]
    attention_mask: tuple[str, np.dtype] | None
    position_ids: tuple[str, np.dtype] | None
    batch: int | None

    @classmethod
    def detect(cls, model: onnx.ModelProto, label: str = "the model") -> KvLayout:
        """The layout of ``model`` (its header is enough: no weights are read).

        Raises:
            UsageError: The model has no KV cache, or inputs `--decode` cannot feed.
        """
        init = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in init]
        outputs = list(model.graph.output)
        elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*inputs, *outputs]}
        pasts = [i for i in inputs if _PAST.search(i.name) and elem[i.name] in _FLOAT_TYPES]
        if not pasts:
            raise UsageError(f"--decode: {label} has no KV cache (no past key/value inputs with present outputs); "
                             "export it with a cache (e.g. `python -m models export --names decoder_kv`)")
        by_name = {o.name: o for o in outputs}
        presents = [by_name.get(_present_name(p.name)) for p in pasts]
        rest = [o for o in outputs if o.name not in {p.name for p in presents if p is not None}]
        if any(p is None for p in presents):
            caches = [o for o in outputs if elem[o.name] in _FLOAT_TYPES][1:]  # after the logits
            if len(caches) != len(pasts):
                raise UsageError(f"--decode: {label}: cannot pair its {len(pasts)} past inputs with present outputs "
                                 f"(outputs: {', '.join(o.name for o in outputs)})")
            presents, rest = caches, [o for o in outputs if o not in caches]
        logits = next((o for o in rest if elem[o.name] in _FLOAT_TYPES), None)
        if logits is None:
            raise UsageError(f"--decode: {label} has no float logits output besides its presents")
        shape0 = _dims(pasts[0]) or []
        free = [a for a, d in enumerate(shape0) if a > 0 and not isinstance(d, int)]
        named = [a for a in free if _PAST.search(str(shape0[a])) or "seq" in str(shape0[a]) or "len" in str(shape0[a])]
        if len(free) != 1 and len(named) != 1:
            raise UsageError(f"--decode: {label}: cannot tell the cache-length axis of {pasts[0].name} {shape0}")
        axis = free[0] if len(free) == 1 else named[0]
        shapes, dtypes = [], []
        for p in pasts:
            dims = _dims(p)
            if dims is None or len(dims) != len(shape0):
                raise UsageError(f"--decode: {label}: past input {p.name} has shape {dims}, unlike {pasts[0].name} {shape0}")
            bad = [d for a, d in enumerate(dims) if a not in (0, axis) and not (isinstance(d, int) and d > 0)]
            if bad:
                raise UsageError(f"--decode: {label}: past input {p.name} {dims} has free dims besides batch and cache length")
            shapes.append(tuple(0 if a in (0, axis) else int(d) for a, d in enumerate(dims)))
            dtypes.append(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem[p.name])))
        known = {p.name for p in pasts}
        tokens = None
        mask = pos = None
        for i in inputs:
            if i.name in known:
                continue
            dims = _dims(i) or []
            dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem[i.name])) if elem[i.name] in _INT_TYPES else None
            if dt is not None and i.name == "attention_mask":
                mask = (i.name, dt)
            elif dt is not None and i.name == "position_ids":
                pos = (i.name, dt)
            elif dt is not None and len(dims) == 2 and tokens is None:
                tokens = (i, dt)
            else:
                raise UsageError(f"--decode: {label}: cannot feed input {i.name!r} (known: the token ids, "
                                 "past key/values, attention_mask, position_ids)")
        if tokens is None:
            raise UsageError(f"--decode: {label} has no integer [batch, sequence] token input")
        tdims = _dims(tokens[0]) or []
        batch = tdims[0] if tdims and isinstance(tdims[0], int) and tdims[0] > 0 else None
        return cls(tokens[0].name, tokens[1], logits.name, tuple(p.name for p in pasts), tuple(o.name for o in presents),
                   axis, tuple(shapes), tuple(dtypes), mask, pos, batch)

    def empty_caches(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length pasts for the prefill."""
        out = {}
        for name, shape, dt in zip(self.pasts, self.cache_shapes, self.cache_dtypes):
            s = list(shape)
            s[0] = batch
            out[name] = np.zeros(s, dtype=dt)
        return out

    def extras(self, batch: int, past: int, new: int) -> dict[str, np.ndarray]:
        """``attention_mask`` and ``position_ids`` for ``new`` tokens after ``past`` cached ones."""
        out = {}
        if self.attention_mask is not None:
            out[self.attention_mask[0]] = np.ones((batch, past + new), dtype=self.attention_mask[1])
        if self.position_ids is not None:
            out[self.position_ids[0]] = np.broadcast_to(np.arange(past, past + new, dtype=self.position_ids[1]), (batch, new)).copy()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the ``decode.layout`` entry of ``bench --json``)."""
        return {"tokens": self.tokens, "logits": self.logits, "caches": len(self.pasts), "first_past": self.pasts[0],
                "first_present": self.presents[0], "cache_axis": self.cache_axis}


class DecodeRunner:
    """One call = one greedy generation: prefill ``prompt``, then ``new_tokens`` decode steps.

    The last call's tokens are in ``generated``. Records the prefill time and the decode time of every call (`reset` forgets them).
    """

    def __init__(self, session: Any, layout: KvLayout, prompt: np.ndarray, new_tokens: int, *,
                 providers: Sequence[str] = ("CPUExecutionProvider",), device_id: int = 0) -> None:
        self.session = session
        self.layout = layout
        self.prompt = np.ascontiguousarray(prompt.astype(layout.token_dtype))
        self.new_tokens = new_tokens
        self.device = "cuda" if providers and providers[0] in CUDA_DEVICE_EPS else "cpu"
        self.device_id = device_id
        self.output_names = [o.name for o in session.get_outputs()]
        self.prefill_ms: list[float] = []
        self.decode_ms: list[float] = []
        #: The tokens the last call generated ``[batch, new_tokens]``.
        self.generated = np.zeros((self.prompt.shape[0], 0), layout.token_dtype)

    def reset(self) -> None:
        """Forget the recorded times (after warm-up)."""
        self.prefill_ms.clear()
        self.decode_ms.clear()

    def _step(self, binding: Any, feeds: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """One run: feeds (arrays or device OrtValues) in; the last position's logits and the presents out."""
        lay = self.layout
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, v in feeds.items():
            if isinstance(v, np.ndarray):
                v = ort.OrtValue.ortvalue_from_numpy(v, self.device, self.device_id)
            binding.bind_ortvalue_input(name, v)
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        outs = dict(zip(self.output_names, binding.get_outputs()))
        logits = outs[lay.logits].numpy()[:, -1]
        return logits, {p: outs[q] for p, q in zip(lay.pasts, lay.presents)}

    def __call__(self) -> None:
        lay = self.layout
        batch, s = self.prompt.shape
        binding = self.session.io_binding()
        t0 = time.perf_counter_ns()
        logits, caches = self._step(binding, {lay.tokens: self.prompt, **lay.empty_caches(batch), **lay.extras(batch, 0, s)})
        t1 = time.perf_counter_ns()
        past = s
        tokens = []
        for _ in range(self.new_tokens):
            nxt = logits.argmax(-1).astype(lay.token_dtype)[:, None]
            tokens.append(nxt)
            logits, caches = self._step(binding, {lay.tokens: nxt, **caches, **lay.extras(batch, past, 1)})
            past += 1
        t2 = time.perf_counter_ns()
        self.generated = np.concatenate(tokens, axis=1) if tokens else np.zeros((batch, 0), lay.token_dtype)
        self.prefill_ms.append((t1 - t0) / 1e6)
        self.decode_ms.append((t2 - t1) / 1e6)


def prompt_ids(layout: KvLayout, model: onnx.ModelProto, *, batch: int | None, shape: Sequence[int] | None,
               seed: int) -> np.ndarray:
    """A random prompt ``[batch, length]`` of token ids below the logits' vocabulary size.

    ``shape`` is the token input's ``--shape`` (batch × length), else ``batch`` (default 1,
    or the model's fixed batch) × `DEFAULT_PROMPT`.
    """
    if shape is not None:
        if len(shape) != 2:
            raise UsageError(f"--shape {layout.tokens}: expected BATCHxLENGTH, got {'x'.join(map(str, shape))}")
        b, s = int(shape[0]), int(shape[1])
    else:
        b, s = layout.batch or batch or 1, DEFAULT_PROMPT
    if layout.batch is not None and b != layout.batch:
        raise UsageError(f"--decode: {layout.tokens} has a fixed batch of {layout.batch}, not {b}")
    out = next(o for o in model.graph.output if o.name == layout.logits)
    dims = _dims(out) or []
    vocab = dims[-1] if dims and isinstance(dims[-1], int) and dims[-1] > 1 else 1000
    return np.random.default_rng(seed).integers(0, vocab, (b, s)).astype(layout.token_dtype)


def prepare_decoder(path: str | os.PathLike[str], *, new_tokens: int, providers: Sequence[str], device_id: int = 0,
                    threads: int | None, batch: int | None = None, shapes: Mapping[str, Sequence[int]] | None = None,
                    warmup: int = 1, spinning: bool = False, seed: int = 0) -> PreparedModel:
    """A causal LM ready for interleaved timing: its layout, a session and a warmed-up `DecodeRunner`.

    Raises:
        UsageError: The model has no KV cache (or inputs `--decode` cannot feed).
        InvalidModelError: The model cannot be loaded or run.
    """
    model = load_model(path, load_external_data=False)
    layout = KvLayout.detect(model, Path(path).name)
    unknown = sorted(set(shapes or {}) - {layout.tokens})
    if unknown:
        raise UsageError(f"--decode takes --shape for the token input {layout.tokens!r} only (prompt BATCHxLENGTH), not {unknown}")
    prompt = prompt_ids(layout, model, batch=batch, shape=(shapes or {}).get(layout.tokens), seed=seed)
    sess, runner, mem = warm_session(
        path, providers, threads=threads, spinning=spinning, device_id=device_id, warmup=warmup,
        runner_for=lambda s: DecodeRunner(s, layout, prompt, new_tokens, providers=s.get_providers(), device_id=device_id),
        what=f"generate with {path} (prompt {list(prompt.shape)})",
    )
    b, n = prompt.shape
    feeds = {layout.tokens: prompt, **layout.empty_caches(b), **layout.extras(b, 0, n)}  # the prefill's
    return PreparedModel(str(path), model, feeds, sess, runner, mem, ep_warnings(model, providers))


@dataclass
class DecodeStats:
    """Prefill and decode speed of one model (``bench --decode``).

    Attributes:
        prompt_tokens: Prompt length (tokens per sequence).
        new_tokens: Tokens generated per sequence after the prefill.
        batch: Sequences per generation.
        prefill: Prefill latency (ms) over the timed generations.
        per_token: Decode time per generated token (ms) over the timed generations.
        tokens_per_s: Generated tokens per second (all sequences), at the median per-token time.
        prefill_ratio_to_first: Prefill p50 of the first model ÷ this one's (> 1 is faster).
        decode_ratio_to_first: Tokens/s of this model ÷ the first model's (> 1 is faster).
        paired_decode_ratio_to_first: Median over generations of first_i ÷ this_i decode times.
        layout: The detected cache layout.
    """

    prompt_tokens: int
    new_tokens: int
    batch: int
    prefill: LatencyStats
    per_token: LatencyStats
    tokens_per_s: float
    layout: KvLayout
    prefill_ratio_to_first: float = 1.0
    decode_ratio_to_first: float = 1.0
    paired_decode_ratio_to_first: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``decode`` entry of a model in ``bench --json``)."""
        return {
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "batch": self.batch,
            "prefill_ms": self.prefill.to_dict(), "decode_ms_per_token": self.per_token.to_dict(),
            "decode_tokens_per_s": self.tokens_per_s, "prefill_ratio_to_first": self.prefill_ratio_to_first,
            "decode_ratio_to_first": self.decode_ratio_to_first,
            "paired_decode_ratio_to_first": self.paired_decode_ratio_to_first, "layout": self.layout.to_dict(),
        }


def decode_stats(runners: Sequence[DecodeRunner]) -> list[DecodeStats]:
    """Statistics of the timed generations of each runner; ratios are to the first runner."""
    out: list[DecodeStats] = []
    first: DecodeRunner | None = None
    for r in runners:
        prefill = np.asarray(r.prefill_ms)
        per_token = np.asarray(r.decode_ms) / max(r.new_tokens, 1)
        pre, tok = LatencyStats.from_samples(prefill), LatencyStats.from_samples(per_token)
        batch, s = r.prompt.shape
        st = DecodeStats(s, r.new_tokens, batch, pre, tok, batch * 1000.0 / tok.p50 if tok.p50 > 0 else float("inf"), r.layout)
        if first is None:
            first, base = r, st
        else:
            n = min(len(first.decode_ms), len(r.decode_ms))
            st.prefill_ratio_to_first = base.prefill.p50 / pre.p50 if pre.p50 > 0 else float("inf")
            st.decode_ratio_to_first = st.tokens_per_s / base.tokens_per_s if base.tokens_per_s > 0 else float("nan")
            st.paired_decode_ratio_to_first = paired_ratio(np.asarray(first.decode_ms[:n]), np.asarray(r.decode_ms[:n]))
        out.append(st)
    return out
