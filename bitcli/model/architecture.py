"""The BiT network (ResNet-v2 with GroupNorm and weight-standardized convolutions), for inference.

Submodule names are transformers' `BitForImageClassification` state-dict keys, so its checkpoints
load without renaming. Convolutions are plain: `checkpoint.build_model` standardizes their
weights once at load time. `forward_features` gives the embedding, `forward_head` the logits;
how it runs fastest is `bitcli.engine`'s business. `count_macs` counts on the meta device."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitcli.model.config import BitConfig, make_divisible
from bitcli.model.groupnorm import group_norm_act


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


def make_activation(name: str) -> nn.Module:
    """The activation transformers' ACT2FN gives for `name` (in place where that is exact)."""
    if name == "gelu":
        return nn.GELU()
    return {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}[name](inplace=True)


@dataclass
class BitOutput:
    logits: Tensor | None  # [N, num_labels]; None for a model without a classifier head
    pooled: Tensor  # [N, C]: global average of the final (normalized) feature map
    last_hidden_state: Tensor  # [N, C, H, W]


class DynamicPad2d(nn.Module):
    """TF-style 'SAME' padding, computed from each input's size (extra pixel on the bottom/right)."""

    def __init__(self, kernel: int, stride: int, dilation: int = 1):
        super().__init__()
        self.kernel, self.stride, self.dilation = kernel, stride, dilation

    def forward(self, x: Tensor) -> Tensor:
        pad_h = same_padding(x.shape[-2], self.kernel, self.stride, self.dilation)
        pad_w = same_padding(x.shape[-1], self.kernel, self.stride, self.dilation)
        if pad_h == 0 and pad_w == 0:
            return x
        return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class StdConv2d(nn.Conv2d):
    """A weight-standardized convolution whose weight was standardized at load time (`eps` is kept for that step)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        padding_mode: str | None = None,
        eps: float = 1e-8,
    ):
        padding, dynamic = conv_padding(padding_mode, kernel, stride, dilation)
        super().__init__(
            in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation, bias=False
        )
        self.pad = DynamicPad2d(kernel, stride, dilation) if dynamic else None
        self.eps = eps
        self.onednn = False  # True: oneDNN called directly (`engine.runtime.prepare` decides, once)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = self.pad(x)
        if x.dtype != self.weight.dtype:  # bf16 mode: the float32 stem's output entering a bfloat16 block
            x = x.to(self.weight.dtype)
        if self.onednn:
            from bitcli.engine.native import onednn_conv  # a private op: only where the engine probed it

            return onednn_conv(x, self)
        return super().forward(x)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm and its activation (None: the last norm of a v1.5 bottleneck); channels-last CPU
    input takes `groupnorm.group_norm_act`. `fresh_input`: the input may be overwritten.
    `out_dtype` (bf16 mode): the output's dtype; None keeps the input's."""

    def __init__(self, config: BitConfig, channels: int, *, activation: bool = True, fresh_input: bool = False):
        super().__init__(config.num_groups, channels, eps=1e-5, affine=True)
        self.act = make_activation(config.hidden_act) if activation else nn.Identity()
        self.fresh_input = fresh_input
        self.out_dtype: torch.dtype | None = None

    def forward(self, x: Tensor) -> Tensor:
        return group_norm_act(x, self, self.act, inplace=self.fresh_input, out_dtype=self.out_dtype)


class BitEmbeddings(nn.Module):
    """The stem: 7x7 stride-2 convolution, then a 3x3 stride-2 max-pool."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.convolution = StdConv2d(
            config.num_channels,
            config.embedding_size,
            7,
            stride=2,
            padding_mode=config.global_padding,
            eps=config.ws_eps,
        )
        # Subtly not the same as max-pool padding=1: padding with zeros (after the conv, before
        # any ReLU) lets a zero win the max where every real value in the window is negative.
        self.pad = nn.Identity() if config.global_padding == "SAME" else nn.ConstantPad2d(1, 0.0)
        bottleneck = config.layer_type == "bottleneck"
        self.norm = GroupNormAct(config, config.embedding_size, fresh_input=True) if bottleneck else None
        self.pool_pad = DynamicPad2d(3, 2) if config.embedding_dynamic_padding else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.convolution(x)
        if isinstance(self.pad, nn.ConstantPad2d) and self.norm is None and self.pool_pad is None:
            return zero_padded_max_pool(x)  # the same numbers without the padded copy
        x = self.pad(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.pool_pad is not None:
            x = self.pool_pad(x)
        return F.max_pool2d(x, kernel_size=3, stride=2)


def zero_padded_max_pool(x: Tensor) -> Tensor:
    """`F.max_pool2d(F.pad(x, [1, 1, 1, 1]), 3, 2)` without the padded copy (-inf padding, then max(., 0)): exact."""
    y = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    y[:, :, 0, :].clamp_(min=0)
    y[:, :, :, 0].clamp_(min=0)
    if x.shape[-2] % 2:
        y[:, :, -1, :].clamp_(min=0)
    if x.shape[-1] % 2:
        y[:, :, :, -1].clamp_(min=0)
    return y


class BitDownsampleConv(nn.Module):
    """Projection shortcut of the first block of a stage: 1x1 convolution (+ GroupNorm in v1.5)."""

    def __init__(self, config: BitConfig, in_channels: int, out_channels: int, stride: int, *, preact: bool):
        super().__init__()
        self.conv = StdConv2d(
            in_channels, out_channels, 1, stride=stride, padding_mode=config.global_padding, eps=config.ws_eps
        )
        self.norm = None if preact else GroupNormAct(config, out_channels, activation=False, fresh_input=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.norm is None else self.norm(x)


class PreActBottleneck(nn.Module):
    """ResNet-v2 block: norm-act before each convolution; the stride sits on the 3x3 convolution."""

    def __init__(self, config: BitConfig, in_channels: int, out_channels: int, stride: int, first: bool, **_):
        super().__init__()
        mid = make_divisible(out_channels * 0.25)
        pad, eps = config.global_padding, config.ws_eps
        self.downsample = BitDownsampleConv(config, in_channels, out_channels, stride, preact=True) if first else None
        self.norm1 = GroupNormAct(config, in_channels)
        self.conv1 = StdConv2d(in_channels, mid, 1, padding_mode=pad, eps=eps)
        self.norm2 = GroupNormAct(config, mid, fresh_input=True)
        # transformers builds this 3x3 convolution without dilation even when output_stride asks
        # for it; we reproduce that so its checkpoints give its numbers.
        self.conv2 = StdConv2d(mid, mid, 3, stride=stride, padding_mode=pad, eps=eps)
        self.norm3 = GroupNormAct(config, mid, fresh_input=True)
        self.conv3 = StdConv2d(mid, out_channels, 1, padding_mode=pad, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return x.add_(shortcut)  # x is a fresh tensor from conv3, safe to add into


class Bottleneck(nn.Module):
    """ResNet v1.5 block (used by ViT-hybrid backbones): convolution, then norm-act."""

    def __init__(
        self, config: BitConfig, in_channels: int, out_channels: int, stride: int, first: bool, dilation: int = 1
    ):
        super().__init__()
        mid = make_divisible(out_channels * 0.25)
        pad, eps = config.global_padding, config.ws_eps
        self.downsample = BitDownsampleConv(config, in_channels, out_channels, stride, preact=False) if first else None
        self.conv1 = StdConv2d(in_channels, mid, 1, padding_mode=pad, eps=eps)
        self.norm1 = GroupNormAct(config, mid, fresh_input=True)
        self.conv2 = StdConv2d(mid, mid, 3, stride=stride, dilation=dilation, padding_mode=pad, eps=eps)
        self.norm2 = GroupNormAct(config, mid, fresh_input=True)
        self.conv3 = StdConv2d(mid, out_channels, 1, padding_mode=pad, eps=eps)
        self.norm3 = GroupNormAct(config, out_channels, activation=False, fresh_input=True)
        self.act = make_activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act(x.add_(shortcut))


class BitStage(nn.Module):
    def __init__(
        self, config: BitConfig, in_channels: int, out_channels: int, stride: int, dilation: int, depth: int
    ):
        super().__init__()
        block = PreActBottleneck if config.layer_type == "preactivation" else Bottleneck
        # As in transformers/timm: the first block of a dilated stage uses the previous dilation.
        first_dilation = 1 if dilation in (1, 2) else 2
        self.layers = nn.Sequential()
        for index in range(depth):
            self.layers.add_module(
                str(index),
                block(
                    config,
                    in_channels if index == 0 else out_channels,
                    out_channels,
                    stride=stride if index == 0 else 1,
                    first=index == 0,
                    dilation=first_dilation if index == 0 else dilation,
                ),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class BitEncoder(nn.Module):
    def __init__(self, config: BitConfig):
        super().__init__()
        self.stages = nn.ModuleList()
        in_channels = config.embedding_size
        plan = stage_strides_and_dilations(config)
        for depth, out_channels, (stride, dilation) in zip(config.depths, config.stage_widths, plan):
            self.stages.append(BitStage(config, in_channels, out_channels, stride, dilation, depth))
            in_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class BitBackbone(nn.Module):
    """Stem, stages and (pre-activation only) the final norm-act: everything before pooling."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.config = config
        self.embedder = BitEmbeddings(config)
        self.encoder = BitEncoder(config)
        self.norm = GroupNormAct(config, config.feature_dim) if config.layer_type == "preactivation" else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.encoder(self.embedder(x))
        return x if self.norm is None else self.norm(x)

    def steps(self) -> list[nn.Module]:
        """The modules `forward` runs, in order: stem, each stage, the final norm (`engine.slicing` sizes each)."""
        return [self.embedder, *self.encoder.stages] + ([self.norm] if self.norm is not None else [])


class BiT(nn.Module):
    """A BiT image classifier / feature extractor."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.config = config
        self.bit = BitBackbone(config)
        head = nn.Linear(config.feature_dim, config.num_labels) if config.num_labels > 0 else None
        # Sequential(Flatten, Linear) only to keep transformers' key name `classifier.1`.
        self.classifier = nn.Sequential(nn.Flatten(), head) if head is not None else None
        # Set by the engine on GPUs for precision fp16/bf16: autocast around the backbone.
        self.autocast_dtype: torch.dtype | None = None

    @property
    def has_head(self) -> bool:
        return self.classifier is not None

    def forward_features(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """(final feature map [N, C, H, W], pooled features [N, C]), both float32 whatever the precision."""
        dtype = self.bit.embedder.convolution.weight.dtype
        if self.autocast_dtype is None:
            feature_map = self.bit(pixel_values.to(dtype))
        else:
            with torch.autocast(pixel_values.device.type, dtype=self.autocast_dtype):
                feature_map = self.bit(pixel_values.to(dtype))
            feature_map = feature_map.float()
        pooled = feature_map.mean(dim=(2, 3), dtype=torch.float32)
        return feature_map, pooled

    def forward_head(self, pooled: Tensor) -> Tensor:
        """Logits [N, num_labels] from pooled features [N, C]."""
        if self.classifier is None:
            raise RuntimeError("this model has no classifier head (num_labels is 0); use its features")
        return self.classifier(pooled.to(self.classifier[1].weight.dtype))

    def forward(self, pixel_values: Tensor) -> BitOutput:
        feature_map, pooled = self.forward_features(pixel_values)
        logits = self.forward_head(pooled) if self.has_head else None
        return BitOutput(logits=logits, pooled=pooled, last_hidden_state=feature_map)

    def standardized_convs(self) -> dict[str, float]:
        """State-dict key -> eps of every weight that checkpoint loading must standardize."""
        return {f"{name}.weight": module.eps for name, module in self.named_modules() if isinstance(module, StdConv2d)}


def standardize_conv_weight(weight: Tensor, eps: float) -> Tensor:
    """(w - mean) / sqrt(biased var + eps) per output channel in float32 (differentiable, for fine-tuning)."""
    dtype = weight.dtype
    w = weight.to(torch.float32)
    flat = w.reshape(w.shape[0], -1)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape_as(w).to(dtype)


def meta_model(config: BitConfig) -> BiT:
    """The network built on the meta device: its tensors' names and shapes, no memory, no values."""
    with torch.device("meta"):
        return BiT(config).eval()


def count_macs(config: BitConfig, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of the convolutions and the head for one (h, w) image, on the meta device."""
    model = meta_model(config)
    total = 0

    def count(module: nn.Module, _inputs: object, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        else:
            total += output.numel() * module.in_features

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    with torch.inference_mode():
        model(torch.empty(1, config.num_channels, *input_size, device="meta"))
    return total
