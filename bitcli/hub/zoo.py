"""Known BiT checkpoints: aliases, hub repositories, pinned revisions; one `ZooEntry` row each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ZooEntry:
    """One known checkpoint on the Hugging Face Hub."""

    alias: str  # short name users type, unique, no "/"
    repo_id: str  # "org/name" on the hub
    architecture: str  # timm architecture name (resnetv2_50x1_bit): depths and width
    revision: str | None  # pinned commit/branch/tag; None means the default branch
    description: str
    input_size: int  # square side length the checkpoint was evaluated at
    num_classes: int
    top1: float | None  # ImageNet-1k top-1 accuracy (%), None for pre-trained-only heads
    num_parameters: int  # of the model with this head, as bitcli builds it (tests/test_zoo.py checks)

    @property
    def download_bytes(self) -> int:
        """About what the float32 weights file weighs: 4 bytes per parameter (the header is tiny)."""
        return 4 * self.num_parameters


KNOWN_MODELS: tuple[ZooEntry, ...] = (
    ZooEntry(
        alias="bit-50",
        repo_id="google/bit-50",
        architecture="resnetv2_50x1_bit",  # the transformers port of the same network
        # `main` holds only a pickle; this commit (the hub's refs/pr/1) adds model.safetensors.
        revision="9e9a281aa096247270860f9cda4f68daacca33d0",
        description="BiT-M R50x1, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k (transformers)",
        input_size=448,
        num_classes=1000,
        top1=80.39,
        num_parameters=25_549_352,
    ),
)

# The timm BiT family (repos `timm/<name>.<tag>`: model.safetensors + timm config.json), one row
# each: (alias, <name>.<tag>, input size, classes, ImageNet top-1 or None for a pre-trained-only
# head, parameters, description). Revisions unpinned (default branch) until someone records their
# commits; top-1 from timm.
_TIMM_FAMILY = (
    ("bit-m-r50x1", "resnetv2_50x1_bit.goog_in21k_ft_in1k", 448, 1_000, 80.39, 25_549_352, "BiT-M R50x1, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k"),
    ("bit-m-r50x3", "resnetv2_50x3_bit.goog_in21k_ft_in1k", 448, 1_000, 83.98, 217_319_080, "BiT-M R50x3, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k"),
    ("bit-m-r101x1", "resnetv2_101x1_bit.goog_in21k_ft_in1k", 448, 1_000, 82.33, 44_541_480, "BiT-M R101x1, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k"),
    ("bit-m-r101x3", "resnetv2_101x3_bit.goog_in21k_ft_in1k", 448, 1_000, 84.43, 387_934_888, "BiT-M R101x3, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k"),
    ("bit-m-r152x2", "resnetv2_152x2_bit.goog_in21k_ft_in1k", 448, 1_000, 84.47, 236_335_208, "BiT-M R152x2, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k"),
    ("bit-m-r152x4", "resnetv2_152x4_bit.goog_in21k_ft_in1k", 480, 1_000, 84.94, 936_533_224, "BiT-M R152x4, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k"),
    ("bit-r50x1-distilled", "resnetv2_50x1_bit.goog_distilled_in1k", 224, 1_000, 82.82, 25_549_352, "BiT R50x1 distilled from BiT-M R152x2 on ImageNet-1k"),
    ("bit-m-r152x2-teacher", "resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k", 224, 1_000, 82.92, 236_335_208, "BiT-M R152x2 distillation teacher, fine-tuned on ImageNet-1k"),
    ("bit-m-r152x2-teacher-384", "resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384", 384, 1_000, 83.86, 236_335_208, "BiT-M R152x2 distillation teacher at 384, fine-tuned on ImageNet-1k"),
    ("bit-m-r50x1-in21k", "resnetv2_50x1_bit.goog_in21k", 224, 21_843, None, 68_256_659, "BiT-M R50x1, ImageNet-21k pre-trained, 21,843-class head"),
    ("bit-m-r50x3-in21k", "resnetv2_50x3_bit.goog_in21k", 224, 21_843, None, 345_399_315, "BiT-M R50x3, ImageNet-21k pre-trained, 21,843-class head"),
    ("bit-m-r101x1-in21k", "resnetv2_101x1_bit.goog_in21k", 224, 21_843, None, 87_248_787, "BiT-M R101x1, ImageNet-21k pre-trained, 21,843-class head"),
    ("bit-m-r101x3-in21k", "resnetv2_101x3_bit.goog_in21k", 224, 21_843, None, 516_015_123, "BiT-M R101x3, ImageNet-21k pre-trained, 21,843-class head"),
    ("bit-m-r152x2-in21k", "resnetv2_152x2_bit.goog_in21k", 224, 21_843, None, 321_728_979, "BiT-M R152x2, ImageNet-21k pre-trained, 21,843-class head"),
    ("bit-m-r152x4-in21k", "resnetv2_152x4_bit.goog_in21k", 224, 21_843, None, 1_107_299_923, "BiT-M R152x4, ImageNet-21k pre-trained, 21,843-class head"),
)

KNOWN_MODELS += tuple(
    ZooEntry(
        alias=alias,
        repo_id=f"timm/{name}",
        architecture=name.split(".", 1)[0],
        revision=None,
        description=f"{description} (timm)",
        input_size=input_size,
        num_classes=num_classes,
        top1=top1,
        num_parameters=num_parameters,
    )
    for alias, name, input_size, num_classes, top1, num_parameters, description in _TIMM_FAMILY
)


# Checkpoints that ship inside the package (`bitcli/data/<folder>`): usable with no network and no
# cache: alias -> (folder, description, parameters; tests/test_zoo.py checks the count).
# `bit-digits` is made by tools/make_digits_model.py (docs/models.md tells its figures).
BUNDLED: dict[str, tuple[str, str, int]] = {
    "bit-digits": (
        "bit-digits", "compact BiT trained by bitcli on scikit-learn's 8x8 handwritten digits (ships with bitcli)", 134_538,
    ),
}


def bundled_path(ref: str) -> Path | None:
    """The folder of the bundled checkpoint named `ref` (case-insensitive), or None."""
    found = BUNDLED.get(ref.strip().lower())
    if found is None:
        return None
    return Path(__file__).resolve().parent.parent / "data" / found[0]


def find_alias(alias: str) -> ZooEntry | None:
    """The entry whose alias is `alias` (case-insensitive), or None."""
    wanted = alias.lower()
    return next((entry for entry in KNOWN_MODELS if entry.alias.lower() == wanted), None)


def find_repo(repo_id: str) -> ZooEntry | None:
    """The first entry for hub repository `repo_id` (case-insensitive), or None."""
    wanted = repo_id.lower()
    return next((entry for entry in KNOWN_MODELS if entry.repo_id.lower() == wanted), None)
