"""Hand-written multi-head self-attention shared by BERT and ViT.

Deliberately *not* ``nn.MultiheadAttention`` or
``F.scaled_dot_product_attention``: those export either as fused/opaque
patterns or as a packed QKV projection. Here Q, K and V are three separate
``nn.Linear`` layers followed by reshape-to-heads, scaled ``Q @ K^T``,
optional additive mask, softmax, ``@ V``, merge heads and an output
``nn.Linear`` -- the plain pattern a structured (head) pruning pass must
recognise in the ONNX graph (MatMul+Add -> Reshape -> Transpose -> MatMul ->
Mul -> [Add] -> Softmax -> MatMul -> Transpose -> Reshape -> MatMul+Add).
"""

from __future__ import annotations

import torch
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with explicit Q/K/V projections."""

    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden={hidden} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.scale = self.head_dim**-0.5
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # The head count is written as -1 (inferred) rather than a constant so
        # that, after removing whole heads from the Q/K/V/out weights, the
        # exported Reshape nodes stay valid without being rewritten.
        b, s, _ = x.shape
        return x.reshape(b, s, -1, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over the sequence.

        Args:
            x: ``[B, S, hidden]`` input.
            additive_mask: Optional tensor broadcastable to ``[B, heads, S, S]``
                added to the attention scores (0 = keep, large negative = drop).

        Returns:
            ``[B, S, hidden]`` output of the output projection.
        """
        b, s, _ = x.shape
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if additive_mask is not None:
            scores = scores + additive_mask
        probs = torch.softmax(scores, dim=-1)
        # .contiguous() first so the merge is a plain view that keeps the -1;
        # reshape() of a non-contiguous tensor would bake the width (heads *
        # head_dim) into the exported Reshape constant.
        ctx = torch.matmul(probs, v).transpose(1, 2).contiguous().view(b, s, -1)
        return self.out(ctx)
