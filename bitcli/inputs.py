"""User inputs (files, directories, quoted globs, `-` for stdin) -> an ordered stream of images.

- Order: the arguments'; directories walked depth-first by name (code point), glob matches
  sorted; paths keep the prefix the user typed.
- An existing path is literal; otherwise one with `*`, `?` or `[` is a glob (`**` recursive).
- Files named explicitly are always passed on; in a directory or glob a file is taken when its
  first bytes are an image signature, else by extension. Hidden names are skipped there.
- Symlinks are followed; one back to an ancestor directory is an error. No deduplication.
- `-` reads literal paths from stdin, a line each (or NUL-separated with `null`), as bytes; a
  NUL in a line list, a line over 4096 bytes or over 10 million paths is a UsageError.
- A path with a line break is an error (`path_problem`, shared with the manifest).
- Lazy: a directory is listed and sorted as the consumer reaches it."""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from bitcli.errors import InputError, UsageError
from bitcli.util import open_regular, os_error_reason

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif",
        ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k", ".jpx", ".avif", ".qoi",
        ".ico", ".tga", ".psd",
    }
)

SNIFF_BYTES = 32
STDIN_PATH_MAX = 4096  # bytes in one path (Linux PATH_MAX): a longer stdin line is not a path
STDIN_PATHS_MAX = 10_000_000  # paths read from stdin: the list is held in memory


@dataclass(frozen=True)
class InputItem:
    """One file to decode; `index` counts items (not errors) from 0 in input order."""

    index: int
    path: str


def expand_inputs(
    args: Iterable[str], *, stdin: TextIO | BinaryIO | None = None, null: bool = False
) -> Iterator[InputItem | InputError]:
    """Command-line inputs expanded to files in order, unusable ones as `InputError`s (`-`: paths on `stdin`)."""
    index = 0
    for arg in args:
        for result in _expand_stdin(stdin, null) if arg == "-" else _expand_argument(arg):
            if isinstance(result, InputError):
                yield result
            else:
                yield InputItem(index=index, path=result)
                index += 1


def path_problem(path: str) -> str | None:
    """Why `path` cannot be an input (it contains a line break), or None when it can."""
    if "\n" in path or "\r" in path:
        return "path contains a line break (not supported)"
    return None


def looks_like_image(header: bytes) -> bool:
    """Whether `header` (a file's first bytes) starts with a known image signature."""
    return (
        any(all(header[at:at + len(magic)] == magic for at, magic in signature) for signature in _SIGNATURES)
        or _looks_like_bmp(header)
        or _looks_like_pnm(header)
    )


def _expand_stdin(stdin: TextIO | BinaryIO | None, null: bool) -> Iterator[str | InputError]:
    if stdin is None:
        yield InputError("-", "no standard input to read paths from")
        return
    for path in stdin_paths(stdin, null=null):
        problem = path_problem(path)
        if problem:
            yield InputError(path, problem)
        elif path:
            yield from _expand_path(path)


def stdin_paths(stdin: TextIO | BinaryIO, *, null: bool = False) -> Iterator[str]:
    """The paths listed on `stdin`, read as bytes a line (or a bounded chunk) at a time, in order."""
    source = getattr(stdin, "buffer", stdin)
    entries = _nul_separated(source) if null else _lines(source)
    for number, raw in enumerate(entries, start=1):
        yield _stdin_path(raw, number, null)


def _lines(source: TextIO | BinaryIO) -> Iterator[bytes]:
    """Newline-separated entries; a NUL byte means the list is not one (find -print0 needs -0)."""
    number = 0
    while line := source.readline(STDIN_PATH_MAX + 2):
        number += 1
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        if b"\0" in line:
            raise UsageError(f"stdin: line {number} holds a NUL byte; for NUL-separated paths (find -print0) pass -0")
        if not line.endswith(b"\n") and len(line) > STDIN_PATH_MAX:
            _too_long(number)
        yield line.removesuffix(b"\n")


def _nul_separated(source: TextIO | BinaryIO) -> Iterator[bytes]:
    read = getattr(source, "read1", None) or source.read
    pending = b""
    while chunk := read(1 << 16):
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        *entries, pending = (pending + chunk).split(b"\0")
        yield from entries
        if len(pending) > STDIN_PATH_MAX:
            _too_long(0)
    if pending:
        yield pending


def _stdin_path(raw: bytes, number: int, null: bool) -> str:
    if len(raw) > STDIN_PATH_MAX:
        _too_long(number)
    if number > STDIN_PATHS_MAX:
        raise UsageError(f"stdin: more than {STDIN_PATHS_MAX:,} paths; split the list into several runs")
    path = os.fsdecode(raw)  # the file name's bytes, whatever the encoding (surrogateescape)
    return path if null else path.removesuffix("\r")


def _too_long(number: int) -> None:
    where = f"line {number}" if number else "an entry"
    raise UsageError(
        f"stdin: {where} is longer than {STDIN_PATH_MAX} bytes, too long for a path "
        "(is stdin a list of paths, one per line, or NUL-separated with -0?)"
    )


def _expand_argument(arg: str) -> Iterator[str | InputError]:
    problem = path_problem(arg)
    if problem:
        yield InputError(arg, problem)
    elif os.path.lexists(arg) or not glob.has_magic(arg):
        yield from _expand_path(arg)
    else:
        yield from _expand_glob(arg)


def _expand_path(path: str) -> Iterator[str | InputError]:
    """A literal path: a file is passed on as is, a directory is walked."""
    info = _stat(path)
    if isinstance(info, InputError):
        yield info
        return
    if stat.S_ISDIR(info.st_mode):
        found = _walk(path, ancestors=frozenset({_identity(info)}))
        yield from _or_error(found, InputError(path, "no images found"))
    else:
        yield path


def _expand_glob(pattern: str) -> Iterator[str | InputError]:
    recursive = "**" in pattern
    matches = sorted(glob.glob(pattern, recursive=recursive))
    found = (result for match in matches for result in _expand_match(match, recursive))
    yield from _or_error(found, InputError(pattern, "no images match this pattern"))


def _stat(path: str) -> os.stat_result | InputError:
    try:
        return os.stat(path)
    except OSError as error:
        return InputError(path, os_error_reason(error))


def _or_error(results: Iterable[str | InputError], empty: InputError) -> Iterator[str | InputError]:
    """`results`, then `empty` when they held no path at all (only errors, or nothing)."""
    found_any = False
    for result in results:
        found_any = found_any or isinstance(result, str)
        yield result
    if not found_any:
        yield empty


def _expand_match(match: str, recursive: bool) -> Iterator[str | InputError]:
    problem = path_problem(match)
    if problem:
        yield InputError(match, problem)
        return
    info = _stat(match)
    if isinstance(info, InputError):
        yield info
        return
    if stat.S_ISDIR(info.st_mode):
        if not recursive:
            yield from _walk(match, ancestors=frozenset({_identity(info)}))
    elif _is_image_file(match):
        yield match


def _walk(directory: str, ancestors: frozenset[tuple[int, int]]) -> Iterator[str | InputError]:
    """Depth-first, name-sorted walk yielding image files and errors for what cannot be read."""
    try:
        with os.scandir(directory) as scan:
            entries = sorted((entry for entry in scan if not entry.name.startswith(".")), key=lambda entry: entry.name)
    except OSError as error:
        yield InputError(directory, os_error_reason(error))
        return
    for entry in entries:
        path = entry.path
        problem = path_problem(entry.name)
        if problem:
            yield InputError(path, problem)
            continue
        try:
            info = os.stat(path)  # follows symlinks
        except OSError as error:
            yield InputError(path, os_error_reason(error))
            continue
        if stat.S_ISDIR(info.st_mode):
            identity = _identity(info)
            if identity in ancestors:
                yield InputError(path, "symlink loop (points back to a parent directory)")
            else:
                yield from _walk(path, ancestors | {identity})
        elif stat.S_ISREG(info.st_mode) and _is_image_file(path):
            yield path


def _is_image_file(path: str) -> bool:
    """An image by its first bytes; by its extension when those are unreadable or unknown."""
    try:
        with open_regular(path) as file:  # checked regular, but a FIFO swapped in must not block
            if looks_like_image(file.read(SNIFF_BYTES)):
                return True
    except OSError:
        pass
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _identity(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


# Each signature: (offset, bytes) pairs that must all match.
_SIGNATURES: tuple[tuple[tuple[int, bytes], ...], ...] = (
    ((0, b"\xff\xd8\xff"),),  # JPEG
    ((0, b"\x89PNG\r\n\x1a\n"),),  # PNG
    ((0, b"GIF87a"),),
    ((0, b"GIF89a"),),
    ((0, b"RIFF"), (8, b"WEBP")),
    ((0, b"II*\x00"),),  # TIFF little-endian
    ((0, b"MM\x00*"),),  # TIFF big-endian
    ((0, b"II+\x00"),),  # BigTIFF
    ((0, b"MM\x00+"),),
    ((0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),),  # JPEG 2000 (jp2)
    ((0, b"\xff\x4f\xff\x51"),),  # JPEG 2000 codestream
    ((4, b"ftypavif"),),
    ((4, b"ftypavis"),),
    ((0, b"qoif"),),
    ((0, b"8BPS"),),  # Photoshop
    ((0, b"\x00\x00\x01\x00"),),  # ICO
)


def _looks_like_bmp(header: bytes) -> bool:
    """`BM` alone would match text files; also require a known DIB header size at offset 14."""
    if len(header) < 18 or not header.startswith(b"BM"):
        return False
    return int.from_bytes(header[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124)


def _looks_like_pnm(header: bytes) -> bool:
    """PBM/PGM/PPM: "P1" to "P6" followed by whitespace."""
    if len(header) < 3 or header[:1] != b"P":
        return False
    return header[1:2] in b"123456" and header[2:3] in b" \t\r\n"
