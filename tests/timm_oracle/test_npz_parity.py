"""Oracle: original-release .npz files, loaded by bitcli and by timm's own .npz loader (needs timm).

A random timm model is written as an .npz with the inverse key mapping (release names, HWIO
kernels, [1, 1, C, K] head); timm reads it back with `ResNetV2.load_pretrained` (its
`_load_weights`), bitcli with `load_model`. Conv weights are tiny so that the
weight-standardization eps shows: bitcli must agree with timm run at the release's 1e-10 and
disagree with timm's default 1e-8. The squash preprocessing is compared with the release's own
eval transform (`bit_pytorch/train.py`: Resize((crop, crop)), ToTensor, Normalize(0.5, 0.5)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402
from timm.layers import StdConv2d  # noqa: E402
from torchvision import transforms as tv  # noqa: E402

from bitcli.checkpoint import load_model  # noqa: E402
from bitcli.checkpoint.npz import npz_preprocess  # noqa: E402
from checkpoints import to_npz_arrays  # noqa: E402
from bitcli.checkpoint.timm import convert_timm_state_dict  # noqa: E402

TOLERANCE = 1e-4
SAMPLES = Path(__file__).resolve().parents[2] / "sample_images"
PHOTOS = sorted(p for p in SAMPLES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int, conv_scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if name == "head.fc.weight":
            # Small, like a trained head: float32 noise in the pooled features (~5e-5 after 50
            # layers) is not amplified past the tolerance by a sum over 2048 features.
            param.copy_(noise * 0.02)
        elif param.ndim == 4:
            param.copy_(noise * conv_scale)  # variance ~conv_scale**2: the eps is not negligible
        elif name.endswith("weight"):
            param.copy_(1.0 + 0.3 * noise)
        else:
            param.copy_(0.3 * noise)


def timm_from_npz(architecture: str, path: Path, eps: float, **kwargs) -> torch.nn.Module:
    model = timm.create_model(architecture, pretrained=False, **kwargs).eval()
    for module in model.modules():
        if isinstance(module, StdConv2d):
            module.eps = eps
    model.load_pretrained(str(path))
    return model


@torch.no_grad()
def outputs(model, pixels):
    pooled = model.forward_head(model.forward_features(pixels), pre_logits=True)
    return model.forward_head(model.forward_features(pixels)), pooled


@pytest.mark.parametrize(
    "architecture, filename, num_classes",
    [
        ("resnetv2_50x1_bit", "BiT-M-R50x1-ILSVRC2012.npz", 1000),
        ("resnetv2_50x1_bit", "BiT-M-R50x1.npz", 21843),
    ],
)
def test_npz_loads_like_timm_npz_loader(tmp_path, architecture, filename, num_classes):
    source = timm.create_model(architecture, pretrained=False, num_classes=num_classes).eval()
    randomize_(source, seed=num_classes, conv_scale=1e-4)
    raw = convert_timm_state_dict(source.state_dict())
    path = tmp_path / filename
    np.savez(path, **to_npz_arrays(raw, depths=[3, 4, 6, 3]))

    loaded = load_model(path)
    assert loaded.source_format == "original" and loaded.config.ws_eps == 1e-10
    assert loaded.config.depths == [3, 4, 6, 3] and loaded.config.num_labels == num_classes

    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = loaded.model(pixels)
    logits, pooled = outputs(timm_from_npz(architecture, path, 1e-10, num_classes=num_classes), pixels)
    assert (ours.pooled - pooled).abs().max().item() < TOLERANCE
    assert (ours.logits - logits).abs().max().item() < TOLERANCE
    # The eps is pinned: timm's own 1e-8 gives clearly different numbers on these weights.
    _, pooled_1e8 = outputs(timm_from_npz(architecture, path, 1e-8, num_classes=num_classes), pixels)
    assert (ours.pooled - pooled_1e8).abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_release_eval_preprocessing(path):
    """bitcli's .npz preprocessing equals the release's eval transform at crop 480."""
    release = tv.Compose([tv.Resize((480, 480)), tv.ToTensor(), tv.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    with Image.open(path) as image:
        image = image.convert("RGB")
    theirs = release(image)
    ours = npz_preprocess(480)(image)
    assert ours.shape == theirs.shape == (3, 480, 480)
    assert (ours - theirs).abs().max().item() < 1e-6
