"""Random BiT checkpoints made with transformers (the reference implementation) for tests.

`save_reference_checkpoint` builds `BitForImageClassification` with random weights, moves every
GroupNorm weight/bias and the classifier bias away from their initial values (so a wrong eps, a
swapped norm or a dropped bias changes the output), shrinks convolution weights so that the
weight-standardization eps matters, and `save_pretrained()`s it. `tiny_raw_weights` and
`write_npz` make original-release `.npz` checkpoints of a narrow BiT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from bitcli.model.config import BitConfig
from bitcli.model import BiT
from bitcli.checkpoint.npz import npz_key_map
from torch import Tensor

TINY = dict(
    embedding_size=8,
    hidden_sizes=[16, 16, 32, 32],
    depths=[1, 1, 2, 1],
    num_groups=2,
)

BIT_50_PREPROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 448},
    "resample": 2,
    "do_center_crop": True,
    "crop_size": {"height": 448, "width": 448},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
    "image_processor_type": "BitImageProcessor",
}


def tiny_preprocessor(size: int = 32) -> dict:
    return {
        **BIT_50_PREPROCESSOR,
        "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size},
    }


def reference_model(num_labels: int = 10, seed: int = 0, conv_scale: float = 1e-3, **config_kwargs):
    """A transformers BitForImageClassification with random, perturbed weights, in eval mode."""
    from transformers import BitConfig, BitForImageClassification

    torch.manual_seed(seed)
    id2label = {i: f"class {i}" for i in range(num_labels)}
    config = BitConfig(num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()}, **config_kwargs)
    model = BitForImageClassification(config).eval()
    perturb_(model, conv_scale)
    return model


@torch.no_grad()
def perturb_(model: torch.nn.Module, conv_scale: float) -> None:
    generator = torch.Generator().manual_seed(1234)
    for name, param in model.named_parameters():
        if param.ndim == 1:  # GroupNorm weight/bias, classifier bias
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
        elif param.ndim == 4:
            # Standardization ignores scale except through eps: small weights make the eps visible.
            param.mul_(conv_scale)


def save_reference_checkpoint(
    directory: Path,
    *,
    num_labels: int = 10,
    seed: int = 0,
    weights: str = "safetensors",
    preprocessor: dict | None = None,
    **config_kwargs,
):
    """Save a perturbed random transformers BiT to `directory`; return the reference model.

    weights: "safetensors", "sharded" (several safetensors files and an index) or "pickle"
    (`pytorch_model.bin`, as older hub repositories hold; transformers 5 no longer writes it).
    """
    model = reference_model(num_labels=num_labels, seed=seed, **config_kwargs)
    directory.mkdir(parents=True, exist_ok=True)
    if weights == "pickle":
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    elif weights == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
    else:
        model.save_pretrained(directory)
    if preprocessor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


# -- original-release .npz checkpoints --------------------------------------------------------

TINY_DEPTHS = [1, 2, 1, 1]


def tiny_raw_weights(num_labels: int = 7, seed: int = 0, conv_scale: float = 1e-4) -> dict[str, torch.Tensor]:
    """Random raw (unstandardized) weights of a narrow BiT, canonical names."""
    # The release always uses 32 GroupNorm groups, so every width here is a multiple of 32.
    config = BitConfig(embedding_size=32, hidden_sizes=[128, 128, 256, 256], depths=TINY_DEPTHS, num_labels=num_labels)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BiT(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    # Small conv weights (variance ~1e-8) make the standardization eps visible in the output.
    return {k: torch.randn(s, generator=generator) * (conv_scale if len(s) == 4 else 1.0) for k, s in shapes.items()}


def write_npz(path, raw: dict[str, torch.Tensor], depths=TINY_DEPTHS) -> None:
    np.savez(path, **to_npz_arrays(raw, depths))


def to_npz_arrays(state_dict: dict[str, Tensor], depths: list[int], prefix: str = "resnet/") -> dict[str, np.ndarray]:
    """Inverse of `checkpoint.npz.convert_npz_arrays`: canonical raw weights -> the release's names and layouts."""
    arrays: dict[str, np.ndarray] = {}
    for key, name in npz_key_map(depths, prefix, head="classifier.1.weight" in state_dict).items():
        value = state_dict[name].detach().to(torch.float32).cpu().numpy()
        if name == "classifier.1.weight":  # [K, C] -> [1, 1, C, K]
            arrays[key] = np.ascontiguousarray(value.T[None, None])
        elif value.ndim == 4:  # OIHW -> HWIO
            arrays[key] = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
        else:
            arrays[key] = value
    return arrays


def canonical_key_to_timm(key: str) -> str:
    """Inverse of `checkpoint.timm.timm_key_to_canonical`: writes timm-layout files."""
    if key.startswith("bit.embedder.convolution."):
        return "stem.conv." + key[len("bit.embedder.convolution.") :]
    if key.startswith("bit.norm."):
        return key[len("bit.") :]
    if key.startswith("classifier.1."):
        return "head.fc." + key[len("classifier.1.") :]
    match = re.fullmatch(r"bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", key)
    if match is not None:
        return f"stages.{match.group(1)}.blocks.{match.group(2)}.{match.group(3)}"
    raise KeyError(key)
