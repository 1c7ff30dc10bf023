"""Nothing dropped, nothing broken, at 80 and 120 columns: what a newcomer's terminal shows.

The real `bit` in a pseudo-terminal (tests/ptyscreen.py): `classify -k K` shows all K classes
at any width, `eval`'s titles stay on one line, every progress bar has the same columns,
`inspect` rounds GFLOPs to what a person reads.
"""

from __future__ import annotations

import re

import pytest

from clihelpers import make_checkpoint
from ptyscreen import cells, header_rows, run_on_screen
from transferdata import write_folder

WIDTHS = [80, 120]
CONFUSION_TITLE = "Confusion (rows: true class, columns: predicted)"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random BiT with ten classes named 'class 0' ... 'class 9'."""
    return make_checkpoint(tmp_path_factory.mktemp("widths") / "tiny")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three class folders named after three of the model's labels, three pictures each."""
    return write_folder(tmp_path_factory.mktemp("labelled") / "data", {"class 0": 3, "class 1": 3, "class 2": 3}, size=36)


# -- classify -k ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("k", [3, 10])
def test_classify_shows_every_one_of_the_top_k(tiny, labelled, columns, k):
    run = run_on_screen(["classify", "data/", "-k", k, "-m", tiny], columns=columns, cwd=labelled.parent)
    assert run.exit_code == 0, run.text
    (header,) = header_rows(run.lines, ["image", "top-1", "probability", "class"])
    blocks: dict[str, list[str]] = {}
    for line in run.lines[header + 2 :]:
        if not line.strip() or "│" not in line:
            break  # the summary
        first = cells(line)[0]
        if first:
            path = first
        blocks.setdefault(path, []).append(line)
    assert len(blocks) == 9, run.text
    for path, lines in blocks.items():
        shown = "\n".join(lines)
        assert len(re.findall(r"\d+\.\d\d%", shown)) == k, (path, k, run.text)  # all K, none dropped
        assert "…" not in shown
    assert max(len(line) for line in run.lines) <= columns


# -- eval ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", WIDTHS)
def test_eval_titles_stay_on_one_line(tiny, labelled, columns):
    run = run_on_screen(["eval", labelled, "-m", tiny], columns=columns, cwd=labelled.parent)
    assert run.exit_code == 0, run.text
    for title in ("Evaluation", "Per class", CONFUSION_TITLE):
        assert title in run.lines, f"{title!r} is not one whole line:\n" + run.text
    matrix = run.lines.index(CONFUSION_TITLE)
    assert cells(run.lines[matrix + 1])[1:4] == ["class 0", "class 1", "class 2"], run.text


# -- progress bars: the same columns in every bar ------------------------------------------------------

# what, the bar, done/total, the rate, `eta` and the time left (then a command's own figures).
BAR = re.compile(r"^(?P<what>[a-z]+) [━╸╺ ]+ \d+/\d+ \d+(\.\d)? (?P<unit>img/s|steps/s) eta \d+:\d\d(:\d\d)?\b")


def bar_frames(run, what: str) -> list[str]:
    return [line for frame in run.frames for line in frame if line.startswith(what + " ")]


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.slow
def test_the_finetune_bar_has_the_columns_of_every_bar(labelled, tmp_path, columns):
    from transferdata import make_trainable_checkpoint

    base = make_trainable_checkpoint(tmp_path / "base")
    seen = lambda lines: any(BAR.match(line) and "steps/s" in line for line in lines)  # noqa: E731
    run = run_on_screen(
        ["train", labelled, "-o", tmp_path / "m", "-m", base, "--method", "finetune", "--steps", "5000",
         "--batch-size", "2", "--threads", "1", "--device", "cpu"],
        columns=columns, cwd=tmp_path, env={"BIT_CACHE": str(tmp_path / "cache")}, interrupt_when=seen,
    )
    assert run.interrupted, run.text
    steps = [m for line in bar_frames(run, "steps") if (m := BAR.match(line))]
    assert steps and all(m["unit"] == "steps/s" for m in steps), bar_frames(run, "steps")
    assert all("loss " in line for line in bar_frames(run, "steps") if BAR.match(line))  # its own figures follow
    assert not any(re.search(r" \d+:\d\d:\d\d", line) and " eta " not in line for line in bar_frames(run, "steps"))



def test_the_image_bar_matches_the_same_pattern():
    """classify's, embed's and eval's bar (`screen.Bar`) with a rate known: the columns above."""
    import io

    from rich.console import Console

    from bitcli.cli.screen import Bar

    console = Console(file=io.StringIO(), width=100, color_system=None)
    bar = Bar(console, 10, "classifying", show=True)
    bar.started -= 2.0  # two seconds in
    bar.advance(4)
    console.print(bar._progress.get_renderable())
    line = console.file.getvalue().splitlines()[0]
    assert (m := BAR.match(line)) and m["unit"] == "img/s" and "eta 0:03" in line, line


# -- inspect -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", WIDTHS)
def test_inspect_shows_gflops_to_three_figures(tiny, columns):
    run = run_on_screen(["inspect", tiny], columns=columns)
    assert run.exit_code == 0, run.text
    (line,) = [line for line in run.lines if line.strip().startswith("GFLOPs / image")]
    value = cells(line)[1]
    assert re.fullmatch(r"0\.0*[1-9]\d{0,2}|[1-9][\d.]*", value), value
    assert len(value.replace(".", "").lstrip("0")) <= 3, value  # three significant digits, not six
