"""The one settings record: a setting not given to `--update` is the output's own, one given that
differs is refused with one line; a local model is identified by its content."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from checkpoints import save_reference_checkpoint
from clihelpers import TINY, assert_clean_failure, make_checkpoint, make_images, run, tiny_preprocessor


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BIT_MODEL", raising=False)


def embed(*args, out="photos.npy"):
    return run(["embed", "photos", "-o", out, "--batch-size", "2", *map(str, args)])


def rows_by_path(name: str = "photos") -> dict[str, bytes]:
    arr = np.load(f"{name}.npy")
    return {p: row.tobytes() for p, row in zip(open(f"{name}.paths.txt").read().splitlines(), arr)}


def retrain_in_place(directory: Path) -> None:
    """Other weights under the same folder and file names (as `bit train -o DIR --overwrite`)."""
    shutil.rmtree(directory)
    save_reference_checkpoint(directory, seed=7, preprocessor=tiny_preprocessor(32), **TINY)


def test_update_takes_normalize_dtype_and_hash_from_the_output(ckpt):
    """The README's pair: `--normalize` (and --dtype, --hash) need not be repeated for --update."""
    make_images(Path("photos"), 3)
    assert embed("-m", ckpt, "--normalize", "--dtype", "float16", "--hash").exit_code == 0
    before = open("photos.npy", "rb").read()
    result = embed("--update")
    assert result.exit_code == 0, result.stderr
    assert "up to date" in result.stderr
    assert open("photos.npy", "rb").read() == before
    make_images(Path("photos/more"), 1)
    result = embed("--update")
    assert result.exit_code == 0, result.stderr
    header = json.load(open("photos.meta.json"))
    assert (header["normalize"], header["dtype"], header["content_hash"]) == (True, "float16", "sha256")
    assert all("sha256" in json.loads(line) for line in open("photos.files.jsonl"))
    np.testing.assert_allclose(np.linalg.norm(np.load("photos.npy").astype(np.float32), axis=1), 1, atol=2e-3)


def test_update_refuses_a_setting_given_that_differs(ckpt):
    make_images(Path("photos"), 2)
    assert embed("-m", ckpt, "--normalize").exit_code == 0
    result = embed("--update", "--dtype", "float16")
    assert_clean_failure(result, 2)
    assert "dtype 'float32' then, 'float16' now" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_hash_is_remembered_by_a_plain_update(ckpt):
    """Made with --hash: a touched file is kept and a moved one is "moved", not new + removed."""
    make_images(Path("photos"), 4)
    assert embed("-m", ckpt, "--hash").exit_code == 0
    before = rows_by_path()
    os.utime("photos/img00.png", ns=(10**18, 10**18))
    os.rename("photos/img01.png", "photos/renamed.png")
    result = embed("--update")
    assert result.exit_code == 0, result.stderr
    assert "+0 new, 0 changed, 1 moved, 0 removed, 3 kept" in result.stderr
    after = rows_by_path()
    assert after["photos/renamed.png"] == before["photos/img01.png"]
    assert all(len(json.loads(line)["sha256"]) == 64 for line in open("photos.files.jsonl"))


def test_hash_added_later_never_attaches_a_hash_it_did_not_compute(ckpt):
    """Made without --hash; a file's content swapped with size and mtime kept. `--update --hash`
    must not record the new content's sha256 against the old row: that row is embedded again."""
    make_images(Path("photos"), 3)
    assert embed("-m", ckpt).exit_code == 0
    swapped = Path("photos/img02.png")
    info = swapped.stat()
    data = bytearray(Path("photos/img00.png").read_bytes())
    data = (data + bytes(info.st_size))[: info.st_size]  # another image, the same size
    swapped.write_bytes(bytes(data))
    os.utime(swapped, ns=(info.st_atime_ns, info.st_mtime_ns))
    result = embed("--update", "--hash")
    assert result.exit_code == 0, result.stderr
    assert run(["embed", "photos", "-o", "fresh.npy", "-m", ckpt, "--batch-size", "2"]).exit_code == 0
    np.testing.assert_allclose(np.load("photos.npy"), np.load("fresh.npy"), rtol=1e-5, atol=1e-5)
    assert json.load(open("photos.meta.json"))["content_hash"] == "sha256"
    assert "up to date" in embed("--update").stderr


def test_damaged_or_missing_header_without_model_says_so(ckpt):
    make_images(Path("photos"), 2)
    assert embed("-m", ckpt).exit_code == 0
    Path("photos.meta.json").write_text("{not json")
    result = embed("--update")
    assert_clean_failure(result, 2)
    assert "photos.meta.json" in result.stderr and "not in the cache" not in result.stderr
    assert "without --update" in result.stderr
    os.remove("photos.meta.json")
    result = embed("--update")
    assert_clean_failure(result, 2)
    assert "no metadata" in result.stderr and "google/bit-50" not in result.stderr


def test_a_checkpoint_retrained_in_place_is_refused_not_mixed(tmp_path):
    model = make_checkpoint(tmp_path / "ftm")
    make_images(Path("photos"), 3)
    assert embed("-m", model).exit_code == 0
    before = open("photos.npy", "rb").read()
    retrain_in_place(model)
    make_images(Path("photos/more"), 1)
    for args in (["--update"], ["--update", "-m", model]):
        result = embed(*args)
        assert_clean_failure(result, 2)
        assert "other weights" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert open("photos.npy", "rb").read() == before
    search = run(["search", "photos.npy", "photos/more/img00.png", "-m", model])
    assert_clean_failure(search, 2)
    assert "other weights" in search.stderr


def test_weights_rewritten_in_place_with_their_mtime_restored_are_still_other_weights(tmp_path):
    """Same file (inode), same size, mtime put back (`cp -p` over it, a restore): the cached digest
    must not be taken for the new content."""
    model = make_checkpoint(tmp_path / "ftm")
    other = tmp_path / "other"
    save_reference_checkpoint(other, seed=7, preprocessor=tiny_preprocessor(32), **TINY)
    make_images(Path("photos"), 3)
    assert embed("-m", model).exit_code == 0
    weights = model / "model.safetensors"
    info = weights.stat()
    new = (other / "model.safetensors").read_bytes()
    assert len(new) == info.st_size and new != weights.read_bytes()
    with open(weights, "r+b") as fh:
        fh.write(new)
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert weights.stat().st_ino == info.st_ino
    make_images(Path("photos/more"), 1)
    result = embed("--update")
    assert_clean_failure(result, 2)
    assert "other weights" in result.stderr


def test_resume_after_the_weights_changed_is_refused(tmp_path):
    """An interrupted run continued with other weights under the same names would mix models."""
    model = interrupted_embed(tmp_path / "ftm")
    retrain_in_place(model)
    result = embed("-m", model, "--resume")
    assert_clean_failure(result, 2)
    assert "weights_sha256" in result.stderr and not Path("photos.npy").exists()


def test_a_failed_write_during_update_advises_update_resume(tmp_path):
    """Disk full during --update: the advice must be the command that continues it."""
    import errno

    from bitcli.errors import BitError
    from bitcli.store import EmbedPaths
    from bitcli.store.paths import write_errors

    paths = EmbedPaths.for_output(tmp_path / "photos.npy")
    paths.partial.mkdir()
    with pytest.raises(BitError, match=r"No space left on device\); fix that and rerun with --update --resume$"):
        with write_errors(paths, again="--update --resume"):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_bit_info_describes_a_collection(ckpt):
    make_images(Path("photos"), 3)
    assert embed("-m", ckpt, "--normalize", "--hash").exit_code == 0
    result = run(["info", "photos.npy", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["rows"], report["feature_dim"], report["dtype"], report["normalize"]) == (3, 32, "float32", True)
    assert report["model"]["reference"] == str(ckpt.resolve()) and len(report["model"]["weights_sha256"]) == 64
    assert report["identity"] == "size, mtime and sha256" and report["made_by"]["bitcli_version"]
    table = run(["info", "photos"])  # .npy added, as for search
    assert table.exit_code == 0 and "3 x 32 float32, L2-normalized" in table.stdout and str(ckpt.resolve()) in table.stdout
    missing = run(["info", "nothing.npy"])
    assert_clean_failure(missing, 2)


@pytest.mark.slow
def test_resume_takes_the_interrupted_runs_settings(ckpt):
    """`--resume` without repeating -m, --normalize, --dtype, --hash continues the same run."""
    from test_cli_interrupt import bit, wait_for_commits

    make_images(Path("photos"), 10)
    proc = bit("embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "1", "--normalize", "--dtype", "float16", "--hash")
    wait_for_commits(Path("photos.npy.partial/journal.jsonl"), proc, 2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    from relhelpers import bit as run_bit, text

    # The real command, as the interrupted run was: the convolution path it picks is part of the
    # run's settings, and an in-process run (other thread settings) may pick another.
    result = run_bit("embed", "photos", "-o", "photos.npy", "--resume", "--batch-size", "1")
    assert result.returncode == 0, text(result.stderr)
    header = json.load(open("photos.meta.json"))
    assert (header["normalize"], header["dtype"], header["content_hash"], len(np.load("photos.npy"))) == (True, "float16", "sha256", 10)
    again = run_bit("embed", "photos", "-o", "photos.npy", "--resume", "--batch-size", "1")  # finished: its header's settings
    assert again.returncode == 0 and "already complete" in text(again.stderr), text(again.stderr)


def test_combine_refuses_shards_of_a_checkpoint_retrained_between_jobs(tmp_path):
    model = make_checkpoint(tmp_path / "ftm")
    make_images(Path("photos"), 4)
    shard = ["embed", "photos", "-o", "out.npy", "-m", model, "--batch-size", "2", "--shard-size", "2"]
    assert run([*shard, "--shard", "0/2"]).exit_code == 0
    retrain_in_place(model)
    assert run([*shard, "--shard", "1/2"]).exit_code == 0
    result = run(["combine", "-o", "out.npy"])
    assert_clean_failure(result, 2)
    assert "weights_sha256" in result.stderr and not Path("out.npy").exists()


def test_a_checkpoint_moved_elsewhere_is_the_same_model(tmp_path):
    """A local model is its content, not its folder's name: after `mv ftm ftm-v1` the collection
    is updated (and searched) with the moved copy, its unchanged rows kept byte for byte."""
    model = make_checkpoint(tmp_path / "ftm")
    make_images(Path("photos"), 3)
    assert embed("-m", model).exit_code == 0
    before = rows_by_path()
    moved = tmp_path / "ftm-v1"
    shutil.move(str(model), str(moved))
    make_images(Path("photos/more"), 1)
    result = embed("--update", "-m", moved)
    assert result.exit_code == 0, result.stderr
    assert "+1 new, 0 changed, 0 removed, 3 kept" in result.stderr
    after = rows_by_path()
    assert all(after[path] == row for path, row in before.items())
    assert json.load(open("photos.meta.json"))["model"]["reference"] == str(moved.resolve())
    assert "up to date" in embed("--update").stderr  # the header now names the folder that exists
    shutil.move(str(moved), str(model))
    search = run(["search", "photos.npy", "photos/more/img00.png", "-m", model])
    assert search.exit_code == 0, search.stderr
    assert "other settings" not in search.stderr


def test_shards_embedded_with_copies_of_one_model_at_other_paths_combine(tmp_path):
    """Job-array nodes often hold the model at node-local paths: the same content is one model."""
    model = make_checkpoint(tmp_path / "ftm")
    copy = tmp_path / "node2" / "ftm"
    shutil.copytree(model, copy)
    make_images(Path("photos"), 4)
    shard = ["embed", "photos", "-o", "out.npy", "--batch-size", "2", "--shard-size", "2"]
    assert run([*shard, "-m", model, "--shard", "0/2"]).exit_code == 0
    assert run([*shard, "-m", copy, "--shard", "1/2"]).exit_code == 0
    result = run(["combine", "-o", "out.npy"])
    assert result.exit_code == 0, result.stderr
    assert len(np.load("out.npy")) == 4


@pytest.mark.slow  # kills or resumes a run of the real command
def test_resume_with_the_checkpoint_moved_elsewhere_continues(tmp_path):
    """The interrupted run's model, moved (same content): `--resume -m NEW` continues it."""
    model = interrupted_embed(tmp_path / "ftm")
    moved = tmp_path / "ftm-v1"
    shutil.move(str(model), str(moved))
    from relhelpers import bit as run_bit, text

    result = run_bit("embed", "photos", "-o", "photos.npy", "-m", str(moved), "--resume", "--batch-size", "1")
    assert result.returncode == 0, text(result.stderr)
    assert len(np.load("photos.npy")) == 12
    assert json.load(open("photos.meta.json"))["model"]["reference"] == str(moved.resolve())


@pytest.mark.slow  # kills or resumes a run of the real command
def test_resume_takes_the_batch_size_of_the_run_it_continues(ckpt):
    """Batches are a run's unit of work: an interrupted `--update --batch-size 1` continues with
    the advised `--update --resume` (no --batch-size), and `--resume` of a finished output made
    with another batch size says it is complete instead of refusing."""
    from test_cli_interrupt import bit, wait_for_commits
    from relhelpers import bit as run_bit, text

    make_images(Path("photos"), 3)
    assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "3"]).exit_code == 0
    finished = run_bit("embed", "photos", "-o", "photos.npy", "--resume")
    assert finished.returncode == 0 and "already complete" in text(finished.stderr), text(finished.stderr)
    make_images(Path("photos/more"), 12)
    proc = bit("embed", "photos", "-o", "photos.npy", "--update", "--batch-size", "1")
    wait_for_commits(Path("photos.npy.partial/journal.jsonl"), proc, 2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    result = run_bit("embed", "photos", "-o", "photos.npy", "--update", "--resume")
    assert result.returncode == 0, text(result.stderr)
    assert len(np.load("photos.npy")) == 15 and not Path("photos.npy.partial").exists()


def interrupted_embed(model: Path) -> Path:
    """A checkpoint at `model` and `bit embed photos/` (12 images) with it, Ctrl-C after two commits."""
    from test_cli_interrupt import bit, wait_for_commits

    make_checkpoint(model)
    make_images(Path("photos"), 12)
    proc = bit("embed", "photos", "-o", "photos.npy", "-m", model, "--batch-size", "1")
    wait_for_commits(Path("photos.npy.partial/journal.jsonl"), proc, 2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    return model
