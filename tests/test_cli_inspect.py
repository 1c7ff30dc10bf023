"""`bit inspect`: the JSON report against independent numbers, the tables, and `bit models`."""

from __future__ import annotations

import json

import pytest
import torch

from clihelpers import NUM_LABELS, assert_clean_failure, run

REQUIRED_KEYS = {
    "model", "revision", "path", "files", "architecture", "num_parameters", "feature_dim",
    "num_labels", "input_size", "gflops", "preprocessing",
}


@pytest.fixture(scope="module")
def report(ckpt):
    result = run(["inspect", ckpt, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def reference_macs(model: torch.nn.Module, size: int) -> int:
    """MACs of transformers' own model, counted with hooks on a real forward pass."""
    total = 0

    def conv(m, _i, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, _i, out):
        nonlocal total
        total += out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return total


@pytest.mark.slow
def test_json_report_matches_the_reference_model(ckpt, report):
    from transformers import BitForImageClassification

    ref = BitForImageClassification.from_pretrained(ckpt).eval()
    assert REQUIRED_KEYS <= set(report)
    assert report["num_parameters"] == sum(p.numel() for p in ref.parameters())
    assert report["feature_dim"] == 32 and report["num_labels"] == NUM_LABELS
    assert report["input_size"] == [32, 32]
    assert report["gflops"] == pytest.approx(2 * reference_macs(ref, 32) / 1e9, rel=1e-5)
    assert report["gmacs"] * 2 == pytest.approx(report["gflops"], rel=1e-5)
    assert report["path"] == str(ckpt.resolve())
    assert report["revision"] is None and report["source"] == "local"


def test_json_report_describes_architecture_files_and_preprocessing(report):
    arch = report["architecture"]
    assert arch["name"] == "BiT R17x1, pre-activation"
    assert arch["depths"] == [1, 1, 2, 1] and arch["widths"] == [16, 16, 32, 32]
    assert arch["num_groups"] == 2 and arch["output_stride"] == 32
    files = {f["name"]: f["size"] for f in report["files"]}
    assert "model.safetensors" in files and files["model.safetensors"] > 1000
    assert report["weights_format"] == "safetensors"
    pre = report["preprocessing"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["interpolation"] == "bilinear"
    assert report["labels"]["first"] == ["class 0", "class 1", "class 2", "class 3", "class 4"]
    assert report["labels"]["source"] == "checkpoint config"


def test_table_report(ckpt):
    result = run(["inspect", "-m", ckpt])  # --model works as well as the argument
    assert result.exit_code == 0, result.stderr
    for text in ("BiT R17x1, pre-activation", "model.safetensors", "GFLOPs", "bilinear", "class 0"):
        assert text in result.stdout


def test_table_rounds_gflops_to_three_figures(ckpt, report):
    result = run(["inspect", ckpt])
    assert result.exit_code == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "GFLOPs / image" in line]
    shown = line.split("│")[1].strip()
    assert float(shown) == pytest.approx(report["gflops"], rel=5e-3)
    assert len(shown.lstrip("0.")) <= 3, shown  # three significant digits, not six


def test_inspect_unknown_model_exits_3():
    result = run(["inspect", "nobody/nothing-here", "--format", "json"])
    assert_clean_failure(result, 3)
    assert result.stdout == ""


def test_models_lists_known_aliases():
    result = run(["models", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert any(r["alias"] == "bit-50" and r["repo_id"] == "google/bit-50" for r in rows)
    assert all(r["cached"] is False for r in rows if not r.get("bundled"))  # the test cache is empty


def test_download_of_an_unreachable_model_exits_3():
    result = run(["download", "nobody/nothing-here"])
    assert_clean_failure(result, 3)


@pytest.mark.slow
def test_a_folder_without_preprocessor_config_says_so_once(ckpt, tmp_path):
    """transformers' defaults (224 px, CLIP's mean and std) are not silently assumed."""
    import shutil

    from clihelpers import make_images
    from relhelpers import bit, text

    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    (bare / "preprocessor_config.json").unlink()
    make_images(tmp_path / "photos", 6)
    for args in (["classify", tmp_path / "photos", "-m", bare], ["inspect", bare]):
        result = bit(*args)
        assert result.returncode == 0, text(result.stderr)
        warnings = [line for line in text(result.stderr).splitlines() if "preprocessor_config.json" in line]
        assert len(warnings) == 1, text(result.stderr)
        assert warnings[0].startswith(f"warning: {bare} has no preprocessor_config.json")
        assert "224" in warnings[0] and "CLIP" in warnings[0]
    with_config = bit("classify", tmp_path / "photos", "-m", ckpt)
    assert with_config.returncode == 0 and "preprocessor_config" not in text(with_config.stderr)
    assert "warning" not in text(bit("inspect", ckpt).stderr)
