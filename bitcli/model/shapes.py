"""A BiT's tensors and arithmetic from its config alone: no torch, no weights.

`bit inspect` describes a checkpoint without loading it: the names and shapes the weights must
have (`parameter_shapes`, exactly `BiT(config).state_dict()`'s), hence the parameter count, and
the multiply-accumulates of one forward pass (`count_macs`), worked out layer by layer from the
same padding rules the network uses (`architecture.py` takes its padding and stage plan from
here). tests/test_shapes.py holds both to the real module.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bitcli.model.config import make_divisible

if TYPE_CHECKING:
    from bitcli.model.config import BitConfig

Shape = tuple[int, ...]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding TensorFlow's 'SAME' adds along one axis of length `size`."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def conv_padding(padding_mode: str | None, kernel: int, stride: int, dilation: int) -> tuple[int, bool]:
    """(static padding, needs dynamic padding) for a convolution, as transformers' get_padding_value."""
    symmetric = ((stride - 1) + dilation * (kernel - 1)) // 2
    if padding_mode == "SAME":
        if stride == 1 and (dilation * (kernel - 1)) % 2 == 0:
            return symmetric, False
        return 0, True
    return symmetric, False


def stage_strides_and_dilations(config: BitConfig) -> list[tuple[int, int]]:
    """(stride, dilation) per stage: strides 1,2,2,2 until output_stride is reached, then dilation."""
    plan, current_stride, dilation = [], 4, 1  # the stem divides resolution by 4
    for index in range(len(config.depths)):
        stride = 1 if index == 0 else 2
        if current_stride >= config.output_stride:
            dilation *= stride
            stride = 1
        current_stride *= stride
        plan.append((stride, dilation))
    return plan


# -- the tensors ----------------------------------------------------------------------------------


def parameter_shapes(config: BitConfig) -> dict[str, Shape]:
    """Canonical (transformers) state-dict key -> shape of every tensor the model holds."""
    preact = config.layer_type == "preactivation"
    shapes: dict[str, Shape] = {"bit.embedder.convolution.weight": (config.embedding_size, config.num_channels, 7, 7)}
    if not preact:
        shapes.update(_norm("bit.embedder.norm", config.embedding_size))
    in_channels = config.embedding_size
    for stage, (depth, out_channels) in enumerate(zip(config.depths, config.stage_widths)):
        for index in range(depth):
            prefix = f"bit.encoder.stages.{stage}.layers.{index}"
            shapes.update(_block(prefix, in_channels if index == 0 else out_channels, out_channels, index == 0, preact))
        in_channels = out_channels
    if preact:
        shapes.update(_norm("bit.norm", config.feature_dim))
    if config.num_labels > 0:
        shapes["classifier.1.weight"] = (config.num_labels, config.feature_dim)
        shapes["classifier.1.bias"] = (config.num_labels,)
    return shapes


def _norm(prefix: str, channels: int) -> dict[str, Shape]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _block(prefix: str, in_channels: int, out_channels: int, first: bool, preact: bool) -> dict[str, Shape]:
    mid = make_divisible(out_channels * 0.25)
    shapes: dict[str, Shape] = {}
    if first:
        shapes[f"{prefix}.downsample.conv.weight"] = (out_channels, in_channels, 1, 1)
        if not preact:
            shapes.update(_norm(f"{prefix}.downsample.norm", out_channels))
    convs = {"conv1": (mid, in_channels, 1, 1), "conv2": (mid, mid, 3, 3), "conv3": (out_channels, mid, 1, 1)}
    # Pre-activation norms sit before each convolution (on its input), v1.5 norms after it.
    norms = {"norm1": in_channels, "norm2": mid, "norm3": mid} if preact else {"norm1": mid, "norm2": mid, "norm3": out_channels}
    for n in ("1", "2", "3"):
        shapes[f"{prefix}.conv{n}.weight"] = convs[f"conv{n}"]
        shapes.update(_norm(f"{prefix}.norm{n}", norms[f"norm{n}"]))
    return shapes


def count_parameters(shapes: dict[str, Shape]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


# -- the arithmetic -------------------------------------------------------------------------------


def conv_output(size: int, kernel: int, stride: int, dilation: int, padding_mode: str | None) -> int:
    """Output length along one axis of a BiT convolution (static or TF-'SAME' dynamic padding)."""
    padding, dynamic = conv_padding(padding_mode, kernel, stride, dilation)
    total = same_padding(size, kernel, stride, dilation) if dynamic else 2 * padding
    return (size + total - dilation * (kernel - 1) - 1) // stride + 1


def count_macs(config: BitConfig, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of the convolutions and the linear head for one image of (h, w).

    Norms, activations and pooling are left out (about 1% of a ResNet's work). Each convolution
    costs output pixels x output channels x input channels x kernel area.
    """
    mode = config.global_padding
    preact = config.layer_type == "preactivation"
    size = [conv_output(s, 7, 2, 1, mode) for s in input_size]
    macs = math.prod(size) * config.embedding_size * config.num_channels * 49
    # The stem's max-pool (3x3, stride 2): after a zero pad of 1, or TF 'SAME' padding, or none.
    size = [s + 2 if mode != "SAME" else s for s in size]
    if config.embedding_dynamic_padding:
        size = [s + same_padding(s, 3, 2, 1) for s in size]
    size = [(s - 3) // 2 + 1 for s in size]
    in_channels = config.embedding_size
    plan = stage_strides_and_dilations(config)
    for depth, out_channels, (stride, dilation) in zip(config.depths, config.stage_widths, plan):
        first_dilation = 1 if dilation in (1, 2) else 2  # as in the network: see BitStage
        for index in range(depth):
            block_stride = stride if index == 0 else 1
            # transformers' pre-activation block ignores the dilation (see PreActBottleneck).
            block_dilation = 1 if preact else (first_dilation if index == 0 else dilation)
            block_in = in_channels if index == 0 else out_channels
            block_macs, size = _block_macs(size, block_in, out_channels, block_stride, block_dilation, index == 0, mode)
            macs += block_macs
        in_channels = out_channels
    if config.num_labels > 0:
        macs += config.num_labels * config.feature_dim
    return macs


def _block_macs(
    size: list[int], in_channels: int, out_channels: int, stride: int, dilation: int, first: bool, mode: str | None
) -> tuple[int, list[int]]:
    """(MACs, output size) of one bottleneck block (both kinds: they share their convolutions)."""
    mid = make_divisible(out_channels * 0.25)
    macs = 0
    if first:  # the 1x1 projection shortcut, with the block's stride
        macs += math.prod(conv_output(s, 1, stride, 1, mode) for s in size) * out_channels * in_channels
    macs += math.prod(size) * mid * in_channels  # conv1, 1x1
    out = [conv_output(s, 3, stride, dilation, mode) for s in size]
    macs += math.prod(out) * mid * mid * 9  # conv2, 3x3, carries the stride
    macs += math.prod(out) * out_channels * mid  # conv3, 1x1
    return macs, out
