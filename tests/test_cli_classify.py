"""`bit classify` through the real command: input styles, formats, labels and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from clihelpers import LABELS, assert_clean_failure, jsonl, make_images, run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos") / "photos"
    make_images(directory, 5, bad=("broken.jpg",))
    return directory


@pytest.fixture(scope="module")
def expected(ckpt, photos):
    """The library API's results for the folder (broken.jpg first, then img00..img04)."""
    import bitcli

    results = bitcli.classify([str(photos)], model=str(ckpt), top_k=3, device="cpu")
    return {r.path: r.to_dict() for r in results}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def good_paths(photos):
    return [str(photos / f"img{i:02d}.png") for i in range(5)]


@pytest.mark.slow
@pytest.mark.parametrize("style", ["args", "directory", "glob", "stdin"])
def test_input_styles_give_the_library_results(ckpt, photos, expected, style):
    paths = good_paths(photos)
    if style == "args":
        inputs, stdin = paths, None
    elif style == "directory":
        inputs, stdin = [str(photos)], None
        paths = [str(photos / "broken.jpg"), *paths]
    elif style == "glob":
        inputs, stdin = [str(photos / "img*.png")], None
    else:
        inputs, stdin = ["-"], "\n".join(paths) + "\n"
    result = run(["classify", *inputs, "-m", ckpt, "-k", "3", "--format", "jsonl"], input=stdin)
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == paths
    assert records == [expected[p] for p in paths]
    if style == "directory":
        assert_clean_failure(result, 1)
        assert records[0] == {"path": str(photos / "broken.jpg"), "error": expected[str(photos / "broken.jpg")]["error"]}
        assert result.stderr.count("error:") == 1 and "broken.jpg" in result.stderr
    else:
        assert result.exit_code == 0, result.stderr
        assert result.stderr == ""


def test_jsonl_shape_and_probabilities(ckpt, photos):
    result = run(["classify", photos / "img00.png", "-m", ckpt, "--top-k", "4"])  # auto -> jsonl (not a tty)
    (record,) = jsonl(result.stdout)
    preds = record["predictions"]
    assert [p["rank"] for p in preds] == [1, 2, 3, 4]
    assert all(set(p) == {"rank", "index", "label", "score"} for p in preds)
    assert [p["label"] for p in preds] == [LABELS[p["index"]] for p in preds]
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6


def test_top_k_larger_than_the_head_shows_every_class(ckpt, photos):
    result = run(["classify", photos / "img00.png", "-m", ckpt, "--top-k", "50", "-f", "jsonl"])
    preds = jsonl(result.stdout)[0]["predictions"]
    assert sorted(p["index"] for p in preds) == list(range(10))
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-5)


def test_json_and_csv_match_the_library(ckpt, photos, expected):
    args = ["classify", photos, "-m", ckpt, "-k", "3"]
    as_json = run([*args, "--format", "json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == list(expected.values())

    as_csv = run([*args, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    want = [
        {"path": path, "rank": str(p["rank"]), "index": str(p["index"]), "label": p["label"], "score": p["score"]}
        for path, rec in expected.items()
        for p in rec.get("predictions", [])
    ]
    assert [{**r, "score": float(r["score"])} for r in rows] == want


def test_table_format(ckpt, photos, expected):
    result = run(["classify", photos / "img00.png", photos / "img01.png", "-m", ckpt, "-k", "2", "-f", "table"])
    assert result.exit_code == 0
    for path in good_paths(photos)[:2]:
        best = expected[path]["predictions"][0]
        assert path in result.stdout
        assert f"{best['score'] * 100:.2f}%" in result.stdout and best["label"] in result.stdout


def test_labels_file_replaces_names(ckpt, photos, tmp_path):
    names = [f"thing-{i}" for i in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    result = run(["classify", photos / "img00.png", "-m", ckpt, "--labels", tmp_path / "labels.txt", "-f", "jsonl"])
    preds = jsonl(result.stdout)[0]["predictions"]
    assert [p["label"] for p in preds] == [names[p["index"]] for p in preds]


def test_model_from_environment_variable(ckpt, photos):
    result = run(["classify", photos / "img00.png", "-f", "jsonl"], env={"BIT_MODEL": str(ckpt)})
    assert result.exit_code == 0, result.stderr
    assert len(jsonl(result.stdout)[0]["predictions"]) == 5


def test_missing_input_is_reported_in_place(ckpt, photos):
    result = run(["classify", photos / "img00.png", "nope.jpg", photos / "img01.png", "-m", ckpt, "-f", "jsonl"])
    assert_clean_failure(result, 1)
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == [str(photos / "img00.png"), "nope.jpg", str(photos / "img01.png")]
    assert "error" in records[1] and "predictions" in records[2]
    assert "nope.jpg" in result.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--top-k", "0"],
        ["--format", "yaml"],
        ["--device", "tpu"],
        ["--batch-size", "0"],
        ["--no-such-option"],
    ],
)
def test_usage_errors_exit_2(ckpt, photos, extra):
    result = run(["classify", photos / "img00.png", "-m", ckpt, *extra])
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""


def test_labels_file_with_wrong_count_is_a_usage_error(ckpt, photos, tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    result = run(["classify", photos / "img00.png", "-m", ckpt, "--labels", tmp_path / "labels.txt"])
    assert_clean_failure(result, 2)
    assert "--labels" in result.stderr


def test_no_inputs_is_a_usage_error(ckpt):
    assert run(["classify", "-m", ckpt]).exit_code == 2


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_a_usage_error(ckpt, photos):
    result = run(["classify", photos / "img00.png", "-m", ckpt, "--device", "cuda"])
    assert_clean_failure(result, 2)
    assert "cuda" in result.stderr.lower() and "--device cpu" in result.stderr


@pytest.mark.parametrize("model", ["missing-dir/", "nobody/no-such-model", "org/name@"])
def test_unresolvable_model_exits_3(photos, model):
    result = run(["classify", photos / "img00.png", "-m", model])
    assert_clean_failure(result, 3)
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_bad_checkpoint_exits_3_and_debug_shows_traceback(photos, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bit", "num_labels": 10}')
    (bad / "model.safetensors").write_bytes(b"\0" * 100)
    result = run(["classify", photos / "img00.png", "-m", bad])
    assert_clean_failure(result, 3)
    debug = run(["classify", photos / "img00.png", "-m", bad, "--debug"])
    assert debug.exit_code == 3
    assert "Traceback" in debug.stderr


def test_version_and_help_examples():
    version = run(["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("bit ")
    for command in ([], ["classify"], ["embed"], ["inspect"]):
        result = run([*command, "--help"])
        assert result.exit_code == 0
        assert "Examples" in result.stdout and "bit " in result.stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from bitcli.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert "classify" in proc.stdout


def test_ctrl_c_exits_130_without_traceback(ckpt, photos, monkeypatch):
    from bitcli.pipeline import Classifier

    def interrupted(self, items):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(Classifier, "classify_groups", interrupted)
    result = run(["classify", photos / "img00.png", "-m", ckpt])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr


def test_threads_sets_torch_intra_op_threads(ckpt, photos):
    import torch

    before = torch.get_num_threads()
    try:
        result = run(["classify", photos / "img00.png", "-m", ckpt, "--threads", "1"])
        assert result.exit_code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fmt", ["csv", "table", "jsonl"])
def test_non_utf8_file_name_under_a_strict_utf8_stdout(ckpt, photos, tmp_path, fmt):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / os.fsdecode(b"\xffx.png")).write_bytes((photos / "img00.png").read_bytes())
    result = run(["classify", odd, "-m", ckpt, "-f", fmt])  # CliRunner's stdout is strict UTF-8
    assert result.exit_code == 0, result.stderr
    assert b"x.png" in result.stdout_bytes


def test_error_for_a_path_with_a_line_break_stays_one_line(ckpt, photos):
    result = run(["classify", photos / "img00.png", "a\nb.png", "-m", ckpt, "-f", "jsonl"])
    assert_clean_failure(result, 1)
    assert result.stderr.splitlines() == ["error: a\\nb.png: path contains a line break (not supported)"]
