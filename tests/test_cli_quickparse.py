"""`bit` converts a command line's plain values itself (cli/quickparse.py) to the very values
Typer's own conversion gives, and leaves every other command line to Typer.

The reference is Typer itself: `command.make_context(...)` parses the same line with Typer's
conversion (pydantic), and its `params` must equal ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from bitcli.cli import quickparse
from bitcli.cli.app import COMMANDS, app, command_function

ROOT = Path(__file__).resolve().parent.parent


def ours(args: list[str]):
    """quickparse's context for `bit ARGS`, or None where it leaves the line to Typer."""
    group = typer.main.get_command(app)
    parent = typer.Context(group, info_name="bit", **group.context_settings)
    return quickparse.parsed(group.get_command(parent, args[0]), args[1:], parent, command_function(args[0]))


def contexts(args: list[str]):
    """(ours, Typer's) contexts for `bit ARGS`."""
    group = typer.main.get_command(app)
    parent = typer.Context(group, info_name="bit", **group.context_settings)
    return ours(args), group.get_command(parent, args[0]).make_context(args[0], list(args[1:]), parent=parent)


SAME = [
    ["classify", "a.jpg"],
    ["classify", "a.jpg", "b c.jpg", "-k", "3", "--format", "csv", "--server", "http://127.0.0.1:1", "-q", "--debug"],
    ["classify", "--top-k=2", "-fjsonl", "a.jpg", "--", "-b.jpg"],
    ["classify", "-", "-0", "-qk", "7", "caf\udce9.jpg"],  # stdin, short flags together, a name that is not UTF-8
    ["classify", "a.jpg", "--labels", "names.txt", "-m", "bit-50", "--device", "cuda:1", "--precision", "bf16",
     "--batch-size", "4", "--threads", "2", "--max-pixels", "0", "--fast-jpeg", "-0", "--csv-raw"],
    ["embed", "photos/", "-o", "out.npy", "--dtype", "float16", "--normalize", "--engine", "ray", "--workers", "2",
     "--num-gpus-per-worker", "0.5", "--shard", "1/4", "--shard-size", "64", "--shard-dir", "shards"],
    ["combine", "-o", "out.npy", "shards/a", "shards/b", "--overwrite"],
    ["search", "photos.npy", "q.jpg", "--min-score", "-0.25", "-k", "4", "--html", "m.html", "--exact"],
    ["search", "photos.npy", "--build-index"],
    ["search", "photos", "q.jpg", "--server", "http://127.0.0.1:1", "-f", "table"],
    ["dedup", "photos.npy", "--threshold", "0.95", "--format", "json", "--html", "d.html"],
    ["info", "photos.npy", "--format", "json"],
    ["inspect", "bit-50", "--format", "json", "--device", "cpu"],
    ["inspect"],
    ["download", "bit-50", "bit-101", "--local-dir", "models"],
    ["models"],
    ["models", "-f", "json"],
    ["train", "photos/", "-o", "model", "--val-split", "0.2", "--shots", "5", "--steps", "100", "--seed", "1"],
    ["eval", "photos/", "--errors", "errors.csv", "--format", "json"],
    ["serve", "--index", "a.npy", "--index", "b.npy", "--port", "0", "--max-wait-ms", "2.5", "--max-batch", "8"],
    ["serve"],
]


@pytest.mark.parametrize("args", SAME, ids=lambda a: " ".join(a))
def test_plain_values_convert_as_typer_converts_them(args):
    mine, theirs = contexts(args)
    assert mine is not None, "this command line should not need Typer's conversion"
    assert mine.params == theirs.params
    assert {k: type(v) for k, v in mine.params.items()} == {k: type(v) for k, v in theirs.params.items()}
    assert {k: mine.get_parameter_source(k) for k in mine.params} == {k: theirs.get_parameter_source(k) for k in theirs.params}


def test_every_command_runs_without_typers_conversion_with_its_defaults():
    needs = {"classify": ["a.jpg"], "embed": ["a.jpg", "-o", "o.npy"], "combine": ["-o", "o.npy"], "search": ["i.npy"],
             "dedup": ["i.npy"], "info": ["i.npy"], "download": ["bit-50"], "train": ["d", "-o", "m"], "eval": ["d"]}
    for name in COMMANDS:
        mine, theirs = contexts([name, *needs.get(name, [])])
        assert mine is not None, name
        assert mine.params == theirs.params, name


def test_the_environment_is_read_as_typer_reads_it(monkeypatch):
    monkeypatch.setenv("BIT_MODEL", "./my-model")
    monkeypatch.setenv("BIT_SERVER", "http://127.0.0.1:9")
    mine, theirs = contexts(["classify", "a.jpg"])
    assert mine.params == theirs.params and mine.params["server"] == "http://127.0.0.1:9"
    assert mine.get_parameter_source("model") == theirs.get_parameter_source("model") and mine.get_parameter_source("model").name == "ENVIRONMENT"
    monkeypatch.setenv("BIT_SERVER", "")  # empty: not set, as Click reads it
    mine, theirs = contexts(["classify", "a.jpg"])
    assert mine.params == theirs.params and mine.params["server"] is None


LEFT_TO_TYPER = [
    ["classify", "--help"],
    ["classify", "a.jpg", "-h"],
    ["classify"],  # missing argument
    ["classify", "a.jpg", "--bogus"],
    ["classify", "a.jpg", "-k", "0"],  # below the minimum
    ["classify", "a.jpg", "-k", "+3"],
    ["classify", "a.jpg", "-k", " 3"],
    ["classify", "a.jpg", "-k", "1_0"],
    ["classify", "a.jpg", "-k", "three"],
    ["classify", "a.jpg", "-k", "1" * 5000],  # past int()'s digit limit
    ["train", "d", "-o", "m", "--seed", "0" * 4300 + "5"],
    ["classify", "a.jpg", "-f", "JSONL"],  # choices are case-sensitive: Typer's message
    ["classify", "a.jpg", "--labels", ""],
    ["classify", "a.jpg", "-k"],  # no value
    ["search", "i.npy", "q.jpg", "--min-score", "nan"],
    ["search", "i.npy", "q.jpg", "--min-score", "1e-3"],
    ["search", "i.npy", "q.jpg", "--min-score", ".5"],
    ["models", "extra"],
    ["inspect", "a", "b"],
]


@pytest.mark.parametrize("args", LEFT_TO_TYPER, ids=lambda a: " ".join(a)[:60])
def test_anything_else_is_left_to_typer(args):
    assert ours(args) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_path_is_left_to_typer(tmp_path):
    hidden = tmp_path / "names.txt"
    hidden.write_text("a\n")
    hidden.chmod(0)
    assert ours(["classify", "a.jpg", "--labels", str(hidden)]) is None


def test_a_line_left_to_typer_still_gets_typers_message_and_code(tmp_path):
    """The whole `bit` process: Typer's one-line error and exit 2 for a value quickparse declines."""
    done = subprocess.run([sys.executable, "-m", "bitcli", "classify", "a.jpg", "-k", "0"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: Invalid value for '--top-k' / '-k'") and done.stderr.count("\n") == 1


CHILD = """
import sys
from bitcli.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    heavy = sorted(m for m in ("pydantic", "torch", "numpy", "PIL", "huggingface_hub") if m in sys.modules)
    print("EXIT", exit.code, heavy)
"""


@pytest.mark.parametrize("args, env, named", [
    (["classify", "a.jpg", "--device", "tpu"], {}, "--device 'tpu'"),
    (["classify", "a.jpg", "--device", "cuda:x"], {}, "--device 'cuda:x'"),
    (["classify", "a.jpg"], {"BIT_HUB_TIMEOUT": "soon"}, "BIT_HUB_TIMEOUT='soon'"),
])
def test_a_bad_setting_reports_before_the_heavy_imports(args, env, named, tmp_path):
    """As `bit --help` does: no pydantic (Typer's conversion), huggingface_hub, numpy, PIL or torch."""
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "EXIT 2 []", done.stderr
    assert done.stderr.startswith(f"error: {named}") and done.stderr.count("\n") == 1
