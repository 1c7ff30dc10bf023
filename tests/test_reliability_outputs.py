"""Issue 12, outputs: nothing destroyed, outputs published as one set, damaged or busy runs explained.

Driven through the real `bit embed` in a subprocess, with special files made in the test's own
temporary folder (FIFOs, a character device like /dev/null, symbolic links). The property test at
the end kills a run at every file-system step (and at random steps of its recovery) through the
embed store's own API and checks that the files on disk always form one set.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from clihelpers import make_images
from relhelpers import (
    NULL_DEVICE,
    KillSwitch,
    assert_no_litter,
    assert_one_error_line,
    assert_one_set,
    bit,
    error_lines,
    files_state,
    kind_of,
    killed,
    make_device,
    text,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    make_images(directory, 3, bad=("bad.png",))
    return directory


def embed(ckpt, photos, *args, cwd, **kw):
    """`bit embed` of one good and one broken image (so an error list is due), batch size 2."""
    return bit("embed", photos / "img00.png", photos / "bad.png", *args, "-m", ckpt, "--batch-size", "2", cwd=cwd, **kw)


# -- 1. only regular files bitcli could have written are ever replaced ------------------------


def _special(tmp_path: Path, path: Path, kind: str) -> dict:
    """Put a `kind` of special file at `path`; return what must still be true afterwards."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        make_device(path, NULL_DEVICE)
    elif kind == "link-to-file":
        target = tmp_path / "elsewhere" / "precious.bin"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"precious")
        path.symlink_to(target)
    elif kind == "link-to-device":
        target = make_device(tmp_path / "device-elsewhere", NULL_DEVICE)
        path.symlink_to(target)
    info = os.lstat(path)
    return {"kind": kind_of(path), "rdev": info.st_rdev, "link": os.readlink(path) if os.path.islink(path) else None}


def _assert_untouched(tmp_path: Path, path: Path, before: dict) -> None:
    assert kind_of(path) == before["kind"], f"{path} was replaced"
    assert os.lstat(path).st_rdev == before["rdev"]
    if before["link"] is not None:
        assert os.readlink(path) == before["link"]
        target = Path(before["link"])
        if target.name == "precious.bin":
            assert target.read_bytes() == b"precious"
        else:
            assert stat.S_ISCHR(os.lstat(target).st_mode)


ROLES = {"out": "o.npy", "manifest": "rows.txt", "errors": "o.errors.txt", "meta": "o.meta.json", "files": "o.files.jsonl"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "chardev", "link-to-file", "link-to-device"])
@pytest.mark.parametrize("role", sorted(ROLES))
def test_overwrite_never_replaces_what_is_not_a_regular_file(ckpt, photos, tmp_path, role, kind):
    special = tmp_path / ROLES[role]
    before = _special(tmp_path, special, kind)
    result = embed(ckpt, photos, "-o", "o.npy", "--manifest", "rows.txt", "--overwrite", cwd=tmp_path)
    assert_one_error_line(result, 2, ROLES[role])
    _assert_untouched(tmp_path, special, before)
    for other in set(ROLES.values()) - {ROLES[role]}:
        assert not (tmp_path / other).exists(), other
    assert not (tmp_path / "o.npy.partial").exists()


@pytest.mark.slow
@pytest.mark.parametrize("failures", [True, False])
def test_a_special_file_where_the_error_list_goes_is_refused_without_overwrite_too(ckpt, photos, tmp_path, failures):
    os.mkfifo(tmp_path / "o.errors.txt")
    inputs = [photos / "img00.png"] + ([photos / "bad.png"] if failures else [])
    result = bit("embed", *inputs, "-o", "o.npy", "-m", ckpt, cwd=tmp_path)
    assert_one_error_line(result, 2, "o.errors.txt")
    assert kind_of(tmp_path / "o.errors.txt") == "fifo"
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.slow
def test_an_existing_error_list_needs_overwrite_like_the_other_outputs(ckpt, photos, tmp_path):
    (tmp_path / "o.errors.txt").write_bytes(b"precious")
    result = embed(ckpt, photos, "-o", "o.npy", cwd=tmp_path)
    assert_one_error_line(result, 2, "o.errors.txt", "--overwrite")
    assert (tmp_path / "o.errors.txt").read_bytes() == b"precious"


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["foreign-folder", "link-to-folder", "regular-file"])
def test_overwrite_discards_only_a_partial_folder_bitcli_made(ckpt, photos, tmp_path, shape):
    partial = tmp_path / "o.npy.partial"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_bytes(b"precious")
    if shape == "foreign-folder":
        shutil.copytree(mine, partial)
    elif shape == "link-to-folder":
        partial.symlink_to(mine)
    else:
        partial.write_bytes(b"precious")
    result = embed(ckpt, photos, "-o", "o.npy", "--overwrite", cwd=tmp_path)
    assert_one_error_line(result, 2, "o.npy.partial")
    assert (mine / "precious.txt").read_bytes() == b"precious"
    if shape == "foreign-folder":
        assert (partial / "precious.txt").read_bytes() == b"precious"
    elif shape == "link-to-folder":
        assert partial.is_symlink()
    else:
        assert partial.read_bytes() == b"precious"
    assert not (tmp_path / "o.npy").exists()


# -- 4. no output inside the partial folder (it is deleted when the run ends) -----------------


@pytest.mark.slow
@pytest.mark.parametrize("manifest", ["o.npy.partial/rows.txt", "sub/../o.npy.partial/rows.txt", "linked/rows.txt"])
def test_a_manifest_inside_the_partial_folder_is_refused(ckpt, photos, tmp_path, manifest):
    (tmp_path / "sub").mkdir()
    (tmp_path / "linked").symlink_to("o.npy.partial")  # dangling until the run creates it
    result = embed(ckpt, photos, "-o", "o.npy", "--manifest", manifest, cwd=tmp_path)
    assert_one_error_line(result, 2, "o.npy.partial")
    assert not (tmp_path / "o.npy").exists()
    assert not (tmp_path / "o.npy.partial").exists()


# -- 10. names the file system cannot hold are a usage error, before any work -----------------


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


@pytest.mark.slow
@pytest.mark.parametrize("which", ["output", "manifest"])
def test_a_name_too_long_for_its_siblings_is_a_usage_error(ckpt, photos, tmp_path, which):
    limit = _name_max(tmp_path)
    if which == "output":  # o...o.npy fits, o...o.npy.partial does not
        args = ["-o", "o" * (limit - 6) + ".npy"]
    else:  # the manifest fits, its temporary name beside it does not
        args = ["-o", "x.npy", "--manifest", "m" * (limit - 6) + ".txt"]
    result = embed(ckpt, photos, *args, cwd=tmp_path)
    line = assert_one_error_line(result, 2, str(limit))
    assert "long" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["name", "folder", "combine"])
def test_a_name_longer_than_the_file_system_holds_is_one_usage_error_line(ckpt, photos, tmp_path, where):
    """A name (or a folder on the way to it) past NAME_MAX: exit 2 and one line, never "unexpected"."""
    long = "o" * (_name_max(tmp_path) + 1)
    if where == "name":
        result = embed(ckpt, photos, "-o", long + ".npy", cwd=tmp_path)
    elif where == "folder":
        result = embed(ckpt, photos, "-o", f"sub/{long}/x.npy", cwd=tmp_path)
    else:
        result = bit("combine", tmp_path / "shards", "-o", long + ".npy", cwd=tmp_path)
    line = assert_one_error_line(result, 2, "long")
    assert "unexpected" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- 12. a damaged partial run says what is wrong and that --overwrite starts again -----------


def _interrupted_run(ckpt, photos, out: Path, monkeypatch) -> None:
    """An `bit embed` interrupted after its first batch (in-process, as the embed CLI tests do)."""
    from bitcli.pipeline import Embedder
    from clihelpers import run

    original = Embedder.embed_groups

    def interrupted(self, items):
        for n, group in enumerate(original(self, items)):
            if n == 1:
                raise KeyboardInterrupt
            yield group

    monkeypatch.setattr(Embedder, "embed_groups", interrupted)
    result = run(["embed", photos, "-o", out, "-m", ckpt, "--batch-size", "1"])
    monkeypatch.setattr(Embedder, "embed_groups", original)
    assert result.exit_code == 130, result.stderr
    assert Path(f"{out}.partial").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("lost", ["data.npy", "journal.jsonl", "state.json"])
def test_a_damaged_partial_run_says_what_is_wrong_and_how_to_start_again(ckpt, photos, tmp_path, monkeypatch, lost):
    _interrupted_run(ckpt, photos, tmp_path / "o.npy", monkeypatch)
    (tmp_path / "o.npy.partial" / lost).unlink()
    resumed = bit("embed", photos, "-o", "o.npy", "-m", ckpt, "--batch-size", "1", "--resume", cwd=tmp_path)
    line = assert_one_error_line(resumed, 2, "o.npy.partial", lost, "--overwrite")
    assert "cannot write" not in line and "rerun with --resume" not in line
    again = bit("embed", photos, "-o", "o.npy", "-m", ckpt, "--batch-size", "1", "--overwrite", cwd=tmp_path)
    assert again.returncode == 1, error_lines(again)  # bad.png fails; the rest is written
    assert np.load(tmp_path / "o.npy").shape == (3, 32)


# -- 12. a failed write names the file that could not be written ------------------------------


@pytest.mark.slow
def test_a_full_disk_while_writing_the_error_list_names_the_error_list(ckpt, photos, tmp_path):
    from relhelpers import fill_leaving, small_tmpfs

    # Many failures with long names: the error list needs far more room than the manifest.
    bad = tmp_path / "bad"
    bad.mkdir()
    names = [bad / (f"{i:03d}-" + "x" * 200 + ".png") for i in range(60)]
    for name in names:
        name.write_bytes(b"not an image")
    with small_tmpfs(tmp_path / "full") as full:
        fill_leaving(full, 8192)
        with open(tmp_path / "stdout.npy", "wb") as stdout:
            result = bit("embed", photos / "img00.png", *names, "-o", "-", "--manifest", full / "m.txt",
                         "-m", ckpt, cwd=tmp_path, stdout=stdout)
        lines = [line for line in error_lines(result) if "cannot write" in line or "No space" in line]
        assert result.returncode == 1
        assert len(lines) == 1, error_lines(result)
        assert lines[0].startswith(f"error: {full / 'm.errors.txt'}: "), lines
        assert "unexpected" not in text(result.stderr)


# -- 13. --resume of a finished output checks it like an unfinished one ----------------------


@pytest.mark.slow
@pytest.mark.parametrize("change", ["--normalize", "float16", "other-model"])
def test_resume_of_a_finished_output_refuses_other_settings(ckpt, photos, tmp_path, change):
    assert embed(ckpt, photos, "-o", "o.npy", cwd=tmp_path).returncode == 1
    before = (tmp_path / "o.npy").read_bytes()
    model = ckpt
    extra: list[str] = []
    if change == "other-model":  # other weights (a copy of the same weights is the same model)
        from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor

        model = tmp_path / "other"
        save_reference_checkpoint(model, seed=7, preprocessor=tiny_preprocessor(32), **TINY)
    elif change == "float16":
        extra = ["--dtype", "float16"]
    else:
        extra = ["--normalize"]
    result = bit("embed", photos / "img00.png", photos / "bad.png", "-o", "o.npy", "--resume", *extra,
                 "-m", model, "--batch-size", "2", cwd=tmp_path)
    assert_one_error_line(result, 2, "o.npy", "--overwrite")
    assert (tmp_path / "o.npy").read_bytes() == before


@pytest.mark.slow
def test_resume_of_a_finished_output_exits_as_the_run_did(ckpt, photos, tmp_path):
    first = embed(ckpt, photos, "-o", "o.npy", cwd=tmp_path)
    assert first.returncode == 1  # bad.png failed
    again = embed(ckpt, photos, "-o", "o.npy", "--resume", cwd=tmp_path)
    assert again.returncode == 1, error_lines(again)
    assert "already complete" in text(again.stderr)


@pytest.mark.slow
def test_resume_of_a_finished_output_whose_files_changed_is_refused(ckpt, photos, tmp_path):
    assert embed(ckpt, photos, "-o", "o.npy", cwd=tmp_path).returncode == 1
    np.save(tmp_path / "o.npy", np.zeros((5, 32), np.float32))  # someone replaced the array
    result = embed(ckpt, photos, "-o", "o.npy", "--resume", cwd=tmp_path)
    assert_one_error_line(result, 2, "o.npy", "--overwrite")


def _store():
    from bitcli import store

    return store


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_told_another_run_holds_it(ckpt, photos, tmp_path):
    store = _store()
    paths = store.EmbedPaths.for_output(tmp_path / "o.npy")
    holder = store.EmbedWriter(paths, dim=32, fingerprint={"held": "by this test"}, inputs=["a.png"])
    try:
        for flag in ("--resume", "--overwrite"):
            result = embed(ckpt, photos, "-o", "o.npy", flag, cwd=tmp_path)
            line = assert_one_error_line(result, 2, "o.npy")
            assert "another" in line and "rerun with --resume" not in line, line
        plain = embed(ckpt, photos, "-o", "o.npy", cwd=tmp_path)
        assert "another" in assert_one_error_line(plain, 2, "o.npy")
        assert (tmp_path / "o.npy.partial").is_dir()
    finally:
        holder.close()
    assert embed(ckpt, photos, "-o", "o.npy", "--overwrite", cwd=tmp_path).returncode == 1


# -- 3. property: a kill at any file-system step leaves one set of files ----------------------


DIM = 4
OLD_INPUTS = [f"old/{i}.png" for i in range(5)]
NEW_INPUTS = [f"new/{i}.png" for i in range(7)]
FAILING = {"old/1.png", "old/3.png"}  # the old run has an error list, the new one has none


def _row(path: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class _Item:
    def __init__(self, path: str):
        self.path = path


def _write(out: Path, inputs: list[str], *, overwrite=False, resume=False) -> None:
    """One `bit embed`-like run through the store: batches of 2, FAILING inputs as errors."""
    store = _store()
    writer = store.EmbedWriter(store.EmbedPaths.for_output(out), dim=DIM, fingerprint={"run": "test"},
                               inputs=inputs, overwrite=overwrite, resume=resume)
    try:
        if writer.already_complete:
            return
        from bitcli.store.collection import counted_off

        remaining = writer.done  # what an interrupted run committed: each occurrence skipped once
        todo = [_Item(p) for p in inputs if not counted_off(remaining, p)]
        for start in range(0, len(todo), 2):
            batch = todo[start:start + 2]
            ok = [i.path for i in batch if i.path not in FAILING]
            errors = [(i.path, "broken") for i in batch if i.path in FAILING]
            writer.commit(ok, np.stack([_row(p) for p in ok]) if ok else None, errors)
        writer.finish()
    finally:
        writer.close()


def _reference(tmp: Path, name: str, inputs: list[str]) -> tuple:
    directory = tmp / name
    directory.mkdir()
    _write(directory / "out.npy", inputs)
    return files_state(directory)


def _touch(out: Path) -> None:
    """What the next `bit embed` on the same output does first, whatever it then decides."""
    store = _store()
    from bitcli.errors import BitError

    try:
        store.EmbedWriter(store.EmbedPaths.for_output(out), dim=DIM, fingerprint={"run": "test"},
                          inputs=NEW_INPUTS).close()
    except BitError:
        pass


def _recover(out: Path) -> None:
    partial = Path(f"{out}.partial")
    _write(out, NEW_INPUTS, resume=partial.exists(), overwrite=not partial.exists())


def _check_one_set(directory: Path, old: tuple, new: tuple, where: str) -> None:
    assert_one_set(directory, old, new, where, lambda: _touch(directory / "out.npy"))


@pytest.mark.slow
def test_a_kill_at_any_step_of_an_overwrite_leaves_one_set(tmp_path):
    old, new = _reference(tmp_path, "ref-old", OLD_INPUTS), _reference(tmp_path, "ref-new", NEW_INPUTS)
    assert old[2] is not None and new[2] is None  # the old set has an error list, the new one none
    probe = tmp_path / "probe"
    probe.mkdir()
    _write(probe / "out.npy", OLD_INPUTS)
    with KillSwitch() as counter:
        _write(probe / "out.npy", NEW_INPUTS, overwrite=True)
    steps = counter.count
    assert steps > 3
    for at in range(steps + 1):
        directory = tmp_path / f"kill-{at}"
        directory.mkdir()
        _write(directory / "out.npy", OLD_INPUTS)
        with KillSwitch(at):
            killed(lambda: _write(directory / "out.npy", NEW_INPUTS, overwrite=True))
        _check_one_set(directory, old, new, f"killed at step {at} of {steps}")
        _recover(directory / "out.npy")
        assert files_state(directory) == new, f"killed at step {at}: recovery did not give the new set"
        assert_no_litter(directory)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_kills_during_recovery_still_leave_one_set(tmp_path, seed):
    rng = random.Random(seed)
    old, new = _reference(tmp_path, "ref-old", OLD_INPUTS), _reference(tmp_path, "ref-new", NEW_INPUTS)
    directory = tmp_path / "run"
    directory.mkdir()
    out = directory / "out.npy"
    _write(out, OLD_INPUTS)
    for attempt in range(4):
        with KillSwitch(rng.randrange(0, 25)):
            if attempt == 0:
                killed(lambda: _write(out, NEW_INPUTS, overwrite=True))
            else:
                killed(lambda: _recover(out))
        _check_one_set(directory, old, new, f"seed {seed}, attempt {attempt}")
    _recover(out)
    assert files_state(directory) == new
    assert_no_litter(directory)


# -- outputs named after special files, or in /dev; indexes and identities that are FIFOs -----


@pytest.mark.parametrize("command", ["embed", "combine"])
def test_an_output_in_dev_is_refused_before_any_work(ckpt, photos, tmp_path, command):
    """`-o /dev/null` would create /dev/null.npy, /dev/null.paths.txt, ... (as root)."""
    before = set(os.listdir("/dev"))
    if command == "embed":
        result = bit("embed", photos / "img00.png", "-o", "/dev/null", "-m", ckpt, cwd=tmp_path)
    else:
        result = bit("combine", "-o", "/dev/null", tmp_path, cwd=tmp_path)
    assert_one_error_line(result, 2)
    assert b"/dev" in result.stderr
    assert set(os.listdir("/dev")) - before == set()


@pytest.mark.skipif(
    not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK) or os.stat("/dev/shm").st_dev == os.stat("/dev").st_dev,
    reason="no writable /dev/shm file system of its own here",
)
def test_an_output_in_dev_shm_a_file_system_of_files_is_written(ckpt, photos, tmp_path):
    """/dev/shm is a RAM file system mounted under /dev (fast scratch space), not a device folder."""
    folder = tempfile.mkdtemp(dir="/dev/shm")
    try:
        result = bit("embed", photos / "img00.png", "-o", f"{folder}/e.npy", "-m", ckpt, "-q", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert np.load(f"{folder}/e.npy").shape[0] == 1
    finally:
        shutil.rmtree(folder)


def test_an_output_named_after_a_fifo_is_refused(ckpt, photos, tmp_path):
    os.mkfifo(tmp_path / "out")
    result = bit("embed", photos / "img00.png", "-o", "out", "-m", ckpt, cwd=tmp_path)
    assert_one_error_line(result, 2)
    assert b"out: is a FIFO" in result.stderr and not (tmp_path / "out.npy").exists()


@pytest.mark.slow
def test_a_fifo_index_or_manifest_is_refused_without_hanging(ckpt, photos, tmp_path):
    assert bit("embed", photos / "img00.png", photos / "img01.png", "-o", "e.npy", "-m", ckpt, cwd=tmp_path).returncode == 0
    os.mkfifo(tmp_path / "fifo.npy")
    os.mkfifo(tmp_path / "rows.txt")
    for args in (["search", "fifo.npy", photos / "img00.png"], ["dedup", "fifo.npy"],
                 ["search", "e.npy", photos / "img00.png", "--manifest", "rows.txt"]):
        result = bit(*args, cwd=tmp_path, timeout=60)
        assert_one_error_line(result, 2)
        assert b"FIFO" in result.stderr, args


def test_hash_refuses_a_fifo_or_device_input_without_hanging(ckpt, photos, tmp_path):
    """The identity step never opens a FIFO (it would block) nor hashes /dev/zero (forever)."""
    os.mkfifo(tmp_path / "pipe.png")
    result = bit("embed", tmp_path / "pipe.png", "/dev/zero", photos / "img00.png", "-o", "h.npy", "-m", ckpt, "--hash",
                 cwd=tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr  # those two failed, the image is embedded
    assert len(np.load(tmp_path / "h.npy")) == 1
