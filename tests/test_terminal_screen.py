"""What a person sees: the real `bit` in a pseudo-terminal, rendered by a terminal emulator (pyte).

Every run checks the screen while the command ran (a snapshot after every read) and at the end:
no line ever holds progress-bar text together with anything else, the bar is gone at the end,
table headers are whole, a failed input takes one line, and the closing summary is there. The
checkpoint is a tiny random one with a 1,000-class head, so its labels are the bundled ImageNet
names (long, with commas), as a real model's are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from clihelpers import make_checkpoint, make_images
from images import jpeg_bytes, rgb
from ptyscreen import SUMMARY, bar_lines, cells, collisions, header_rows, run_on_screen

WIDTHS = [80, 120]
COMPACT_HEADER = ["image", "top-1", "probability", "class"]
IMAGE_HEADER = ["rank", "label", "probability", "class"]
CONTINUATION = re.compile(r"^\s+[│┃]")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random BiT whose 1,000-class head takes the bundled ImageNet-1k names."""
    directory = make_checkpoint(tmp_path_factory.mktemp("imagenet") / "tiny-imagenet", num_labels=1000)
    config = json.loads((directory / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config.pop(key, None)
    config["num_labels"] = 1000
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A working directory with `six/` (five photos and a truncated JPEG) and `fifty/`."""
    root = tmp_path_factory.mktemp("screen")
    make_images(root / "six", 5)
    whole = jpeg_bytes(rgb(200, 150))
    (root / "six" / "broken.jpg").write_bytes(whole[: len(whole) // 2])  # "truncated or corrupt image: ..."
    # fifty/: ten small photos, then forty large ones (hard links to one 3000x2000 JPEG), so the
    # run is still busy on the large ones when the test types Ctrl-C after the first rows.
    fifty = root / "fifty"
    make_images(fifty, 10)
    big = root / "big.jpg"
    big.write_bytes(jpeg_bytes(rgb(3000, 2000, seed=7), quality=95))
    for i in range(10, 50):
        (fifty / f"img{i:02d}.jpg").hardlink_to(big)
    return root


def classify_on_screen(model, place, *args, columns=80, **kw):
    return run_on_screen(["classify", *args, "-m", model], columns=columns, cwd=place, **kw)


def assert_clean_screen(run) -> None:
    """Nothing ever shared a line with the bar, and the bar is gone at the end."""
    assert not collisions(run.frames), collisions(run.frames)
    assert not bar_lines(run.lines), run.text


def summary_lines(run) -> list[re.Match]:
    return [m for line in run.lines if (m := SUMMARY.fullmatch(line))]


def assert_summary(run, done: int, failed: int) -> None:
    found = summary_lines(run)
    assert len(found) == 1, run.text
    assert (int(found[0]["done"]), int(found[0]["failed"])) == (done, failed)
    assert SUMMARY.fullmatch(run.lines[-1]), "the summary closes the output:\n" + run.text


# -- classify, one table per image --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_one_image_a_table_and_a_summary(model, place, columns):
    run = classify_on_screen(model, place, "six/img00.png", columns=columns)
    assert run.exit_code == 0, run.text
    assert b"classifying" in run.raw  # a progress bar was drawn ...
    assert_clean_screen(run)  # ... and never shared a line
    assert run.lines[0] == "six/img00.png"
    (header,) = header_rows(run.lines, IMAGE_HEADER)
    ranks = [cells(line)[0] for line in run.lines[header + 2 :] if cells(line)[0].isdigit()]
    assert ranks == ["1", "2", "3", "4", "5"]
    assert_summary(run, 1, 0)
    assert run.lines[-1].startswith("1 image, 0 failed, ")


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_two_images_two_tables(model, place, columns):
    run = classify_on_screen(model, place, "six/img00.png", "six/img01.png", columns=columns)
    assert run.exit_code == 0, run.text
    assert_clean_screen(run)
    assert [line for line in run.lines if line.startswith("six/")] == ["six/img00.png", "six/img01.png"]
    assert len(header_rows(run.lines, IMAGE_HEADER)) == 2
    assert_summary(run, 2, 0)


@pytest.mark.slow
def test_a_failed_image_in_a_per_image_table_is_one_line(model, place):
    run = classify_on_screen(model, place, "six/broken.jpg", "six/img00.png", columns=80)
    assert run.exit_code == 1, run.text
    assert_clean_screen(run)
    at = run.lines.index("six/broken.jpg")
    assert run.lines[at + 1].startswith("failed: truncated or corrupt image")
    assert [line for line in run.lines[at + 2 :] if line][0] == "six/img00.png"  # nothing wrapped
    assert_summary(run, 2, 1)


# -- classify, the compact table ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_folder_of_six_with_a_broken_file(model, place, columns):
    run = classify_on_screen(model, place, "six/", columns=columns)
    assert run.exit_code == 1, run.text
    assert b"classifying" in run.raw
    assert_clean_screen(run)
    (header,) = header_rows(run.lines, COMPACT_HEADER)  # the header is whole, and printed once
    assert set(run.lines[header + 1]) <= set("━╇")
    rows = run.lines[header + 2 :]
    paths = ["six/broken.jpg"] + [f"six/img{i:02d}.png" for i in range(5)]
    for path in paths:
        assert sum(cells(line)[0] == path for line in rows) == 1, (path, run.text)
    broken = next(i for i, line in enumerate(rows) if cells(line)[0] == "six/broken.jpg")
    assert "failed: truncated or corrupt image" in rows[broken]
    assert not CONTINUATION.match(rows[broken + 1]), "the failure wrapped onto a second line:\n" + run.text
    for line in rows:
        if cells(line)[0].startswith("six/img"):
            assert re.search(r"\d+\.\d\d%", line), line  # a photo's row holds its probability
    # The full reason, whatever the width, on stderr after the table.
    assert any(line.startswith("error: six/broken.jpg: truncated or corrupt image") for line in run.lines)
    assert_summary(run, 6, 1)


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_rows(model, place):
    def some_rows(lines: list[str]) -> bool:
        return sum(bool(re.match(r"fifty/img0\d\.png .*%", line)) for line in lines) >= 4

    run = classify_on_screen(model, place, "fifty/", "--batch-size", "2", columns=80, interrupt_when=some_rows)
    assert run.interrupted, run.text
    assert run.exit_code == 130, run.text
    assert_clean_screen(run)
    assert len(header_rows(run.lines, COMPACT_HEADER)) == 1
    row = re.compile(r"fifty/img\d\d\.\w+ .*%")
    seen = [line for line in run.frames[run.interrupt_frame] if row.match(line)]
    done = [line for line in run.lines if row.match(line)]
    assert 4 <= len(done) < 50
    assert all(any(line.startswith(shown) for line in done) for shown in seen)  # nothing finished was lost
    assert any("interrupted" in line for line in run.lines)


@pytest.mark.slow
def test_quiet_shows_the_table_and_errors_only(model, place):
    run = classify_on_screen(model, place, "six/", "--quiet", columns=80)
    assert run.exit_code == 1, run.text
    assert b"classifying" not in run.raw
    assert not summary_lines(run)
    assert len(header_rows(run.lines, COMPACT_HEADER)) == 1
    assert any(line.startswith("error: six/broken.jpg") for line in run.lines)


@pytest.mark.slow
def test_no_color_means_no_colour(model, place):
    coloured = classify_on_screen(model, place, "six/", columns=80)
    plain = classify_on_screen(model, place, "six/", columns=80, env={"NO_COLOR": "1"})
    assert coloured.coloured and not plain.coloured
    assert_clean_screen(plain)
    assert plain.exit_code == 1 and len(header_rows(plain.lines, COMPACT_HEADER)) == 1
    assert_summary(plain, 6, 1)


@pytest.mark.slow
def test_data_to_a_file_messages_to_the_terminal(model, place, tmp_path):
    """stdout redirected, stderr on the terminal: the data is byte-for-byte a pipe's."""
    run = classify_on_screen(model, place, "six/", columns=80, stdout_path=tmp_path / "out.jsonl")
    piped = subprocess.run(
        [sys.executable, "-m", "bitcli", "classify", "six/", "-m", str(model)],
        cwd=place, capture_output=True, timeout=120,
    )
    assert run.exit_code == piped.returncode == 1
    assert run.stdout == piped.stdout and len(piped.stdout.splitlines()) == 6
    assert_clean_screen(run)
    assert sum(line.startswith("error:") for line in run.lines) == 1
    assert "error: six/broken.jpg: truncated or corrupt image" in run.text
    assert_summary(run, 6, 1)


# -- embed --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_embed_progress_errors_and_summary(model, place, columns, tmp_path):
    out = tmp_path / "vectors.npy"
    run = run_on_screen(["embed", "six/", "-o", out, "-m", model], columns=columns, cwd=place)
    assert run.exit_code == 1, run.text
    assert b"embedding" in run.raw
    assert_clean_screen(run)
    assert any(line.startswith("error: six/broken.jpg: truncated or corrupt image") for line in run.lines)
    assert np.load(out).shape == (5, 32)
    assert_summary(run, 6, 1)


@pytest.mark.slow
def test_embed_quiet_prints_only_the_error(model, place, tmp_path):
    run = run_on_screen(["embed", "six/", "-o", tmp_path / "v.npy", "-m", model, "-q"], columns=80, cwd=place)
    assert run.exit_code == 1
    assert b"embedding" not in run.raw and not summary_lines(run)
    printed = "".join(run.lines)  # one message, wrapped by the terminal where it is long
    assert printed.startswith("error: six/broken.jpg: truncated or corrupt image") and printed.count("error") == 1


def test_terminal_helpers_see_a_collision():
    """The checks themselves: the screen the issue reported counts as a collision."""
    bad = ["classifying ━━━━━━━━━━━━━━━━━━━━ 0/2  -:--:--/tmp/x/01-rocket.jpg"]
    good = ["classifying ━━━━━━━━━━━━━━━━━━━━ 3/6 12.5 img/s eta 0:00:01"]
    echoed = ["classifying ━━━╺━━━━━━━━━━━━━━━━━ 4/50 2.1 img/s eta 0:22^C"]  # the terminal's own echo
    assert collisions([bad]) and not collisions([good]) and not collisions([echoed])
    assert header_rows(["image ┃ top-1 ┃ probability ┃ class"], COMPACT_HEADER) == [0]
    assert header_rows(["image ┃ to", "p-1 ┃ probability ┃ class"], COMPACT_HEADER) == []

