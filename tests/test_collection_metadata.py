"""The metadata sidecar: round trip, plain-json readability, validation, and the --update diff."""

from __future__ import annotations

import json
import os

import pytest

from bitcli.errors import UsageError
from bitcli.store.metadata import (
    FORMAT_VERSION,
    EmbeddingMetadata,
    FileIdentity,
    SidecarPaths,
    check_compatible,
    identify,
    read_file_rows,
    read_metadata,
)
from bitcli.store.update import plan_update
from collectionfiles import write_metadata

FINGERPRINT = {
    "model": "google/bit-50",
    "commit": "9e9a281aa096247270860f9cda4f68daacca33d0",
    "weights": ["model.safetensors"],
    "preprocessing": {"resize": 448, "crop": [448, 448], "mean": [0.5, 0.5, 0.5]},
    "device": "cpu",
    "precision": "fp32",
    "normalize": True,
    "batch_size": 8,
    "fast_jpeg": False,
    "max_pixels": 100000000,
    "convolution": "torch",
    "dtype": "float16",
}
ODD_NAME = "caf\udce9 \u00e9t\u00e9?.jpg"  # a non-UTF-8 byte (as os decodes it) and real accents


def header(rows: int = 3, **fields) -> EmbeddingMetadata:
    return EmbeddingMetadata.from_fingerprint(FINGERPRINT, rows=rows, feature_dim=2048, bitcli_version="0.1.0", cwd="/data", **fields)


ROWS = [
    ("a.jpg", FileIdentity(10, 1_700_000_000_000_000_001)),
    (ODD_NAME, FileIdentity(20, 1_700_000_000_000_000_002, "ab" * 32)),
    ("sub/c.png", FileIdentity(0, -5)),
]


def test_round_trip(tmp_path):
    paths = SidecarPaths.for_output(tmp_path / "photos.npy")
    assert (paths.meta.name, paths.files.name) == ("photos.meta.json", "photos.files.jsonl")
    write_metadata(paths, header(), ROWS)
    meta = read_metadata(paths.meta)
    assert meta.to_dict() == header(files="photos.files.jsonl", files_sha256=meta.files_sha256).to_dict()
    assert meta.model_reference() == "google/bit-50@9e9a281aa096247270860f9cda4f68daacca33d0"
    assert read_file_rows(paths.meta, meta) == ROWS


def test_readable_with_plain_json(tmp_path):
    paths = SidecarPaths.for_output(tmp_path / "photos.npy")
    write_metadata(paths, header(), ROWS)
    with open(paths.meta, encoding="utf-8") as fh:
        head = json.load(fh)
    assert head["format"] == "bitcli.embedding" and head["format_version"] == FORMAT_VERSION
    assert (head["rows"], head["feature_dim"], head["dtype"], head["normalize"]) == (3, 2048, "float16", True)
    assert head["model"]["commit"] == FINGERPRINT["commit"] and head["preprocessing"]["resize"] == 448
    with open(paths.files, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert rows[0] == {"path": "a.jpg", "size": 10, "mtime_ns": 1_700_000_000_000_000_001}
    assert rows[1]["path"] == ODD_NAME and rows[1]["sha256"] == "ab" * 32
    assert os.fsencode(rows[1]["path"]) == b"caf\xe9 \xc3\xa9t\xc3\xa9?.jpg"  # the original bytes


def test_readable_with_pyarrow(tmp_path):
    pa_json = pytest.importorskip("pyarrow.json")
    paths = SidecarPaths.for_output(tmp_path / "photos.npy")
    write_metadata(paths, header(2), ROWS[::2])
    table = pa_json.read_json(paths.files)
    assert table.column("path").to_pylist() == ["a.jpg", "sub/c.png"]
    assert table.column("mtime_ns").to_pylist() == [1_700_000_000_000_000_001, -5]


def test_unknown_header_keys_survive_a_round_trip(tmp_path):
    paths = SidecarPaths.for_output(tmp_path / "x.npy")
    write_metadata(paths, header(), ROWS)
    data = json.loads(paths.meta.read_text())
    data["future_field"] = {"x": 1}
    paths.meta.write_text(json.dumps(data))
    assert read_metadata(paths.meta).to_dict()["future_field"] == {"x": 1}


def test_row_count_must_match_the_header(tmp_path):
    with pytest.raises(ValueError, match="2 file identities given for 3 rows"):
        write_metadata(SidecarPaths.for_output(tmp_path / "x.npy"), header(), ROWS[:2])
    assert not (tmp_path / "x.files.jsonl").exists() and not (tmp_path / "x.meta.json").exists()


def test_an_edited_row_file_is_detected(tmp_path):
    paths = SidecarPaths.for_output(tmp_path / "x.npy")
    write_metadata(paths, header(), ROWS)
    paths.files.write_text(paths.files.read_text().replace('"size": 10', '"size": 11'))
    with pytest.raises(UsageError, match="does not match"):
        read_file_rows(paths.meta, read_metadata(paths.meta))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ('{"format": "other"}', "not a bitcli embedding header"),
        ('{"format": "bitcli.embedding", "format_version": 99}', "newer than this bitcli"),
        ('{"format": "bitcli.embedding", "format_version": 1, "rows": -1}', "malformed header"),
    ],
)
def test_bad_headers_are_usage_errors(tmp_path, content, message):
    (tmp_path / "x.meta.json").write_text(content)
    with pytest.raises(UsageError, match=message):
        read_metadata(tmp_path / "x.meta.json")


def test_check_compatible_names_what_differs_in_one_line():
    check_compatible(header(), header(rows=99), "x.npy")  # rows may differ
    other = EmbeddingMetadata.from_fingerprint({**FINGERPRINT, "model": "google/bit-101", "commit": "abc"}, rows=3, feature_dim=2048)
    with pytest.raises(UsageError) as err:
        check_compatible(header(), other, "x.npy")
    message = str(err.value)
    assert "\n" not in message and "model.reference 'google/bit-50' then, 'google/bit-101' now" in message
    for change in ({"dtype": "float32"}, {"normalize": False}, {"fast_jpeg": True}, {"preprocessing": {"resize": 224}}):
        with pytest.raises(UsageError):
            check_compatible(header(), EmbeddingMetadata.from_fingerprint({**FINGERPRINT, **change}, rows=3, feature_dim=2048), "x.npy")
    check_compatible(header(), EmbeddingMetadata.from_fingerprint({**FINGERPRINT, "batch_size": 32, "device": "cuda"}, rows=3, feature_dim=2048), "x.npy")


def test_identify_stats_and_hashes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    os.utime(path, ns=(5, 123456789))
    assert identify(str(path)) == FileIdentity(5, 123456789)
    assert identify(str(path), content_hash=True).sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


# -- plan_update -------------------------------------------------------------------------------


def fake_files(table):
    """An identify() over a dict path -> (size, mtime, sha256); missing paths raise OSError."""

    def identify_fn(path, *, content_hash=False):
        if path not in table:
            raise FileNotFoundError(path)
        size, mtime, digest = table[path]
        return FileIdentity(size, mtime, digest if content_hash else None)

    return identify_fn


STORED = [
    ("a", FileIdentity(1, 10, "ha")),
    ("b", FileIdentity(2, 20, "hb")),
    ("c", FileIdentity(3, 30, "hc")),
    ("d", FileIdentity(4, 40, "hd")),
]


def test_plan_by_size_and_mtime():
    now = {"a": (1, 10, "ha"), "b": (2, 21, "hb"), "d2": (4, 40, "hd"), "e": (5, 50, "he")}
    plan = plan_update(STORED, ["a", "b", "d2", "e"], identify_fn=fake_files(now))
    assert [(s.path, s.status, s.source_row) for s in plan.steps] == [("a", "kept", 0), ("b", "changed", None), ("d2", "new", None), ("e", "new", None)]
    assert plan.removed == ["c", "d"]
    assert plan.summary() == "+2 new, 1 changed, 2 removed, 1 kept"
    assert plan.steps[0].identity.sha256 == "ha"  # a kept row keeps its stored hash


def test_plan_with_hashes_recognises_moves_and_content_changes():
    now = {"a": (1, 99, "ha"), "b": (2, 20, "hX"), "d2": (4, 41, "hd"), "e": (5, 50, "he")}
    plan = plan_update(STORED, ["a", "b", "d2", "e"], content_hash=True, identify_fn=fake_files(now))
    assert [(s.path, s.status, s.source_row) for s in plan.steps] == [("a", "kept", 0), ("b", "changed", None), ("d2", "moved", 3), ("e", "new", None)]
    assert plan.removed == ["c"]
    assert plan.summary() == "+1 new, 1 changed, 1 moved, 1 removed, 1 kept"
    assert plan.steps[0].identity == FileIdentity(1, 99, "ha")  # the new mtime is recorded
    assert [s.path for s in plan.to_embed] == ["b", "e"]


def test_plan_pairs_a_path_given_twice_with_its_rows_in_order():
    stored = [("x", FileIdentity(1, 1)), ("x", FileIdentity(1, 1)), ("y", FileIdentity(2, 2))]
    plan = plan_update(stored, ["x", "y", "x", "x"], identify_fn=fake_files({"x": (1, 1, None), "y": (2, 2, None)}))
    assert [(s.status, s.source_row) for s in plan.steps] == [("kept", 0), ("kept", 2), ("kept", 1), ("new", None)]
    assert plan.removed == []


def test_a_row_without_an_identity_is_embedded_again(tmp_path):
    paths = SidecarPaths.for_output(tmp_path / "x.npy")
    write_metadata(paths, header(2), [("a", None), ("b", FileIdentity(2, 20))])
    stored = read_file_rows(paths.meta, read_metadata(paths.meta))
    assert stored == [("a", None), ("b", FileIdentity(2, 20))]
    assert json.loads(paths.files.read_text().splitlines()[0]) == {"path": "a", "size": None, "mtime_ns": None}
    plan = plan_update(stored, ["a", "b"], identify_fn=fake_files({"a": (1, 10, None), "b": (2, 20, None)}))
    assert [s.status for s in plan.steps] == ["changed", "kept"]


def test_an_unreadable_input_is_embedded_so_that_the_failure_is_reported():
    plan = plan_update(STORED[:1], ["a"], identify_fn=fake_files({}))
    assert [(s.status, s.identity) for s in plan.steps] == [("changed", None)]
