"""What a new user reads: help screens, `bit models`, `bit inspect` (fast, without the weights), `-o` names."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from clihelpers import make_checkpoint, make_images, run

COMMANDS = [[], ["classify"], ["embed"], ["inspect"], ["download"], ["models"]]
WIDE = {"COLUMNS": "100"}


def help_text(command: list[str]) -> str:
    result = run([*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.stdout


# -- help screens -------------------------------------------------------------------------------------


# The commands whose options bitcli names itself (Typer's public `metavar`); the rest of the layout
# is Typer's own (`<list[str]>` beside arguments, `<bool>` beside --help, `[x>=1]` after a range).
OWN_LAYOUT = [[], ["classify"], ["inspect"], ["download"], ["models"], ["train"], ["eval"], ["serve"]]


@pytest.mark.parametrize("command", OWN_LAYOUT, ids=lambda c: " ".join(c) or "bit")
def test_options_name_their_values_plainly(command):
    text = help_text(command)
    options = [line for line in text.splitlines() if "--" in line and "--help" not in line]
    assert options, text
    assert not any("<bool>" in line or "<int" in line for line in options), text
    assert not re.search(r"\w \.(\s|$)", text), text  # a word cut off before its full stop ("paths .")


def test_shared_options_show_n_for_numbers_and_nothing_for_flags():
    flat = " ".join(help_text(["classify"]).replace("│", " ").split())
    for shown in ("--top-k -k N", "--batch-size N", "--threads N", "--max-pixels N", "--device DEVICE", "--model -m MODEL"):
        assert shown in flat, (shown, flat)
    assert re.search(r"--quiet -q No progress bar", flat), flat


def example_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    return [line for line in lines[start + 1 :] if line.strip().startswith("bit ")]


def test_examples_are_indented_alike_on_every_help_screen():
    indents = {}
    for command in COMMANDS:
        examples = example_lines(help_text(command))
        assert examples, command
        indents[" ".join(command) or "bit"] = {len(line) - len(line.lstrip()) for line in examples}
    assert len({frozenset(v) for v in indents.values()}) == 1 and all(len(v) == 1 for v in indents.values()), indents


@pytest.mark.parametrize("command", [["classify"], ["embed"], ["inspect"]])
def test_model_help_names_every_accepted_form(command):
    flat = " ".join(help_text(command).replace("│", " ").split())
    for form in ("google/bit-50", "@", "alias", "directory", ".npz"):
        assert form in flat, (form, flat)


def test_manifest_help_names_the_default_file():
    flat = " ".join(help_text(["embed"]).replace("│", " ").split())
    assert re.search(r"--manifest FILE .{0,120}OUT\.paths\.txt", flat), flat


def test_usage_lines_name_the_arguments():
    usage = {name: help_text([name]).splitlines() for name in ("classify", "inspect", "download")}
    for name, argument in (("classify", "INPUTS"), ("inspect", "MODEL"), ("download", "MODEL")):
        line = next(line for line in usage[name] if "Usage:" in line)
        assert f"bit {name} [OPTIONS]" in line and argument in line, line


# -- bit models ---------------------------------------------------------------------------------------


def models_table(env: dict[str, str] | None = None) -> list[str]:
    result = run(["models"], env={**WIDE, **(env or {})})
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def row(lines: list[str], alias: str) -> str:
    return next(line for line in lines if line.split("│")[0].split()[0:1] == [alias])


def test_models_marks_the_default_model():
    lines = models_table()
    assert "*" in row(lines, "bit-50") and "*" not in row(lines, "bit-m-r50x1")
    assert any("* default" in line for line in lines)
    moved = models_table({"BIT_MODEL": "bit-m-r50x1"})
    assert "*" in row(moved, "bit-m-r50x1") and "*" not in row(moved, "bit-50")
    rows = {r["alias"]: r for r in json.loads(run(["models", "--format", "json"], env={"BIT_MODEL": "bit-m-r50x1"}).stdout)}
    assert rows["bit-m-r50x1"]["default"] is True and rows["bit-50"]["default"] is False


def test_models_says_how_bit_50_and_bit_m_r50x1_differ():
    lines = models_table()
    notes = " ".join(" ".join(line for line in lines if "│" not in line and "━" not in line).split())
    sentence = next((s for s in re.split(r"(?<=\.) ", notes) if "bit-50" in s and "bit-m-r50x1" in s), "")
    assert "transformers" in sentence and "timm" in sentence, notes


# -- bit inspect: no weights loaded, labels that survive commas -----------------------------------------


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    directory = make_checkpoint(tmp_path_factory.mktemp("inspect") / "tiny-imagenet", num_labels=1000)
    config = json.loads((directory / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config.pop(key, None)
    config["num_labels"] = 1000
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def bit_process(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, **kw)


def imported_modules(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_inspect_reads_no_weights(imagenet_model, tmp_path):
    """Metadata comes from config.json and the safetensors header: weights whose values loading
    refuses (every one NaN) are described all the same, with the same report."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    poisoned = tmp_path / "nan-weights"
    shutil.copytree(imagenet_model, poisoned)
    with safe_open(imagenet_model / "model.safetensors", "pt") as file:
        tensors = {key: torch.full_like(file.get_tensor(key), float("nan")) for key in file.keys()}
    save_file(tensors, str(poisoned / "model.safetensors"))
    image = make_images(tmp_path / "images", 1)[0]
    refused = run(["classify", "--model", poisoned, image])
    assert refused.exit_code == 3 and "NaN" in refused.stderr  # loading refuses them
    report = json.loads(run(["inspect", poisoned, "--format", "json"]).stdout)
    reference = json.loads(run(["inspect", imagenet_model, "--format", "json"]).stdout)
    assert report["num_parameters"] == reference["num_parameters"] > 0
    assert {k: v for k, v in report.items() if k not in ("model", "path", "files")} == {
        k: v for k, v in reference.items() if k not in ("model", "path", "files")
    }


def test_inspect_of_sharded_and_pickled_weights_agrees(tmp_path):
    from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor

    reports = []
    for weights in ("safetensors", "sharded", "pickle"):
        directory = tmp_path / weights
        model = save_reference_checkpoint(directory, weights=weights, preprocessor=tiny_preprocessor(32), **TINY)
        result = run(["inspect", directory, "--format", "json"])
        assert result.exit_code == 0, result.stderr
        reports.append(json.loads(result.stdout))
        assert reports[-1]["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert len({(r["num_parameters"], r["gflops"], r["feature_dim"]) for r in reports}) == 1


def test_inspect_notices_truncated_weights_from_the_header(ckpt, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    weights.write_bytes(data[: header + 100])  # the header intact, the tensors cut short
    result = run(["inspect", broken, "--format", "json"])
    assert result.exit_code == 3 and result.stdout == ""
    assert "model.safetensors" in result.stderr and "truncated" in result.stderr


def test_inspect_lists_labels_one_per_line(imagenet_model):
    from bitcli.labels import load_bundled

    result = run(["inspect", imagenet_model], env=WIDE)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    first = load_bundled(1000).names[:5]
    assert "," in "".join(first)  # "tench, Tinca tinca": joining with commas would be ambiguous
    for name in first:
        holding = [line for line in lines if name in line]
        assert len(holding) == 1, (name, result.stdout)
        assert not any(other in holding[0] for other in first if other != name)


# -- bit embed -o NAME without .npy ---------------------------------------------------------------------


def test_output_without_npy_gets_it_as_numpy_save_would(ckpt, tmp_path):
    make_images(tmp_path / "p", 1)
    result = run(["embed", tmp_path / "p", "-o", tmp_path / "vecs", "-m", ckpt])
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "vecs").exists()
    assert np.load(tmp_path / "vecs.npy").shape == (1, 32)
    assert (tmp_path / "vecs.paths.txt").read_text().splitlines() == [str(tmp_path / "p" / "img00.png")]
    assert "vecs.npy" in result.stderr
    again = run(["embed", tmp_path / "p", "-o", tmp_path / "vecs", "-m", ckpt])
    assert again.exit_code == 2 and "vecs.npy already exists" in again.stderr


def test_inspect_of_a_hub_repository_names_it_whether_read_or_loaded(tmp_path, monkeypatch):
    """A pickle-only repository is loaded, a safetensors one read: both reports name the reference."""
    from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor
    from hubserver import FakeHub

    hub = FakeHub().start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for weights in ("pickle", "safetensors"):
            save_reference_checkpoint(tmp_path / weights, weights=weights, preprocessor=tiny_preprocessor(32), **TINY)
            hub.add_commit(f"acme/tiny-{weights}", tmp_path / weights)
            result = run(["inspect", f"acme/tiny-{weights}", "--format", "json"])
            assert result.exit_code == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["repo_id"] == report["model"] == f"acme/tiny-{weights}" and report["source"] == "download"
            assert len(report["commit"]) == 40
            assert result.stderr.count("weights_only=True") == (1 if weights == "pickle" else 0)
    finally:
        hub.stop()


# -- Click's own errors: one line, exit 2 -------------------------------------------------------------


@pytest.mark.parametrize(
    "args, names",
    [
        (["classify", "--top-k", "0", "x.jpg"], "--top-k"),
        (["classify", "-t", "abc", "x.jpg"], "-t"),
        (["embed", "--batch-size", "abc", "x.jpg"], "--batch-size"),
        (["classify"], "INPUTS"),
        (["nosuch"], "nosuch"),
    ],
    ids=["out of range", "unknown option", "not a number", "missing argument", "unknown command"],
)
def test_option_errors_are_one_line_and_exit_2(args, names):
    from relhelpers import bit

    result = bit(*args)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert result.stdout == b""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert names in stderr and "--help" in stderr, stderr
    assert "Traceback" not in stderr and "╭" not in stderr, stderr


def test_bit_alone_shows_the_help_and_exits_2():
    from relhelpers import bit

    result = bit()
    assert result.returncode == 2
    assert b"Usage: bit" in result.stdout and result.stderr == b""
