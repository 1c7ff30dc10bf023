"""The BiT-HyperRule as pure functions, following the released code (google-research/big_transfer):

- Schedule by training-set size: < 20k images [100, 200, 300, 400, 500] steps, < 500k
  [500, 3000, 6000, 9000, 10000], else [500, 6000, 12000, 18000, 20000]; `--steps N` scales
  the boundaries to end at N.
- Learning rate: linear warmup to the base rate (0.003 at any batch size) over the first
  boundary, then / 10 at every later boundary; training stops at the last.
- MixUp alpha 0 under 20k images, else 0.1.
- Resolution: images under 96x96 px resize to 160 and crop 128; larger ones train at the base's
  own input size (resized by the 512/480 margin, then randomly cropped)."""

from __future__ import annotations

from dataclasses import dataclass

BASE_LR = 0.003
BASE_BATCH = 512
MOMENTUM = 0.9
SMALL_DATASET = 20_000
MEDIUM_DATASET = 500_000
SMALL_IMAGE_AREA = 96 * 96
SMALL_IMAGE_RESIZE, SMALL_IMAGE_CROP = 160, 128
# The release's margin between the resize and the random crop for large images (512 -> 480).
LARGE_IMAGE_MARGIN = 512 / 480


def schedule(dataset_size: int) -> list[int]:
    """Step boundaries for a training set of `dataset_size` images (the last one is the run's length)."""
    if dataset_size < 1:
        raise ValueError("the training set is empty")
    if dataset_size < SMALL_DATASET:
        return [100, 200, 300, 400, 500]
    if dataset_size < MEDIUM_DATASET:
        return [500, 3000, 6000, 9000, 10000]
    return [500, 6000, 12000, 18000, 20000]


def scaled_schedule(boundaries: list[int], steps: int) -> list[int]:
    """`boundaries` stretched or shrunk to end at `steps`, each at least one step after the last."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    last = boundaries[-1]
    scaled: list[int] = []
    for boundary in boundaries:
        value = max(1, round(boundary * steps / last))
        if scaled and value <= scaled[-1]:
            value = scaled[-1] + 1
        scaled.append(value)
    # Very short runs cannot keep every boundary distinct; keep the end at `steps`.
    return [b for b in scaled if b < steps] + [steps]


def lr_at(step: int, boundaries: list[int], base_lr: float = BASE_LR) -> float | None:
    """The release's `get_lr` for `step` (0-based); None once `step` reaches the last boundary."""
    if step < boundaries[0]:
        return base_lr * step / boundaries[0]
    if step >= boundaries[-1]:
        return None
    lr = base_lr
    for boundary in boundaries[1:]:
        if boundary < step:
            lr /= 10
    return lr


def mixup_alpha(dataset_size: int) -> float:
    """MixUp's Beta(alpha, alpha) parameter: 0 (off) under 20k images, else 0.1."""
    return 0.0 if dataset_size < SMALL_DATASET else 0.1


@dataclass(frozen=True)
class Resolution:
    """Training augmentation sizes: resize the shortest edge to `resize`, random crop `crop` x `crop`."""

    resize: int
    crop: int
    small_images: bool

    def describe(self) -> str:
        return f"resize {self.resize}, random crop {self.crop}x{self.crop}, random horizontal flip"


def resolution(image_area: float, base_input_size: int) -> Resolution:
    """Training resolution for images of (typical) area `image_area` on a base with that input size."""
    if image_area < SMALL_IMAGE_AREA:
        return Resolution(SMALL_IMAGE_RESIZE, SMALL_IMAGE_CROP, True)
    return Resolution(round(base_input_size * LARGE_IMAGE_MARGIN), base_input_size, False)


def fixed_resolution(crop: int) -> Resolution:
    """The user's `--resolution`: crop `crop` x `crop` from a shortest edge resized in the rule's
    160:128 proportion; the model is then evaluated at `crop` (as for small images)."""
    return Resolution(round(crop * SMALL_IMAGE_RESIZE / SMALL_IMAGE_CROP), crop, True)


@dataclass(frozen=True)
class Rule:
    """Everything the HyperRule decides for one training run."""

    boundaries: list[int]
    base_lr: float
    batch_size: int
    mixup_alpha: float

    @property
    def steps(self) -> int:
        return self.boundaries[-1]

    def lr(self, step: int) -> float | None:
        return lr_at(step, self.boundaries, self.base_lr)


def make_rule(
    dataset_size: int,
    *,
    steps: int | None = None,
    batch_size: int = BASE_BATCH,
    lr: float | None = None,
    mixup: float | None = None,
) -> Rule:
    """The rule for a training set, with the user's overrides (None: the rule's own value)."""
    boundaries = schedule(dataset_size)
    if steps is not None:
        boundaries = scaled_schedule(boundaries, steps)
    return Rule(
        boundaries=boundaries,
        base_lr=BASE_LR if lr is None else float(lr),  # at any batch size: see the module docstring
        batch_size=batch_size,
        mixup_alpha=mixup_alpha(dataset_size) if mixup is None else float(mixup),
    )
