"""`bit combine` publishes like a local run (issue 16 on issue 12's rules): one set, a run record, a lock.

The property tests build shards from known rows (`write_shard`, no model) and kill `combine` at
every file-system step, as tests/test_reliability_outputs.py does for a local `--overwrite`
(its helpers are in relhelpers.py): the files on disk are always the old set or the new one, and
the run record always describes the files beside it. The command tests drive the real
`bit combine` and `bit embed` on shards of the tiny model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distributedhelpers import BATCH, SHARD, THREADS, assert_same_files, inputs, job, local, photos, write_shard  # noqa: F401 (fixtures)
from relhelpers import (
    KillSwitch,
    assert_no_litter,
    assert_one_error_line,
    assert_one_set,
    bit,
    bit_env,
    error_lines,
    files_state,
    kind_of,
    killed,
    text,
)

from bitcli.distributed import Split, combine, run_shards
from bitcli.errors import UsageError
from bitcli.inputs import expand_inputs
from bitcli.store import EmbedPaths, EmbedWriter, recover
from bitcli.store.files import files_problem, inputs_digest

DIM = 4
FINGERPRINT = {"model": "test", "dtype": "float32"}
OLD_INPUTS = [f"old/{i}.png" for i in range(5)]
NEW_INPUTS = [f"new/{i}.png" for i in range(7)]
FAILING = {"old/1.png", "old/3.png"}  # the old set has an error list, the new one has none


def _row(path: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def _shards(directory: Path, entries: list[str]) -> Path:
    """Shards of two inputs each, as jobs would write them; FAILING inputs are failures."""
    split = Split(batch_size=2, shard_size=2, entries=len(entries), inputs=inputs_digest(entries))
    for index in range(split.shards):
        start, stop = split.bounds(index)
        part = entries[start:stop]
        ok = [p for p in part if p not in FAILING]
        commit = (ok, np.stack([_row(p) for p in ok]) if ok else None, [(p, "broken") for p in part if p in FAILING])
        write_shard(directory, index, split, fingerprint=FINGERPRINT, dim=DIM, dtype="float32", commits=[commit])
    return directory


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return _shards(root / "old", OLD_INPUTS), _shards(root / "new", NEW_INPUTS)


def _combine(shards: Path, out: Path, **kw) -> None:
    combine([shards], EmbedPaths.for_output(out), **kw)


def _reference(tmp: Path, name: str, shards: Path) -> tuple:
    directory = tmp / name
    directory.mkdir()
    _combine(shards, directory / "out.npy")
    return files_state(directory)


def _assert_record_describes_the_files(out: Path) -> None:
    """The run record published with the set names exactly the files beside it (what `bit embed
    --resume` checks), whichever set is on disk."""
    paths = EmbedPaths.for_output(out)
    record = json.loads(paths.record.read_text())
    assert files_problem(paths, record, DIM, np.dtype("<f4")) is None
    assert record["settings"]["model"]["reference"] == FINGERPRINT["model"] and record["dim"] == DIM


def _touch(out: Path) -> None:
    recover(EmbedPaths.for_output(out))  # what the next bit embed or bit combine on the output does first


def test_combine_publishes_the_run_record_a_local_run_would(shard_sets, tmp_path):
    old, _ = shard_sets
    out = tmp_path / "out.npy"
    summary = combine([old], EmbedPaths.for_output(out))
    assert (summary.rows, summary.failed) == (3, 2)
    record = json.loads((tmp_path / ".out.npy.run.json").read_text())
    assert record["inputs"] == inputs_digest(OLD_INPUTS) and (record["rows"], record["failed"]) == (3, 2)
    assert record["dtype"] == "float32" and record["version"] == 1
    _assert_record_describes_the_files(out)
    assert sorted(os.listdir(tmp_path)) == [
        ".out.npy.run.json", "out.errors.txt", "out.files.jsonl", "out.meta.json", "out.norms.npz", "out.npy", "out.paths.txt"]
    # The metadata sidecar and the row norms are in the set (the record lists them), without per-file identities.
    assert set(record["files"]) == {"array", "manifest", "errors", "identities", "metadata", "norms"}
    header = json.loads((tmp_path / "out.meta.json").read_text())
    assert (header["rows"], header["feature_dim"], header["model"]["reference"]) == (3, DIM, "test")
    rows = [json.loads(line) for line in (tmp_path / "out.files.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == (tmp_path / "out.paths.txt").read_text().splitlines()
    assert all(r["size"] is None and r["mtime_ns"] is None for r in rows)


@pytest.mark.slow
def test_a_kill_at_any_step_of_a_combine_leaves_one_set(shard_sets, tmp_path):
    old_shards, new_shards = shard_sets
    old, new = _reference(tmp_path, "ref-old", old_shards), _reference(tmp_path, "ref-new", new_shards)
    assert old[2] is not None and new[2] is None  # the old set has an error list, the new one none
    probe = tmp_path / "probe"
    probe.mkdir()
    _combine(old_shards, probe / "out.npy")
    with KillSwitch() as counter:
        _combine(new_shards, probe / "out.npy", overwrite=True)
    steps = counter.count
    assert steps > 3
    for at in range(steps + 1):
        directory = tmp_path / f"kill-{at}"
        directory.mkdir()
        out = directory / "out.npy"
        _combine(old_shards, out)
        with KillSwitch(at):
            killed(lambda: _combine(new_shards, out, overwrite=True))
        where = f"killed at step {at} of {steps}"
        assert_one_set(directory, old, new, where, lambda: _touch(out))
        _touch(out)
        _assert_record_describes_the_files(out)
        _combine(new_shards, out, overwrite=True)  # the same command again
        assert files_state(directory) == new, f"{where}: combining again did not give the new set"
        _assert_record_describes_the_files(out)
        assert_no_litter(directory)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_kills_while_combining_again_still_leave_one_set(shard_sets, tmp_path, seed):
    rng = random.Random(seed)
    old_shards, new_shards = shard_sets
    old, new = _reference(tmp_path, "ref-old", old_shards), _reference(tmp_path, "ref-new", new_shards)
    directory = tmp_path / "run"
    directory.mkdir()
    out = directory / "out.npy"
    _combine(old_shards, out)
    for attempt in range(4):
        with KillSwitch(rng.randrange(0, 25)):
            killed(lambda: _combine(new_shards, out, overwrite=True))
        assert_one_set(directory, old, new, f"seed {seed}, attempt {attempt}", lambda: _touch(out))
    _combine(new_shards, out, overwrite=True)
    assert files_state(directory) == new
    _assert_record_describes_the_files(out)
    assert_no_litter(directory)


def test_a_combine_killed_before_its_commit_is_started_over_by_the_next(shard_sets, tmp_path):
    """Its partial folder holds no work (the shards do): the next combine discards it, no flag needed."""
    _, new_shards = shard_sets
    out = tmp_path / "out.npy"
    with KillSwitch(3):  # the partial folder exists, nothing is staged or committed yet
        assert killed(lambda: _combine(new_shards, out))
    assert (tmp_path / "out.npy.partial").is_dir() and not out.exists()
    _combine(new_shards, out)
    _assert_record_describes_the_files(out)
    assert_no_litter(tmp_path)


def test_combine_is_refused_while_another_run_holds_the_output(shard_sets, tmp_path):
    """A Ray driver holds the output's writer for its whole run, as a local run does: a combine is refused."""
    _, new_shards = shard_sets
    paths = EmbedPaths.for_output(tmp_path / "out.npy")
    holder = EmbedWriter(paths, dim=DIM, fingerprint=FINGERPRINT)
    try:
        with pytest.raises(UsageError, match="another bit embed run .pid"):
            combine([new_shards], paths)
        result = bit("combine", "-o", tmp_path / "out.npy", new_shards, cwd=tmp_path)
        line = assert_one_error_line(result, 2, "out.npy", "another")
        assert "pid" in line
    finally:
        holder.discard_if_empty()  # as the Ray driver's writer goes when it stops before its first commit
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "out.npy.partial").exists()


# -- special files where an output goes: refused, never replaced -------------------------------


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
@pytest.mark.parametrize("role", ["o.npy", "o.paths.txt", "o.errors.txt", ".o.npy.run.json"])
def test_combine_never_replaces_a_link_or_fifo(shard_sets, tmp_path, role, kind):
    old_shards, _ = shard_sets  # with failures: an error list is due
    special = tmp_path / role
    if kind == "symlink":
        target = tmp_path / "precious.bin"
        target.write_bytes(b"precious")
        special.symlink_to(target)
    else:
        os.mkfifo(special)
    result = bit("combine", "-o", "o.npy", "--overwrite", old_shards, cwd=tmp_path)
    assert_one_error_line(result, 2, role)
    assert kind_of(special) == kind
    if kind == "symlink":
        assert (tmp_path / "precious.bin").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({role, "precious.bin"} if kind == "symlink" else {role})


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_link_or_fifo_that_appears_while_combining_is_not_replaced(shard_sets, tmp_path, monkeypatch, kind):
    """Checked again at the rename, as a local run's publication does: planted after the first
    check (here while the shards are planned), it is refused and left alone; once it is gone,
    the next run on the output completes the publication."""
    combining = importlib.import_module("bitcli.distributed.combine")  # the module (the package exports the function)
    old_shards, _ = shard_sets
    manifest, target = tmp_path / "out.paths.txt", tmp_path / "precious.bin"
    target.write_bytes(b"precious")
    original = combining.plan

    def plan_and_plant(*args, **kwargs):
        manifest.symlink_to(target) if kind == "symlink" else os.mkfifo(manifest)
        return original(*args, **kwargs)

    monkeypatch.setattr(combining, "plan", plan_and_plant)
    with pytest.raises(UsageError, match="out.paths.txt"):
        combine([old_shards], EmbedPaths.for_output(tmp_path / "out.npy"))
    assert kind_of(manifest) == kind and target.read_bytes() == b"precious"
    assert not (tmp_path / "out.npy").exists()
    manifest.unlink()
    _touch(tmp_path / "out.npy")
    _assert_record_describes_the_files(tmp_path / "out.npy")
    assert_no_litter(tmp_path)


def test_combine_refuses_a_symlinked_partial_folder(shard_sets, tmp_path):
    old_shards, _ = shard_sets
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "o.npy.partial").symlink_to(elsewhere)
    result = bit("combine", "-o", "o.npy", "--overwrite", old_shards, cwd=tmp_path)
    assert_one_error_line(result, 2, "o.npy.partial")
    assert (tmp_path / "o.npy.partial").is_symlink() and list(elsewhere.iterdir()) == []
    assert not (tmp_path / "o.npy").exists()


# -- a combined output is a local run's, --resume included ---------------------------------------


@pytest.fixture(scope="module")
def combined(ckpt, photos, tmp_path_factory):
    """Shards of two jobs (`--shard 0/2`, `1/2`) of the local reference run, combined by `bit combine`."""
    directory = tmp_path_factory.mktemp("combined")
    shard_dir = directory / "out.npy.shards"
    for i in range(2):
        run_shards(expand_inputs(inputs(photos)), shard_dir, job(ckpt), selection=(i, 2), shard_size=SHARD)
    result = bit("combine", "-o", directory / "out.npy", shard_dir, cwd=directory)
    assert result.returncode == 1, error_lines(result)  # some inputs failed, as in the local run
    return directory / "out.npy"


def _local(ckpt, photos, out: Path, *args: object):
    return bit("embed", *inputs(photos), "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, *args,
               cwd=out.parent)


@pytest.mark.slow
def test_bit_embed_resume_of_a_combined_output_is_a_finished_local_run(ckpt, photos, combined, local):
    assert_same_files(combined, local)
    before = combined.read_bytes()
    again = _local(ckpt, photos, combined, "--resume")
    assert again.returncode == 1, error_lines(again)  # exits as the run did: inputs failed
    assert "already complete" in text(again.stderr)
    refused = _local(ckpt, photos, combined, "--resume", "--normalize")
    assert_one_error_line(refused, 2, "out.npy", "normalize", "--overwrite")
    assert combined.read_bytes() == before


@pytest.mark.slow
def test_bit_embed_resume_of_a_combine_of_one_thread_jobs_continues_without_threads(ckpt, photos, tmp_path):
    """Shard jobs (and Ray workers, by default) run one thread each, which picks oneDNN's own
    convolution; a combine of theirs killed mid-copy is continued by `bit embed ... --resume`
    (docs/distributed.md) like any partial run: the model, batch size and, from the recorded
    convolution path, `--threads 1` are the run's own unless given, not a refusal that asks for them."""
    env = bit_env(OMP_NUM_THREADS="2")  # this process's default: two threads, PyTorch's convolution
    for i in range(2):
        run_shards(expand_inputs(inputs(photos)), tmp_path / "out.npy.shards", dataclasses.replace(job(ckpt), threads=1), selection=(i, 2), shard_size=SHARD)
    whole = bit("combine", "-o", tmp_path / "whole.npy", tmp_path / "out.npy.shards", env=env, cwd=tmp_path)
    assert whole.returncode == 1, error_lines(whole)
    kill = "\n".join([  # a combine killed just after its second commit: a partial run of OUT
        "import os, sys; from pathlib import Path",
        "from bitcli.store import EmbedPaths, EmbedWriter; from bitcli.distributed import combine",
        "commit, n = EmbedWriter.commit, [0]",
        "def killed(self, *a, **k): commit(self, *a, **k); n[0] += 1; n[0] == 2 and os._exit(9)",
        "EmbedWriter.commit = killed",
        "combine([Path('out.npy.shards')], EmbedPaths.for_output(Path('out.npy')))",
    ])
    assert subprocess.run([sys.executable, "-c", kill], cwd=tmp_path, env=env).returncode == 9
    assert (tmp_path / "out.npy.partial").is_dir() and not (tmp_path / "out.npy").exists()
    resumed = bit("embed", *inputs(photos), "-o", "out.npy", "--resume", env=env, cwd=tmp_path)
    assert resumed.returncode == 1, error_lines(resumed)  # the broken files, as in the jobs
    assert "resuming:" in text(resumed.stderr)
    assert_same_files(tmp_path / "out.npy", tmp_path / "whole.npy")


def _kill_while_renaming(shards, out):
    """Kill a combine of `shards` into `out` at the first step that leaves a committed publication
    (publish.json) half-renamed."""
    at = 0
    while not (out.parent / "out.npy.partial" / "publish.json").exists():
        with KillSwitch(at):
            assert killed(lambda: _combine(shards, out, overwrite=True))
        at += 1


@pytest.mark.slow  # kills or resumes a run of the real command
def test_combine_after_one_killed_while_renaming_says_it_completed_that_publication(shard_sets, tmp_path):
    """As `bit embed` does: the next command on the output completes the committed publication
    and says so, rather than only that the output exists (the user would combine it again)."""
    _, new_shards = shard_sets
    new = _reference(tmp_path, "ref-new", new_shards)
    directory = tmp_path / "run"
    directory.mkdir()
    out = directory / "out.npy"
    _kill_while_renaming(new_shards, out)
    result = bit("combine", "-o", out, new_shards, cwd=tmp_path)
    assert "completed publishing" in text(result.stderr) and "interrupted" in text(result.stderr), text(result.stderr)
    assert files_state(directory) == new
    # The publication completed is the combine asked for: its summary and exit 0, not "already exists".
    assert result.returncode == 0 and "embedded 7 images as [7, 4] float32" in text(result.stderr), text(result.stderr)
    assert not [line for line in error_lines(result) if line.startswith("error:")]


@pytest.mark.slow  # kills or resumes a run of the real command
def test_combine_after_a_killed_combine_of_other_shards_says_so(shard_sets, tmp_path):
    """The completed publication combined other shards than the ones named now: one line saying so (exit 2)."""
    old_shards, new_shards = shard_sets
    out = tmp_path / "out.npy"
    _kill_while_renaming(new_shards, out)
    result = bit("combine", "-o", out, old_shards, cwd=tmp_path)
    errors = [line for line in error_lines(result) if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in text(result.stderr), error_lines(result)
    assert "other shards than these" in errors[0] and "--overwrite" in errors[0], errors


def test_a_combine_stopped_by_a_full_disk_advises_combine_again_not_a_flag_it_lacks(shard_sets, tmp_path):
    """`bit combine` has no --resume: a combine that kept a partial run is continued by combining again."""
    _, new_shards = shard_sets
    new = _reference(tmp_path, "ref-new", new_shards)
    for size in range(200, 2000, 100):  # the first file-size limit that stops it after the partial run exists
        directory = tmp_path / f"limit-{size}"
        directory.mkdir()
        result = bit("combine", "-o", directory / "out.npy", new_shards, cwd=directory, file_size=size)
        if (directory / "out.npy.partial").is_dir():
            break
    line = assert_one_error_line(result, 1, "cannot write")
    assert "--resume" not in line and "bit combine" in line, line
    again = bit("combine", "-o", directory / "out.npy", new_shards, cwd=directory)
    assert again.returncode == 0, error_lines(again)
    assert files_state(directory) == new


def test_a_combine_interrupted_mid_copy_says_combining_again_continues(shard_sets, tmp_path):
    _, new_shards = shard_sets
    new = _reference(tmp_path, "ref-new", new_shards)
    directory = tmp_path / "run"
    directory.mkdir()
    ctrl_c = "\n".join([  # Ctrl-C arriving just after the second commit
        "import sys; from bitcli.store import EmbedWriter; from bitcli.cli.app import run",
        "commit, n = EmbedWriter.commit, [0]",
        "def interrupted(self, *a, **k):",
        "    commit(self, *a, **k); n[0] += 1",
        "    if n[0] == 2: raise KeyboardInterrupt",
        "EmbedWriter.commit = interrupted",
        "sys.exit(run(sys.argv[1:]))",
    ])
    result = subprocess.run([sys.executable, "-c", ctrl_c, "combine", "-o", "out.npy", str(new_shards)],
                            cwd=directory, env=bit_env(), capture_output=True, text=True)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    assert "partial results kept in out.npy.partial; rerun the same bit combine to continue" in result.stderr, result.stderr
    assert bit("combine", "-o", "out.npy", new_shards, cwd=directory).returncode == 0
    assert files_state(directory) == new


def test_combine_over_an_interrupted_update_advises_combines_own_flag(shard_sets, tmp_path):
    """A partial run of the output that this combine cannot continue (an interrupted `bit embed
    --update`) is named with what `bit combine` takes (--overwrite), not `bit embed`'s
    --update --resume."""
    old_shards, new_shards = shard_sets
    out = tmp_path / "out.npy"
    _combine(old_shards, out)
    writer = EmbedWriter(EmbedPaths.for_output(out), dim=DIM, fingerprint=FINGERPRINT, inputs=["a.png"], update_plan="a plan")
    writer.commit(["a.png"], np.ones((1, DIM), np.float32))
    writer.close()  # as a killed `bit embed --update` leaves it
    result = bit("combine", "-o", out, new_shards, cwd=tmp_path)
    line = assert_one_error_line(result, 2, "out.npy.partial", "--overwrite")
    assert "--update" not in line and "--resume" not in line, line
    assert bit("combine", "-o", out, new_shards, "--overwrite", cwd=tmp_path).returncode == 0
