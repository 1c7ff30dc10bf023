"""Shared by the distributed tests: a folder with failures among good images, and the local run.

The batch size is 2 and the thread count 2: on this kind of CPU a row computed alone (a batch of
one) differs in its last bits from the same row computed beside another image at two threads,
while a batch of two gives the same bytes whichever image is the other (tests/test_engine.py,
and measured for the tiny model). So a shard boundary or a failure that changed which images
share a batch changes the bytes, and byte equality with the local run shows the batches agree.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from clihelpers import make_images, run

BATCH = 2
THREADS = 2
SHARD = 4  # inputs per shard: two batches
COUNT = 13  # good images; with the 3 broken files and "missing.png": 17 inputs, 5 shards
BAD = ("bad1.png", "img03b.jpg", "img10x.png")  # "not an image": they fail while decoding
SUFFIXES = (".npy", ".paths.txt", ".errors.txt")


def make_photos(directory: Path) -> Path:
    make_images(directory, COUNT, bad=BAD)
    return directory


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The folder (import this fixture into a test module to use it there)."""
    return make_photos(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="module")
def local(ckpt, photos, tmp_path_factory):
    """The local run's OUT.npy (its manifest and error list beside it)."""
    return local_run(ckpt, photos, tmp_path_factory.mktemp("local") / "local.npy")


def job(ckpt: Path, **changes):
    """The distributed engine's description of the local run (`bitcli.distributed.EmbedJob`)."""
    from bitcli.distributed import EmbedJob
    from bitcli.pipeline import RunOptions

    return EmbedJob(str(ckpt), RunOptions(device="cpu", batch_size=BATCH), threads=THREADS, **changes)


def inputs(photos: Path) -> list[str]:
    """A folder, then a path that fails at expansion (not found)."""
    return [str(photos), str(photos.parent / "missing.png")]


def local_run(ckpt: Path, photos: Path, out: Path) -> Path:
    """The reference: `bit embed` with the local engine, the same batch size and threads."""
    result = run(["embed", *inputs(photos), "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS])
    assert result.exit_code == 1, result.stderr  # the broken files and missing.png
    return out


def output_files(out: Path) -> dict[str, Path]:
    """OUT.npy, OUT.paths.txt, OUT.errors.txt."""
    stem = out.with_suffix("")
    return {suffix: out if suffix == ".npy" else stem.with_name(stem.name + suffix) for suffix in SUFFIXES}


def assert_same_files(got: Path, want: Path) -> None:
    """The three files of two runs are byte-identical, and both have the row norms of their array."""
    from relhelpers import norms_state

    for suffix, path in output_files(got).items():
        assert path.read_bytes() == output_files(want)[suffix].read_bytes(), suffix
    mine, theirs = (norms_state(out.with_suffix(".norms.npz")) for out in (got, want))
    assert mine is not None and mine == theirs and mine[1], "row norms"
    assert_same_header(got, want)


def assert_same_header(got: Path, want: Path) -> None:
    """OUT.meta.json of two runs byte-identical (key order too), but for what names the output
    itself and the directory each ran in."""
    headers = [out.with_suffix(".meta.json") for out in (got, want)]
    mine, theirs = (json.loads(header.read_bytes()) for header in headers)
    data = headers[0].read_bytes().replace(f'"{got.stem}.'.encode(), f'"{want.stem}.'.encode())
    for key in ("cwd", "cwd_from_header"):
        data = data.replace(json.dumps(mine[key]).encode(), json.dumps(theirs[key]).encode())
    assert data == headers[1].read_bytes(), ".meta.json"


def nul_listing(photos: Path, directory: Path) -> bytes:
    """NUL-separated paths for stdin (`find -print0`): the folder, a name with a space and a tab,
    one with a line break (a failed input, as always), and a missing path."""
    directory.mkdir(parents=True, exist_ok=True)
    odd = [directory / "a b\tc.png", directory / "line\nbreak.png"]
    for source, target in zip(("img00.png", "img01.png"), odd):
        shutil.copy(photos / source, target)
    entries = [str(photos), *map(str, odd), str(photos.parent / "missing.png")]
    return b"".join(os.fsencode(entry) + b"\0" for entry in entries)


def local_nul_run(ckpt: Path, listing: bytes, out: Path) -> Path:
    """The reference for `-0`: a local `bit embed -0 -` of `listing`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run(["embed", "-0", "-", "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS], input=listing)
    assert result.exit_code == 1, result.stderr  # the broken files, the line break and missing.png
    return out


def shard_files(directory: Path, index: int) -> list[Path]:
    """The files of shard `index`: a collection, `shard-00000i.npy` and the rest of its set."""
    name = f"shard-{index:06d}"
    return [p for p in Path(directory).iterdir() if p.is_file() and p.name.startswith((f"{name}.", f".{name}."))]


def remove_shard(directory: Path, index: int) -> None:
    for path in shard_files(directory, index):
        path.unlink()


def copy_shard(directory: Path, index: int, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in shard_files(directory, index):
        shutil.copy2(path, target / path.name)


def write_shard(directory: Path, index: int, split, *, fingerprint: dict, dim: int, dtype: str, commits, identities=None):
    """Shard `index` of `split` from its batches' commits (row paths, rows, failures): rows made
    without a model, through the store's writer, with the split and index a shard job records.
    `identities(path)`: each row's file identity."""
    from bitcli.distributed.shards import read_shard, shard_paths
    from bitcli.store import EmbedWriter

    extra = {"split": split.to_json(), "shard": index}
    with EmbedWriter(shard_paths(directory, index), dim=dim, dtype=dtype, fingerprint=fingerprint, resume=True, extra=extra) as writer:
        for paths, rows, failures in commits:
            writer.commit(paths, rows, failures, [identities(p) for p in paths] if identities else None)
        writer.finish()
    return read_shard(shard_paths(directory, index))
