"""Issue 12, bounded memory: no input's size, and no file bitcli reads, can take unbounded memory.

The `bit` child runs under an address-space cap (`relhelpers.MEMORY_CAP`), so a runaway
allocation ends in a MemoryError inside the test instead of meeting the machine's out-of-memory
killer. Extreme aspect ratios: the resize that preprocessing would do is far larger than the
image (a 1x20000 PNG resized to a 448-pixel short side is 4 gigapixels); bitcli resizes only the
region the center crop keeps, with the reference's exact pixels (checked here against
transformers' BitImageProcessorPil).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from checkpoints import BIT_50_PREPROCESSOR
from clihelpers import jsonl, make_images
from relhelpers import (
    ZERO_DEVICE,
    assert_one_error_line,
    bit,
    error_lines,
    make_device,
    sparse_file,
    text,
)

HUGE = 8 << 30  # a sparse file that claims 8 GiB, twice the child's address-space cap


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    make_images(directory, 2)
    return directory


@pytest.fixture(scope="module")
def ckpt448(ckpt, tmp_path_factory):
    """The tiny model with google/bit-50's preprocessing: short side to 448, 448x448 crop."""
    directory = tmp_path_factory.mktemp("ckpt448") / "tiny448"
    shutil.copytree(ckpt, directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(BIT_50_PREPROCESSOR))
    return directory


def thin(path, width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# -- 5. extreme aspect ratios ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1, 20000), (20000, 1)], ids=["tall", "wide"])
def test_an_extreme_aspect_ratio_neither_blows_memory_nor_stops_the_batch(ckpt448, photos, tmp_path, size):
    odd = thin(tmp_path / "thin.png", *size)
    result = bit("classify", photos / "img00.png", odd, photos / "img01.png", "-m", ckpt448, "-f", "jsonl", cwd=tmp_path)
    assert result.returncode == 0, error_lines(result)
    records = jsonl(text(result.stdout))
    assert [r["path"] for r in records] == [str(photos / "img00.png"), str(odd), str(photos / "img01.png")]
    assert all(r.get("predictions") for r in records), records


@pytest.mark.slow
def test_a_resize_over_the_pixel_limit_without_a_crop_is_one_failed_input(ckpt, photos, tmp_path):
    model = tmp_path / "nocrop"
    shutil.copytree(ckpt, model)
    config = json.loads((model / "preprocessor_config.json").read_text())
    (model / "preprocessor_config.json").write_text(json.dumps({**config, "do_center_crop": False}))
    odd = thin(tmp_path / "thin.png", 1, 50000)  # 50,000 pixels; resized: 32 x 1,600,000
    result = bit("classify", photos / "img00.png", odd, photos / "img01.png", "-m", model, "-f", "jsonl",
                 "--max-pixels", "1000000", cwd=tmp_path)
    assert result.returncode == 1
    records = {r["path"]: r for r in jsonl(text(result.stdout))}
    assert "error" in records[str(odd)] and "pixels" in records[str(odd)]["error"]
    assert records[str(photos / "img01.png")]["predictions"]
    assert [line for line in error_lines(result) if "unexpected" in line] == []


@pytest.mark.parametrize("resample", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("size", [(1, 300), (300, 1), (3, 500), (7, 901), (500, 2), (13, 1600), (40, 449)])
def test_resizing_only_the_crop_gives_the_reference_pixels(size, resample):
    """`preprocess(..., max_pixels=1)` cannot afford the full resize: it resizes the crop alone."""
    BitImageProcessorPil = pytest.importorskip("transformers").BitImageProcessorPil

    from bitcli.preprocess import PreprocessConfig, preprocess

    fields = {**BIT_50_PREPROCESSOR, "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 200},
              "resample": resample}
    fields.pop("image_processor_type")
    image = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    reference = BitImageProcessorPil(**fields)(image, return_tensors="pt")["pixel_values"][0]
    ours = preprocess(image, PreprocessConfig.from_dict(fields), max_pixels=1)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() == 0.0


# -- 6. every file read whole has a cap ------------------------------------------------------


@pytest.mark.slow
def test_a_labels_file_that_never_ends_is_a_usage_error(ckpt, photos, tmp_path):
    zero = make_device(tmp_path / "zero", ZERO_DEVICE)
    result = bit("classify", photos / "img00.png", "-m", ckpt, "--labels", zero, cwd=tmp_path)
    assert_one_error_line(result, 2, "--labels", str(zero))


@pytest.mark.slow
def test_a_labels_file_too_large_is_a_usage_error(ckpt, photos, tmp_path):
    huge = sparse_file(tmp_path / "labels.txt", HUGE)
    result = bit("classify", photos / "img00.png", "-m", ckpt, "--labels", huge, cwd=tmp_path)
    assert_one_error_line(result, 2, "--labels", "labels.txt")


@pytest.mark.slow
def test_stdin_that_never_ends_is_a_usage_error(ckpt, tmp_path):
    zero = make_device(tmp_path / "zero", ZERO_DEVICE)
    with open(zero, "rb") as stdin:
        result = bit("classify", "-", "-m", ckpt, cwd=tmp_path, stdin=stdin)
    assert_one_error_line(result, 2, "stdin")


@pytest.mark.slow
def test_a_stdin_line_too_long_for_a_path_is_a_usage_error(ckpt, photos, tmp_path):
    lines = b"a" * (16 << 20) + b"\n" + str(photos / "img00.png").encode() + b"\n"
    result = bit("classify", "-", "-m", ckpt, cwd=tmp_path, input=lines)
    assert_one_error_line(result, 2, "stdin")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_a_config_too_large_is_a_model_error(ckpt, photos, tmp_path, name):
    model = tmp_path / "model"
    shutil.copytree(ckpt, model)
    (model / name).unlink()
    sparse_file(model / name, HUGE)
    result = bit("classify", photos / "img00.png", "-m", model, cwd=tmp_path)
    assert_one_error_line(result, 3, name)


@pytest.mark.slow
def test_a_journal_too_large_is_refused_or_repaired_never_read_whole(ckpt, photos, tmp_path, monkeypatch):
    from test_reliability_outputs import _interrupted_run

    _interrupted_run(ckpt, photos, tmp_path / "o.npy", monkeypatch)
    journal = tmp_path / "o.npy.partial" / "journal.jsonl"
    with open(journal, "r+b") as fh:
        fh.truncate(HUGE)  # the committed lines, then 8 GiB of NUL bytes
    result = bit("embed", photos, "-o", "o.npy", "-m", ckpt, "--batch-size", "1", "--resume", cwd=tmp_path)
    if result.returncode == 2:
        assert_one_error_line(result, 2, "journal", "--overwrite")
    else:
        assert result.returncode == 0, error_lines(result)
        assert np.load(tmp_path / "o.npy").shape == (2, 32)


@pytest.mark.slow
def test_an_npz_that_claims_more_than_it_holds_is_a_model_error(photos, tmp_path):
    """numpy allocates a `.npy` member's declared shape before reading it: 40 GB for 100 bytes."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**10,)})
    with zipfile.ZipFile(tmp_path / "BiT-M-R50x1.npz", "w") as archive:
        archive.writestr("resnet/root_block/standardized_conv2d/kernel.npy", header.getvalue() + b"\0" * 64)
    result = bit("classify", photos / "img00.png", "-m", tmp_path / "BiT-M-R50x1.npz", cwd=tmp_path)
    assert_one_error_line(result, 3, "BiT-M-R50x1.npz")
