"""`bit embed` writes the metadata sidecar; `bit embed --update` equals a fresh embed, keeping rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from clihelpers import assert_clean_failure, make_images, run
from collectionfiles import make_duplicates
from test_cli_interrupt import bit, wait_for_commits


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def embed(ckpt, *args):
    return run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "2", *map(str, args)])


def other_weights(directory: Path) -> Path:
    """A checkpoint of the same shape with other weights (a copy of `ckpt` is the same model)."""
    from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor

    save_reference_checkpoint(directory, seed=7, preprocessor=tiny_preprocessor(32), **TINY)
    return directory


def rows_by_path(name: str) -> dict[str, bytes]:
    """path -> the row's bytes (paths are unique here)."""
    arr = np.load(f"{name}.npy")
    return {p: row.tobytes() for p, row in zip(open(f"{name}.paths.txt").read().splitlines(), arr)}


@pytest.mark.slow
def test_embed_writes_the_sidecar_readable_with_json(ckpt):
    make_duplicates(Path("photos"))
    result = embed(ckpt, "--hash")
    assert result.exit_code == 0, result.stderr
    header = json.load(open("photos.meta.json"))
    manifest = open("photos.paths.txt").read().splitlines()
    assert header["format"] == "bitcli.embedding" and header["rows"] == len(manifest) == 12
    assert (header["feature_dim"], header["dtype"], header["normalize"]) == (32, "float32", False)
    assert header["model"]["reference"] == str(ckpt.resolve()) and header["preprocessing"]["input_size"] == [32, 32]
    assert (header["array"], header["manifest"], header["files"]) == ("photos.npy", "photos.paths.txt", "photos.files.jsonl")
    assert header["content_hash"] == "sha256" and header["cwd"] == os.getcwd()
    rows = [json.loads(line) for line in open("photos.files.jsonl")]
    assert [r["path"] for r in rows] == manifest
    for row in rows:
        info = os.stat(row["path"])
        assert (row["size"], row["mtime_ns"]) == (info.st_size, info.st_mtime_ns) and len(row["sha256"]) == 64


def change_the_folder() -> None:
    """Add two files, change one (same name, new content), delete one, move one."""
    shutil.copy("photos/rocket.jpg", "photos/zz_new.jpg")
    make_images(Path("photos/sub"), 1)
    shutil.copy("photos/camera.png", "photos/chelsea_q10.jpg")  # same name, other content
    os.utime("photos/chelsea_q10.jpg", ns=(10**18, 10**18))
    os.remove("photos/rocket_crop.png")
    os.rename("photos/coffee_half.png", "photos/moved_coffee.png")


@pytest.mark.slow
@pytest.mark.parametrize("hashed", [False, True], ids=["size+mtime", "--hash"])
def test_update_equals_a_fresh_embed_and_keeps_unchanged_rows(ckpt, hashed):
    make_duplicates(Path("photos"))
    flags = ["--hash"] if hashed else []
    assert embed(ckpt, *flags).exit_code == 0
    before = rows_by_path("photos")
    change_the_folder()
    result = embed(ckpt, "--update", *flags)
    assert result.exit_code == 0, result.stderr
    moved = " 1 moved," if hashed else ""
    new = 2 if hashed else 3
    removed = 1 if hashed else 2
    assert f"photos.npy: +{new} new, 1 changed,{moved} {removed} removed, 9 kept; embedded {new + 1} in " in result.stderr
    assert "embedded 12 images" not in result.stderr  # 9 rows were copied, not embedded
    fresh = run(["embed", "photos", "-o", "fresh.npy", "-m", ckpt, "--batch-size", "2", *flags])
    assert fresh.exit_code == 0
    assert open("photos.paths.txt").read() == open("fresh.paths.txt").read()  # row for row
    np.testing.assert_allclose(np.load("photos.npy"), np.load("fresh.npy"), rtol=1e-5, atol=1e-5)
    after = rows_by_path("photos")
    unchanged = [p for p in before if p in after and p != "photos/chelsea_q10.jpg"]
    assert len(unchanged) == 9 and all(after[p] == before[p] for p in unchanged)  # byte-identical
    if hashed:  # the moved file's row is its old row
        assert after["photos/moved_coffee.png"] == before["photos/coffee_half.png"]
    sidecar = [json.loads(line) for line in open("photos.files.jsonl")]
    assert [r["path"] for r in sidecar] == open("photos.paths.txt").read().splitlines()
    assert all(r["size"] == os.stat(r["path"]).st_size for r in sidecar)
    assert json.load(open("photos.meta.json"))["rows"] == len(sidecar)


@pytest.mark.slow
def test_update_with_nothing_to_do_leaves_the_files_alone(ckpt):
    make_images(Path("photos"), 3)
    assert embed(ckpt).exit_code == 0
    stamp = os.stat("photos.npy").st_mtime_ns
    result = embed(ckpt, "--update")
    assert result.exit_code == 0 and result.stderr.strip() == "photos.npy: up to date"  # no counts, no "embedded 3"
    assert os.stat("photos.npy").st_mtime_ns == stamp


def test_update_creates_a_missing_output(ckpt):
    make_images(Path("photos"), 3)
    result = embed(ckpt, "--update")
    assert result.exit_code == 0 and "+3 new, 0 changed, 0 removed, 0 kept" in result.stderr
    assert len(open("photos.paths.txt").read().splitlines()) == 3


@pytest.mark.slow
def test_update_is_refused_with_another_model_or_dtype(ckpt, tmp_path):
    make_images(tmp_path / "photos", 3)
    assert embed(ckpt).exit_code == 0
    other = other_weights(tmp_path / "other")
    for args in (["-m", other], ["--dtype", "float16"], ["--normalize"]):
        result = run(["embed", "photos", "-o", "photos.npy", "--update", "-m", ckpt, *map(str, args)])
        assert_clean_failure(result, 2)
        assert "was made with other settings" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_update_without_model_uses_the_one_that_made_the_output(ckpt, tmp_path, monkeypatch):
    """No --model: the header's model, not the default google/bit-50 (absent here: exit 3)."""
    monkeypatch.delenv("BIT_MODEL", raising=False)
    make_images(tmp_path / "photos", 2)
    assert embed(ckpt).exit_code == 0
    make_images(tmp_path / "photos" / "more", 1)
    result = run(["embed", "photos", "-o", "photos.npy", "--update", "--batch-size", "2"])
    assert result.exit_code == 0, result.stderr
    assert "+1 new" in result.stderr
    assert len(np.load("photos.npy")) == 3
    plain = run(["embed", "photos", "-o", "other.npy"])  # without --update the default stays
    assert_clean_failure(plain, 3)
    assert "google/bit-50" in plain.stderr


@pytest.mark.slow
def test_update_of_an_output_without_metadata_is_refused(ckpt, tmp_path):
    make_images(tmp_path / "photos", 2)
    assert embed(ckpt).exit_code == 0
    os.remove("photos.meta.json")
    result = embed(ckpt, "--update")
    assert_clean_failure(result, 2)
    assert "no metadata" in result.stderr


@pytest.mark.slow
def test_a_refused_update_advises_overwrite_without_update(ckpt, tmp_path):
    """`--update --overwrite` is refused the same way, so the advice must say to drop --update."""
    make_images(tmp_path / "photos", 2)
    assert embed(ckpt).exit_code == 0
    other = other_weights(tmp_path / "other")
    refused = run(["embed", "photos", "-o", "photos.npy", "--update", "--overwrite", "-m", other])
    assert_clean_failure(refused, 2)
    assert "without --update" in refused.stderr
    os.remove("photos.meta.json")
    refused = embed(ckpt, "--update", "--overwrite")
    assert_clean_failure(refused, 2)
    assert "without --update" in refused.stderr
    assert embed(ckpt, "--overwrite").exit_code == 0  # the advice works


def test_update_refuses_stdout_and_resume_with_overwrite(ckpt, tmp_path):
    make_images(tmp_path / "photos", 2)
    assert_clean_failure(run(["embed", "photos", "-o", "-", "--manifest", "m.txt", "--update", "-m", ckpt]), 2)
    assert_clean_failure(embed(ckpt, "--update", "--resume", "--overwrite"), 2)
    assert embed(ckpt).exit_code == 0
    stamp = os.stat("photos.npy").st_mtime_ns
    again = embed(ckpt, "--update", "--overwrite")  # no interrupted update to discard: a plain update
    assert again.exit_code == 0 and "up to date" in again.stderr and os.stat("photos.npy").st_mtime_ns == stamp


@pytest.mark.slow
def test_an_interrupted_update_resumes_to_the_uninterrupted_bytes(ckpt, tmp_path):
    make_images(Path("photos"), 24)
    later = Path("later")
    later.mkdir()
    for name in sorted(os.listdir("photos"))[::2]:  # the first run sees every other image
        os.rename(f"photos/{name}", later / name)
    assert embed(ckpt).exit_code == 0
    for name in os.listdir(later):
        os.rename(later / name, f"photos/{name}")
    shutil.copytree(".", tmp_path.parent / (tmp_path.name + "-twin"), dirs_exist_ok=True)
    proc = bit("embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "1", "--update")
    wait_for_commits(Path("photos.npy.partial/journal.jsonl"), proc, 3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"--update --resume" in stderr, stderr
    # Real processes again: the convolution path follows the thread count, which earlier tests
    # may have changed in this one.
    resumed = bit("embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "1", "--update", "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    os.chdir(tmp_path.parent / (tmp_path.name + "-twin"))
    whole = bit("embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "1", "--update")
    assert whole.wait(timeout=120) == 0, whole.stderr.read()
    for suffix in (".npy", ".paths.txt", ".files.jsonl"):
        assert (tmp_path / f"photos{suffix}").read_bytes() == Path(f"photos{suffix}").read_bytes(), suffix


def test_resumed_embed_keeps_the_identities_recorded_before_the_interruption(tmp_path):
    from bitcli.store import EmbedPaths, EmbedWriter
    from bitcli.store.metadata import FileIdentity, SidecarPaths, read_file_rows, read_metadata

    paths = EmbedPaths.for_output(tmp_path / "out.npy")
    fp = {"model": "m", "commit": None, "weights": [], "preprocessing": {}, "dtype": "float32"}
    first = EmbedWriter(paths, dim=2, fingerprint=fp, inputs=["a", "b", "c"])
    first.commit(["a", "b"], np.ones((2, 2)), identities=[FileIdentity(1, 10), None])
    first.close()  # interrupted
    again = EmbedWriter(paths, dim=2, fingerprint=fp, inputs=["a", "b", "c"], resume=True)
    again.commit(["c"], np.ones((1, 2)), identities=[FileIdentity(3, 30, "ab")])
    again.finish()
    meta_path = SidecarPaths.for_output(paths.out).meta
    assert read_file_rows(meta_path, read_metadata(meta_path)) == [("a", FileIdentity(1, 10)), ("b", None), ("c", FileIdentity(3, 30, "ab"))]


@pytest.mark.slow
def test_combined_shards_carry_the_sidecar_so_search_needs_no_model(ckpt):
    make_duplicates(Path("photos"))
    for i in range(2):
        job = run(["embed", "photos", "-o", "out.npy", "-m", ckpt, "--batch-size", "2", "--shard-size", "6", "--shard", f"{i}/2"])
        assert job.exit_code == 0, job.stderr
    assert run(["combine", "-o", "out.npy"]).exit_code == 0
    header = json.load(open("out.meta.json"))
    assert header["rows"] == 12 and header["model"]["reference"] == str(ckpt.resolve())
    rows = [json.loads(line) for line in open("out.files.jsonl")]
    assert all((r["size"], r["mtime_ns"]) == (os.stat(r["path"]).st_size, os.stat(r["path"]).st_mtime_ns) for r in rows)
    again = run(["embed", "photos", "-o", "out.npy", "-m", ckpt, "--update"])
    assert again.exit_code == 0 and again.stderr.strip() == "out.npy: up to date"  # nothing embedded again
    shutil.copy("photos/coffee_half.png", "query.png")
    found = run(["search", "out.npy", "query.png", "-k", "1", "-f", "jsonl"])  # embedded with the stored model
    assert found.exit_code == 0, found.stderr
    best = json.loads(found.stdout)["matches"][:2]
    assert [m["path"] for m in best] == ["photos/coffee_half.png"] and best[0]["score"] == 1.0  # a byte copy of it


def test_hashed_shards_combine_into_a_hashed_collection(ckpt):
    """--hash on --shard jobs: the combined collection records sha256 and a plain --update keeps it."""
    make_images(Path("photos"), 4)
    for i in range(2):
        job = run(["embed", "photos", "-o", "out.npy", "-m", ckpt, "--batch-size", "2", "--shard-size", "2", "--shard", f"{i}/2", "--hash"])
        assert job.exit_code == 0, job.stderr
    assert run(["combine", "-o", "out.npy"]).exit_code == 0
    assert json.load(open("out.meta.json"))["content_hash"] == "sha256"
    assert all(len(json.loads(line)["sha256"]) == 64 for line in open("out.files.jsonl"))
    os.rename("photos/img01.png", "photos/moved.png")
    again = run(["embed", "photos", "-o", "out.npy", "--update"])
    assert again.exit_code == 0, again.stderr
    assert "+0 new, 0 changed, 1 moved, 0 removed, 3 kept; embedded 0 in" in again.stderr


def test_combine_from_another_directory_keeps_the_directory_the_shards_ran_in(ckpt, monkeypatch, tmp_path):
    """The shards' relative paths are relative to where the jobs ran, not to where `bit combine`
    runs: combined from a subfolder, `--update` keeps every row and search prints real files."""
    make_images(Path("photos"), 4)
    for i in range(2):
        job = run(["embed", "photos", "-o", "out.npy", "-m", ckpt, "--batch-size", "2", "--shard-size", "2", "--shard", f"{i}/2"])
        assert job.exit_code == 0, job.stderr
    Path("elsewhere").mkdir()
    monkeypatch.chdir("elsewhere")
    combined = run(["combine", "../out.npy.shards", "-o", "../out.npy"])
    assert combined.exit_code == 0, combined.stderr
    monkeypatch.chdir(tmp_path)
    assert json.load(open("out.meta.json"))["cwd"] == str(tmp_path)
    again = run(["embed", "photos", "-o", "out.npy", "--update"])
    assert again.exit_code == 0 and again.stderr.strip() == "out.npy: up to date", again.stderr
    found = run(["search", "out.npy", "photos/img00.png", "-k", "1", "-f", "jsonl"])
    assert found.exit_code == 0, found.stderr
    assert os.path.isfile(json.loads(found.stdout)["matches"][0]["path"])


def test_stdout_output_publishes_the_sidecar_beside_the_manifest(ckpt):
    make_images(Path("photos"), 3)
    result = run(["embed", "photos", "-o", "-", "--manifest", "rows.txt", "-m", ckpt])
    assert result.exit_code == 0, result.stderr
    header = json.load(open("rows.meta.json"))
    assert (header["array"], header["manifest"], header["rows"]) == (None, "rows.txt", 3)
    assert [json.loads(line)["path"] for line in open("rows.files.jsonl")] == open("rows.txt").read().splitlines()
    assert not [name for name in os.listdir(".") if name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["photos.meta.json", "photos.files.jsonl"])
def test_resume_of_a_finished_output_whose_sidecar_changed_is_refused(ckpt, name):
    make_images(Path("photos"), 3)
    assert embed(ckpt).exit_code == 0
    assert embed(ckpt, "--resume").exit_code == 0  # unchanged: nothing to do
    with open(name, "a") as fh:
        fh.write("\n")
    result = embed(ckpt, "--resume")
    assert_clean_failure(result, 2)
    assert "changed since it was made" in result.stderr and "--overwrite" in result.stderr


def test_a_finished_update_resumes_as_a_finished_run(ckpt):
    make_images(Path("photos"), 3)
    assert embed(ckpt).exit_code == 0
    make_images(Path("photos/more"), 1)
    assert embed(ckpt, "--update").exit_code == 0
    again = embed(ckpt, "--resume")
    assert again.exit_code == 0 and "already complete" in again.stderr, again.stderr
    assert "up to date" in embed(ckpt, "--update", "--resume").stderr


@pytest.mark.slow
def test_a_plain_resume_of_an_interrupted_update_names_the_flags(ckpt, tmp_path):
    make_images(Path("photos"), 4)
    assert embed(ckpt).exit_code == 0
    make_images(Path("photos/more"), 4)
    proc = bit("embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "1", "--update")
    wait_for_commits(Path("photos.npy.partial/journal.jsonl"), proc, 2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    plain = embed(ckpt, "--resume")
    assert_clean_failure(plain, 2)
    assert "--update --resume" in plain.stderr
    fresh = embed(ckpt, "--update")
    assert_clean_failure(fresh, 2)
    assert "--update --resume" in fresh.stderr and "--update --overwrite" in fresh.stderr


@pytest.mark.slow  # kills or resumes a run of the real command
def test_the_advice_after_an_interruption_follows_the_kind_of_run_interrupted(ckpt):
    """The advice names the flags that continue the interrupted run, whichever flags were given:
    an interrupted first embed is continued by --resume (an --update --resume would be refused),
    an interrupted update by --update --resume."""
    from relhelpers import bit as run_bit, text

    make_images(Path("photos"), 6)
    proc = bit("embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "1")
    wait_for_commits(Path("photos.npy.partial/journal.jsonl"), proc, 2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    update = embed(ckpt, "--update")
    assert_clean_failure(update, 2)
    assert "pass --resume" in update.stderr and "--update --resume" not in update.stderr, update.stderr
    resumed = run_bit("embed", "photos", "-o", "photos.npy", "--resume")  # as advised
    assert resumed.returncode == 0, text(resumed.stderr)
    make_images(Path("photos/more"), 4)
    proc = bit("embed", "photos", "-o", "photos.npy", "--batch-size", "1", "--update")
    wait_for_commits(Path("photos.npy.partial/journal.jsonl"), proc, 2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    plain = embed(ckpt)
    assert_clean_failure(plain, 2)
    assert "pass --update --resume" in plain.stderr, plain.stderr


def test_inputs_that_failed_before_are_retried_not_counted_as_new(ckpt):
    make_images(Path("photos"), 2, bad=("broken.png",))
    assert embed(ckpt).exit_code == 1
    result = embed(ckpt, "--update")
    assert result.exit_code == 1 and "photos.npy: +0 new, 0 changed, 0 removed, 2 kept, 1 retried" in result.stderr
    assert open("photos.errors.txt").read().startswith("photos/broken.png\t")


# -- the row norms, written with the rows (issue 25) ---------------------------------------------


def _norms_are_the_arrays(name: str) -> np.ndarray:
    """The published norms of `name`.npy: recorded in its run record, read back for this very
    array (`norms.load`), float64 and equal to what a first use computes from the stored rows."""
    from bitcli.collection import norms
    from bitcli.collection.index import open_index

    record = json.load(open(f".{name}.npy.run.json"))
    assert record["files"]["norms"]["size"] == os.stat(f"{name}.norms.npz").st_size
    index = open_index(f"{name}.npy", allow_empty=True)
    stored = norms.load(index)
    assert stored is not None and stored.dtype == np.float64 and len(stored) == index.rows
    np.testing.assert_array_equal(stored, norms.compute(index))
    return stored


def test_embed_writes_the_row_norms_and_search_and_dedup_never_compute_them(ckpt, monkeypatch):
    from bitcli.collection import norms

    make_images(Path("photos"), 5)
    assert embed(ckpt).exit_code == 0
    _norms_are_the_arrays("photos")
    before = os.stat("photos.norms.npz")
    computed = []
    real = norms.compute
    monkeypatch.setattr(norms, "compute", lambda index: computed.append(index) or real(index))
    result = run(["search", "photos.npy", "photos/img00.png", "-k", "2", "-f", "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert run(["dedup", "photos.npy", "-t", "0.99"]).exit_code == 0
    after = os.stat("photos.norms.npz")
    assert computed == [] and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_update_and_overwrite_publish_the_norms_of_their_own_rows(ckpt):
    images = make_images(Path("photos"), 5)
    assert embed(ckpt).exit_code == 0
    first = _norms_are_the_arrays("photos")
    shutil.copy(images[0], images[1])  # changed
    make_images(Path("photos/more"), 1)  # new
    result = embed(ckpt, "--update")
    assert result.exit_code == 0, result.stderr
    assert len(_norms_are_the_arrays("photos")) == 6 and not np.array_equal(_norms_are_the_arrays("photos")[:5], first)
    shutil.rmtree("photos/more")
    assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "--overwrite"]).exit_code == 0
    assert len(_norms_are_the_arrays("photos")) == 5


def test_norms_left_beside_a_removed_output_are_replaced_and_a_foreign_file_is_not(ckpt):
    make_images(Path("photos"), 3)
    assert embed(ckpt).exit_code == 0
    for name in ("photos.npy", "photos.paths.txt", "photos.meta.json", "photos.files.jsonl"):
        os.unlink(name)  # the user removed the collection but not its norms: bitcli's own file
    assert embed(ckpt).exit_code == 0
    _norms_are_the_arrays("photos")
    for name in ("photos.npy", "photos.paths.txt", "photos.meta.json", "photos.files.jsonl"):
        os.unlink(name)
    Path("photos.norms.npz").write_bytes(b"my notes")
    result = embed(ckpt)
    assert_clean_failure(result, 2)
    assert "photos.norms.npz already exists" in result.stderr and Path("photos.norms.npz").read_bytes() == b"my notes"


KILLED_AFTER_ONE_COMMIT = "\n".join([  # `bit embed` killed just after its first committed batch: a partial run
    "import os, runpy",
    "from bitcli.store import EmbedWriter",
    "commit = EmbedWriter.commit",
    "EmbedWriter.commit = lambda self, *a, **k: (commit(self, *a, **k), os._exit(9))",
    "runpy.run_module('bitcli', run_name='__main__')",
])


def test_update_overwrite_over_a_plain_partial_run_takes_its_model(ckpt, tmp_path):
    """No finished output, a plain run's partial one: `--update --overwrite` (discarding it) takes
    the settings not given from that run, as `--resume` would, not the default model."""
    import subprocess
    import sys

    make_images(tmp_path / "photos", 4)
    args = ["embed", "photos", "-o", "photos.npy", "-m", str(ckpt), "--batch-size", "2"]
    assert subprocess.run([sys.executable, "-c", KILLED_AFTER_ONE_COMMIT, *args], cwd=tmp_path).returncode == 9
    assert Path("photos.npy.partial").is_dir() and not Path("photos.npy").exists()
    result = run(["embed", "photos", "-o", "photos.npy", "--update", "--overwrite", "--batch-size", "2"])
    assert result.exit_code == 0, result.stderr
    assert json.load(open("photos.meta.json"))["model"]["reference"] == str(ckpt.resolve())
    assert np.load("photos.npy").shape == (4, 32) and not Path("photos.npy.partial").exists()
