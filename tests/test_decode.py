"""open_image: orientation, modes, first frames, 16-bit scaling, and a typed error for every bad input."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bitcli.decode as decode
from bitcli.decode import open_image
from bitcli.errors import InputError

from images import sixteen_bit_twins, write_zoo

SAMPLE_DIR = Path(__file__).parent.parent / "sample_images"

# What each EXIF orientation means, written out independently of PIL.ImageOps.
ORIENTATION_FIX = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    return write_zoo(tmp_path_factory.mktemp("zoo"))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height, with almost no pixel data (a cheap 'bomb')."""
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data += png_chunk(b"IDAT", zlib.compress(bytes(100)))
    data += png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_every_zoo_image_decodes_to_8_bit_rgb(zoo):
    for name, path in zoo.items():
        image = open_image(path)
        assert image.mode == "RGB", name
        assert np.asarray(image).dtype == np.uint8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(zoo, orientation):
    stored = np.asarray(Image.open(zoo[f"exif_{orientation}.jpg"]).convert("RGB"))
    expected = ORIENTATION_FIX[orientation](stored)
    assert np.array_equal(np.asarray(open_image(zoo[f"exif_{orientation}.jpg"])), expected)


def test_exif_orientation_in_png(zoo):
    stored = np.asarray(Image.open(zoo["exif_6.png"]))
    decoded = np.asarray(open_image(zoo["exif_6.png"]))
    assert decoded.shape == (61, 47, 3)  # orientation 6 in a PNG eXIf chunk: portrait
    assert np.array_equal(decoded, np.rot90(stored, k=-1))


def test_transparency_is_composited_onto_white(zoo):
    rgba = Image.open(zoo["rgba.png"])
    alpha = np.asarray(rgba)[..., 3]
    decoded = np.asarray(open_image(zoo["rgba.png"]))
    assert (decoded[alpha == 0] == 255).all()  # fully transparent -> white, not black
    opaque = alpha == 255
    assert np.array_equal(decoded[opaque], np.asarray(rgba)[..., :3][opaque])
    hole = np.asarray(open_image(zoo["palette_transparency.png"]))[10:25, 15:40]
    assert (hole == 255).all()


def test_first_frame_of_animated_and_multipage_files(zoo):
    for name in ("animated.gif", "multipage.tiff"):
        with Image.open(zoo[name]) as image:
            assert image.n_frames == 2
            first = np.asarray(image.convert("RGB"))
        assert np.array_equal(np.asarray(open_image(zoo[name])), first), name


def test_sixteen_bit_png_equals_its_eight_bit_twin(tmp_path):
    path8, path16 = sixteen_bit_twins(tmp_path)
    assert Image.open(path16).mode == "I;16"
    assert np.array_equal(np.asarray(open_image(path16)), np.asarray(open_image(path8)))
    # PIL's own conversion (what the reference does) clips to white.
    assert (np.asarray(Image.open(path16).convert("RGB")) == 255).mean() > 0.9


def test_sixteen_bit_values_round_to_nearest(tmp_path):
    values = np.array([[0, 128, 129, 385, 65535, 65406, 65407]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "levels.png")
    decoded = np.asarray(open_image(tmp_path / "levels.png"))[0, :, 0]
    assert decoded.tolist() == [0, 0, 1, 1, 255, 254, 255]  # round(v / 257), halves up


def test_sixteen_bit_transparency_becomes_white(tmp_path):
    values = np.full((4, 4), 200 * 257, dtype=np.uint16)
    values[0, 0] = 1000
    Image.fromarray(values).save(tmp_path / "trns16.png", transparency=1000)
    decoded = np.asarray(open_image(tmp_path / "trns16.png"))
    assert decoded[0, 0].tolist() == [255, 255, 255]


def test_draft_size_decodes_jpeg_at_reduced_scale():
    path = SAMPLE_DIR / "retina.jpg"  # 1411 x 1411
    assert open_image(path).size == (1411, 1411)
    assert open_image(path, draft_size=(448, 448)).size == (706, 706)  # 1/2 still covers 448
    assert open_image(path, draft_size=(224, 224)).size == (353, 353)  # 1/4


def test_draft_size_is_ignored_for_non_jpeg(zoo):
    assert open_image(zoo["odd_449x451.png"], draft_size=(100, 100)).size == (449, 451)


# ---- errors -------------------------------------------------------------------------------


def reason_for(path, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        open_image(path, **kwargs)
    assert caught.value.path == str(path)
    return caught.value.reason


def test_nonexistent_path(tmp_path):
    assert reason_for(tmp_path / "missing.jpg") == "no such file or directory"


def test_directory(tmp_path):
    assert reason_for(tmp_path) == "is a directory"


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert reason_for(tmp_path / "empty.jpg") == "empty file"


def test_non_image_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    assert reason_for(tmp_path / "notes.jpg") == "not an image"


def test_truncated_jpeg(tmp_path, zoo):
    data = zoo["baseline.jpg"].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert reason_for(tmp_path / "cut.jpg").startswith("truncated or corrupt image: ")


def test_corrupt_png(tmp_path, zoo):
    data = bytearray(zoo["rgba.png"].read_bytes())
    data[60:200] = bytes(140)  # zeroes over the compressed pixel data
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    assert reason_for(tmp_path / "corrupt.png").startswith("truncated or corrupt image: ")


def test_symlink_loop(tmp_path):
    os.symlink(tmp_path / "b.jpg", tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "b.jpg")
    assert reason_for(tmp_path / "a.jpg") == "symlink loop"


def test_permission_denied_reason(tmp_path, monkeypatch, zoo):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode, "open_regular", denied)
    assert reason_for(zoo["baseline.jpg"]) == "permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files whatever their mode")
def test_permission_denied_for_real(tmp_path, zoo):
    path = tmp_path / "secret.jpg"
    path.write_bytes(zoo["baseline.jpg"].read_bytes())
    path.chmod(0)
    assert reason_for(path) == "permission denied"


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 12_000, 10_000)
    reason = reason_for(bomb)
    assert reason == "image is 120.0 megapixels, over the limit of 100 (use --max-pixels)"
    assert reason_for(bomb, max_pixels=50_000_000).endswith("over the limit of 50 (use --max-pixels)")


def test_past_pils_own_limit_the_reason_names_it_and_the_program_decides(tmp_path, monkeypatch):
    # 200 megapixels is over twice PIL's default limit (~89.5 MP), where PIL itself refuses.
    bomb = png_header_only(tmp_path / "big.png", 20_000, 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # PIL's default (a `bit` run in this process turns it off)
    reason = reason_for(bomb, max_pixels=300_000_000)
    assert reason == "image is 200.0 megapixels, over PIL's own limit (raise PIL.Image.MAX_IMAGE_PIXELS to decode it)"
    # A program (as `bit` does) that turns PIL's limit off gets past it, silently.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = reason_for(bomb, max_pixels=300_000_000)
    assert reason.startswith("truncated or corrupt image")  # past the limit; no pixel data


def test_decoding_changes_no_process_wide_setting(tmp_path, zoo):
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    reason_for(zoo["baseline.jpg"], max_pixels=10)
    assert open_image(zoo["baseline.jpg"]).size == (200, 150)
    assert Image.MAX_IMAGE_PIXELS == limit and warnings.filters == filters


def test_no_limit(tmp_path, zoo):
    assert open_image(zoo["baseline.jpg"], max_pixels=None).size == (200, 150)


def test_returned_image_is_usable_after_the_file_is_closed(zoo):
    image = open_image(zoo["animated.gif"])
    assert image.resize((10, 10)).size == (10, 10)  # a closed PIL image would raise here


def bad_exif_jpeg(path: Path) -> Path:
    """EXIF whose description tag points past the end of the data: PIL warns, then decodes."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2)
    tiff += struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x010E, 2, 100, 1000)
    tiff += struct.pack("<I", 0)
    Image.new("RGB", (8, 6), "red").save(path, exif=b"Exif\x00\x00" + tiff)
    return path


def test_pil_warnings_reach_the_program_as_warnings(tmp_path):
    path = bad_exif_jpeg(tmp_path / "bad_exif.jpg")
    with pytest.warns(UserWarning, match="Skipping tag"):
        assert open_image(path).size == (6, 8)  # orientation 6 still applied


@pytest.mark.slow
def test_pil_warnings_do_not_print_in_the_command(tmp_path, ckpt):
    path = bad_exif_jpeg(tmp_path / "bad_exif.jpg")
    done = subprocess.run(
        [sys.executable, "-W", "default", "-m", "bitcli", "classify", str(path), "-m", str(ckpt), "-f", "jsonl", "-q"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_png_text_chunks_cannot_steer_the_resize(tmp_path):
    from PIL import PngImagePlugin

    from bitcli.decode import DRAFT_BOX_KEY, FULL_SIZE_KEY

    text = PngImagePlugin.PngInfo()
    text.add_text(FULL_SIZE_KEY, "12")
    text.add_text(DRAFT_BOX_KEY, "nonsense")
    Image.new("RGB", (40, 30), "red").save(tmp_path / "tagged.png", pnginfo=text)
    image = open_image(tmp_path / "tagged.png")
    assert FULL_SIZE_KEY not in image.info and DRAFT_BOX_KEY not in image.info
    assert image.size == (40, 30)


def test_formats_outside_the_supported_list_are_not_decoded(tmp_path):
    # A valid image in a format PIL knows but bitcli does not take (TGA), named like a JPEG.
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "disguised.jpg", format="TGA")
    assert reason_for(tmp_path / "disguised.jpg") == "not an image"
