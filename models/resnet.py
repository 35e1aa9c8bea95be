"""ResNet-18 / ResNet-50, written to match torchvision's architecture.

Layer names and shapes follow ``torchvision.models.resnet`` (ResNet v1.5: the
stride of a bottleneck sits on its 3x3 conv), so a torchvision ``state_dict``
would load into these modules unchanged. torchvision itself is not a
dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._init_utils import calibrate_batchnorm_, init_conv_linear_, randomize_batchnorm_affine_


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), with shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class ResNetConfig:
    """Hyper-parameters of a ResNet variant."""

    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    base_width: int = 64
    num_classes: int = 1000
    image_size: int = 224


RESNET18 = ResNetConfig(BasicBlock, (2, 2, 2, 2))
RESNET50 = ResNetConfig(Bottleneck, (3, 4, 6, 3))
# Small variants keep every structural feature (stem, max-pool, strided stages,
# projection shortcuts, bottlenecks) but are narrow and shallow for fast tests.
RESNET18_SMALL = ResNetConfig(BasicBlock, (1, 1, 1, 1), base_width=8, num_classes=10, image_size=32)
RESNET50_SMALL = ResNetConfig(Bottleneck, (1, 1, 1, 1), base_width=8, num_classes=10, image_size=32)


class ResNet(nn.Module):
    """torchvision-compatible ResNet."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.base_width
        self.inplanes = w
        self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(cfg.block, w, cfg.layers[0], stride=1)
        self.layer2 = self._make_layer(cfg.block, w * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(cfg.block, w * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(cfg.block, w * 8, cfg.layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(w * 8 * cfg.block.expansion, cfg.num_classes)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], width: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != width * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, width * block.expansion, stride),
                nn.BatchNorm2d(width * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, width, stride, downsample)]
        self.inplanes = width * block.expansion
        layers += [block(self.inplanes, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, 3, H, W]`` images to ``[B, num_classes]`` logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _residual_branch_bns(model: ResNet) -> list[nn.BatchNorm2d]:
    out = []
    for m in model.modules():
        if isinstance(m, Bottleneck):
            out.append(m.bn3)
        elif isinstance(m, BasicBlock):
            out.append(m.bn2)
    return out


def build_resnet(cfg: ResNetConfig, seed: int = 0) -> ResNet:
    """Build a ResNet with seeded random weights and calibrated BN statistics.

    Args:
        cfg: Architecture configuration.
        seed: Seed for weights and BN calibration inputs.

    Returns:
        The model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    model = ResNet(cfg)
    init_conv_linear_(model, g)
    randomize_batchnorm_affine_(model, g)
    # Down-weight the last BN of every residual branch (in the spirit of
    # torchvision's zero_init_residual, but non-zero so the branch is still
    # live): otherwise the residual stream variance grows with every block.
    with torch.no_grad():
        for bn in _residual_branch_bns(model):
            bn.weight.mul_(0.4)
    batch = 8 if cfg.image_size <= 64 else 4
    calibrate_batchnorm_(
        model, lambda gen: torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen), g
    )
    return model
