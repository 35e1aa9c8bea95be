"""A small Llama-style decoder LM: RMSNorm, rotary positions, SwiGLU, grouped-query attention.

Pre-norm blocks ``x + Attn(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))``, a final RMSNorm and an
output projection tied to the token embedding (as in SmolLM / Llama-3.2-1B). Two export forms:

* ``decoder``: ``input_ids [B, S]`` -> ``logits [B, S, vocab]`` (causal, no cache);
* ``decoder_kv``: ``input_ids [B, S]`` plus ``past_key_values.<i>.key|value [B, kv_heads,
  P, head_dim]`` -> ``logits`` plus ``present.<i>.key|value [B, kv_heads, P + S, head_dim]``.
  The positions of the new tokens are ``P .. P + S - 1``, so prefill is ``P = 0`` and each
  decode step feeds one token with the previous step's presents.

The weights are random (seeded) but not featureless: a few hidden channels of every RMSNorm
gain are scaled up, which gives the activation outlier channels real LLMs have (and which
activation-aware quantization is about).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of the decoder."""

    vocab_size: int = 4096
    hidden: int = 384
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate: int = 1024
    max_position: int = 2048
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    outlier_channels: int = 4
    outlier_gain: float = 8.0

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.num_heads


DECODER = DecoderConfig()
DECODER_SMALL = DecoderConfig(vocab_size=256, hidden=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate=128, max_position=256)
#: SmolLM-135M's shape (134.5M parameters with the tied embedding), for tool-time and memory benches.
DECODER_135M = DecoderConfig(vocab_size=49152, hidden=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate=1536)
#: Decoder sizes by name (`python -m models export --decoder-size`); "small" is ``small=True``.
DECODER_SIZES: dict[str, DecoderConfig] = {"small": DECODER_SMALL, "default": DECODER, "135m": DECODER_135M}


class RMSNorm(nn.Module):
    """x / rms(x) * gain, computed in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize over the last axis."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, half-split convention (first half pairs with second half)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotary positions and an optional cache."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend; returns the output and the (past + new) keys and values."""
        cfg = self.cfg
        b, s, _ = x.shape
        hd = cfg.head_dim
        q = self.q_proj(x).view(b, s, cfg.num_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, s, cfg.num_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, s, cfg.num_kv_heads, hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        group = cfg.num_heads // cfg.num_kv_heads
        kk = k.repeat_interleave(group, dim=1)
        vv = v.repeat_interleave(group, dim=1)
        scores = (q @ kk.transpose(-1, -2)) * (hd**-0.5)
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ vv
        return self.o_proj(out.transpose(1, 2).reshape(b, s, cfg.num_heads * hd)), k, v


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated MLP."""
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One pre-norm decoder layer."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, past):
        """Residual attention then residual MLP; returns (x, key, value)."""
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Decoder(nn.Module):
    """The decoder LM; ``forward(input_ids, *past)`` with past = key0, value0, key1, ...

    Without past tensors it returns the logits; with them it returns the logits followed
    by the present keys and values in the same order.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_eps)
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        """Logits (and presents when past tensors are given)."""
        s = input_ids.shape[1]
        p = past[0].shape[2] if past else 0
        pos = torch.arange(s, dtype=torch.float32) + p  # positions of the new tokens
        ang = pos[:, None] * self.inv_freq[None, :]
        cos, sin = torch.cos(ang), torch.sin(ang)
        keys = torch.arange(s + p)
        mask = keys[None, :] <= (torch.arange(s) + p)[:, None]  # [S, P + S], causal
        x = self.embed_tokens(input_ids)
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            cache = (past[2 * i], past[2 * i + 1]) if past else None
            x, k, v = layer(x, cos, sin, mask, cache)
            presents += [k, v]
        logits = self.norm(x) @ self.embed_tokens.weight.t()  # tied output projection
        return (logits, *presents) if past else logits


def build_decoder(cfg: DecoderConfig, seed: int = 0) -> Decoder:
    """A seeded decoder in eval mode (unit-gain Linear init; outlier RMSNorm channels)."""
    gen = torch.Generator().manual_seed(seed)
    model = Decoder(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
                idx = torch.randperm(p.numel(), generator=gen)[: cfg.outlier_channels]
                p[idx] *= cfg.outlier_gain
            elif name == "embed_tokens.weight":
                # Tied: logits = norm(x) @ E^T get a std of about 3 (a peaked, not flat, softmax).
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / cfg.hidden**0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)  # unit-gain Linear
    return model.eval()


def past_names(cfg: DecoderConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Graph names of the cache inputs and of the present outputs, in forward order."""
    ins = tuple(f"past_key_values.{i}.{kv}" for i in range(cfg.num_layers) for kv in ("key", "value"))
    outs = tuple(f"present.{i}.{kv}" for i in range(cfg.num_layers) for kv in ("key", "value"))
    return ins, outs
