"""Oracle: bitcli against timm itself on timm-format checkpoints (needs timm; run in .venv-timm).

Random-weight timm models are saved the way timm saves to the hub (`save_for_hf`:
`model.safetensors` + `config.json`), loaded with bitcli, and compared: logits and pooled
features within 1e-4, preprocessing within 1e-6 of timm's eval transform on real photos.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from PIL import Image  # noqa: E402
from timm.data import create_transform, resolve_data_config  # noqa: E402
from timm.models import get_pretrained_cfg, save_for_hf  # noqa: E402
from timm.models.resnetv2 import _create_resnetv2_bit  # noqa: E402

from bitcli.checkpoint import load_model  # noqa: E402
from bitcli.labels import resolve_labels  # noqa: E402
from bitcli.checkpoint.timm import preprocess_from_timm  # noqa: E402

TOLERANCE = 1e-4
PIXEL_TOLERANCE = 1e-6
SAMPLES = Path(__file__).resolve().parents[2] / "sample_images"
# rocket.jpg (640x427) makes the long-side crop excess 3 mod 4, where a floored center-crop
# offset differs from torchvision's half-to-even one by a pixel.
PHOTOS = sorted(p for p in SAMPLES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
# Every pretrained cfg of the family that differs in preprocessing (REFERENCE.md table).
TAGS = [
    "resnetv2_50x1_bit.goog_in21k_ft_in1k",  # 448, crop_pct 1.0, bilinear
    "resnetv2_152x4_bit.goog_in21k_ft_in1k",  # 480
    "resnetv2_50x1_bit.goog_distilled_in1k",  # 224, crop_pct 0.875, bicubic
    "resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384",  # 384, crop_pct 1.0, bicubic
    "resnetv2_101x3_bit.goog_in21k",  # 224, crop_pct 0.875, bilinear
]


def photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Replace timm's init (zeroed last convs and head, unit norms) so every parameter matters."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if name == "head.fc.weight":
            param.copy_(noise * 0.05)
        elif param.ndim == 4:
            # Standardization removes the scale except through eps: weights of variance ~1e-8
            # make a wrong weight-standardization eps (1e-10 or 1e-6 instead of 1e-8) visible.
            param.copy_(noise * 1e-4)
        elif name.endswith("weight"):  # GroupNorm scale
            param.copy_(1.0 + 0.3 * noise)
        else:  # GroupNorm shift, head bias
            param.copy_(0.3 * noise)


def save_timm_model(model: torch.nn.Module, directory: Path, model_args: dict | None = None) -> Path:
    save_for_hf(model, str(directory), safe_serialization=True, model_args=model_args)
    return directory


def timm_outputs(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(pixels), pre_logits=True)
        return model.forward_head(model.forward_features(pixels)), pooled


def assert_same_outputs(loaded, reference, pixels: torch.Tensor) -> None:
    logits, pooled = timm_outputs(reference, pixels)
    with torch.no_grad():
        ours = loaded.model(pixels)
    assert ours.pooled.shape == pooled.shape and ours.logits.shape == logits.shape
    assert (ours.pooled - pooled).abs().max().item() < TOLERANCE
    assert (ours.logits - logits).abs().max().item() < TOLERANCE


def timm_pixels(reference, images: list[Image.Image]) -> torch.Tensor:
    transform = create_transform(**resolve_data_config(model=reference))
    return torch.stack([transform(image) for image in images])


def test_r50x1_1000_classes_at_448_end_to_end(tmp_path):
    """The published R50x1 fine-tuned layout and preprocessing, on real photos, at 448."""
    reference = timm.create_model("resnetv2_50x1_bit.goog_in21k_ft_in1k", pretrained=False).eval()
    randomize_(reference, seed=1)
    loaded = load_model(save_timm_model(reference, tmp_path / "r50x1"))
    assert loaded.source_format == "timm" and loaded.config.num_labels == 1000
    assert loaded.preprocess.crop_size == (448, 448)
    images = [photo(SAMPLES / "chelsea.png"), photo(SAMPLES / "coffee.png")]
    pixels = timm_pixels(reference, images)
    ours = torch.stack([loaded.preprocess(image) for image in images])
    assert (ours - pixels).abs().max().item() < PIXEL_TOLERANCE
    assert_same_outputs(loaded, reference, pixels)
    assert resolve_labels(1000, loaded.config.id2label).source == "ImageNet-1k (bundled)"


def test_tiny_width_3_variant(tmp_path):
    """Width factor 3 (stem 192, features 6144) on a one-block-per-stage model."""
    reference = _create_resnetv2_bit("resnetv2_50x3_bit", layers=[1, 1, 1, 1], width_factor=3, num_classes=10).eval()
    randomize_(reference, seed=2)
    loaded = load_model(save_timm_model(reference, tmp_path / "tiny", model_args={"layers": [1, 1, 1, 1]}))
    assert loaded.config.embedding_size == 192 and loaded.config.feature_dim == 6144
    pixels = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(3))
    assert_same_outputs(loaded, reference, pixels)


def test_21843_class_head(tmp_path):
    reference = timm.create_model("resnetv2_50x1_bit.goog_in21k", pretrained=False).eval()
    randomize_(reference, seed=4)
    loaded = load_model(save_timm_model(reference, tmp_path / "r50x1-21k"))
    assert loaded.config.num_labels == 21843
    assert loaded.preprocess.shortest_edge == 256 and loaded.preprocess.crop_size == (224, 224)
    image = photo(SAMPLES / "astronaut.jpg")
    pixels = timm_pixels(reference, [image])
    assert (loaded.preprocess(image)[None] - pixels).abs().max().item() < PIXEL_TOLERANCE
    assert_same_outputs(loaded, reference, pixels)
    labels = resolve_labels(loaded.config.num_labels, loaded.config.id2label)
    assert labels.source == "ImageNet-21k (bundled)" and labels.names[2397] == "tabby, tabby cat"


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_preprocessing_matches_timm_eval_transform(tag, path):
    pretrained_cfg = get_pretrained_cfg(tag).to_dict()
    ours = preprocess_from_timm(pretrained_cfg)
    image = photo(path)
    theirs = create_transform(**resolve_data_config(pretrained_cfg=pretrained_cfg))(image)
    got = ours(image)
    assert got.shape == theirs.shape
    assert (got - theirs).abs().max().item() < PIXEL_TOLERANCE
