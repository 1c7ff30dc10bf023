"""PIL's resize computed for one region of the output only, with exactly PIL's pixels.

A center crop of an extreme aspect ratio's resize (1x20000 to a 448 short side: 12 GB) needs
only the crop's pixels. `Image.resize(box=...)` is not exact (single-precision box, other
windows), so Pillow's `Resample.c` arithmetic is reproduced: double-precision coefficients of
the full resize, 22-bit fixed point, horizontal pass first, 8-bit rounding between passes.
Upscaling only (`supported()`); a downscale is never larger than the decoded image."""

from __future__ import annotations

import math

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # PIL's fixed point for 8-bit images
# PIL filter number -> support (the half-width of the window at scale 1).
SUPPORT = {1: 3.0, 2: 1.0, 3: 2.0, 4: 0.5, 5: 1.0}  # lanczos, bilinear, bicubic, box, hamming
_HAMMING_A = float(np.float32(0.54))  # PIL writes 0.54f and 0.46f: single-precision constants
_HAMMING_B = float(np.float32(0.46))


def supported(size: tuple[int, int], new_size: tuple[int, int], resample: int) -> bool:
    """Whether `resize_region` reproduces PIL for this (width, height) -> (width, height) resize."""
    return resample in SUPPORT and new_size[0] >= size[0] and new_size[1] >= size[1]


def resize_region(pixels: np.ndarray, new_size: tuple[int, int], box: tuple[int, int, int, int], resample: int) -> np.ndarray:
    """The pixels inside `box` (left, top, right, bottom; inside the resized image) of
    `Image.fromarray(pixels).resize(new_size, resample)`, as uint8 [bottom - top, right - left, 3]."""
    height, width = pixels.shape[:2]
    new_width, new_height = new_size
    left, top, right, bottom = box
    if new_height != height:  # PIL's "need_vertical": the rows the vertical pass reads
        ymin, kernel_v = _coefficients(height, new_height, top, bottom, resample)
        first, last = int(ymin.min()), int((ymin + kernel_v.shape[1]).max())
        rows, ymin = pixels[first:min(last, height)], ymin - first
    else:
        rows = pixels[top:bottom]
    if new_width != width:
        xmin, kernel_h = _coefficients(width, new_width, left, right, resample)
        rows = _pass(rows, xmin, kernel_h, axis=1)
    else:
        rows = rows[:, left:right]
    if new_height != height:
        rows = _pass(rows, ymin, kernel_v, axis=0)
    return np.ascontiguousarray(rows)


def _coefficients(in_size: int, out_size: int, start: int, stop: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for output positions start..stop-1 of a
    full (0, in_size) -> out_size resize: (first source index [n], int64 weights [n, ksize])."""
    scale = float(in_size) / out_size  # (in1 - in0) / outSize, in0 = 0 and in1 = in_size exactly
    filterscale = max(scale, 1.0)
    support = SUPPORT[resample] * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(start, stop, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) truncates
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    weights = _filter(resample, ((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where(taps[None, :] < count[:, None], weights, 0.0)
    total = np.zeros(len(center))
    for k in range(ksize):  # summed in the C loop's order
        total = total + weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    return xmin, fixed


def _filter(resample: int, x: np.ndarray) -> np.ndarray:
    """PIL's filter functions, elementwise, with the same double-precision operations."""
    if resample == 2:  # bilinear
        x = np.abs(x)
        return np.where(x < 1.0, 1.0 - x, 0.0)
    if resample == 3:  # bicubic, a = -0.5: ((a + 2) x - (a + 3)) x x + 1 and (((x - 5) x + 8) x - 4) a
        x = np.abs(x)
        near = ((1.5 * x - 2.5) * x) * x + 1.0
        far = ((((x - 5.0) * x) + 8.0) * x - 4.0) * -0.5
        return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
    if resample == 4:  # box
        return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)
    # lanczos and hamming call the C library's sin/cos, as math does (numpy's may differ in an ulp)
    scalar = _lanczos if resample == 1 else _hamming
    return np.array([scalar(float(v)) for v in x.ravel()]).reshape(x.shape)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (_HAMMING_A + _HAMMING_B * math.cos(x))


def _pass(src: np.ndarray, first: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """One 8-bit pass along `axis` (0: rows, 1: columns) of uint8 [H, W, C]: PIL's
    `ss = 1 << 21; ss += in * k; clip8(ss >> 22)` for each output position."""
    limit = src.shape[axis] - 1
    shape = (len(first),) + tuple(n for i, n in enumerate(src.shape) if i != axis)
    acc = np.full(shape, 1 << (PRECISION_BITS - 1), dtype=np.int64)
    for k in range(kernel.shape[1]):
        taken = np.moveaxis(np.take(src, np.minimum(first + k, limit), axis=axis), axis, 0)
        acc += taken.astype(np.int64) * kernel[:, k].reshape((-1,) + (1,) * (taken.ndim - 1))
    return np.moveaxis(np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8), 0, axis)
