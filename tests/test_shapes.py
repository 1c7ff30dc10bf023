"""A BiT's multiply-accumulates (`count_macs`, counted on the meta device) against a real forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitcli.model.architecture import BiT, count_macs
from bitcli.model.config import BitConfig

CONFIGS = {
    "tiny at 32": (dict(embedding_size=8, hidden_sizes=[16, 16, 32, 32], depths=[1, 1, 2, 1], num_groups=2), (32, 32)),
    "bottleneck SAME dynamic 67x93": (
        dict(layer_type="bottleneck", global_padding="SAME", embedding_dynamic_padding=True, embedding_size=16,
             hidden_sizes=[32, 64, 64], depths=[1, 2, 1], num_groups=4),
        (67, 93),
    ),
    "SAME without dynamic stem padding 45x50": (
        dict(global_padding="SAME", embedding_size=16, hidden_sizes=[32, 32], depths=[1, 1], num_groups=4), (45, 50),
    ),
    "output stride 8 bottleneck": (
        dict(layer_type="bottleneck", output_stride=8, embedding_size=16, hidden_sizes=[32, 32, 64, 64],
             depths=[1, 2, 2, 1], num_groups=4),
        (61, 61),
    ),
    "output stride 16 preactivation": (
        dict(output_stride=16, embedding_size=16, hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 2, 1], num_groups=4),
        (64, 48),
    ),
    "width factor 3, no head": (
        dict(width_factor=3, embedding_size=16, hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 1, 1], num_groups=4,
             num_labels=0),
        (33, 37),
    ),
}


def forward_macs(config: BitConfig, size: tuple[int, int]) -> int:
    """MACs counted by hand, from each layer's real output on a CPU forward pass."""
    model = BiT(config).eval()
    total = 0

    def conv(m, _i, out):
        nonlocal total
        total += out.shape[1] * out.shape[2] * out.shape[3] * m.in_channels * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, _i, out):
        nonlocal total
        total += out.shape[1] * m.in_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
    with torch.no_grad():
        model(torch.zeros(1, config.num_channels, *size))
    return total


@pytest.mark.parametrize("name", CONFIGS)
def test_macs_are_those_of_a_real_forward_pass(name):
    kwargs, size = CONFIGS[name]
    assert count_macs(BitConfig(**kwargs), size) == forward_macs(BitConfig(**kwargs), size)


def test_r50_at_448_is_16_35_gmacs():
    assert round(count_macs(BitConfig(), (448, 448)) / 1e9, 2) == 16.35
