"""A small Vision Transformer (ViT-Ti/16 layout by default).

Conv patch embedding, prepended class token, learned position embeddings,
pre-LayerNorm transformer blocks (hand-written attention, GELU MLP), final
LayerNorm and a linear head on the class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiHeadSelfAttention


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a ViT variant."""

    image_size: int = 224
    patch_size: int = 16
    hidden: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_dim: int = 768
    num_classes: int = 1000
    layer_norm_eps: float = 1e-6


VIT = ViTConfig()
VIT_SMALL = ViTConfig(image_size=32, patch_size=8, hidden=64, depth=2, num_heads=4, mlp_dim=128, num_classes=10)


class ViTBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.attention = MultiHeadSelfAttention(cfg.hidden, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.hidden, cfg.mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``[B, N, hidden]``."""
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT image classifier."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.cfg = cfg
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.hidden, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.hidden))
        self.blocks = nn.Sequential(*(ViTBlock(cfg) for _ in range(cfg.depth)))
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map ``[B, 3, H, W]`` images to ``[B, num_classes]`` logits."""
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [B, N, hidden]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def build_vit(cfg: ViTConfig, seed: int = 0) -> VisionTransformer:
    """Build a ViT with seeded truncated-normal-like initialisation.

    Args:
        cfg: Architecture configuration.
        seed: Seed for the weights.

    Returns:
        The model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    model = VisionTransformer(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.02)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
        fan_in = 3 * cfg.patch_size**2
        pe = model.patch_embed
        pe.weight.copy_(torch.randn(pe.weight.shape, generator=g) * fan_in**-0.5)
        pe.bias.copy_(torch.randn(pe.bias.shape, generator=g) * 0.02)
        model.cls_token.copy_(torch.randn(model.cls_token.shape, generator=g) * 0.02)
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, generator=g) * 0.02)
    return model.eval()
