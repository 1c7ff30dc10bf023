"""The torch-free description of a BiT (`bitcli.shapes`) against the network itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitcli.model.config import BitConfig
from bitcli.model.architecture import BiT
from bitcli.model.shapes import count_macs, count_parameters, parameter_shapes

CONFIGS = {
    "bit-50 at 448": (dict(), (448, 448)),
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


def meta_model(kwargs: dict) -> BiT:
    with torch.device("meta"):
        return BiT(BitConfig(**kwargs)).eval()


def hooked_macs(model: BiT, size: tuple[int, int]) -> int:
    """MACs counted with hooks on a forward pass on the meta device (shapes only)."""
    total = 0

    def conv(m, _i, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, _i, out):
        nonlocal total
        total += out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
    with torch.inference_mode():
        model(torch.empty(1, model.config.num_channels, *size, device="meta"))
    return total


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_are_the_state_dict(name):
    kwargs, _ = CONFIGS[name]
    model = meta_model(kwargs)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    shapes = parameter_shapes(BitConfig(**kwargs))
    assert shapes == expected
    assert count_parameters(shapes) == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_macs_are_the_hooked_forward_pass(name):
    kwargs, size = CONFIGS[name]
    assert count_macs(BitConfig(**kwargs), size) == hooked_macs(meta_model(kwargs), size)


def test_r50_at_448_is_16_35_gmacs():
    assert round(count_macs(BitConfig(), (448, 448)) / 1e9, 2) == 16.35
