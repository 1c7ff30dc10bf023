"""Nothing dropped, nothing broken, at 80 and 120 columns: what a newcomer's terminal shows.

The real `bit` in a pseudo-terminal (tests/ptyscreen.py): `classify -k K` shows all K classes
at any width, `eval`'s titles stay on one line, every progress bar has the same columns.
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


# -- eval ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", WIDTHS)
def test_eval_titles_stay_on_one_line(tiny, labelled, columns):
    run = run_on_screen(["eval", labelled, "-m", tiny], columns=columns, cwd=labelled.parent)
    assert run.exit_code == 0, run.text
    for title in ("Evaluation", "Per class", CONFUSION_TITLE):
        assert title in run.lines, f"{title!r} is not one whole line:\n" + run.text
    matrix = run.lines.index(CONFUSION_TITLE)
    assert cells(run.lines[matrix + 1])[1:4] == ["class 0", "class 1", "class 2"], run.text
