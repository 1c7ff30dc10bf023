"""`bit embed` through the real command: rows vs the library, manifest alignment, atomicity, resume."""

from __future__ import annotations

import io

import numpy as np
import pytest

from clihelpers import assert_clean_failure, make_images, run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos") / "photos"
    make_images(directory, 7, bad=("bad1.png", "img03b.jpg"))
    return directory


@pytest.fixture(scope="module")
def library(ckpt, photos):
    """path -> float32 vector from the library API, and the failed paths, for the folder."""
    import bitcli

    result = bitcli.embed([str(photos)], model=str(ckpt), device="cpu", batch_size=2)
    return dict(zip(result.paths, result.vectors)), [p for p, _ in result.errors]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def embed(ckpt, *args, **kw):
    return run(["embed", *args, "-m", ckpt, "--batch-size", "2"], **kw)


@pytest.mark.slow
def test_rows_align_with_manifest_when_inputs_fail(ckpt, photos, library, tmp_path):
    vectors, failed = library
    result = embed(ckpt, photos, "missing.png", "-o", tmp_path / "out.npy")
    assert_clean_failure(result, 1)
    arr = np.load(tmp_path / "out.npy")
    manifest = (tmp_path / "out.paths.txt").read_text().splitlines()
    assert arr.shape == (7, 32) and arr.dtype == np.float32
    assert manifest == sorted(vectors)  # the 7 good images, in directory (name) order
    for row, path in zip(arr, manifest):
        np.testing.assert_array_equal(row, vectors[path])
    errors = [line.split("\t") for line in (tmp_path / "out.errors.txt").read_text().splitlines()]
    assert [p for p, _ in errors] == [*failed, "missing.png"]
    assert all(reason for _, reason in errors)
    assert result.stderr.count("error:") == 3
    assert result.stdout == ""
    assert not (tmp_path / "out.npy.partial").exists()


def test_normalize_and_float16(ckpt, photos, library, tmp_path):
    vectors, _ = library
    result = embed(ckpt, photos / "img00.png", photos / "img01.png", "-o", tmp_path / "o.npy", "--normalize", "--dtype", "float16")
    assert result.exit_code == 0, result.stderr
    arr = np.load(tmp_path / "o.npy")
    assert arr.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(arr.astype(np.float32), axis=1), 1.0, atol=2e-3)
    want = vectors[str(photos / "img01.png")]
    np.testing.assert_allclose(arr[1], want / np.linalg.norm(want), atol=2e-3)


def test_stdout_round_trips_through_numpy_load(ckpt, photos, library, tmp_path):
    vectors, _ = library
    # img01 and img02 also share a batch of two in the library run (bad1.png, img00.png come first).
    result = embed(ckpt, photos / "img02.png", photos / "img01.png", "-o", "-", "--manifest", tmp_path / "rows.txt")
    assert result.exit_code == 0, result.stderr
    arr = np.load(io.BytesIO(result.stdout_bytes))
    paths = (tmp_path / "rows.txt").read_text().splitlines()
    assert paths == [str(photos / "img02.png"), str(photos / "img01.png")]
    np.testing.assert_array_equal(arr, np.stack([vectors[p] for p in paths]))


def test_stdout_needs_a_manifest(ckpt, photos):
    result = embed(ckpt, photos / "img00.png", "-o", "-")
    assert_clean_failure(result, 2)
    assert "--manifest" in result.stderr


def test_stdin_paths_and_newline_in_a_file_name(ckpt, photos, tmp_path, library):
    vectors, _ = library
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "a\nb.png").write_bytes((photos / "img00.png").read_bytes())
    (odd / "c.png").write_bytes((photos / "img01.png").read_bytes())
    # img05 makes c.png share a batch of two, as img01 does in the library run (exact bytes).
    stdin = f"{photos / 'img04.png'}\n{odd}\n{photos / 'img05.png'}\n"
    result = embed(ckpt, "-", "-o", tmp_path / "o.npy", input=stdin)
    assert_clean_failure(result, 1)
    manifest = (tmp_path / "o.paths.txt").read_text().splitlines()
    assert manifest == [str(photos / "img04.png"), str(odd / "c.png"), str(photos / "img05.png")]
    arr = np.load(tmp_path / "o.npy")
    np.testing.assert_array_equal(arr[1], vectors[str(photos / "img01.png")])
    errors = (tmp_path / "o.errors.txt").read_text().splitlines()
    assert len(errors) == 1 and errors[0].startswith(str(odd / "a\\nb.png") + "\t")


def test_carriage_return_in_a_file_name_is_one_failed_input(ckpt, photos, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "a\rb.png").write_bytes((photos / "img00.png").read_bytes())
    (odd / "c.png").write_bytes((photos / "img01.png").read_bytes())
    result = embed(ckpt, odd, "-o", tmp_path / "o.npy")
    assert_clean_failure(result, 1)
    assert "unexpected" not in result.stderr
    assert (tmp_path / "o.paths.txt").read_text().splitlines() == [str(odd / "c.png")]
    errors = (tmp_path / "o.errors.txt").read_text().splitlines()
    assert errors == [f"{odd}/a\\rb.png\tpath contains a line break (not supported)"]


def test_existing_output_is_refused_before_loading_the_model(photos, tmp_path):
    (tmp_path / "o.npy").write_bytes(b"precious")
    result = run(["embed", photos / "img00.png", "-o", tmp_path / "o.npy", "-m", "no/such-model"])
    assert_clean_failure(result, 2)  # 2, not 3: the model was never looked up
    assert "--overwrite" in result.stderr
    assert (tmp_path / "o.npy").read_bytes() == b"precious"


@pytest.mark.parametrize("output", ["o.npy", "-"])
def test_existing_manifest_is_refused_before_loading_the_model(photos, tmp_path, output):
    (tmp_path / "rows.txt").write_bytes(b"precious")
    result = run(["embed", photos / "img00.png", "-o", output, "--manifest", "rows.txt", "-m", "no/such-model"])
    assert_clean_failure(result, 2)
    assert "--overwrite" in result.stderr
    assert (tmp_path / "rows.txt").read_bytes() == b"precious"


def test_overwrite_replaces(ckpt, photos, tmp_path):
    (tmp_path / "o.npy").write_bytes(b"old")
    result = embed(ckpt, photos / "img00.png", "-o", tmp_path / "o.npy", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert np.load(tmp_path / "o.npy").shape == (1, 32)


def test_interrupted_run_resumes_to_identical_bytes(ckpt, photos, tmp_path, monkeypatch):
    from bitcli.pipeline import Embedder

    inputs = [photos, "missing.png", photos / "img01.png"]
    full = embed(ckpt, *inputs, "-o", tmp_path / "full.npy")
    assert full.exit_code == 1

    original = Embedder.embed_groups

    def interrupted(self, items):
        for n, group in enumerate(original(self, items)):
            if n == 2:
                raise KeyboardInterrupt
            yield group

    monkeypatch.setattr(Embedder, "embed_groups", interrupted)
    first = embed(ckpt, *inputs, "-o", tmp_path / "part.npy")
    assert first.exit_code == 130
    assert "--resume" in first.stderr
    assert not (tmp_path / "part.npy").exists() and not (tmp_path / "part.paths.txt").exists()
    assert (tmp_path / "part.npy.partial").is_dir()
    monkeypatch.setattr(Embedder, "embed_groups", original)

    again = embed(ckpt, *inputs, "-o", tmp_path / "part.npy")
    assert_clean_failure(again, 2)  # a partial run exists: --resume or --overwrite

    seen = []

    def counting(self, items):
        items = list(items)
        seen.extend(item.path for item in items)
        yield from original(self, items)

    monkeypatch.setattr(Embedder, "embed_groups", counting)
    resumed = embed(ckpt, *inputs, "-o", tmp_path / "part.npy", "--resume")
    assert resumed.exit_code == 1
    assert str(photos / "img00.png") not in seen and str(photos / "bad1.png") not in seen  # not redone
    for name in ("npy", "paths.txt", "errors.txt"):
        assert (tmp_path / f"part.{name}").read_bytes() == (tmp_path / f"full.{name}").read_bytes(), name
    assert not (tmp_path / "part.npy.partial").exists()


def test_resume_with_other_options_is_refused(ckpt, photos, tmp_path, monkeypatch):
    from bitcli.pipeline import Embedder

    def interrupted(self, items):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(Embedder, "embed_groups", interrupted)
    assert embed(ckpt, photos, "-o", tmp_path / "o.npy").exit_code == 130
    monkeypatch.undo()
    result = embed(ckpt, photos, "-o", tmp_path / "o.npy", "--resume", "--normalize")
    assert_clean_failure(result, 2)
    assert "normalize" in result.stderr


def test_resume_of_a_finished_run_does_nothing(ckpt, photos, tmp_path):
    assert embed(ckpt, photos / "img00.png", "-o", tmp_path / "o.npy").exit_code == 0
    before = (tmp_path / "o.npy").read_bytes()
    result = embed(ckpt, photos / "img00.png", "-o", tmp_path / "o.npy", "--resume")
    assert result.exit_code == 0
    assert "already complete" in result.stderr
    assert (tmp_path / "o.npy").read_bytes() == before
    changed = embed(ckpt, photos / "img01.png", "-o", tmp_path / "o.npy", "--resume")
    assert_clean_failure(changed, 2)
    assert "inputs changed" in changed.stderr and "--overwrite" in changed.stderr
    assert (tmp_path / "o.npy").read_bytes() == before


def test_resume_with_reordered_inputs_is_refused(ckpt, photos, tmp_path, monkeypatch):
    from bitcli.pipeline import Embedder

    original = Embedder.embed_groups

    def interrupted(self, items):
        for n, group in enumerate(original(self, items)):
            if n == 1:
                raise KeyboardInterrupt
            yield group

    monkeypatch.setattr(Embedder, "embed_groups", interrupted)
    inputs = [photos / f"img0{i}.png" for i in range(5)]
    assert embed(ckpt, *inputs, "-o", tmp_path / "o.npy").exit_code == 130
    monkeypatch.undo()
    result = embed(ckpt, *inputs[::-1], "-o", tmp_path / "o.npy", "--resume")
    assert_clean_failure(result, 2)
    assert "inputs changed since the interrupted run" in result.stderr


def test_quiet_keeps_only_error_lines(ckpt, photos, tmp_path):
    result = embed(ckpt, photos / "img00.png", "missing.png", "-o", tmp_path / "o.npy", "-q")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error: missing.png: no such file or directory"]


def test_unwritable_output_is_one_line(ckpt, photos, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = embed(ckpt, photos / "img00.png", "-o", blocker / "o.npy")
    assert_clean_failure(result, 2)
    assert "cannot write" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "--resume" not in result.stderr  # nothing to resume


def test_creation_error_names_the_output_not_a_temporary_file(ckpt, photos, tmp_path, monkeypatch):
    import os

    mkdir = os.mkdir

    def denied(path, *args, **kw):
        if "partial" in os.fspath(path):  # the partial folder is assembled under a temporary name
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return mkdir(path, *args, **kw)

    monkeypatch.setattr(os, "mkdir", denied)
    result = embed(ckpt, photos / "img00.png", "-o", tmp_path / "y.npy")
    assert_clean_failure(result, 2)
    assert result.stderr.strip() == f"error: {tmp_path / 'y.npy'}: cannot write (Permission denied)"


def test_disk_full_mid_run_keeps_the_resume_hint(ckpt, photos, tmp_path, monkeypatch):
    import io

    from bitcli.store import EmbedWriter

    class FullDisk(io.BytesIO):
        def flush(self):
            raise OSError(28, "No space left on device")

        def close(self):
            self.flush()

    def commit(self, *args, **kw):
        self._data.close()
        self._data = FullDisk()
        self._data.write(b"x")
        self._data.flush()

    monkeypatch.setattr(EmbedWriter, "commit", commit)
    result = embed(ckpt, photos / "img00.png", "-o", tmp_path / "o.npy")
    assert_clean_failure(result, 1)
    assert "unexpected" not in result.stderr
    assert "No space left on device" in result.stderr and "--resume" in result.stderr


def test_resume_and_overwrite_together_is_a_usage_error(photos, tmp_path):
    result = run(["embed", photos / "img00.png", "-o", tmp_path / "o.npy", "--resume", "--overwrite", "-m", "no/such-model"])
    assert_clean_failure(result, 2)
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
