"""`bit train` and `bit eval` as a user runs them: bad inputs give one line and a documented exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from clihelpers import run
from transferdata import make_trainable_checkpoint, shared, write_folder

CLASSES = {"cat": 4, "dog": 4}


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path / "bit-cache"))  # the one cache folder: features too


@pytest.fixture
def photos(tmp_path):
    return write_folder(tmp_path / "photos", CLASSES, size=36)


def one_error_line(result, code: int, *fragments: str) -> str:
    """Exit `code`, exactly one `error:` line on stderr (holding every fragment), no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.slow
def test_linear_train_then_classify_and_eval(ckpt, photos, tmp_path):
    out = tmp_path / "model"
    result = run(["train", photos, "-o", out, "-m", ckpt, "--val", photos, "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # stdout carries data only; the result is OUTDIR
    assert "validation accuracy" in result.stderr and f"wrote {out}" in result.stderr
    classified = run(["classify", photos / "cat" / "img00.png", "-m", out, "--format", "json", "-k", "2"])
    assert {p["label"] for p in json.loads(classified.stdout)[0]["predictions"]} == {"cat", "dog"}
    evaluation = run(["eval", photos, "-m", out, "--format", "json"])
    assert evaluation.exit_code == 0, evaluation.stderr
    record = json.loads(evaluation.stdout)
    assert record["classes"] == ["cat", "dog"] and record["n"] == 8 and record["top5"] is None
    report = json.loads((out / "training_report.json").read_text())
    assert record["accuracy"] == pytest.approx(report["results"]["val_accuracy"], abs=1 / 8 + 1e-9)
    table = run(["eval", photos, "-m", out])
    assert "accuracy" in table.stdout and "Confusion" in table.stdout


def test_class_folder_without_images(ckpt, photos, tmp_path):
    (photos / "empty").mkdir()
    one_error_line(run(["train", photos, "-o", tmp_path / "m", "-m", ckpt]), 2, "empty", "class folder with no images")


def test_one_class_only(ckpt, tmp_path):
    data = write_folder(tmp_path / "one", {"cat": 3})
    one_error_line(run(["train", data, "-o", tmp_path / "m", "-m", ckpt]), 2, "only one class", "at least 2")


def test_an_unreadable_image_is_skipped_counted_and_exits_1(ckpt, photos, tmp_path):
    (photos / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run(["train", photos, "-o", tmp_path / "m", "-m", ckpt])
    one_error_line(result, 1, "broken.png")
    report = json.loads((tmp_path / "m" / "training_report.json").read_text())
    assert report["data"]["skipped"] == 1 and report["data"]["train_used"] == 8


def test_a_class_name_the_model_cannot_hold(ckpt, photos, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(f"{photos}/cat/img00.png,cat\n{photos}/dog/img00.png,\"dog\x07\"\n")
    one_error_line(run(["train", listing, "-o", tmp_path / "m", "-m", ckpt]), 2, "control character")
    other = write_folder(tmp_path / "val", {"cat": 1, "owl": 1})
    one_error_line(run(["train", photos, "-o", tmp_path / "m", "-m", ckpt, "--val", other]), 2, "'owl' is not among")


def test_existing_outdir_needs_overwrite(ckpt, photos, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_error_line(run(["train", photos, "-o", out, "-m", ckpt]), 2, "already exists", "--overwrite")
    one_error_line(run(["train", photos, "-o", out, "-m", ckpt, "--overwrite"]), 2, "not written by bit train")
    assert (out / "notes.txt").read_text() == "mine"


def test_eval_folder_names_that_match_no_label(ckpt, tmp_path):
    data = write_folder(tmp_path / "d", {"cats": 1, "dogs": 1})
    one_error_line(run(["eval", data, "-m", ckpt]), 2, "match no label of the model", "'cats'")


def test_bad_options_and_models(ckpt, photos, tmp_path):
    one_error_line(run(["train", photos, "-o", tmp_path / "m", "-m", ckpt, "--val-split", "2"]), 2, "--val-split 2")
    one_error_line(run(["train", photos, "-o", tmp_path / "m", "-m", ckpt, "--resume"]), 2, "--resume applies")
    one_error_line(run(["train", photos, "-o", tmp_path / "m", "-m", tmp_path / "nowhere"]), 3)
    one_error_line(run(["train", tmp_path / "nope", "-o", tmp_path / "m", "-m", ckpt]), 2, "no such folder")


# -- a real process, killed and resumed ----------------------------------------------------------


def bit(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bitcli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow
def test_finetune_killed_then_resumed_equals_an_uninterrupted_run(photos, tmp_path, tmp_path_factory):
    base = shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint)
    common = ["-m", base, "--method", "finetune", "--steps", "30", "--batch-size", "4", "--threads", "1",
              "--checkpoint-minutes", "0", "--device", "cpu", "-q"]
    full = run(["train", photos, "-o", tmp_path / "full", *common])
    assert full.exit_code == 0, full.stderr

    out = tmp_path / "resumed"
    state = tmp_path / ".resumed.bit-train" / "state.json"
    proc = bit("train", photos, "-o", out, *common)
    deadline = time.monotonic() + 120
    while not (state.exists() and json.loads(state.read_text() or "{}").get("step", 0) >= 5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint before the end (rc {proc.returncode})")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    again = run(["train", photos, "-o", out, *common])
    one_error_line(again, 2, "--resume")
    resumed = run(["train", photos, "-o", out, *common, "--resume"])
    assert resumed.exit_code == 0, resumed.stderr
    expected, got = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert (expected[key] - got[key]).abs().max() <= 1e-6, key
    assert not state.parent.exists()


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(photos, tmp_path, tmp_path_factory):
    base = shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint)
    proc = bit("train", photos, "-o", tmp_path / "m", "-m", base, "--method", "finetune", "--steps", "5000",
               "--batch-size", "2", "--threads", "1", "--device", "cpu")
    # The plan prints once the first steps are timed; interrupt after it.
    lines = []
    for raw in proc.stderr:
        lines.append(raw.decode())
        if "time: about" in lines[-1]:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(lines) + rest.decode()
    assert proc.returncode == 130, stderr
    assert "plan: 5000 steps" in stderr and "--resume" in stderr
    assert json.loads((tmp_path / ".m.bit-train" / "state.json").read_text())["step"] >= 3


def test_a_base_without_preprocessor_config_says_so_once(photos, tmp_path, tmp_path_factory):
    import shutil

    base = tmp_path / "bare"
    shutil.copytree(shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint), base)
    (base / "preprocessor_config.json").unlink()
    result = run(["train", photos, "-o", tmp_path / "m", "-m", base, "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "preprocessor_config.json" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {base} has no preprocessor_config.json"), result.stderr
    assert "preprocessor_config" not in run(["train", photos, "-o", tmp_path / "m2", "-m", tmp_path / "m"]).stderr


@pytest.mark.slow
def test_resolution_is_bounded_and_only_for_finetune(tmp_path):
    """`--resolution` with the linear probe would be ignored without a word, and a huge one would
    take the machine's memory and hours: both are one line and exit 2 before anything loads."""
    from relhelpers import ROOT, bit, text

    data = ROOT / "sample_digits"
    linear = bit("train", data, "-o", tmp_path / "a", "-m", "bit-digits", "--resolution", "64", timeout=120)
    assert linear.returncode == 2 and "--resolution applies to --method finetune" in text(linear.stderr)
    huge = bit("train", data, "-o", tmp_path / "b", "-m", "bit-digits", "--method", "finetune", "--resolution", "100000", timeout=120)
    assert huge.returncode == 2 and "--resolution" in text(huge.stderr)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
