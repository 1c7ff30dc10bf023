"""expand_inputs: files, directories, globs and stdin to an ordered stream, errors in place."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

import bitcli.inputs as inputs
from bitcli.errors import InputError
from bitcli.inputs import InputItem, expand_inputs, looks_like_image

from images import jpeg_bytes, rgb


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    rgb(4, 3).save(buffer, format="PNG")
    return buffer.getvalue()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def paths_and_errors(results) -> list[str]:
    """Items as their path, errors as 'ERROR path: reason'."""
    return [
        item.path if isinstance(item, InputItem) else f"ERROR {item.path}: {item.reason}"
        for item in results
    ]


@pytest.fixture
def album(tmp_path) -> Path:
    """album/ with nested folders, hidden entries, non-images and extension-less images."""
    root = tmp_path / "album"
    jpeg = jpeg_bytes(rgb(4, 3))
    put(root / "b.jpg", jpeg)
    put(root / "a.png", png_bytes())
    put(root / "c" / "d.jpg", jpeg)
    put(root / "c" / "e" / "f.jpg", jpeg)
    put(root / "noextension", jpeg)  # an image recognised by content
    put(root / "notes.txt", b"hello\n")  # skipped silently
    put(root / "README", b"BM this is text, not a bitmap\n")  # "BM" alone is not enough
    put(root / ".hidden.jpg", jpeg)
    put(root / ".cache" / "g.jpg", jpeg)
    put(root / "z_empty.jpg", b"")  # kept by its extension, so decoding can report it
    return root


def test_directory_is_walked_sorted_depth_first_without_hidden_or_non_images(album):
    got = paths_and_errors(expand_inputs([str(album)]))
    names = [os.path.relpath(path, album) for path in got]
    assert names == ["a.png", "b.jpg", "c/d.jpg", "c/e/f.jpg", "noextension", "z_empty.jpg"]


def test_paths_keep_the_prefix_the_user_typed(album, monkeypatch):
    monkeypatch.chdir(album.parent)
    got = paths_and_errors(expand_inputs(["album/c"]))
    assert got == ["album/c/d.jpg", "album/c/e/f.jpg"]


def test_order_is_the_order_of_arguments_and_indices_count_items(album):
    results = list(
        expand_inputs([str(album / "c"), str(album / "missing.jpg"), str(album / "b.jpg")])
    )
    assert paths_and_errors(results) == [
        str(album / "c" / "d.jpg"),
        str(album / "c" / "e" / "f.jpg"),
        f"ERROR {album / 'missing.jpg'}: no such file or directory",
        str(album / "b.jpg"),
    ]
    assert [r.index for r in results if isinstance(r, InputItem)] == [0, 1, 2]


def test_explicit_files_pass_through_even_if_not_images(album):
    # Decoding reports them; the expander does not second-guess an explicit path.
    got = paths_and_errors(expand_inputs([str(album / "notes.txt"), str(album / ".hidden.jpg")]))
    assert got == [str(album / "notes.txt"), str(album / ".hidden.jpg")]


def test_duplicates_are_kept(album):
    got = paths_and_errors(expand_inputs([str(album / "b.jpg")] * 2))
    assert got == [str(album / "b.jpg")] * 2


def test_glob_patterns(album, monkeypatch):
    monkeypatch.chdir(album)
    assert paths_and_errors(expand_inputs(["*.jpg"])) == ["b.jpg", "z_empty.jpg"]
    # ** crosses directories, skips hidden ones, and does not walk matched folders twice.
    assert paths_and_errors(expand_inputs(["**/*.jpg"])) == [
        "b.jpg",
        "c/d.jpg",
        "c/e/f.jpg",
        "z_empty.jpg",
    ]
    assert paths_and_errors(expand_inputs(["**"])) == [
        "a.png",
        "b.jpg",
        "c/d.jpg",
        "c/e/f.jpg",
        "noextension",
        "z_empty.jpg",
    ]
    # A directory matched by a non-recursive pattern is walked.
    assert paths_and_errors(expand_inputs(["[c]"])) == ["c/d.jpg", "c/e/f.jpg"]


def test_glob_without_images_is_an_error(album, monkeypatch):
    monkeypatch.chdir(album)
    assert paths_and_errors(expand_inputs(["*.gif", "*.txt"])) == [
        "ERROR *.gif: no images match this pattern",
        "ERROR *.txt: no images match this pattern",
    ]


def test_existing_path_with_glob_characters_is_literal(tmp_path):
    path = put(tmp_path / "photo[1].jpg", jpeg_bytes(rgb(4, 3)))
    put(tmp_path / "photo1.jpg", jpeg_bytes(rgb(4, 3)))
    assert paths_and_errors(expand_inputs([str(path)])) == [str(path)]


def test_stdin_paths(album):
    stdin = io.StringIO(f"{album / 'b.jpg'}\r\n\n{album / 'c'}\n{album / 'nope.jpg'}")
    got = paths_and_errors(expand_inputs([str(album / "a.png"), "-"], stdin=stdin))
    assert got == [
        str(album / "a.png"),
        str(album / "b.jpg"),
        str(album / "c" / "d.jpg"),
        str(album / "c" / "e" / "f.jpg"),
        f"ERROR {album / 'nope.jpg'}: no such file or directory",
    ]


def test_stdin_lines_are_not_globs(album):
    stdin = io.StringIO(str(album / "*.jpg") + "\n")
    [error] = list(expand_inputs(["-"], stdin=stdin))
    assert isinstance(error, InputError) and error.reason == "no such file or directory"


def test_stdin_is_read_lazily(album):
    class CountingStdin(io.StringIO):
        lines_read = 0

        def readline(self, *args):
            CountingStdin.lines_read += 1
            return super().readline(*args)

    stdin = CountingStdin("\n".join([str(album / "b.jpg")] * 1000))
    first = next(expand_inputs(["-"], stdin=stdin))
    assert first.path == str(album / "b.jpg")
    assert CountingStdin.lines_read == 1


def test_missing_stdin_is_an_error():
    [error] = list(expand_inputs(["-"], stdin=None))
    assert error.path == "-"


def test_empty_directory_and_directory_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    put(tmp_path / "docs" / "a.txt", b"text")
    put(tmp_path / "docs" / ".hidden.png", png_bytes())
    got = paths_and_errors(expand_inputs([str(tmp_path / "empty"), str(tmp_path / "docs")]))
    assert got == [
        f"ERROR {tmp_path / 'empty'}: no images found",
        f"ERROR {tmp_path / 'docs'}: no images found",
    ]


def test_symlink_loops(tmp_path):
    root = tmp_path / "root"
    put(root / "a.jpg", jpeg_bytes(rgb(4, 3)))
    os.symlink(root, root / "loop")  # a directory link back to its parent
    os.symlink(root / "y.jpg", root / "x.jpg")  # a file link loop
    os.symlink(root / "x.jpg", root / "y.jpg")
    got = paths_and_errors(expand_inputs([str(root), str(root / "x.jpg")]))
    assert got == [
        str(root / "a.jpg"),
        f"ERROR {root / 'loop'}: symlink loop (points back to a parent directory)",
        f"ERROR {root / 'x.jpg'}: symlink loop",
        f"ERROR {root / 'y.jpg'}: symlink loop",
        f"ERROR {root / 'x.jpg'}: symlink loop",
    ]


def test_symlinked_directory_is_followed(tmp_path):
    put(tmp_path / "real" / "a.jpg", jpeg_bytes(rgb(4, 3)))
    (tmp_path / "top").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "top" / "linked")
    assert paths_and_errors(expand_inputs([str(tmp_path / "top")])) == [
        str(tmp_path / "top" / "linked" / "a.jpg")
    ]


def test_unreadable_subdirectory_is_reported_and_the_walk_goes_on(tmp_path, monkeypatch):
    put(tmp_path / "a" / "x.jpg", jpeg_bytes(rgb(4, 3)))
    put(tmp_path / "b" / "y.jpg", jpeg_bytes(rgb(4, 3)))
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("/a"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(inputs.os, "scandir", scandir)
    assert paths_and_errors(expand_inputs([str(tmp_path)])) == [
        f"ERROR {tmp_path / 'a'}: permission denied",
        str(tmp_path / "b" / "y.jpg"),
    ]


@pytest.mark.parametrize("brk", ["\n", "\r"])
def test_line_break_in_path_is_an_error(tmp_path, brk):
    put(tmp_path / "dir" / f"bad{brk}name.jpg", jpeg_bytes(rgb(4, 3)))
    reason = "path contains a line break (not supported)"
    bad = str(tmp_path / "dir" / f"bad{brk}name.jpg")
    got = paths_and_errors(expand_inputs([f"a{brk}b.jpg", str(tmp_path / "dir"), str(tmp_path / "dir" / "*.jpg")]))
    assert got == [
        f"ERROR a{brk}b.jpg: {reason}",
        f"ERROR {bad}: {reason}",
        f"ERROR {tmp_path / 'dir'}: no images found",
        f"ERROR {bad}: {reason}",
        f"ERROR {tmp_path / 'dir' / '*.jpg'}: no images match this pattern",
    ]


def test_carriage_return_inside_a_stdin_line_is_an_error(tmp_path):
    bad = put(tmp_path / "a\rb.jpg", jpeg_bytes(rgb(4, 3)))
    got = paths_and_errors(expand_inputs(["-"], stdin=io.StringIO(f"{bad}\r\n")))
    assert got == [f"ERROR {bad}: path contains a line break (not supported)"]


def test_walk_is_lazy(tmp_path, monkeypatch):
    for index in range(50):
        put(tmp_path / f"{index:03d}.jpg", jpeg_bytes(rgb(2, 2)))
    sniffed: list[str] = []
    real = inputs._is_image_file
    monkeypatch.setattr(inputs, "_is_image_file", lambda path: sniffed.append(path) or real(path))
    stream = expand_inputs([str(tmp_path)])
    assert next(stream).path.endswith("000.jpg")
    assert len(sniffed) == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", True),
        (b"\x89PNG\r\n\x1a\n\x00\x00", True),
        (b"GIF89a....", True),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", True),
        (b"II*\x00\x08\x00\x00\x00", True),
        (b"BM" + bytes(12) + b"\x28\x00\x00\x00", True),
        (b"P6\n4 3\n255\n", True),
        (b"BM is a text file", False),
        (b"P5 64 48 255\n", True),
        (b"P7 notes", False),
        (b"Plain text", False),
        (b"", False),
        (b"<html>", False),
    ],
)
def test_looks_like_image(header, expected):
    assert looks_like_image(header) is expected
