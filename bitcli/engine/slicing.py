"""Batch slicing: a batch through the backbone in slices whose activations stay in the CPU cache
(one image at a time in the early stages, larger slices later); the same numbers up to summation order."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bitcli.model.architecture import BitBackbone, stage_strides_and_dilations
from bitcli.model.config import BitConfig


class SlicedBackbone(BitBackbone):
    """A `BitBackbone` (same submodules and keys) whose steps run in slices near `chunk_bytes` (None: whole batch)."""

    def __init__(self, backbone: BitBackbone, chunk_bytes: int | None):
        nn.Module.__init__(self)  # adopt the built submodules; BitBackbone.__init__ would build new ones
        self.config = backbone.config
        self.embedder = backbone.embedder
        self.encoder = backbone.encoder
        self.norm = backbone.norm
        self.chunk_bytes = chunk_bytes

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        if batch <= 1 or self.chunk_bytes is None:
            return super().forward(x)
        steps = self.steps()
        sizes = [
            slice_size(batch, per_image, self.chunk_bytes)
            for per_image in step_activation_bytes(self.config, x.shape[-2], x.shape[-1], x.element_size())
        ]
        start = 0
        while start < len(steps):
            end = start + 1
            while end < len(steps) and sizes[end] == sizes[start]:
                end += 1
            group = steps[start:end]
            if sizes[start] >= batch:
                x = run_steps(group, x)
            else:
                x = torch.cat([run_steps(group, part) for part in x.split(sizes[start])])
            start = end
        return x


def step_activation_bytes(config: BitConfig, height: int, width: int, element_size: int) -> list[int]:
    """Per image, the largest activation each of `BitBackbone.steps()` writes (an estimate from the shapes)."""
    # The stem's largest tensor is its convolution's output (stride 2), before the max-pool.
    h, w = -(-height // 2), -(-width // 2)
    sizes = [config.embedding_size * h * w * element_size]
    h, w = -(-h // 2), -(-w // 2)
    for (stride, _), channels in zip(stage_strides_and_dilations(config), config.stage_widths):
        h, w = -(-h // stride), -(-w // stride)
        sizes.append(channels * h * w * element_size)
    if config.layer_type == "preactivation":  # the final norm
        sizes.append(sizes[-1])
    return sizes


def slice_size(batch: int, per_image_bytes: int, chunk_bytes: int) -> int:
    """Images per slice: as many as fit in `chunk_bytes` (at least one), spread evenly over the batch."""
    fit = max(1, chunk_bytes // max(per_image_bytes, 1))
    slices = -(-batch // fit)
    return -(-batch // slices)


def run_steps(steps: list[nn.Module], x: Tensor) -> Tensor:
    for step in steps:
        x = step(x)
    return x
