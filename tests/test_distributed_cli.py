"""`bit embed --shard I/N` and `bit combine` through the real command; option clashes; no Ray."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest

from clihelpers import assert_clean_failure, run
from distributedhelpers import (  # noqa: F401 (fixtures)
    BATCH,
    SHARD,
    THREADS,
    assert_same_files,
    inputs,
    local,
    local_nul_run,
    nul_listing,
    photos,
    remove_shard,
)


def embed(ckpt, photos, *args):
    return run(["embed", *inputs(photos), "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, "--shard-size", SHARD, *args])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def two_jobs(ckpt, photos, tmp_path_factory):
    """The stderr of jobs 0/2 and 1/2 of an array, and the output path they share."""
    out = tmp_path_factory.mktemp("array") / "out.npy"
    results = [embed(ckpt, photos, "-o", out, "--shard", f"{i}/2") for i in range(2)]
    for result in results:
        assert_clean_failure(result, 1)  # each job has failed inputs among its shards
    return out, results


@pytest.mark.slow
def test_two_jobs_then_combine_equal_the_local_run(two_jobs, local, photos):
    out, results = two_jobs
    assert "bit combine -o" in results[0].stderr and not out.exists()
    combined = run(["combine", "-o", out])
    assert combined.exit_code == 1, combined.stderr  # as the local run: some inputs failed
    assert "4 inputs failed" in combined.stderr
    assert_same_files(out, local)
    assert (out.parent / "out.npy.shards").is_dir()  # the shards stay until the user removes them
    # Each row's file identity as the jobs recorded it (issue 20: once null), so --update keeps every row.
    assert (out.parent / "out.files.jsonl").read_bytes() == (local.parent / "local.files.jsonl").read_bytes()
    # The header too, byte for byte (once it differed in key order), but for the output's own name.
    assert (out.parent / "out.meta.json").read_bytes() == (local.parent / "local.meta.json").read_bytes().replace(b'"local.', b'"out.')
    update = run(["embed", *inputs(photos), "-o", out, "--update", "--threads", THREADS, "--batch-size", BATCH])
    assert "+0 new, 0 changed, 0 removed, 13 kept, 4 retried" in update.stderr, update.stderr


def test_the_jobs_report_each_failure_once(two_jobs, local):
    _, results = two_jobs
    reported = sorted(line for result in results for line in error_lines(result.stderr))
    listed = (local.parent / "local.errors.txt").read_text().splitlines()
    assert reported == sorted(f"error: {line.replace(chr(9), ': ')}" for line in listed)


def test_combine_refuses_a_missing_shard(two_jobs, tmp_path):
    out, _ = two_jobs
    shards = tmp_path / "shards"
    shutil.copytree(out.parent / "out.npy.shards", shards)
    remove_shard(shards, 2)
    result = run(["combine", "-o", tmp_path / "x.npy", shards])
    assert_clean_failure(result, 2)
    assert "1 of 5 shards have no output yet (shard 2)" in result.stderr
    assert not (tmp_path / "x.npy").exists()


def test_a_rerun_job_needs_resume(ckpt, photos, two_jobs):
    out, _ = two_jobs
    result = embed(ckpt, photos, "-o", out, "--shard", "1/2")
    assert_clean_failure(result, 2)
    assert "--resume" in result.stderr
    again = embed(ckpt, photos, "-o", out, "--shard", "1/2", "--resume")
    assert again.exit_code == 1, again.stderr  # as a resumed local run: its inputs include failures
    assert "0 shards embedded, 2 kept" in again.stderr


def test_shards_of_another_run_are_refused_in_the_words_of_each_command(ckpt, photos, two_jobs, tmp_path):
    """A job's --resume over shards of other options or another split says the shard belongs to
    another run; combine names the two shards and says to combine one run's shards, or to rerun
    the one made with other settings (the wording bitcli has always used: issue 21 keeps it)."""
    out, _ = two_jobs
    shards = out.parent / "out.npy.shards"
    other = embed(ckpt, photos, "-o", out, "--shard", "1/2", "--resume", "--normalize")
    assert_clean_failure(other, 2)
    assert error_lines(other.stderr) == [
        f"error: {shards}/shard-000001.npy belongs to another run (normalize False in it, True in this run); pass --overwrite to redo it"
    ]
    cut = run(["embed", *inputs(photos), "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, "--shard-size", 2 * SHARD,
               "-o", out, "--shard", "1/2", "--resume"])
    assert_clean_failure(cut, 2)
    assert error_lines(cut.stderr) == [
        f"error: {shards}/shard-000001.npy belongs to another run (batch size 2 and shard size 4, not 2 and 8); pass --overwrite to start over"
    ]
    mixed = tmp_path / "mixed"
    shutil.copytree(shards, mixed)

    def combined_with_shard_1_of(other):
        """`bit combine`'s error lines once `mixed`'s shard 1 is the one in `other`."""
        remove_shard(mixed, 1)
        for name in [p.name for p in other.iterdir() if "shard-000001" in p.name]:
            shutil.copy2(other / name, mixed / name)
        combined = run(["combine", "-o", tmp_path / "c.npy", mixed])
        assert_clean_failure(combined, 2)
        return error_lines(combined.stderr)

    normalized = embed(ckpt, photos, "-o", tmp_path / "n.npy", "--shard", "1/2", "--normalize")
    assert normalized.exit_code == 1, normalized.stderr
    assert combined_with_shard_1_of(tmp_path / "n.npy.shards") == [
        f"error: {mixed}/shard-000001.npy was made with other settings than {mixed}/shard-000000.npy "
        "(normalize True in shard-000001.npy, False in shard-000000.npy); rerun it with the same model and options"
    ]
    recut = run(["embed", *inputs(photos), "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, "--shard-size", 2 * SHARD,
                 "-o", tmp_path / "r.npy", "--shard", "1/2"])
    assert recut.exit_code == 1, recut.stderr
    assert combined_with_shard_1_of(tmp_path / "r.npy.shards") == [
        f"error: {mixed}/shard-000001.npy and {mixed}/shard-000000.npy are of different runs "
        "(batch size 2 and shard size 8, not 2 and 4); combine the shards of one run"
    ]


@pytest.mark.slow
def test_dash_zero_reaches_the_shard_jobs(ckpt, photos, tmp_path):
    """`-0`: the jobs read NUL-separated paths on stdin as a local run does; combined, the same files."""
    listing = nul_listing(photos, tmp_path / "odd")
    want = local_nul_run(ckpt, listing, tmp_path / "local" / "out.npy")
    out = tmp_path / "jobs" / "out.npy"
    for i in range(2):
        args = ["embed", "-0", "-", "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, "--shard-size", SHARD]
        result = run([*args, "--shard", f"{i}/2"], input=listing)
        assert_clean_failure(result, 1)  # each job has failed inputs among its shards
    combined = run(["combine", "-o", out])
    assert combined.exit_code == 1, combined.stderr
    assert_same_files(out, want)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "--workers applies to --engine ray"),
        (["--ray-address", "auto"], "--ray-address applies to --engine ray"),
        (["--shard", "0/2", "--engine", "ray"], "pass one of them"),
        (["--shard", "2/2"], "--shard 2/2"),
        (["--shard", "half"], "expected I/N"),
        (["--shard-dir", "somewhere"], "apply to --engine ray and --shard"),
        (["--shard", "0/2", "--manifest", "rows.txt"], "give it to bit combine"),
        (["--shard", "0/2", "--shard-size", "3"], "multiple of --batch-size"),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(photos, tmp_path, args, message):
    result = run(["embed", photos, "-o", tmp_path / "o.npy", "--batch-size", "2", *args])
    assert_clean_failure(result, 2)
    assert message in result.stderr


def test_shards_never_go_to_stdout(photos, tmp_path):
    result = run(["embed", photos, "-o", "-", "--manifest", tmp_path / "m.txt", "--shard", "0/2"])
    assert_clean_failure(result, 2)
    assert "give -o OUT.npy" in result.stderr


@pytest.mark.slow
def test_engine_ray_without_ray_says_how_to_install_it(ckpt, photos, tmp_path):
    """Ray is hidden from the process (`sys.modules['ray'] = None` makes `import ray` fail)."""
    code = "import sys; sys.modules['ray'] = None; from bitcli.cli.app import main; main(sys.argv[1:])"
    args = ["embed", str(photos), "-o", str(tmp_path / "o.npy"), "-m", str(ckpt), "--engine", "ray"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["error: --engine ray needs Ray, which is not installed: pip install 'bitcli[ray]'"]
    assert not (tmp_path / "o.npy.shards").exists()


def test_a_ray_address_where_nothing_listens_fails_fast_with_one_line(ckpt, photos, tmp_path):
    """Ray would retry such an address for minutes, printing its own lines; bitcli probes it first.
    The subprocess timeout (30 s) is the bound: a hang fails the test."""
    pytest.importorskip("ray")
    with socket.socket() as unused:  # a port nobody listens on: bound, never listening
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        args = ["embed", str(photos), "-o", str(tmp_path / "o.npy"), "-m", str(ckpt), "--engine", "ray",
                "--ray-address", f"127.0.0.1:{port}"]
        done = subprocess.run([sys.executable, "-m", "bitcli", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray-address 127.0.0.1:{port}: nothing answers there"), lines
