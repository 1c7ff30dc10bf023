"""`bit embed --update --shard I/N` jobs, then `bit combine` (issue 20: "`--update` works on any
collection and with `--shard`"), through the real command: each job plans the whole update, as a
local `--update` does, and embeds only its shards of what changed; combine copies every kept row
from the output and publishes the local `--update`'s files, byte for byte, with its summary."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from clihelpers import make_images, run
from distributedhelpers import BATCH, THREADS, make_photos

pytestmark = pytest.mark.slow  # a model loaded by every job and run


def _embed(ckpt, photos, out, *args):
    return run(["embed", photos, "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, *args])


def _change(photos):
    """One file's content changed, one removed, three new."""
    shutil.copy(photos / "img05.png", photos / "img02.png")
    (photos / "img07.png").unlink()
    make_images(photos / "more", 3)


def test_update_as_shard_jobs_then_combine_equals_a_local_update(ckpt, tmp_path):
    photos = make_photos(tmp_path / "photos")
    sharded, local = tmp_path / "sharded", tmp_path / "local"
    sharded.mkdir()
    assert _embed(ckpt, photos, sharded / "out.npy").exit_code == 1  # the broken files
    shutil.copytree(sharded, local)
    before = dict(zip((sharded / "out.paths.txt").read_text().splitlines(), np.load(sharded / "out.npy")))
    _change(photos)

    want = _embed(ckpt, photos, local / "out.npy", "--update")
    assert want.exit_code == 1, want.stderr
    summary = "+3 new, 1 changed, 1 removed, 11 kept, 3 retried"
    assert f"{summary}; embedded 7 in" in want.stderr, want.stderr

    # The 7 inputs to embed, in order: bad1, img02, img03b, img10x (shard 0: three fail again), more/0-2 (shard 1).
    for job, code in (("0/2", 1), ("1/2", 0)):  # --update takes the model and options from OUT, as locally
        result = run(["embed", photos, "-o", sharded / "out.npy", "--update", "--shard", job, "--shard-size", 2 * BATCH,
                      "--batch-size", BATCH, "--threads", THREADS])
        assert result.exit_code == code and "bit combine -o" in result.stderr, result.stderr
    shard_dir = sharded / "out.npy.shards"
    embedded = [line for path in sorted(shard_dir.glob("shard-*.paths.txt")) for line in path.read_text().splitlines()]
    assert sorted(embedded) == sorted([str(photos / "img02.png"), *(str(photos / "more" / f"img0{i}.png") for i in range(3))])
    assert np.load(sharded / "out.npy").shape[0] == len(before)  # the jobs never touch OUT

    killed = "\n".join([  # a combine killed just after its first commit: a partial --update of OUT
        "import os, sys; from pathlib import Path",
        "from bitcli.store import EmbedPaths, EmbedWriter; from bitcli.distributed import combine",
        "commit = EmbedWriter.commit",
        "EmbedWriter.commit = lambda self, *a, **k: (commit(self, *a, **k), os._exit(0))",
        "combine([Path(sys.argv[1]).with_name('out.npy.shards')], EmbedPaths.for_output(Path(sys.argv[1])))",
    ])
    assert subprocess.run([sys.executable, "-c", killed, str(sharded / "out.npy")]).returncode == 0
    assert (sharded / "out.npy.partial").is_dir()
    renaming = "\n".join([  # the combine that continues it, killed once its publication is committed
        "import os, sys; from pathlib import Path",
        "from bitcli.store import EmbedPaths, publish; from bitcli.distributed import combine",
        "roll = publish.roll_forward",
        "publish.roll_forward = lambda partial: os._exit(0) if (partial / 'publish.json').exists() else roll(partial)",
        "combine([Path(sys.argv[1]).with_name('out.npy.shards')], EmbedPaths.for_output(Path(sys.argv[1])))",
    ])
    assert subprocess.run([sys.executable, "-c", renaming, str(sharded / "out.npy")]).returncode == 0
    assert (sharded / "out.npy.partial" / "publish.json").is_file()
    combined = run(["combine", "-o", sharded / "out.npy"])  # completes that publication: this very combine
    assert combined.exit_code == 1, combined.stderr  # the retried broken files
    assert "completed publishing" in combined.stderr and "error:" not in combined.stderr, combined.stderr
    assert f"out.npy: {summary}" in combined.stderr, combined.stderr
    for suffix in (".npy", ".paths.txt", ".errors.txt", ".files.jsonl", ".meta.json"):
        assert (sharded / f"out{suffix}").read_bytes() == (local / f"out{suffix}").read_bytes(), suffix
    after = dict(zip((sharded / "out.paths.txt").read_text().splitlines(), np.load(sharded / "out.npy")))
    kept = [p for p in before if p in after and not p.endswith("img02.png")]
    assert len(kept) == 11 and all(after[p].tobytes() == before[p].tobytes() for p in kept)

    again = run(["combine", "-o", sharded / "out.npy"])  # the plan was made for the output before this update
    assert again.exit_code == 2 and "the output changed since the jobs planned the update" in again.stderr, again.stderr


def test_update_shard_jobs_with_nothing_changed_combine_to_up_to_date(ckpt, tmp_path):
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out.npy"
    assert _embed(ckpt, photos, out, "--shard", "0/1").exit_code == 1
    assert run(["combine", "-o", out]).exit_code == 1
    published = out.read_bytes()
    shutil.rmtree(tmp_path / "out.npy.shards")
    job = run(["embed", photos, "-o", out, "--update", "--shard", "0/1", "--threads", THREADS])
    assert job.exit_code == 1, job.stderr  # the broken files are retried, and fail
    combined = run(["combine", "-o", out])
    assert combined.exit_code == 1 and "+0 new, 0 changed, 0 removed, 13 kept, 3 retried" in combined.stderr, combined.stderr
    assert out.read_bytes() == published


def test_a_second_round_of_update_jobs_with_overwrite_replaces_the_first_rounds_shards(ckpt, tmp_path):
    """A job array run every night: round two's jobs are refused until `--overwrite` (round one's
    shards and plan are still there), and with it the round goes through even when it embeds fewer
    shards than round one did: round one's shards beyond the new split are not left to break `bit combine`."""
    photos = make_photos(tmp_path / "photos")
    sharded, local = tmp_path / "sharded", tmp_path / "local"
    sharded.mkdir()
    assert _embed(ckpt, photos, sharded / "out.npy").exit_code == 1  # the broken files
    shutil.copytree(sharded, local)

    def jobs(*args):
        for job in ("0/2", "1/2"):
            result = run(["embed", photos, "-o", sharded / "out.npy", "--update", "--shard", job, "--shard-size", 2 * BATCH,
                          "--batch-size", BATCH, "--threads", THREADS, *args])
            yield result

    _change(photos)  # round one embeds 7 inputs: 2 shards
    assert [r.exit_code for r in jobs()] == [1, 0]
    assert run(["combine", "-o", sharded / "out.npy"]).exit_code == 1
    assert _embed(ckpt, photos, local / "out.npy", "--update").exit_code == 1

    shutil.copy(photos / "img04.png", photos / "img01.png")  # round two embeds 4 inputs (3 retried): 1 shard
    again = list(jobs())
    assert again[0].exit_code == 2 and "an earlier round's" in again[0].stderr and "--overwrite" in again[0].stderr, again[0].stderr
    assert [r.exit_code for r in jobs("--overwrite")] == [1, 0]
    combined = run(["combine", "-o", sharded / "out.npy"])
    assert combined.exit_code == 1 and "+0 new, 1 changed, 0 removed, 14 kept, 3 retried" in combined.stderr, combined.stderr
    assert _embed(ckpt, photos, local / "out.npy", "--update").exit_code == 1
    for suffix in (".npy", ".paths.txt", ".errors.txt", ".files.jsonl", ".meta.json"):
        assert (sharded / f"out{suffix}").read_bytes() == (local / f"out{suffix}").read_bytes(), suffix


def test_update_jobs_of_an_output_with_its_own_manifest(ckpt, tmp_path):
    """`--manifest` names where OUT's row paths are: a job planning the update must read it, so
    `--update --shard` takes it (a plain job is refused it: it writes no manifest), and the
    combine that publishes the update names it too; the result is the local `--update`'s."""
    photos = make_photos(tmp_path / "photos")
    sharded, local = tmp_path / "sharded", tmp_path / "local"
    sharded.mkdir()
    assert _embed(ckpt, photos, sharded / "out.npy", "--manifest", sharded / "rows.txt").exit_code == 1
    shutil.copytree(sharded, local)
    _change(photos)
    want = _embed(ckpt, photos, local / "out.npy", "--manifest", local / "rows.txt", "--update")
    assert want.exit_code == 1, want.stderr
    for job in ("0/2", "1/2"):
        result = run(["embed", photos, "-o", sharded / "out.npy", "--manifest", sharded / "rows.txt", "--update", "--shard", job,
                      "--shard-size", 2 * BATCH, "--batch-size", BATCH, "--threads", THREADS])
        assert result.exit_code in (0, 1) and f"bit combine -o {sharded / 'out.npy'} --manifest {sharded / 'rows.txt'}" in result.stderr
    plain = run(["embed", photos, "-o", sharded / "out.npy", "--manifest", sharded / "rows.txt", "--shard", "0/2"])
    assert plain.exit_code == 2 and "give it to bit combine" in plain.stderr, plain.stderr
    combined = run(["combine", "-o", sharded / "out.npy", "--manifest", sharded / "rows.txt"])
    assert combined.exit_code == 1 and "+3 new, 1 changed, 1 removed, 11 kept, 3 retried" in combined.stderr, combined.stderr
    for name in ("out.npy", "rows.txt", "out.errors.txt", "out.files.jsonl"):
        assert (sharded / name).read_bytes() == (local / name).read_bytes(), name
    assert not (sharded / "out.paths.txt").exists()


def test_update_shards_whose_plan_is_gone_are_never_combined_as_a_whole_output(ckpt, tmp_path):
    """The shards of `--update` jobs hold only what changed: combined without their plan (the
    shards copied from another machine without it), they would replace OUT's rows by the few
    changed ones, `--overwrite` being the advice of an existing output. A plain job refused in
    the directory (--update forgotten) leaves the plan alone."""
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out.npy"
    assert _embed(ckpt, photos, out).exit_code == 1
    published = out.read_bytes()
    _change(photos)
    job = run(["embed", photos, "-o", out, "--update", "--shard", "0/1", "--batch-size", BATCH, "--threads", THREADS])
    assert job.exit_code == 1, job.stderr
    refused = run(["embed", photos, "-o", out, "--shard", "0/1", "-m", ckpt, "--batch-size", BATCH])  # --update forgotten
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr, refused.stderr
    plan = tmp_path / "out.npy.shards" / "update.jsonl"
    assert plan.is_file()
    plan.unlink()
    for args in ([], ["--overwrite"]):
        combined = run(["combine", "-o", out, *args])
        assert combined.exit_code == 2, combined.stderr
        assert out.read_bytes() == published
    assert "--update" in combined.stderr and "update.jsonl" in combined.stderr, combined.stderr


def test_an_update_job_refused_for_its_split_leaves_no_plan(ckpt, tmp_path):
    """A bad --shard-size is refused before the job plans anything: no update.jsonl is left for
    `bit combine` to find (a later correct round worked anyway, but the refused job said nothing of it)."""
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out.npy"
    assert _embed(ckpt, photos, out).exit_code == 1  # the broken files
    result = run(["embed", photos, "-o", out, "--update", "--shard", "0/2", "--shard-size", BATCH + 1,
                  "--batch-size", BATCH, "--threads", THREADS])
    assert result.exit_code == 2 and "--shard-size" in result.stderr, result.stderr
    assert not (tmp_path / "out.npy.shards" / "update.jsonl").exists()
