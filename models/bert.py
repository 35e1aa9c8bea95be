"""A BERT-style encoder shaped like popular sentence encoders (all-MiniLM-L6).

Post-LayerNorm transformer encoder with learned token and position
embeddings, exact (erf) GELU, and two outputs: the per-token
``last_hidden_state`` and a masked mean-pooled ``sentence_embedding``.
There are no token-type embeddings and no pooler/NSP head (sentence
encoders do not use them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiHeadSelfAttention

# Classic BERT value for masked positions. A moderate constant rather than
# finfo.min keeps the masked scores representable after quantisation passes.
MASK_VALUE = -10000.0


@dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of the encoder."""

    vocab_size: int = 30522
    hidden: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate: int = 1536
    max_position: int = 512
    layer_norm_eps: float = 1e-12


BERT = BertConfig()
BERT_SMALL = BertConfig(vocab_size=1000, hidden=64, num_layers=2, num_heads=4, intermediate=128, max_position=128)


class BertEmbeddings(nn.Module):
    """Token + learned absolute position embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_position, cfg.hidden)
        self.layer_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.register_buffer("position_ids", torch.arange(cfg.max_position).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed ``[B, S]`` token ids into ``[B, S, hidden]``."""
        pos = self.position_ids[:, : input_ids.shape[1]]
        return self.layer_norm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class BertLayer(nn.Module):
    """One post-LN encoder layer: LN(x + Attn(x)), then LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(cfg.hidden, cfg.num_heads)
        self.attention_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(cfg.hidden, cfg.intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(cfg.intermediate, cfg.hidden)
        self.output_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``[B, S, hidden]``."""
        x = self.attention_norm(x + self.attention(x, additive_mask))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class BertEncoder(nn.Module):
    """BERT-style sentence encoder."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of token sequences.

        Args:
            input_ids: ``int64 [B, S]`` token ids.
            attention_mask: ``int64 [B, S]``, 1 for real tokens, 0 for padding.

        Returns:
            ``(last_hidden_state [B, S, hidden], sentence_embedding [B, hidden])``;
            the sentence embedding is the mean of the hidden states over the
            non-padding tokens.
        """
        mask = attention_mask.to(torch.float32)
        additive = (1.0 - mask[:, None, None, :]) * MASK_VALUE
        h = self.embeddings(input_ids)
        for layer in self.layers:
            h = layer(h, additive)
        weights = mask.unsqueeze(-1)
        summed = (h * weights).sum(dim=1)
        # clamp: an all-padding row yields a zero embedding instead of NaN.
        count = weights.sum(dim=1).clamp(min=1e-9)
        return h, summed / count


def build_bert(cfg: BertConfig, seed: int = 0) -> BertEncoder:
    """Build the encoder with seeded BERT-style initialisation.

    Linear and embedding weights ~ N(0, 0.02) as in BERT; LayerNorm gains and
    biases get a small random perturbation (so LN parameters are non-trivial).

    Args:
        cfg: Architecture configuration.
        seed: Seed for the weights.

    Returns:
        The model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    model = BertEncoder(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
            if isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.02)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return model.eval()
