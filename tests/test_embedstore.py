"""EmbedWriter: numpy-identical bytes, atomic publication, crash recovery and byte-identical resume."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bitcli.store import EmbedPaths, EmbedWriter, escape_error_path, npy_header
from bitcli.errors import UsageError

DIM = 6
FP = {"model": "tiny", "normalize": False, "batch_size": 2}


def batches(n_batches: int = 4, per: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        paths = [f"img{b}_{i}.jpg" for i in range(per)]
        out.append((paths, rng.standard_normal((per, DIM)).astype(np.float32), [(f"bad{b}.jpg", "not an image")]))
    return out


def write_all(paths: EmbedPaths, data, dtype: str = "float32", **kw) -> EmbedWriter:
    writer = EmbedWriter(paths, dim=DIM, dtype=dtype, fingerprint=FP, **kw)
    for p, rows, errs in data:
        writer.commit(p, rows, errs)
    writer.finish()
    return writer


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_output_is_byte_identical_to_numpy_save(tmp_path, dtype):
    data = batches()
    paths = EmbedPaths.for_output(tmp_path / "out.npy")
    write_all(paths, data, dtype)
    expected = np.concatenate([rows for _, rows, _ in data]).astype(dtype)
    buf = io.BytesIO()
    np.save(buf, expected)
    assert (tmp_path / "out.npy").read_bytes() == buf.getvalue()
    manifest = (tmp_path / "out.paths.txt").read_text().splitlines()
    assert manifest == [p for ps, _, _ in data for p in ps]
    assert (tmp_path / "out.errors.txt").read_text().splitlines() == [f"bad{b}.jpg\tnot an image" for b in range(4)]
    assert not paths.partial.exists()


def test_header_length_does_not_depend_on_row_count():
    lengths = {len(npy_header(np.dtype("<f4"), n, 2048)) for n in (0, 7, 10**6, 10**15)}
    assert len(lengths) == 1


def test_interrupted_run_leaves_no_output_and_resumes_byte_identical(tmp_path):
    data = batches(5)
    full = EmbedPaths.for_output(tmp_path / "full.npy")
    write_all(full, data)

    part = EmbedPaths.for_output(tmp_path / "part.npy")
    writer = EmbedWriter(part, dim=DIM, fingerprint=FP)
    for p, rows, errs in data[:2]:
        writer.commit(p, rows, errs)
    writer.close()  # as if killed: nothing published
    assert not part.out.exists() and not part.manifest.exists()
    assert part.partial.is_dir()

    resumed = EmbedWriter(part, dim=DIM, fingerprint=FP, resume=True)
    assert resumed.rows == 4 and resumed.failed == 2
    assert set(resumed.done) == {"img0_0.jpg", "img0_1.jpg", "img1_0.jpg", "img1_1.jpg", "bad0.jpg", "bad1.jpg"}
    for p, rows, errs in data[2:]:
        resumed.commit(p, rows, errs)
    summary = resumed.finish()
    assert summary.rows == 10 and summary.resumed_rows == 4 and summary.failed == 5
    assert part.out.read_bytes() == full.out.read_bytes()
    assert part.manifest.read_bytes() == full.manifest.read_bytes()
    assert part.errors.read_bytes() == full.errors.read_bytes()


def test_resume_discards_uncommitted_rows_and_torn_journal_line(tmp_path):
    data = batches(3)
    full = EmbedPaths.for_output(tmp_path / "full.npy")
    write_all(full, data)

    part = EmbedPaths.for_output(tmp_path / "part.npy")
    writer = EmbedWriter(part, dim=DIM, fingerprint=FP)
    writer.commit(*data[0])
    writer.close()
    # A kill between appending rows and journaling them, and in the middle of a journal line.
    with open(part.partial / "data.npy", "ab") as fh:
        fh.write(np.ones((2, DIM), np.float32).tobytes()[:-3])
    with open(part.partial / "journal.jsonl", "ab") as fh:
        fh.write(b'{"rows": ["img1_0.jpg"')

    resumed = EmbedWriter(part, dim=DIM, fingerprint=FP, resume=True)
    assert resumed.rows == 2
    for args in data[1:]:
        resumed.commit(*args)
    resumed.finish()
    assert part.out.read_bytes() == full.out.read_bytes()


def test_resume_refuses_different_settings(tmp_path):
    paths = EmbedPaths.for_output(tmp_path / "out.npy")
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP)
    writer.commit(*batches(1)[0])
    writer.close()
    with pytest.raises(UsageError, match="normalize"):
        EmbedWriter(paths, dim=DIM, fingerprint={**FP, "normalize": True}, resume=True)
    with pytest.raises(UsageError, match="dtype"):
        EmbedWriter(paths, dim=DIM, dtype="float16", fingerprint=FP, resume=True)
    # The partial run is untouched by the refusals.
    assert EmbedWriter(paths, dim=DIM, fingerprint=FP, resume=True).rows == 2


def test_resume_refuses_another_convolution_path(tmp_path):
    """The runtime is recorded beside the settings record: its last bits depend on the kernels."""
    paths = EmbedPaths.for_output(tmp_path / "out.npy")
    writer = EmbedWriter(paths, dim=DIM, fingerprint={**FP, "convolution": "onednn"})
    writer.commit(*batches(1)[0])
    writer.close()
    with pytest.raises(UsageError, match="convolution 'onednn' then, 'torch' now"):
        EmbedWriter(paths, dim=DIM, fingerprint={**FP, "convolution": "torch"}, resume=True)
    assert EmbedWriter(paths, dim=DIM, fingerprint={**FP, "convolution": "onednn"}, resume=True).rows == 2


def test_existing_output_and_partial_runs_need_a_decision(tmp_path):
    paths = EmbedPaths.for_output(tmp_path / "out.npy")
    write_all(paths, batches(1))
    before = paths.out.read_bytes()
    with pytest.raises(UsageError, match="--overwrite"):
        EmbedWriter(paths, dim=DIM, fingerprint=FP)
    complete = EmbedWriter(paths, dim=DIM, fingerprint=FP, resume=True)
    assert complete.already_complete
    assert paths.out.read_bytes() == before

    # --overwrite replaces the old file only when the new one is complete.
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP, overwrite=True)
    writer.commit(["new.jpg"], np.zeros((1, DIM), np.float32))
    assert paths.out.read_bytes() == before
    writer.close()
    with pytest.raises(UsageError, match="--resume"):
        EmbedWriter(paths, dim=DIM, fingerprint=FP)
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP, overwrite=True)  # discards the partial run
    assert writer.rows == 0
    writer.finish()
    assert np.load(paths.out).shape == (0, DIM)
    assert not paths.errors.exists()  # stale error list from the first run removed


def test_stream_output_round_trips(tmp_path):
    data = batches(2)
    paths = EmbedPaths.for_output(None, manifest=tmp_path / "rows.txt")
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP)
    for args in data:
        writer.commit(*args)
    buf = io.BytesIO()
    writer.finish(buf)
    arr = np.load(io.BytesIO(buf.getvalue()))
    np.testing.assert_array_equal(arr, np.concatenate([r for _, r, _ in data]))
    assert (tmp_path / "rows.txt").read_text().splitlines() == [p for ps, _, _ in data for p in ps]
    assert (tmp_path / "rows.errors.txt").exists()
    assert list(tmp_path.iterdir()) != [] and not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_stream_output_needs_a_manifest():
    with pytest.raises(UsageError, match="--manifest"):
        EmbedPaths.for_output(None)


def test_rows_must_match_paths_and_paths_must_fit_a_line(tmp_path):
    writer = EmbedWriter(EmbedPaths.for_output(tmp_path / "o.npy"), dim=DIM, fingerprint=FP)
    with pytest.raises(ValueError):
        writer.commit(["a", "b"], np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError, match="line break"):
        writer.commit(["a\nb"], np.zeros((1, DIM), np.float32))


def test_error_paths_are_escaped_to_one_line():
    assert escape_error_path("a\tb\nc\\d") == "a\\tb\\nc\\\\d"


def test_state_records_the_settings_record_and_runtime(tmp_path):
    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    EmbedWriter(paths, dim=DIM, fingerprint=FP).close()
    state = json.loads((paths.partial / "state.json").read_text())
    assert state["settings"]["model"]["reference"] == "tiny" and state["settings"]["normalize"] is False
    assert state["settings"]["dtype"] == "float32" and state["runtime"] == {"batch_size": 2}
    assert state["dim"] == DIM and state["dtype"] == "float32" and "fingerprint" not in state


def test_resume_skips_each_done_occurrence_once(tmp_path):
    """An input given twice is embedded twice; a resume skips only the occurrences done before."""
    from types import SimpleNamespace as Item

    from bitcli.store import Collection

    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    items = [Item(path=p) for p in ["a", "b", "x", "c", "a", "x"]]
    with EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=[i.path for i in items]) as writer:  # interrupted after one batch
        writer.commit(["a", "b"], np.zeros((2, DIM), np.float32), [("x", "bad")])
    run = Collection(paths).plan(items, lambda todo: iter(()), dim=DIM, fingerprint=FP, resume=True)
    try:
        assert [i.path for i in run.todo] == ["c", "a", "x"]
    finally:
        run.close()


def test_non_utf8_file_names_round_trip_as_their_bytes(tmp_path):
    name = os.fsdecode(b"\xffx.jpg")  # a surrogate, as os.listdir returns it
    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP)
    writer.commit([name], np.zeros((1, DIM), np.float32), [(name + "2", "not an image")])
    writer.close()
    resumed = EmbedWriter(paths, dim=DIM, fingerprint=FP, resume=True)
    assert resumed.done == {name: 1, name + "2": 1}  # the journal gave both names back
    resumed.finish()
    assert paths.manifest.read_bytes() == b"\xffx.jpg\n"
    assert paths.errors.read_bytes() == b"\xffx.jpg2\tnot an image\n"


@pytest.mark.parametrize("manifest", ["o.npy", "o.errors.txt", "o.npy.partial", "./sub/../o.npy"])
def test_manifest_must_not_be_another_output_file(tmp_path, monkeypatch, manifest):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    paths = EmbedPaths.for_output(Path("o.npy"), manifest=Path(manifest))
    with pytest.raises(UsageError, match="same file"):
        EmbedWriter(paths, dim=DIM, fingerprint=FP, overwrite=True)


@pytest.mark.parametrize("out", ["o.npy", None])
def test_existing_manifest_needs_overwrite(tmp_path, out):
    (tmp_path / "rows.txt").write_text("precious\n")
    paths = EmbedPaths.for_output(out and tmp_path / out, manifest=tmp_path / "rows.txt")
    with pytest.raises(UsageError, match="--overwrite"):
        EmbedWriter(paths, dim=DIM, fingerprint=FP)
    assert (tmp_path / "rows.txt").read_text() == "precious\n"
    EmbedWriter(paths, dim=DIM, fingerprint=FP, overwrite=True).finish(io.BytesIO())
    assert (tmp_path / "rows.txt").read_text() == ""


def test_manifest_directory_is_refused_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        EmbedWriter(EmbedPaths.for_output(tmp_path / "o.npy", manifest=tmp_path), dim=DIM, fingerprint=FP, overwrite=True)


def test_resume_refuses_changed_inputs(tmp_path):
    data = batches(2)
    inputs = [p for ps, _, errs in data for p in [*ps, *(e for e, _ in errs)]]
    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=inputs)
    writer.commit(*data[0])
    writer.close()
    for changed in (inputs[::-1], [*inputs, "new.jpg"]):
        with pytest.raises(UsageError, match="inputs changed"):
            EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=changed, resume=True)
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=inputs, resume=True)
    writer.commit(*data[1])
    writer.finish()
    with pytest.raises(UsageError, match="inputs changed"):  # the finished run had other inputs
        EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=[*inputs, "new.jpg"], resume=True)
    assert EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=inputs, resume=True).already_complete


def test_finished_run_with_odd_names_is_complete_for_the_same_inputs(tmp_path):
    inputs = ["a\x0cb.jpg", "t\tab\\x.jpg", "c\nd.jpg"]
    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=inputs)
    writer.commit(inputs[:1], np.zeros((1, DIM), np.float32), [(p, "bad") for p in inputs[1:]])
    writer.finish()
    assert EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=inputs, resume=True).already_complete


def test_kill_after_publishing_before_cleanup_resumes_as_complete(tmp_path, monkeypatch):
    from bitcli.store import publish

    inputs = ["img0_0.jpg", "img0_1.jpg", "bad0.jpg"]
    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    writer = EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=inputs)
    writer.commit(*batches(1)[0])
    monkeypatch.setattr(publish, "remove_partial", lambda *a, **k: None)  # killed before the cleanup
    writer.finish()
    monkeypatch.undo()
    before = paths.out.read_bytes()
    assert paths.partial.is_dir()
    resumed = EmbedWriter(paths, dim=DIM, fingerprint=FP, inputs=inputs, resume=True)
    assert resumed.already_complete and not paths.partial.exists()
    assert paths.out.read_bytes() == before


def test_close_after_a_failed_write_does_not_raise_again(tmp_path):
    class FullDisk(io.BytesIO):
        def flush(self):
            raise OSError(28, "No space left on device")

        def close(self):
            self.flush()

    writer = EmbedWriter(EmbedPaths.for_output(tmp_path / "o.npy"), dim=DIM, fingerprint=FP)
    writer._data.close()
    writer._data = FullDisk()
    with pytest.raises(OSError):
        writer.commit(["a.jpg"], np.zeros((1, DIM), np.float32))
    writer.close()  # the commit's error is the one reported
    assert (tmp_path / "o.npy.partial").is_dir()


# -- the row norms, published with the rows ------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_row_norms_are_published_with_the_rows_resumed_ones_included(tmp_path, dtype):
    """float64 norms of the stored values, as a first use computes them (zero, tiny and huge rows;
    more rows than one chunk of the computation), for rows committed before an interruption too."""
    from bitcli.collection import norms
    from bitcli.collection.index import open_index

    rng = np.random.default_rng(3)
    rows = rng.standard_normal((9000, DIM)) * rng.choice([1e-6, 1.0, 5e3], size=(9000, 1))
    rows[[0, 4500]] = 0.0
    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    first = EmbedWriter(paths, dim=DIM, dtype=dtype, fingerprint=FP)
    first.commit([f"{i}.png" for i in range(5000)], rows[:5000])
    first.close()  # interrupted
    resumed = EmbedWriter(paths, dim=DIM, dtype=dtype, fingerprint=FP, resume=True)
    resumed.commit([f"{i}.png" for i in range(5000, 9000)], rows[5000:])
    resumed.finish()
    index = open_index(paths.out)
    stored = norms.load(index)
    assert stored is not None and stored.dtype == np.float64
    np.testing.assert_array_equal(stored, norms.compute(index))
    np.testing.assert_array_equal(stored, norms.row_norms64(np.load(paths.out)))
    assert json.loads(paths.record.read_text())["files"]["norms"]["size"] == norms.norms_path(paths.out).stat().st_size


def test_staged_norms_are_sealed_only_with_the_array_they_were_computed_from(tmp_path):
    """The rename that publishes an array changes its change time: the staged norms take the
    published array's identity, and are dropped when the array in place is another one."""
    from bitcli.collection import norms
    from bitcli.collection.index import open_index

    for name, rows in (("a", 5), ("b", 5)):
        np.save(tmp_path / f"{name}.data.npy", np.arange(rows * DIM, dtype=np.float32).reshape(rows, DIM) * (name == "a" or 2))
        norms.stage(tmp_path / f"{name}.data.npy", tmp_path / f"{name}.staged")
    os.replace(tmp_path / "a.data.npy", tmp_path / "a.npy")
    (tmp_path / "a.paths.txt").write_text("".join(f"{i}.png\n" for i in range(5)))
    assert norms.load(open_index(tmp_path / "a.npy")) is None  # not sealed yet: never used
    assert norms.seal(tmp_path / "a.staged", tmp_path / "a.npy", tmp_path / "seal.tmp")
    assert norms.seal(tmp_path / "a.staged", tmp_path / "a.npy", tmp_path / "seal.tmp")  # again, after a kill: the same
    os.replace(tmp_path / "a.staged", norms.norms_path(tmp_path / "a.npy"))
    index = open_index(tmp_path / "a.npy")
    np.testing.assert_array_equal(norms.load(index), norms.compute(index))
    assert not norms.seal(tmp_path / "b.staged", tmp_path / "a.npy", tmp_path / "seal.tmp")  # another array
    assert not (tmp_path / "b.staged").exists() and not (tmp_path / "seal.tmp").exists()


def test_a_finished_output_whose_norms_are_gone_or_recomputed_is_still_complete(tmp_path):
    """The norms are derived from the array: removed (or written by a first use beside an output
    an earlier bitcli made) they do not make `--resume` or a shard check call the output changed."""
    from bitcli.collection import norms
    from bitcli.collection.index import open_index

    paths = EmbedPaths.for_output(tmp_path / "o.npy")
    write_all(paths, batches(), inputs=None)
    norms.norms_path(paths.out).unlink()
    assert EmbedWriter(paths, dim=DIM, fingerprint=FP, resume=True).already_complete
    norms.ensure(open_index(paths.out))  # a search puts them back
    assert EmbedWriter(paths, dim=DIM, fingerprint=FP, resume=True).already_complete
