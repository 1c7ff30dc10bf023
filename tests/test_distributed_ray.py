"""`--engine ray` on a local Ray cluster: the same bytes as a local run, resume after a killed driver,
`--resume` of a finished output as strict as a local one, `-0`.

One 4-CPU local cluster (`ray.init(address="local")`, never a cluster someone else started on
this machine) serves the module and is shut down after it: two workers of two threads each, the
thread count of the local reference run (see distributedhelpers). Skipped when Ray is not
installed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bitcli[ray]')")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray's own

from clihelpers import run  # noqa: E402
from distributedhelpers import (  # noqa: E402, F401 (fixtures)
    BATCH,
    SHARD,
    THREADS,
    assert_same_files,
    inputs,
    job,
    local,
    local_nul_run,
    make_photos,
    nul_listing,
    output_files,
    photos,
)

from bitcli.distributed import EmbedJob, Progress, RayOptions, embed_on_ray  # noqa: E402
from bitcli.store import EmbedPaths  # noqa: E402
from bitcli.errors import ModelError, UsageError  # noqa: E402
from bitcli.inputs import expand_inputs  # noqa: E402
from bitcli.pipeline import RunOptions  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private local cluster; its workers inherit an empty Hugging Face cache and no network."""
    env = {"HF_HOME": str(tmp_path_factory.mktemp("ray_hf_home")), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        ray.init(address="local", num_cpus=2 * THREADS, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def ray_args(cluster, ckpt, out, *args):
    """`bit embed ... --engine ray` on the module's cluster, with the local reference's settings."""
    common = ["-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS]
    return ["embed", *args, *common, "--engine", "ray", "--ray-address", cluster, "--workers", 2, "--shard-size", SHARD]


@pytest.fixture(scope="module")
def ray_run(cluster, ckpt, photos, tmp_path_factory):
    """The real command's result and output (`ray.npy`), in a folder of its own."""
    out = tmp_path_factory.mktemp("ray") / "ray.npy"
    return run(ray_args(cluster, ckpt, out, *inputs(photos))), out


def test_bit_embed_on_ray_equals_the_local_run(ray_run, local):
    """The real command, `--engine ray` on the module's cluster: files and error lines as locally."""
    result, out = ray_run
    assert result.exit_code == 1, result.stderr  # some inputs failed, as locally
    assert_same_files(out, local)
    local_errors = output_files(local)[".errors.txt"].read_text().splitlines()
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {line.replace(chr(9), ': ')}" for line in local_errors
    ]  # the local run's stderr lines, in input order
    assert "embedded 13 images" in result.stderr and "Traceback" not in result.stderr
    record = ".ray.npy.run.json"  # the run record a local run publishes too, with the same settings
    made, published = (json.loads(p.with_name(f".{p.name}.run.json").read_text()) for p in (out, local))
    assert {k: v for k, v in made.items() if k not in ("files", "created")} == {k: v for k, v in published.items() if k not in ("files", "created")}
    sidecar = ["ray.meta.json", "ray.files.jsonl", "ray.norms.npz"]  # the metadata sidecar and the row norms (docs/collection.md)
    assert sorted(os.listdir(out.parent)) == sorted([record, *sidecar, *(p.name for p in output_files(out).values())])


def test_bit_search_reads_a_ray_output_through_its_sidecar(ray_run, tmp_path):
    """The sidecar is published in the set (the run record lists it) with the files' identities, and
    `bit search` finds the model in it: a query that is no row is embedded without --model."""
    _, out = ray_run
    record = json.loads((out.parent / ".ray.npy.run.json").read_text())
    assert record["files"]["metadata"]["size"] == (out.parent / "ray.meta.json").stat().st_size
    rows = [json.loads(line) for line in (out.parent / "ray.files.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == (out.parent / "ray.paths.txt").read_text().splitlines()
    for r in rows:  # the identities a local run records, so --update keeps these rows
        info = os.stat(r["path"])
        assert (r["size"], r["mtime_ns"]) == (info.st_size, info.st_mtime_ns)
    query = tmp_path / "query.png"
    shutil.copy(rows[0]["path"], query)  # a byte copy, not a row of the index
    found = run(["search", out, query, "-k", 1, "-f", "jsonl"])
    assert found.exit_code == 0, found.stderr
    best = json.loads(found.stdout)["matches"][0]
    assert (best["path"], best["score"]) == (rows[0]["path"], 1.0)  # ties go to index order


def test_a_local_update_after_ray_embeds_only_the_inputs_that_failed(ckpt, photos, ray_run, tmp_path):
    _, out = ray_run
    copy = tmp_path / "copy"
    shutil.copytree(out.parent, copy)
    result = run(["embed", *inputs(photos), "-o", copy / "ray.npy", "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, "--update"])
    rows = len((copy / "ray.paths.txt").read_text().splitlines())
    assert f"0 changed, 0 removed, {rows} kept" in result.stderr, result.stderr  # only the failures retried


def test_resume_of_a_finished_ray_output_is_checked_like_a_local_one(cluster, ckpt, photos, ray_run):
    _, out = ray_run
    before = {suffix: path.read_bytes() for suffix, path in output_files(out).items()}
    again = run(ray_args(cluster, ckpt, out, *inputs(photos), "--resume"))
    assert again.exit_code == 1, again.stderr  # exits as the finished run did: some inputs failed
    assert "already complete" in again.stderr and "4 inputs failed" in again.stderr
    for args, fragment in (
        (["--normalize"], "normalize"),
        (["--dtype", "float16"], "dtype"),
        (["--batch-size", 4 * BATCH], "batch_size"),
    ):
        refused = run([*ray_args(cluster, ckpt, out, *inputs(photos), "--resume"), *args])
        assert refused.exit_code == 2, refused.stderr
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and fragment in lines[0] and "--overwrite" in lines[0], lines
    other_inputs = run(ray_args(cluster, ckpt, out, str(photos), "--resume"))
    assert other_inputs.exit_code == 2 and "inputs changed" in other_inputs.stderr, other_inputs.stderr
    assert {suffix: path.read_bytes() for suffix, path in output_files(out).items()} == before


def test_a_finished_ray_output_resumes_locally_as_a_local_run_would(ckpt, photos, ray_run):
    """Its run record is a local run's (same fingerprint, input digest, sizes): the local engine's
    strict check finds it complete."""
    _, out = ray_run
    again = run(["embed", *inputs(photos), "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, "--resume"])
    assert again.exit_code == 1, again.stderr
    assert "already complete" in again.stderr


def test_a_finished_local_output_resumes_on_ray_as_complete(cluster, ckpt, photos, local):
    """The driver makes the local run's settings record without loading the model, so it checks
    a local run's output as strictly as a Ray one's (once refused: "resume it with --engine local")."""
    before = {suffix: path.read_bytes() for suffix, path in output_files(local).items()}
    again = run(ray_args(cluster, ckpt, local, *inputs(photos), "--resume"))
    assert again.exit_code == 1 and "already complete" in again.stderr, again.stderr
    refused = run([*ray_args(cluster, ckpt, local, *inputs(photos), "--resume"), "--normalize"])
    assert refused.exit_code == 2 and "normalize" in refused.stderr, refused.stderr
    assert {suffix: path.read_bytes() for suffix, path in output_files(local).items()} == before


def test_resume_of_an_output_without_a_run_record_is_refused(cluster, ckpt, photos, ray_run, tmp_path):
    _, out = ray_run
    for suffix, path in output_files(out).items():  # the three files, as an older bitcli left them
        (tmp_path / f"old{suffix}").write_bytes(path.read_bytes())
    refused = run(ray_args(cluster, ckpt, tmp_path / "old.npy", *inputs(photos), "--resume"))
    assert refused.exit_code == 2 and "record" in refused.stderr and "--overwrite" in refused.stderr, refused.stderr


def test_dash_zero_on_ray_equals_the_local_run(cluster, ckpt, photos, tmp_path):
    listing = nul_listing(photos, tmp_path / "odd")
    want = local_nul_run(ckpt, listing, tmp_path / "local" / "out.npy")
    result = run(ray_args(cluster, ckpt, tmp_path / "ray.npy", "-0", "-"), input=listing)
    assert result.exit_code == 1, result.stderr
    assert_same_files(tmp_path / "ray.npy", want)


DRIVER = """
import json, os, signal, sys
from pathlib import Path
from bitcli.distributed import EmbedJob, RayOptions, embed_on_ray
from bitcli.store import EmbedPaths
from bitcli.inputs import expand_inputs

def die_after_one_shard(state):
    if state.shards_done >= 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the driver dies mid-run, without any cleanup

args, out, job, address, size = sys.argv[1:]
embed_on_ray(expand_inputs(json.loads(args)), EmbedPaths.for_output(Path(out)), EmbedJob.from_json(json.loads(job)),
             RayOptions(address=address, workers=1, shard_size=int(size)), progress=die_after_one_shard)
"""


def test_resume_after_the_driver_is_killed_finishes_to_the_same_bytes(cluster, ckpt, photos, local, tmp_path):
    out, size = tmp_path / "out.npy", BATCH  # shards of one batch: nine of them
    argv = [json.dumps(inputs(photos)), str(out), json.dumps(job(ckpt).to_json()), cluster, str(size)]
    driver = subprocess.run([sys.executable, "-c", DRIVER, *argv], capture_output=True, text=True, timeout=300)
    assert driver.returncode == -signal.SIGKILL, driver.stderr
    shard_dir = tmp_path / "out.npy.shards"
    finished = sorted(p for p in shard_dir.iterdir() if p.name.startswith("shard-") and p.name.endswith(".npy"))
    assert finished and not out.exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in finished}
    metas = [json.loads((shard_dir / f".{p.name}.run.json").read_text()) for p in finished]
    rows, failed = sum(m["rows"] for m in metas), sum(m["failed"] for m in metas)
    assert (shard_dir / "inputs.jsonl").is_file()  # the driver's input list: what marks a Ray run's shard directory

    paths = EmbedPaths.for_output(out)
    with pytest.raises(UsageError, match="--resume"):
        embed_on_ray(expand_inputs(inputs(photos)), paths, job(ckpt), RayOptions(shard_size=size))
    # A local --resume neither embeds everything again beside the Ray run's shards nor leaves them:
    # one line naming the way to continue them.
    local_resume = run(["embed", *inputs(photos), "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS, "--resume"])
    assert local_resume.exit_code == 2 and local_resume.stderr.count("error:") == 1, local_resume.stderr
    assert "--engine ray --resume" in local_resume.stderr and not out.exists(), local_resume.stderr
    assert {p.name: p.stat().st_mtime_ns for p in finished} == stamps

    seen: list[Progress] = []

    def check_untouched(state):
        seen.append(state)
        if state.shards_done == state.shards_total:  # before the shards are combined and removed
            assert {name: (shard_dir / name).stat().st_mtime_ns for name in stamps} == stamps

    summary = embed_on_ray(
        expand_inputs(inputs(photos)), paths, job(ckpt), RayOptions(workers=2, shard_size=size), resume=True, progress=check_untouched
    )
    # The killed driver's actor may publish the shard it was on before Ray stops it: at least
    # the shards seen above are done, and none of them was computed again (the stamps above).
    assert seen[0].shards_done >= len(finished) and seen[0].failed >= failed
    # One report per finished shard, and between them the inputs done in shards being written
    # (the bar moves per batch): shards and inputs never go backwards between shard reports.
    counts = [s.shards_done for s in seen]
    assert sorted(set(counts)) == list(range(seen[0].shards_done, 10)) and counts == sorted(counts)
    assert seen[-1] == Progress(9, 9, 17, 17, 4)
    assert summary.resumed_rows >= rows
    assert_same_files(out, local)
    assert not shard_dir.exists()


def test_a_local_run_over_an_interrupted_ray_runs_shards_refuses_or_with_overwrite_removes_them(ckpt, photos, tmp_path):
    """The shard directory a killed Ray driver left (its shards and input list): a local run, with
    --resume or without, is refused with one line naming --engine ray --resume; --overwrite embeds
    locally, removes the Ray run's shards and says so (no stale shard files left unmentioned)."""
    out, shard_dir = tmp_path / "out.npy", tmp_path / "out.npy.shards"
    ray_leftovers(ckpt, photos, shard_dir)
    local_args = ["embed", *inputs(photos), "-o", out, "-m", ckpt, "--batch-size", BATCH, "--threads", THREADS]
    for extra in ([], ["--resume"]):
        refused = run([*local_args, *extra])
        assert refused.exit_code == 2 and refused.stderr.count("error:") == 1, refused.stderr
        assert "--engine ray --resume" in refused.stderr and str(shard_dir) in refused.stderr and not out.exists()
    replaced = run([*local_args, "--overwrite"])
    assert replaced.exit_code == 1, replaced.stderr  # the broken files, as in every run of these inputs
    assert f"removed {shard_dir}" in replaced.stderr and not shard_dir.exists() and out.exists(), replaced.stderr


def ray_leftovers(ckpt, photos, shard_dir, entries=None):
    """What a Ray driver killed mid-run leaves: its input list and some finished shards (made here
    as a worker makes them)."""
    from bitcli.distributed import run_shards
    from bitcli.distributed.shards import spool_inputs

    entries = entries or inputs(photos)
    run_shards(expand_inputs(entries), shard_dir, job(ckpt), selection=(0, 2), shard_size=SHARD)
    spool_inputs(expand_inputs(entries), shard_dir / "inputs.jsonl", batch_size=BATCH, shard_size=SHARD)


def test_resume_with_other_inputs_is_refused(cluster, ckpt, photos, tmp_path):
    shard_dir = tmp_path / "out.npy.shards"
    ray_leftovers(ckpt, photos, shard_dir, inputs(photos)[:1] * 2)
    with pytest.raises(UsageError) as info:
        embed_on_ray(expand_inputs(inputs(photos)), EmbedPaths.for_output(tmp_path / "out.npy"), job(ckpt),
                     RayOptions(shard_size=SHARD), resume=True)
    assert str(info.value) == f"{shard_dir}: inputs changed since the interrupted run; pass --overwrite to start again"


def test_resume_after_the_checkpoint_was_retrained_in_place_is_refused(ckpt, photos, tmp_path):
    """Issue 20: the interrupted run's finished shards record the weights' digest, which the driver
    computes without loading the model; other weights at the same path are refused, not mixed."""
    model = tmp_path / "ckpt"
    shutil.copytree(ckpt, model)
    shard_dir = tmp_path / "out.npy.shards"
    ray_leftovers(model, photos, shard_dir)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained in place: the same names, other content
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=f"^{re.escape(str(shard_dir))} was made with different settings "
                       r"\(model\.weights_sha256 '[0-9a-f]+' then, '[0-9a-f]+' now\); resume with the same model and options, "
                       "or pass --overwrite to start over$"):
        embed_on_ray(expand_inputs(inputs(photos)), EmbedPaths.for_output(tmp_path / "out.npy"), job(model),
                     RayOptions(shard_size=SHARD), resume=True)
    assert not (tmp_path / "out.npy").exists()


def test_a_model_that_cannot_load_is_a_model_error(cluster, photos, tmp_path):
    with pytest.raises(ModelError, match="does not exist") as info:
        embed_on_ray(
            expand_inputs(inputs(photos)),
            EmbedPaths.for_output(tmp_path / "out.npy"),
            EmbedJob(str(tmp_path / "no-such-model"), RunOptions(device="cpu", batch_size=BATCH), threads=1),
            RayOptions(workers=1, shard_size=SHARD),
        )
    assert info.value.exit_code == 3
    assert not (tmp_path / "out.npy").exists()


STOP_SECONDS = 5  # issue 20: SIGTERM and Ctrl-C end a Ray run within 5 s


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_ends_a_ray_run_promptly_and_leaves_it_resumable(cluster, ckpt, photos, tmp_path, signum):
    """`ray.init` replaces the driver's SIGTERM handler (a piped run once ignored SIGTERM for 12
    minutes, Ctrl-C took ~30 s): bitcli's own ends the run as Ctrl-C does, finished shards kept
    for --resume. Ctrl-C is SIGINT to the driver's whole process group, as a terminal sends it.
    The communicate timeout bounds the wait: a driver that takes longer fails the test."""
    out = tmp_path / "out.npy"
    many = inputs(photos)[:1] * 5  # 5 x the folder: enough shards that the run is still going
    args = [*ray_args(cluster, ckpt, out, *many)[:-4], "--workers", 1, "--shard-size", BATCH]
    proc = subprocess.Popen([sys.executable, "-m", "bitcli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    shard_dir = tmp_path / "out.npy.shards"
    deadline = time.monotonic() + 120
    while not (shard_dir.is_dir() and any(p.name.startswith("shard-") for p in shard_dir.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.01)
    os.killpg(proc.pid, signum)
    try:
        _, stderr = proc.communicate(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{signal.Signals(signum).name} did not end the Ray run within {STOP_SECONDS} s: {proc.communicate()[1]!r}")
    assert proc.returncode == 130, stderr
    assert b"rerun with --resume" in stderr and b"Traceback" not in stderr
    assert not out.exists()
    resumed = run([*ray_args(cluster, ckpt, out, *many)[:-4], "--workers", 1, "--shard-size", BATCH, "--resume"])
    assert resumed.exit_code == 1, resumed.stderr  # the broken files fail, as locally
    assert len((tmp_path / "out.paths.txt").read_text().splitlines()) == 5 * 13


def test_update_on_ray_embeds_only_what_changed_and_keeps_the_rest(cluster, ckpt, tmp_path):
    """`--update --engine ray`: the plan is local, what it must embed runs on the cluster, the
    kept rows are copied byte for byte, and the result equals a fresh local embed."""
    from clihelpers import make_images

    photos = make_photos(tmp_path / "photos")
    common = ["-m", ckpt, "--batch-size", BATCH, "--threads", THREADS]
    assert run(["embed", photos, "-o", tmp_path / "out.npy", *common]).exit_code == 1  # the broken files
    before = dict(zip((tmp_path / "out.paths.txt").read_text().splitlines(), np.load(tmp_path / "out.npy")))
    make_images(photos / "more", 3)
    result = run(["embed", photos, "-o", tmp_path / "out.npy", *common, "--update", "--engine", "ray", "--ray-address", cluster,
                  "--workers", 1, "--shard-size", SHARD])
    assert result.exit_code == 1, result.stderr  # the broken files, retried, fail again
    assert "+3 new, 0 changed, 0 removed, 13 kept, 3 retried; embedded 6 in" in result.stderr
    after = dict(zip((tmp_path / "out.paths.txt").read_text().splitlines(), np.load(tmp_path / "out.npy")))
    assert all(after[p].tobytes() == row.tobytes() for p, row in before.items())
    assert run(["embed", photos, "-o", tmp_path / "fresh.npy", *common]).exit_code == 1
    assert (tmp_path / "out.paths.txt").read_text() == (tmp_path / "fresh.paths.txt").read_text()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.load(tmp_path / "fresh.npy"), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.npy.update")) == []  # scratch removed
