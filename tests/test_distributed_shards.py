"""Shards without Ray: the split, batch alignment, `--shard I/N` runs, and combining them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from distributedhelpers import (  # noqa: F401 (fixtures)
    BATCH, SHARD, assert_same_files, copy_shard, inputs, job, local, output_files, photos, remove_shard, shard_files,
)

from bitcli.distributed import (
    DuplicateShardError,
    MissingShardError,
    ShardError,
    ShardMismatchError,
    Split,
    combine,
    parse_selection,
    run_shards,
)
from bitcli.distributed.shards import selected, spool_inputs
from bitcli.store import EmbedPaths
from bitcli.store.files import inputs_digest, run_state
from bitcli.distributed.worker import ShardWorker
from bitcli.errors import InputError, ModelError, UsageError
from bitcli.pipeline import RunOptions
from bitcli.inputs import InputItem, expand_inputs


def run_job(ckpt, photos, shard_dir, selection, **kw):
    return run_shards(expand_inputs(inputs(photos)), shard_dir, kw.pop("job", None) or job(ckpt), selection=selection, shard_size=SHARD, **kw)


@pytest.fixture(scope="module")
def three_jobs(ckpt, photos, tmp_path_factory):
    """Shards of a 3-job array (`--shard 0/3`, `1/3`, `2/3`) in one directory."""
    shard_dir = tmp_path_factory.mktemp("array") / "out.npy.shards"
    for i in range(3):
        run_job(ckpt, photos, shard_dir, (i, 3))
    return shard_dir


def copy_of(shard_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(shard_dir, target)
    return target


# -- the split ---------------------------------------------------------------------------------


def test_split_cuts_whole_batches_and_selection_interleaves():
    split = Split(batch_size=4, shard_size=8, entries=21)
    assert split.shards == 3
    assert [split.bounds(i) for i in range(3)] == [(0, 8), (8, 16), (16, 21)]
    assert list(selected(split, 1, 2)) == [1] and list(selected(split, 0, 2)) == [0, 2]
    assert Split(batch_size=4, shard_size=8).shards == 1  # no inputs: one empty shard
    with pytest.raises(UsageError, match="multiple of --batch-size"):
        Split(batch_size=4, shard_size=6)


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "0/0"])
def test_bad_selection_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--shard"):
        parse_selection(text)


def test_input_list_round_trips_and_hashes_like_the_embed_store(tmp_path):
    odd = os.fsdecode(b"caf\xe9.jpg")  # not UTF-8: a surrogate in Python
    entries = [InputItem(0, "a.jpg"), InputError("gone.png", "no such file or directory"), InputItem(1, odd)]
    spool = spool_inputs(entries, tmp_path / "inputs.jsonl", batch_size=1, shard_size=2)
    assert spool.split.inputs == inputs_digest([e.path for e in entries])  # what --resume compares
    assert spool.split.shards == 2
    back = spool.shard(0).read() + spool.shard(1).read()
    assert [(type(e), e.path) for e in back] == [(type(e), e.path) for e in entries]
    assert back[1].reason == "no such file or directory"


@pytest.mark.slow
def test_each_shard_forms_the_batches_of_the_whole_list(ckpt, photos, tmp_path):
    """The pipeline's batches, computed over each shard alone, are the whole list's batches."""
    from bitcli.pipeline import Embedder

    embedder = Embedder(str(ckpt), device="cpu", batch_size=BATCH)
    entries = list(expand_inputs([str(photos / "img00.png"), "missing.png", str(photos)]))
    whole = [[r.path for r in group] for group in embedder.embed_groups(entries)]
    spool = spool_inputs(entries, tmp_path / "inputs.jsonl", batch_size=BATCH, shard_size=SHARD)
    per_shard = [
        [r.path for r in group] for i in range(spool.split.shards) for group in embedder.embed_groups(spool.shard(i).read())
    ]
    assert per_shard == whole
    assert all(len(group) == BATCH for group in whole[:-1])  # failures keep their place in a batch


# -- the settings record a Ray driver writes, without loading the model -------------------------


def driver_record(job_):
    fingerprint, dim = job_.fingerprint()
    return run_state(dim, job_.dtype, fingerprint, None)


def test_the_drivers_settings_record_is_the_local_runs(ckpt, local):
    """`EmbedJob.fingerprint` reads the checkpoint's files only; the record it makes is the one a
    local `bit embed` of the same inputs published, apart from the runtime."""
    published = json.loads(local.with_name(f".{local.name}.run.json").read_text())
    made = driver_record(job(ckpt))
    assert {k: made[k] for k in ("version", "dim", "dtype", "settings")} == {
        k: published[k] for k in ("version", "dim", "dtype", "settings")}
    assert made["runtime"]["batch_size"] == published["runtime"]["batch_size"] == BATCH


@pytest.mark.parametrize("changes", [
    {"normalize": True}, {"dtype": "float16"}, {"content_hash": True},
    {"options": RunOptions(device="cpu", batch_size=BATCH, fast_jpeg=True, max_pixels=1 << 20)},
], ids=["normalize", "float16", "hash", "decode"])
def test_the_drivers_settings_record_is_the_workers_for_every_option(ckpt, changes):
    this = dataclasses.replace(job(ckpt), **changes)
    made = driver_record(this)
    worker = ShardWorker(this)
    assert made["settings"] == run_state(worker.dim, worker.job.dtype, worker.fingerprint, None)["settings"]
    assert made["dim"] == worker.dim


@pytest.mark.parametrize("weights", ["npz", "pickle", "sharded"])
def test_the_drivers_settings_record_is_the_workers_for_every_checkpoint_format(tmp_path, weights):
    """An `.npz` file and a pickle have no header: the driver reads their tensors, still without
    building the network."""
    from checkpoints import save_reference_checkpoint
    from transferdata import make_npz_checkpoint

    if weights == "npz":
        model = make_npz_checkpoint(tmp_path / "ckpt.npz")
    else:
        model = tmp_path / "ckpt"
        save_reference_checkpoint(model, weights=weights)
    this = job(model)
    made, worker = driver_record(this), ShardWorker(this)
    assert made["settings"] == run_state(worker.dim, this.dtype, worker.fingerprint, None)["settings"]


def test_the_driver_sees_a_checkpoint_retrained_in_place(ckpt, tmp_path):
    """The weights' content names a local model: one byte changed is another model."""
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    before = driver_record(job(copy))["settings"]["model"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    after = driver_record(job(copy))["settings"]["model"]
    assert before["weights_sha256"] != after["weights_sha256"]
    assert {k: v for k, v in before.items() if k != "weights_sha256"} == {k: v for k, v in after.items() if k != "weights_sha256"}


def test_the_driver_refuses_a_model_that_does_not_exist(tmp_path):
    with pytest.raises(ModelError) as info:
        job(tmp_path / "no-such-model").fingerprint()
    assert info.value.exit_code == 3


# -- shard runs and combine --------------------------------------------------------------------


@pytest.mark.slow
def test_shards_of_three_jobs_combine_to_the_local_run(three_jobs, local, tmp_path):
    failures = []
    summary = combine([three_jobs], EmbedPaths.for_output(tmp_path / "out.npy"), on_failure=lambda p, r: failures.append(p))
    assert_same_files(tmp_path / "out.npy", local)
    assert summary.rows == np.load(local).shape[0] and summary.failed == 4
    errors = output_files(local)[".errors.txt"].read_text().splitlines()
    assert failures == [line.split("\t")[0] for line in errors]  # in input order, as stderr lists them
    assert sorted(os.listdir(three_jobs)) == sorted(p.name for i in range(5) for p in shard_files(three_jobs, i))  # combine keeps them
    assert sorted(p for p in os.listdir(three_jobs) if p.endswith(".npy")) == [f"shard-{i:06d}.npy" for i in range(5)]


def test_a_missing_shard_is_refused(three_jobs, tmp_path):
    shards = copy_of(three_jobs, tmp_path)
    remove_shard(shards, 3)
    with pytest.raises(MissingShardError, match=r"1 of 5 shards .*shard 3") as info:
        combine([shards], EmbedPaths.for_output(tmp_path / "out.npy"))
    assert info.value.exit_code == 2
    assert not (tmp_path / "out.npy").exists()


def test_a_duplicated_shard_is_refused(three_jobs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    copy_shard(three_jobs, 2, other)
    with pytest.raises(DuplicateShardError, match="shard 2 is both"):
        combine([three_jobs, other], EmbedPaths.for_output(tmp_path / "out.npy"))
    combine([three_jobs, three_jobs], EmbedPaths.for_output(tmp_path / "out.npy"))  # one folder named twice is fine


@pytest.mark.slow
def test_shards_of_another_model_option_are_refused(ckpt, photos, three_jobs, tmp_path):
    other = tmp_path / "normalized"
    run_job(ckpt, photos, other, (1, 3), job=job(ckpt, normalize=True))
    mixed = copy_of(three_jobs, tmp_path)
    remove_shard(mixed, 1)
    copy_shard(other, 1, mixed)
    with pytest.raises(ShardMismatchError, match="normalize"):
        combine([mixed], EmbedPaths.for_output(tmp_path / "out.npy"))


def test_shards_of_another_split_are_refused(ckpt, photos, three_jobs, tmp_path):
    other = tmp_path / "wider"
    run_shards(expand_inputs(inputs(photos)), other, job(ckpt), selection=(1, 3), shard_size=2 * SHARD)
    with pytest.raises(ShardMismatchError, match="different runs .batch size 2 and shard size 8, not 2 and 4"):
        combine([three_jobs, other], EmbedPaths.for_output(tmp_path / "out.npy"))


def test_a_damaged_shard_is_refused(three_jobs, tmp_path):
    shards = copy_of(three_jobs, tmp_path)
    rows = shards / "shard-000000.npy"
    rows.write_bytes(rows.read_bytes()[:-4])
    with pytest.raises(ShardError, match="shard-000000.npy: damaged shard .its array changed"):
        combine([shards], EmbedPaths.for_output(tmp_path / "out.npy"))


def test_combine_never_replaces_an_output_without_overwrite(three_jobs, tmp_path):
    (tmp_path / "out.npy").write_bytes(b"mine")
    with pytest.raises(UsageError, match="--overwrite"):
        combine([three_jobs], EmbedPaths.for_output(tmp_path / "out.npy"))
    assert (tmp_path / "out.npy").read_bytes() == b"mine"


def test_a_job_rerun_needs_resume_and_then_skips_its_finished_shards(ckpt, photos, tmp_path):
    shard_dir = tmp_path / "out.npy.shards"
    first = run_job(ckpt, photos, shard_dir, (0, 2))
    assert first.ran == [0, 2, 4]
    stamp = (shard_dir / "shard-000002.npy").stat().st_mtime_ns
    with pytest.raises(UsageError, match="--resume"):
        run_job(ckpt, photos, shard_dir, (0, 2))
    remove_shard(shard_dir, 4)
    again = run_job(ckpt, photos, shard_dir, (0, 2), resume=True)
    assert again.ran == [4] and again.skipped == [0, 2]
    assert (shard_dir / "shard-000002.npy").stat().st_mtime_ns == stamp
    remove_shard(shard_dir, 4)  # something to do, with other options than shards 0 and 2
    with pytest.raises(ShardMismatchError, match="normalize False in it, True in this run"):
        run_job(ckpt, photos, shard_dir, (0, 2), resume=True, job=job(ckpt, normalize=True))
    with pytest.raises(ShardMismatchError, match="inputs changed"):  # these shards are of another list
        run_shards(expand_inputs([str(photos)]), shard_dir, job(ckpt), selection=(0, 2), shard_size=SHARD, resume=True)


def test_a_shard_is_a_collection_that_documents_what_made_it(three_jobs):
    from bitcli.collection import open_index

    meta = json.loads((three_jobs / ".shard-000001.npy.run.json").read_text())
    assert meta["shard"] == 1
    assert meta["split"]["batch_size"] == BATCH and meta["split"]["shard_size"] == SHARD and meta["split"]["entries"] == 17
    assert meta["dtype"] == "float32" and "preprocessing" in meta["settings"] and "device" in meta["runtime"]
    rows = np.load(three_jobs / "shard-000001.npy")  # a plain .npy
    assert rows.shape == (meta["rows"], 32)
    index = open_index(three_jobs / "shard-000001.npy")  # and a collection: search, dedup and info read it
    assert index.rows == meta["rows"] and index.dim == 32


def test_a_shard_being_written_counts_its_inputs_batch_by_batch(tmp_path):
    """`--engine ray`'s bar moves per batch: the driver counts the inputs a shard being written has
    committed (rows and failures), and the shard records each row's file identity."""
    from bitcli.distributed.shards import Split, inputs_in_flight
    from distributedhelpers import write_shard
    from bitcli.store.metadata import FileIdentity, read_file_rows, read_metadata

    split = Split(2, 4, 4, "x")
    seen = []

    def commits():
        yield ["a", "b"], np.ones((2, 3), dtype=np.float32), []
        seen.append(inputs_in_flight(tmp_path))
        yield ["c"], np.ones((1, 3), dtype=np.float32), [("d", "not an image")]
        seen.append(inputs_in_flight(tmp_path))

    known = {"a": FileIdentity(1, 10), "b": FileIdentity(2, 20, "ab"), "c": None}
    info = write_shard(tmp_path, 0, split, fingerprint={}, dim=3, dtype="float32", commits=commits(), identities=known.get)
    assert seen == [2, 4] and inputs_in_flight(tmp_path) == 0  # published: no longer in flight
    meta = info.paths.sidecars.meta
    assert [i for _, i in read_file_rows(meta, read_metadata(meta))] == [FileIdentity(1, 10), FileIdentity(2, 20, "ab"), None]
