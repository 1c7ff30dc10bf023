"""A zoo of test images written with PIL: every format and mode the reference must agree on.

Everything is generated (deterministic, offline) into a directory the test chooses. The
pictures are asymmetric gradients with noise, so a wrong rotation, flip, crop offset or channel
order changes the pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """[height, width, 3] uint8: a smooth asymmetric colour pattern plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / max(width - 1, 1)
    green = 255 * y / max(height - 1, 1)
    blue = 127.5 + 127.5 * np.sin(x / 7.0 + y / 13.0)
    image = np.stack([red, green, blue], axis=-1) + rng.normal(0, 12, (height, width, 3))
    image[: height // 4, : width // 3] = (250, 20, 30)  # a marker in the top-left corner
    return np.clip(image, 0, 255).astype(np.uint8)


def alpha_ramp(width: int, height: int) -> np.ndarray:
    """[height, width] uint8 alpha: 0 on the left, 255 on the right, a fully opaque band."""
    ramp = np.tile(np.linspace(0, 255, width), (height, 1))
    ramp[height // 2 :, : width // 5] = 255
    return ramp.round().astype(np.uint8)


def rgb(width: int = 61, height: int = 47, seed: int = 0) -> Image.Image:
    return Image.fromarray(picture(width, height, seed))


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    return exif


def write_zoo(directory: Path) -> dict[str, Path]:
    """Write every small zoo image into `directory`; return {name: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **options) -> None:
        path = directory / name
        image.save(path, **options)
        paths[name] = path

    base = rgb()
    for orientation in range(1, 9):
        save(
            f"exif_{orientation}.jpg",
            base,
            quality=92,
            exif=exif_with_orientation(orientation),
        )
    save("exif_6.png", base, exif=exif_with_orientation(6))
    save("baseline.jpg", rgb(200, 150, seed=1), quality=90)
    save("cmyk.jpg", rgb(80, 60, seed=2).convert("CMYK"), quality=90)
    save("gray.jpg", rgb(70, 90, seed=3).convert("L"), quality=90)
    save("gray.png", rgb(70, 90, seed=3).convert("L"))
    save("bilevel.png", rgb(64, 40, seed=4).convert("1"))
    save("progressive.jpg", rgb(120, 90, seed=5), quality=85, progressive=True)

    rgba = rgb(64, 48, seed=6).convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha_ramp(64, 48)))
    save("rgba.png", rgba)
    la = rgb(50, 40, seed=7).convert("LA")
    la.putalpha(Image.fromarray(alpha_ramp(50, 40)))
    save("la.png", la)
    save("palette.png", rgb(60, 40, seed=8).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    save("palette_transparency.png", _palette_with_transparent_index(seed=9), transparency=0)
    # PNG tRNS with one alpha per palette entry: partial transparency.
    save(
        "palette_alpha_table.png",
        _palette_with_transparent_index(seed=10),
        transparency=bytes(range(0, 256, 8)),
    )
    gray_trns = rgb(40, 30, seed=11).convert("L")
    save("gray_transparency.png", gray_trns, transparency=int(np.asarray(gray_trns)[0, 0]))

    first, second = _animation_frames()
    save("animated.gif", first, save_all=True, append_images=[second], duration=100, loop=0)
    save("transparent.gif", _palette_with_transparent_index(seed=12), transparency=0)
    save("lossless.webp", rgb(66, 44, seed=13), lossless=True)
    save("lossy.webp", rgb(66, 44, seed=14), quality=80)
    rgba_webp = rgb(66, 44, seed=15).convert("RGBA")
    rgba_webp.putalpha(Image.fromarray(alpha_ramp(66, 44)))
    save("rgba.webp", rgba_webp, lossless=True)
    save("image.bmp", rgb(45, 33, seed=16))
    save("image.tiff", rgb(45, 33, seed=17))
    save("multipage.tiff", rgb(45, 33, seed=18), save_all=True, append_images=[rgb(45, 33, seed=19)])
    save("tiny_1x1.png", rgb(1, 1, seed=20))
    save("tall_3x500.png", rgb(3, 500, seed=21))
    save("wide_500x3.jpg", rgb(500, 3, seed=22), quality=95)
    save("exact_crop_448.png", rgb(448, 448, seed=23))
    save("odd_449x451.png", rgb(449, 451, seed=24))
    return paths


def write_large_photo(path: Path, width: int = 4000, height: int = 3000) -> Path:
    """A camera-sized JPEG (12 megapixels), EXIF-rotated like a phone portrait shot."""
    image = Image.fromarray(picture(width, height, seed=99))
    image.save(path, quality=90, exif=exif_with_orientation(6))
    return path


def sixteen_bit_twins(directory: Path) -> tuple[Path, Path]:
    """A 16-bit grayscale PNG (mode I;16) and its 8-bit twin (v16 = v8 * 257)."""
    eight = np.asarray(rgb(57, 43, seed=30).convert("L"))
    sixteen = eight.astype(np.uint16) * 257
    path8, path16 = directory / "gray8.png", directory / "gray16.png"
    Image.fromarray(eight).save(path8)
    sixteen_image = Image.fromarray(sixteen)
    assert sixteen_image.mode == "I;16"
    sixteen_image.save(path16)
    return path8, path16


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _palette_with_transparent_index(seed: int) -> Image.Image:
    image = rgb(60, 40, seed=seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    indices = np.asarray(image).copy()
    indices[10:25, 15:40] = 0  # a transparent hole
    out = Image.frombytes("P", image.size, indices.tobytes())
    out.putpalette(image.getpalette())
    return out


def _animation_frames() -> tuple[Image.Image, Image.Image]:
    first = rgb(48, 36, seed=40).convert("P", palette=Image.Palette.ADAPTIVE)
    second = rgb(48, 36, seed=41).convert("P", palette=Image.Palette.ADAPTIVE)
    return first, second
