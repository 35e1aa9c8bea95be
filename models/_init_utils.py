"""Seeded weight initialisation shared by the randomly initialised models.

The models in this package are never downloaded, so their weights are random.
Random weights are still expected to behave like a real network: activations
must stay well scaled through every layer (so numerical comparisons between
PyTorch and onnxruntime are meaningful) and BatchNorm layers must carry
non-trivial statistics (so that a BN-folding pass is really exercised rather
than folding an identity transform).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def init_conv_linear_(module: nn.Module, generator: torch.Generator) -> None:
    """Initialise every Conv2d / Linear layer of ``module`` with a scaled normal.

    Uses He-normal with ``fan_in`` (not torchvision's ``fan_out``) because it
    keeps the forward activation variance constant for ReLU networks, which is
    what matters for an inference-only random model.

    Args:
        module: Module whose sub-layers are re-initialised in place.
        generator: Seeded generator so the weights are reproducible.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            std = (2.0 / fan_in) ** 0.5
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.01)
        elif isinstance(m, nn.Linear):
            std = (1.0 / m.in_features) ** 0.5
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.01)


def randomize_batchnorm_affine_(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm2d a non-trivial affine transform (gamma, beta).

    Args:
        module: Module whose BatchNorm layers are modified in place.
        generator: Seeded generator.
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                # gamma in [0.5, 1.5) and a small beta: far enough from (1, 0) that
                # folding errors show up, close enough that ReLUs stay half-active.
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


@torch.no_grad()
def calibrate_batchnorm_(
    model: nn.Module,
    make_batch: Callable[[torch.Generator], torch.Tensor],
    generator: torch.Generator,
    *,
    steps: int = 2,
) -> None:
    """Set BN running statistics from the network's own activations.

    Random running_mean/var drawn independently of the conv weights would let
    activations drift by orders of magnitude through a 50-layer ResNet. Instead
    the network is run in training mode on random inputs with a cumulative
    moving average (``momentum=None``), so every BN layer records the mean and
    variance it actually sees. The resulting statistics are non-trivial
    (non-zero means, non-unit variances) yet keep eval-mode activations
    normalised. A small multiplicative jitter is then applied so the stats are
    not exactly the batch statistics of the calibration inputs.

    Args:
        model: Model containing BatchNorm2d layers; left in eval mode.
        make_batch: Callable returning one input batch given a generator.
        generator: Seeded generator used for inputs and jitter.
        steps: Number of forward passes to average over.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        model.eval()
        return
    saved_momentum = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration steps
    model.train()
    for _ in range(steps):
        model(make_batch(generator))
    for bn, momentum in zip(bns, saved_momentum):
        bn.momentum = momentum
        jitter = 0.9 + 0.2 * torch.rand(bn.running_var.shape, generator=generator)
        bn.running_var.mul_(jitter)
    model.eval()
