"""One image path -> an 8-bit RGB PIL image, exactly as the reference preprocessing sees it.

As transformers' `BitImageProcessorPil` on `ImageOps.exif_transpose(Image.open(path))`: EXIF
orientation, the first frame, transparency onto white, the rest through `convert("RGB")`; but
16-bit grayscale is scaled to 8 bits, not clipped. The pixel count is checked against
`max_pixels` from the header, before decoding; PIL's own limit is left as the program set it.
Every failure is an `InputError(path, reason)`."""

from __future__ import annotations

import os
import re
import stat
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bitcli.errors import InputError
from bitcli.util import DEFAULT_MAX_PIXELS, NotRegularFile, first_line, open_regular, os_error_reason


# The formats docs/usage.md lists (inputs.py's signatures); others, such as EPS, are "not an image".
DECODABLE_FORMATS = (
    "JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "JPEG2000", "AVIF", "QOI", "PSD", "ICO", "PPM",
)
# `image.info` keys of a draft-decoded JPEG, so preprocessing resizes as the full-scale image would:
# its full-scale (width, height), and the box in the reduced image that covers the whole picture.
FULL_SIZE_KEY = "bitcli_full_size"
DRAFT_BOX_KEY = "bitcli_draft_box"

EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # those that swap width and height

# Modes PIL opens 16-bit grayscale files in (PNG, TIFF, PGM).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

def open_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode `path` to an RGB, 8-bit, EXIF-transposed image (first frame).

    `max_pixels` (None: no limit) is checked from the header. `draft_size` (width, height), JPEGs
    only: libjpeg decodes at the smallest 1/2, 1/4 or 1/8 scale that still covers it (faster, not
    pixel-identical)."""
    name = os.fspath(path)
    _check_file(name)
    try:
        # Our own file object, not Image.open(name): the returned image must outlive the file,
        # and a closed PIL image (as `with Image.open(...)` leaves it) cannot be used. Opened
        # with `open_regular`: a FIFO or device swapped in after `_check_file` is refused, not read.
        with open_regular(name) as file:
            image = Image.open(file, formats=DECODABLE_FORMATS)
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise InputError(name, over_limit_reason(image.width * image.height, max_pixels))
            full_size = image.size
            draft_box = None
            if draft_size is not None and image.format in ("JPEG", "MPO"):
                drafted = image.draft(None, draft_size)
                if drafted is not None and image.size != full_size:
                    draft_box = drafted[1]
            image.load()
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
        stored_size = image.size
        ImageOps.exif_transpose(image, in_place=True)  # the image is ours: no copy needed
        rgb = to_rgb(image)
        # Our draft-mode keys travel in `info`, where a PNG's own text chunks land too: a file
        # must not be able to steer the resize.
        rgb.info.pop(DRAFT_BOX_KEY, None)
        rgb.info.pop(FULL_SIZE_KEY, None)
        if draft_box is not None:
            rgb.info[DRAFT_BOX_KEY] = _orient_box(draft_box, stored_size, orientation)
            if orientation in TRANSPOSING_ORIENTATIONS:
                full_size = (full_size[1], full_size[0])
            rgb.info[FULL_SIZE_KEY] = full_size
        return rgb
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(name, "not an image") from None
    except Image.DecompressionBombError as error:  # over twice PIL's own limit, where the program keeps it
        raise InputError(name, _bomb_reason(str(error), max_pixels)) from None
    except NotRegularFile:
        raise InputError(name, "not a regular file") from None
    except OSError as error:
        raise InputError(name, _os_error_reason(error)) from None
    except (SyntaxError, ValueError, TypeError, IndexError, struct.error) as error:
        # PIL plugins signal malformed data with a variety of exception types.
        raise InputError(name, f"truncated or corrupt image: {first_line(error)}") from None
    except MemoryError:
        raise InputError(name, "not enough memory to decode this image") from None
    except Exception as error:  # a PIL plugin's unforeseen failure must not sink the batch
        raise InputError(name, f"cannot decode ({type(error).__name__}: {first_line(error)})") from None


def _orient_box(
    box: tuple[float, float, float, float], size: tuple[int, int], orientation: int
) -> tuple[float, float, float, float]:
    """Map a (0, 0, w, h) box in a `size` image through the EXIF orientation's transposition."""
    _, _, w, h = box
    width, height = size
    boxes = {
        2: (width - w, 0, width, h),  # flip left-right
        3: (width - w, height - h, width, height),  # rotate 180
        4: (0, height - h, w, height),  # flip top-bottom
        5: (0, 0, h, w),  # transpose
        6: (height - h, 0, height, w),  # rotate 90 clockwise
        7: (height - h, width - w, height, width),  # transverse
        8: (0, width - w, h, width),  # rotate 90 counter-clockwise
    }
    return boxes.get(orientation, (0, 0, w, h))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, as the reference converts it (16-bit grayscale scaled, not clipped)."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_l(image)
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit grayscale -> 8 bits, round(v / 257); a `transparency` gray level becomes an alpha channel."""
    values = np.asarray(image).astype(np.uint32)
    scaled = ((values * 2 + 257) // 514).astype(np.uint8)  # round half up of v / 257
    gray = Image.fromarray(scaled)  # uint8 2-D -> mode L
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.merge("LA", (gray, Image.fromarray(alpha)))
    return gray


def _check_file(name: str) -> None:
    """Reject what is not a readable, non-empty regular file, with the reason the user needs."""
    try:
        info = os.stat(name)
    except OSError as error:
        raise InputError(name, _os_error_reason(error)) from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(name, "is a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file")
    if info.st_size == 0:
        raise InputError(name, "empty file")


def over_limit_reason(pixels: int, max_pixels: int) -> str:
    """'image is 120.0 megapixels, over the limit of 100 (use --max-pixels)'; in pixels under one megapixel."""
    if max_pixels < 1_000_000:
        return f"image is {pixels:,} pixels, over the limit of {max_pixels:,} (use --max-pixels)"
    return (
        f"image is {pixels / 1e6:.1f} megapixels, over the limit of "
        f"{max_pixels / 1e6:g} (use --max-pixels)"
    )


def _bomb_reason(message: str, max_pixels: int | None) -> str:
    match = re.search(r"\((\d+) pixels\)", message)
    pixels = int(match.group(1)) if match else None
    if pixels is not None and max_pixels is not None and pixels > max_pixels:
        return over_limit_reason(pixels, max_pixels)
    size = f"{pixels / 1e6:.1f} megapixels" if pixels is not None else "too large"
    return f"image is {size}, over PIL's own limit (raise PIL.Image.MAX_IMAGE_PIXELS to decode it)"


def _os_error_reason(error: OSError) -> str:
    """A short reason for an OSError from stat/open/decode."""
    return os_error_reason(error, fallback=f"truncated or corrupt image: {first_line(error)}")
