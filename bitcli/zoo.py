"""Known BiT checkpoints: short aliases, hub repositories, pinned revisions and what they are.

Adding a checkpoint is adding one `ZooEntry` row to `KNOWN_MODELS`. Aliases are what users type
(`bit classify --model bit-50`); `hub.py` turns an alias into its repository and revision.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    """One known checkpoint on the Hugging Face Hub."""

    alias: str  # short name users type, unique, no "/"
    repo_id: str  # "org/name" on the hub
    revision: str | None  # pinned commit/branch/tag; None means the default branch
    weights_file: str  # the file bitcli loads from that revision
    description: str
    input_size: int  # square side length the checkpoint was evaluated at
    num_classes: int
    top1: float | None  # ImageNet-1k top-1 accuracy (%), None for pre-trained-only heads


KNOWN_MODELS: tuple[ZooEntry, ...] = (
    ZooEntry(
        alias="bit-50",
        repo_id="google/bit-50",
        # `main` holds only a pickle; this commit (the hub's refs/pr/1) adds model.safetensors.
        revision="9e9a281aa096247270860f9cda4f68daacca33d0",
        weights_file="model.safetensors",
        description="BiT-M R50x1, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (transformers)",
        input_size=448,
        num_classes=1000,
        top1=80.39,
    ),
    # The timm BiT family (repos `timm/<name>.<tag>`: model.safetensors + timm config.json).
    # Revisions unpinned (default branch) until someone records their commits; top-1 from timm.
    ZooEntry(
        alias="bit-m-r50x1",
        repo_id="timm/resnetv2_50x1_bit.goog_in21k_ft_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R50x1, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (timm), 25.5M params",
        input_size=448,
        num_classes=1000,
        top1=80.39,
    ),
    ZooEntry(
        alias="bit-m-r50x3",
        repo_id="timm/resnetv2_50x3_bit.goog_in21k_ft_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R50x3, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (timm), 217.3M params",
        input_size=448,
        num_classes=1000,
        top1=83.98,
    ),
    ZooEntry(
        alias="bit-m-r101x1",
        repo_id="timm/resnetv2_101x1_bit.goog_in21k_ft_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R101x1, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (timm), 44.5M params",
        input_size=448,
        num_classes=1000,
        top1=82.33,
    ),
    ZooEntry(
        alias="bit-m-r101x3",
        repo_id="timm/resnetv2_101x3_bit.goog_in21k_ft_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R101x3, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (timm), 387.9M params",
        input_size=448,
        num_classes=1000,
        top1=84.43,
    ),
    ZooEntry(
        alias="bit-m-r152x2",
        repo_id="timm/resnetv2_152x2_bit.goog_in21k_ft_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R152x2, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (timm), 236.3M params",
        input_size=448,
        num_classes=1000,
        top1=84.47,
    ),
    ZooEntry(
        alias="bit-m-r152x4",
        repo_id="timm/resnetv2_152x4_bit.goog_in21k_ft_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R152x4, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (timm), 936.5M params",
        input_size=480,
        num_classes=1000,
        top1=84.94,
    ),
    ZooEntry(
        alias="bit-r50x1-distilled",
        repo_id="timm/resnetv2_50x1_bit.goog_distilled_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT R50x1 distilled from BiT-M R152x2 on ImageNet-1k (timm), 25.5M params",
        input_size=224,
        num_classes=1000,
        top1=82.82,
    ),
    ZooEntry(
        alias="bit-m-r152x2-teacher",
        repo_id="timm/resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R152x2 distillation teacher, fine-tuned on ImageNet-1k (timm), 236.3M params",
        input_size=224,
        num_classes=1000,
        top1=82.92,
    ),
    ZooEntry(
        alias="bit-m-r152x2-teacher-384",
        repo_id="timm/resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R152x2 distillation teacher at 384, fine-tuned on ImageNet-1k (timm), 236.3M params",
        input_size=384,
        num_classes=1000,
        top1=83.86,
    ),
    ZooEntry(
        alias="bit-m-r50x1-in21k",
        repo_id="timm/resnetv2_50x1_bit.goog_in21k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R50x1, ImageNet-21k pre-trained, 21,843-class head (timm), 68.3M params",
        input_size=224,
        num_classes=21843,
        top1=None,
    ),
    ZooEntry(
        alias="bit-m-r50x3-in21k",
        repo_id="timm/resnetv2_50x3_bit.goog_in21k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R50x3, ImageNet-21k pre-trained, 21,843-class head (timm), 345.4M params",
        input_size=224,
        num_classes=21843,
        top1=None,
    ),
    ZooEntry(
        alias="bit-m-r101x1-in21k",
        repo_id="timm/resnetv2_101x1_bit.goog_in21k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R101x1, ImageNet-21k pre-trained, 21,843-class head (timm), 87.2M params",
        input_size=224,
        num_classes=21843,
        top1=None,
    ),
    ZooEntry(
        alias="bit-m-r101x3-in21k",
        repo_id="timm/resnetv2_101x3_bit.goog_in21k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R101x3, ImageNet-21k pre-trained, 21,843-class head (timm), 516.0M params",
        input_size=224,
        num_classes=21843,
        top1=None,
    ),
    ZooEntry(
        alias="bit-m-r152x2-in21k",
        repo_id="timm/resnetv2_152x2_bit.goog_in21k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R152x2, ImageNet-21k pre-trained, 21,843-class head (timm), 321.7M params",
        input_size=224,
        num_classes=21843,
        top1=None,
    ),
    ZooEntry(
        alias="bit-m-r152x4-in21k",
        repo_id="timm/resnetv2_152x4_bit.goog_in21k",
        revision=None,
        weights_file="model.safetensors",
        description="BiT-M R152x4, ImageNet-21k pre-trained, 21,843-class head (timm), 1107.3M params",
        input_size=224,
        num_classes=21843,
        top1=None,
    ),
)

DEFAULT_ALIAS = "bit-50"


def find_alias(alias: str) -> ZooEntry | None:
    """The entry whose alias is `alias` (case-insensitive), or None."""
    wanted = alias.lower()
    return next((entry for entry in KNOWN_MODELS if entry.alias.lower() == wanted), None)


def find_repo(repo_id: str) -> ZooEntry | None:
    """The first entry for hub repository `repo_id` (case-insensitive), or None."""
    wanted = repo_id.lower()
    return next((entry for entry in KNOWN_MODELS if entry.repo_id.lower() == wanted), None)
