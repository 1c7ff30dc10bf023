"""`bit models`: sizes and cache state per alias, as JSON and as a table that fits the terminal."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from bitcli import hub, output
from bitcli.hub import zoo
from clihelpers import run


def rendered(rows: list[dict], width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(output.models_table(rows))
    return console.file.getvalue().splitlines()


def test_json_has_parameters_download_size_and_cache_state():
    result = run(["models", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["alias"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {entry.alias for entry in zoo.KNOWN_MODELS} | set(zoo.BUNDLED)
    assert rows["bit-digits"]["bundled"] and rows["bit-digits"]["cached"] and rows["bit-digits"]["num_parameters"] == 134_538
    bit50 = rows["bit-50"]
    assert bit50["num_parameters"] == 25_549_352 and bit50["download_bytes"] == 4 * 25_549_352
    assert bit50["architecture"] == "resnetv2_50x1_bit"
    assert bit50["cached"] is False and bit50["size_bytes"] == 0
    assert rows["bit-m-r152x4-in21k"]["num_parameters"] == 1_107_299_923


@pytest.mark.parametrize("width", [80, 100])
def test_table_fits_the_terminal_without_cutting_anything(width):
    rows = hub.list_known_models()
    at = next(i for i, row in enumerate(rows) if row["alias"] == "bit-50")
    rows[at] = {**rows[at], "cached": True, "size_bytes": 102_300_000}
    lines = rendered(rows, width)
    assert max(len(line) for line in lines) <= width
    table = "\n".join(lines)
    assert "…" not in table  # no cell was truncated
    for entry in zoo.KNOWN_MODELS:
        row = next(line for line in lines if line.split("│")[0].strip() == entry.alias)  # one line per alias
        cells = [cell.strip() for cell in row.split("│")]
        assert cells[1] == str(entry.input_size)
        assert cells[5] == output.short_size(4 * entry.num_parameters)
    first = [cell.strip() for cell in next(line for line in lines if line.startswith("bit-50 ")).split("│")]
    assert first == ["bit-50", "448", "1,000", "80.39", "25.5M", "102 MB", "102 MB"]
    in21k = next(line for line in lines if line.startswith("bit-m-r152x4-in21k "))
    assert [cell.strip() for cell in in21k.split("│")][3:5] == ["-", "1.11B"] and in21k.rstrip().endswith("no")
    assert "4 bytes per parameter" in table
    digits = [cell.strip() for cell in next(line for line in lines if line.startswith("bit-digits ")).split("│")]
    assert digits == ["bit-digits", "32", "10", "-", "0.1M", "-", "bundled"]


@pytest.mark.parametrize(
    "num_bytes, text",
    [(999, "999 B"), (68_300, "68.3 kB"), (999_500, "1.00 MB"), (102_197_408, "102 MB"), (4_429_199_692, "4.43 GB")],
)
def test_short_size(num_bytes, text):
    assert output.short_size(num_bytes) == text
