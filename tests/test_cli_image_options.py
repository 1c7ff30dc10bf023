"""`--max-pixels` and `--fast-jpeg` on `bit classify` and `bit embed`, through the real command."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clihelpers import assert_clean_failure, jsonl, run
from images import picture, rgb


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    """small.png (40 x 36 = 1,440 px), big.png (200 x 150 = 30,000 px), photo.jpg (1201 x 901)."""
    directory = tmp_path_factory.mktemp("pics")
    rgb(40, 36, seed=1).save(directory / "small.png")
    rgb(200, 150, seed=2).save(directory / "big.png")
    Image.fromarray(picture(1201, 901, seed=5)).save(directory / "photo.jpg", quality=95)
    return directory


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def header_only_png(path, width: int, height: int):
    """A PNG whose header claims width x height with almost no pixel data (a cheap 'bomb')."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))
    return path


def classify(ckpt, *args):
    return run(["classify", *args, "-m", ckpt, "--format", "jsonl", "-k", "3"])


@pytest.mark.slow
def test_classify_skips_an_image_over_max_pixels_and_keeps_the_rest(ckpt, pics):
    small, big = str(pics / "small.png"), str(pics / "big.png")
    result = classify(ckpt, small, big, "--max-pixels", "10000")
    assert_clean_failure(result, 1)
    assert result.stderr.splitlines() == [
        f"error: {big}: image is 30,000 pixels, over the limit of 10,000 (use --max-pixels)"
    ]
    records = {r["path"]: r for r in jsonl(result.stdout)}
    assert records[big]["error"].startswith("image is 30,000 pixels")
    alone = jsonl(classify(ckpt, small).stdout)[0]  # a batch of one, as small.png is above
    assert records[small] == alone  # the limit changes nothing for an image under it
    assert all(r.get("error") is None for r in jsonl(classify(ckpt, small, big).stdout))


def test_default_limit_is_100_megapixels_and_zero_means_none(ckpt, tmp_path):
    bomb = str(header_only_png(tmp_path / "bomb.png", 12_000, 10_000))
    default = classify(ckpt, bomb)
    assert_clean_failure(default, 1)
    assert "image is 120.0 megapixels, over the limit of 100 (use --max-pixels)" in default.stderr
    unlimited = classify(ckpt, bomb, "--max-pixels", "0")
    assert_clean_failure(unlimited, 1)
    assert "over the limit" not in unlimited.stderr
    assert "truncated or corrupt image" in unlimited.stderr  # got past the check to the (missing) pixels


def test_negative_max_pixels_is_a_usage_error(ckpt, pics):
    result = classify(ckpt, pics / "small.png", "--max-pixels", "-1")
    assert result.exit_code == 2


def test_embed_records_an_image_over_max_pixels_as_a_failure(ckpt, pics, tmp_path):
    small, big = str(pics / "small.png"), str(pics / "big.png")
    result = run(["embed", small, big, "-m", ckpt, "-o", tmp_path / "o.npy", "--max-pixels", "10000"])
    assert_clean_failure(result, 1)
    assert f"error: {big}: image is 30,000 pixels, over the limit of 10,000" in result.stderr
    assert np.load(tmp_path / "o.npy").shape == (1, 32)
    assert (tmp_path / "o.paths.txt").read_text().splitlines() == [small]
    assert (tmp_path / "o.errors.txt").read_text().startswith(f"{big}\timage is 30,000 pixels")


def test_classify_fast_jpeg_is_close_to_exact(ckpt, pics):
    photo = str(pics / "photo.jpg")
    exact = jsonl(classify(ckpt, photo).stdout)[0]["predictions"]
    fast_result = classify(ckpt, photo, "--fast-jpeg")
    assert fast_result.exit_code == 0, fast_result.stderr
    fast = jsonl(fast_result.stdout)[0]["predictions"]
    assert [p["index"] for p in fast] == [p["index"] for p in exact]
    assert all(abs(f["score"] - e["score"]) < 0.02 for f, e in zip(fast, exact))
    assert abs(sum(p["score"] for p in fast) - sum(p["score"] for p in exact)) < 0.02


def test_embed_fast_jpeg_changes_the_vectors_a_little(ckpt, pics, tmp_path):
    photo = str(pics / "photo.jpg")
    for name, extra in (("exact", []), ("fast", ["--fast-jpeg"])):
        result = run(["embed", photo, "-m", ckpt, "-o", tmp_path / f"{name}.npy", *extra])
        assert result.exit_code == 0, result.stderr
    exact, fast = np.load(tmp_path / "exact.npy")[0], np.load(tmp_path / "fast.npy")[0]
    assert not np.array_equal(exact, fast)  # the option reached the decoder
    cosine = float(exact @ fast / np.linalg.norm(exact) / np.linalg.norm(fast))
    assert cosine > 0.99


def test_embed_fingerprint_covers_both_options(ckpt):
    from bitcli.pipeline import Embedder

    base = Embedder(str(ckpt), device="cpu").fingerprint()
    assert Embedder(str(ckpt), device="cpu", fast_jpeg=True).fingerprint()["fast_jpeg"] != base["fast_jpeg"]
    assert Embedder(str(ckpt), device="cpu", max_pixels=10).fingerprint()["max_pixels"] != base["max_pixels"]


def test_resume_with_another_max_pixels_is_refused(ckpt, pics, tmp_path, monkeypatch):
    from bitcli.pipeline import Embedder

    def interrupted(self, items):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    inputs = [str(pics / "small.png"), str(pics / "big.png")]
    monkeypatch.setattr(Embedder, "embed_groups", interrupted)
    assert run(["embed", *inputs, "-m", ckpt, "-o", tmp_path / "o.npy", "--max-pixels", "10000"]).exit_code == 130
    monkeypatch.undo()
    # Not given: the interrupted run's limit is taken (the big image fails again, as it did).
    taken = run(["embed", *inputs, "-m", ckpt, "-o", tmp_path / "o.npy", "--resume"])
    assert taken.exit_code == 1 and "over the limit of 10,000" in taken.stderr
    monkeypatch.setattr(Embedder, "embed_groups", interrupted)
    assert run(["embed", *inputs, "-m", ckpt, "-o", tmp_path / "p.npy", "--max-pixels", "10000"]).exit_code == 130
    monkeypatch.undo()
    result = run(["embed", *inputs, "-m", ckpt, "-o", tmp_path / "p.npy", "--resume", "--max-pixels", "20000"])
    assert_clean_failure(result, 2)  # given and different: refused
    assert "max_pixels" in result.stderr


def test_default_limit_is_the_decoders():
    from bitcli import decode, pipeline
    from bitcli.cli import common as cli

    assert cli.DEFAULT_MAX_PIXELS == pipeline.DEFAULT_MAX_PIXELS == decode.DEFAULT_MAX_PIXELS


def test_library_refuses_a_zero_limit_instead_of_rejecting_every_image(ckpt):
    from bitcli.errors import UsageError
    from bitcli.pipeline import Classifier

    with pytest.raises(UsageError, match="None for no limit"):
        Classifier(str(ckpt), device="cpu", max_pixels=0)
