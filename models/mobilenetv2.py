"""MobileNetV2, written to match torchvision's architecture and layer names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._init_utils import calibrate_batchnorm_, init_conv_linear_, randomize_batchnorm_affine_


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without losing >10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU6 (torchvision's ``Conv2dNormActivation``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


@dataclass(frozen=True)
class MobileNetV2Config:
    """Hyper-parameters of a MobileNetV2 variant.

    ``settings`` rows are (expansion t, channels c, repeats n, first stride s).
    """

    settings: tuple[tuple[int, int, int, int], ...]
    width_mult: float = 1.0
    first_channel: int = 32
    last_channel: int = 1280
    num_classes: int = 1000
    image_size: int = 224


MOBILENETV2 = MobileNetV2Config(
    settings=(
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
)
# Small: same block types (incl. t=1 block, strided blocks and residual
# repeats) but narrow and short, on 32x32 inputs.
MOBILENETV2_SMALL = MobileNetV2Config(
    settings=((1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 2, 2)),
    first_channel=16,
    last_channel=128,
    num_classes=10,
    image_size=32,
)


class MobileNetV2(nn.Module):
    """torchvision-compatible MobileNetV2 (without dropout at inference it is identical)."""

    def __init__(self, cfg: MobileNetV2Config):
        super().__init__()
        self.cfg = cfg
        in_ch = _make_divisible(cfg.first_channel * cfg.width_mult)
        last = _make_divisible(cfg.last_channel * max(1.0, cfg.width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        for t, c, n, s in cfg.settings:
            out_ch = _make_divisible(c * cfg.width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(ConvBNReLU6(in_ch, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, cfg.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, 3, H, W]`` images to ``[B, num_classes]`` logits."""
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


def build_mobilenetv2(cfg: MobileNetV2Config, seed: int = 0) -> MobileNetV2:
    """Build a MobileNetV2 with seeded random weights and calibrated BN statistics.

    Args:
        cfg: Architecture configuration.
        seed: Seed for weights and BN calibration inputs.

    Returns:
        The model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    model = MobileNetV2(cfg)
    init_conv_linear_(model, g)
    randomize_batchnorm_affine_(model, g)
    with torch.no_grad():
        # Keep the residual stream from growing across repeated blocks.
        for m in model.modules():
            if isinstance(m, InvertedResidual) and m.use_res_connect:
                m.conv[-1].weight.mul_(0.5)
    batch = 8 if cfg.image_size <= 64 else 4
    calibrate_batchnorm_(
        model, lambda gen: torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen), g
    )
    return model
