"""Images that are hard on normalization statistics: flat, tiny, faint, dark, mostly white.

A GroupNorm whose variance is computed as E[x^2] - E[x]^2 in float32 loses its digits when a
group's variance is small next to its mean, which is what these inputs make (issue 11). All are
generated here (deterministic, offline) except the sample photos the repository ships.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def solid(colour: tuple[int, int, int], width: int = 64, height: int = 48) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def faint_gradient(width: int = 80, height: int = 60) -> Image.Image:
    """A horizontal ramp over four 8-bit levels (100..103), the same on every row."""
    ramp = np.round(np.linspace(100, 103, width)).astype(np.uint8)
    return Image.fromarray(np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy())


def grey_noise(width: int = 72, height: int = 56, seed: int = 0) -> Image.Image:
    """Mid grey with +/-1 level of noise per pixel and channel."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((128 + rng.integers(-1, 2, (height, width, 3))).astype(np.uint8))


def tiny_random(width: int = 5, height: int = 7, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3)).astype(np.uint8))


def text_on_white(width: int = 120, height: int = 90) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for row in range(3):
        draw.text((6, 8 + 25 * row), "The quick brown fox", fill=(0, 0, 0))
    return image


def photo(name: str = "chelsea.png") -> Image.Image:
    return Image.open(SAMPLES / name).convert("RGB")


def dark_photo(name: str = "astronaut.jpg", level: float = 0.04) -> Image.Image:
    """A night shot: a sample photo scaled down to a few 8-bit levels."""
    pixels = np.asarray(photo(name), dtype=np.float32) * level
    return Image.fromarray(np.round(pixels).astype(np.uint8))


def photo_on_canvas(name: str = "coffee.png", canvas: int = 400, size: int = 60) -> Image.Image:
    """A small product shot in the middle of a large white canvas."""
    image = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    small = photo(name).resize((size, size), Image.BILINEAR)
    image.paste(small, ((canvas - size) // 2, (canvas - size) // 2))
    return image


def battery() -> dict[str, Image.Image]:
    """{name: RGB image} of every hard case the issue lists."""
    return {
        "black": solid((0, 0, 0)),
        "white": solid((255, 255, 255)),
        "grey": solid((128, 128, 128)),
        "saturated": solid((200, 30, 40)),
        "solid 2x3": solid((200, 30, 40), 3, 2),
        "tiny 5x7": tiny_random(),
        "faint gradient": faint_gradient(),
        "grey +/-1 noise": grey_noise(),
        "dark photo": dark_photo(),
        "text on white": text_on_white(),
        "photo on white canvas": photo_on_canvas(),
    }


def sample_photos() -> dict[str, Image.Image]:
    return {p.name: Image.open(p).convert("RGB") for p in sorted(SAMPLES.iterdir()) if p.suffix in (".jpg", ".png")}
