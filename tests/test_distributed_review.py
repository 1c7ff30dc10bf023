"""A review of `--shard I/N`, `bit combine` and `--engine ray --resume`, driving the real `bit`:
kept shards are never published or reported as another model's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distributedhelpers import BATCH, SHARD, make_photos
from relhelpers import norms_state



def bit(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitcli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def shard_args(model: Path, *extra) -> list:
    return ["photos", "-o", "out.npy", "-m", model, "--batch-size", BATCH, "--shard-size", SHARD, "--threads", 1, *extra]


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """A second tiny model (another seed): same shapes, other rows."""
    from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor

    directory = tmp_path_factory.mktemp("other") / "other"
    save_reference_checkpoint(directory, seed=1, preprocessor=tiny_preprocessor(32), **TINY)
    return directory


@pytest.fixture
def jobs_of_other_model(other_ckpt, tmp_path):
    """A folder whose out.npy.shards/ holds every shard of a one-job array made with `other_ckpt`."""
    make_photos(tmp_path / "photos")
    done = bit("embed", *shard_args(other_ckpt, "--shard", "0/1"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the broken files
    return tmp_path


@pytest.mark.slow
def test_a_shard_job_resumed_with_another_model_is_refused_when_all_its_shards_are_done(ckpt, jobs_of_other_model):
    result = bit("embed", *shard_args(ckpt, "--shard", "0/1", "--resume"), cwd=jobs_of_other_model)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "model" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_ray_resume_of_shard_jobs_output_never_publishes_them_as_its_own(ckpt, jobs_of_other_model):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bitcli[ray]')")
    here = jobs_of_other_model
    before = {p.name: p.read_bytes() for p in (here / "out.npy.shards").rglob("*") if p.is_file()}
    result = bit("embed", *shard_args(ckpt, "--engine", "ray", "--resume"), cwd=here)  # no cluster is started: refused first
    assert result.returncode == 2, result.stderr
    assert "bit combine" in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (here / "out.npy").exists()  # before: the other model's rows, recorded as this model's
    assert {p.name: p.read_bytes() for p in (here / "out.npy.shards").rglob("*") if p.is_file()} == before  # jobs' work kept


def test_combine_to_stdout_is_refused_by_name(tmp_path):
    result = bit("combine", "-o", "-", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: -o -: bit combine writes files (the array, manifest, error list, run record); give -o OUT.npy\n"
    assert list(tmp_path.iterdir()) == []  # before: "-.npy.shards: not a shard directory"


@pytest.mark.slow
def test_combine_over_an_existing_output_advises_only_its_own_flags(ckpt, tmp_path):
    make_photos(tmp_path / "photos")
    assert bit("embed", *shard_args(ckpt, "--shard", "0/1"), cwd=tmp_path).returncode == 1
    assert bit("combine", "-o", "out.npy", cwd=tmp_path).returncode == 1
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    again = bit("combine", "-o", "out.npy", cwd=tmp_path)
    assert again.returncode == 2  # before: "... --update to bring it up to date (or --resume)", flags combine lacks
    assert again.stderr == "error: out.npy already exists; pass --overwrite to replace it\n"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before

    def the_set() -> dict:  # the row norms name the array they describe (its inode): compared as `norms_state`
        return {p.name: norms_state(p) if p.name.endswith(".norms.npz") else p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    published = the_set()
    assert published["out.norms.npz"][1]  # the norms of the array beside them
    assert bit("combine", "-o", "out.npy", "--overwrite", cwd=tmp_path).returncode == 1
    assert the_set() == published  # the same set again


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--manifest", "-o"])
def test_combine_never_writes_into_a_shard_folder_it_reads(ckpt, tmp_path, option):
    make_photos(tmp_path / "photos")
    assert bit("embed", *shard_args(ckpt, "--shard", "0/1"), cwd=tmp_path).returncode == 1
    shards = tmp_path / "out.npy.shards"
    before = {p.relative_to(shards): p.read_bytes() for p in shards.rglob("*") if p.is_file()}
    target = {"--manifest": "out.npy.shards/shard-000001.paths.txt", "-o": "out.npy.shards/shard-000001.npy"}[option]
    args = ["-o", "out.npy", "--manifest", target] if option == "--manifest" else ["-o", target, "out.npy.shards"]
    result = bit("combine", *args, "--overwrite", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "a file of the shard" in result.stderr and "Traceback" not in result.stderr
    # before: the shard's paths.txt became the whole manifest, so every later combine refused it
    assert {p.relative_to(shards): p.read_bytes() for p in shards.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["shard", "ray"])
@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_a_shard_dir_that_cannot_be_a_directory_is_a_usage_error(ckpt, tmp_path, engine, kind):
    if engine == "ray":
        pytest.importorskip("ray", reason="Ray is not installed (pip install 'bitcli[ray]')")
    make_photos(tmp_path / "photos")
    there = tmp_path / "there"
    there.write_text("mine\n") if kind == "file" else there.symlink_to(tmp_path / "nowhere")
    how = ["--shard", "0/1"] if engine == "shard" else ["--engine", "ray"]
    result = bit("embed", *shard_args(ckpt, *how, "--shard-dir", "there"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr  # before: "unexpected FileExistsError", exit 1
    assert result.stderr == "error: there: not a directory, so shards cannot go there; give --shard-dir DIR\n"
    assert (there.read_text() == "mine\n") if kind == "file" else (there.is_symlink() and not there.exists())
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "out.npy.partial").exists()


@pytest.mark.slow
def test_a_killed_combine_is_a_partial_run_that_bit_embed_resume_finishes(ckpt, tmp_path):
    """`bit combine` commits the shards through the local run's writer: killed after its first
    commit, it leaves the partial run a local `bit embed` of the same inputs leaves, which a plain
    `bit embed` sends to --resume and `--resume` finishes, byte for byte the local run's files."""
    make_photos(tmp_path / "photos")
    assert bit("embed", *shard_args(ckpt, "--shard", "0/1"), cwd=tmp_path).returncode == 1  # the broken files
    killed = "\n".join([  # a combine killed just after its first commit (its lock goes with the process)
        "import os; from pathlib import Path",
        "from bitcli.store import EmbedPaths, EmbedWriter; from bitcli.distributed import combine",
        "commit = EmbedWriter.commit",
        "EmbedWriter.commit = lambda self, *a, **k: (commit(self, *a, **k), os._exit(0))",
        "combine([Path('out.npy.shards')], EmbedPaths.for_output(Path('out.npy')))",
    ])
    assert subprocess.run([sys.executable, "-c", killed], cwd=tmp_path).returncode == 0
    assert (tmp_path / "out.npy.partial").is_dir() and not (tmp_path / "out.npy").exists()
    embed = ["embed", "photos", "-o", "out.npy", "-m", ckpt, "--batch-size", BATCH, "--threads", 1]
    plain = bit(*embed, cwd=tmp_path)
    assert plain.returncode == 2
    assert plain.stderr == (
        "error: out.npy: an interrupted run left out.npy.partial; pass --resume to continue it or --overwrite to start over\n"
    )
    assert bit(*embed, "--resume", cwd=tmp_path).returncode == 1  # the broken files, again
    assert bit(*embed[:3], "local.npy", *embed[4:], cwd=tmp_path).returncode == 1
    for suffix in (".npy", ".paths.txt", ".errors.txt"):
        assert (tmp_path / f"out{suffix}").read_bytes() == (tmp_path / f"local{suffix}").read_bytes(), suffix
