"""Issue 12, exit codes and messages: NUL-separated stdin, malformed configs, non-finite numbers,
weights of the wrong type, an empty input list, and library warnings that would add lines.

All through the real `bit` in a subprocess; checkpoints are the tiny random model of the other
CLI tests, edited on disk.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from clihelpers import LABELS, jsonl, make_images
from relhelpers import assert_one_error_line, bit, error_lines, text


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    make_images(directory, 2)
    return directory


def edited(ckpt, tmp_path, *, config=None, weights=None):
    """A copy of the tiny checkpoint with config.json fields replaced and/or tensors changed."""
    model = tmp_path / "model"
    shutil.copytree(ckpt, model)
    if config is not None:
        data = json.loads((model / "config.json").read_text())
        data.update(config)
        # json.dumps writes NaN and Infinity literals, as some tools do.
        (model / "config.json").write_text(json.dumps(data))
    if weights is not None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(model / "model.safetensors")
        save_file(weights(tensors), model / "model.safetensors")
    return model


def strict_json(line: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (jq, JavaScript) do."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


# -- 9. NUL-separated paths on stdin -------------------------------------------------------


@pytest.mark.slow
def test_nul_separated_stdin_with_dash_zero(ckpt, photos, tmp_path):
    odd = tmp_path / "a b\tc.png"
    shutil.copy(photos / "img00.png", odd)
    broken = tmp_path / "a\nb.png"  # listed fine, but a line break in a path is one failed input, as always
    shutil.copy(photos / "img00.png", broken)
    listing = b"\0".join(str(p).encode() for p in (photos / "img00.png", odd, broken, photos / "img01.png")) + b"\0"
    result = bit("classify", "-0", "-", "-m", ckpt, "-f", "jsonl", cwd=tmp_path, input=listing)
    assert result.returncode == 1, error_lines(result)
    records = jsonl(text(result.stdout))
    assert [r["path"] for r in records] == [str(photos / "img00.png"), str(odd), str(broken), str(photos / "img01.png")]
    assert ["error" in r for r in records] == [False, False, True, False]
    long = bit("embed", "--null", "-", "-o", "o.npy", "-m", ckpt, cwd=tmp_path,
               input=str(photos / "img01.png").encode() + b"\0")
    assert long.returncode == 0, error_lines(long)


@pytest.mark.slow
def test_a_nul_on_stdin_without_dash_zero_is_a_usage_error(ckpt, photos, tmp_path):
    listing = f"{photos / 'img00.png'}\0{photos / 'img01.png'}\0".encode()
    result = bit("classify", "-", "-m", ckpt, cwd=tmp_path, input=listing)
    assert_one_error_line(result, 2, "-0")
    assert result.stdout == b""


@pytest.mark.slow
def test_non_utf8_names_on_stdin_are_paths_like_any_other(ckpt, photos, tmp_path):
    name = tmp_path.as_posix().encode() + b"/caf\xe9.png"
    with open(name, "wb") as fh:
        fh.write((photos / "img00.png").read_bytes())
    result = bit("classify", "-", "-m", ckpt, "-f", "jsonl", cwd=tmp_path, input=name + b"\n")
    assert result.returncode == 0, error_lines(result)
    assert len(jsonl(text(result.stdout))) == 1


# -- 10. malformed config fields are model errors ----------------------------------------------


@pytest.mark.slow
def test_id2label_as_a_list_names_the_classes(ckpt, photos, tmp_path):
    names = [f"kind {i}" for i in range(len(LABELS))]
    model = edited(ckpt, tmp_path, config={"id2label": names})
    result = bit("classify", photos / "img00.png", "-m", model, "-f", "jsonl", "-k", "10", cwd=tmp_path)
    assert result.returncode == 0, error_lines(result)
    assert {p["label"] for p in jsonl(text(result.stdout))[0]["predictions"]} == set(names)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields, name",
    [
        ({"id2label": "cat"}, "id2label"),
        ({"id2label": {"first": "cat"}}, "id2label"),
        ({"depths": "three"}, "depths"),
        ({"hidden_sizes": 5}, "hidden_sizes"),
        ({"num_groups": "two"}, "num_groups"),
        ({"ws_eps": "tiny"}, "ws_eps"),
    ],
)
def test_a_config_field_of_the_wrong_type_is_one_model_error(ckpt, photos, tmp_path, fields, name):
    model = edited(ckpt, tmp_path, config=fields)
    result = bit("classify", photos / "img00.png", "-m", model, cwd=tmp_path)
    assert_one_error_line(result, 3, name)


# -- 11. non-finite numbers never reach the output --------------------------------------------


def _poison(key_part: str, value: float):
    def change(tensors):
        key = next(k for k in sorted(tensors) if key_part in k)
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
        return tensors

    return change


@pytest.mark.slow
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_at_load(ckpt, photos, tmp_path, value):
    model = edited(ckpt, tmp_path, weights=_poison("conv", value))
    for command in (["classify"], ["embed", "-o", "o.npy"]):
        result = bit(*command, photos / "img00.png", "-m", model, cwd=tmp_path)
        assert_one_error_line(result, 3, "model.safetensors")
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "o.npy.partial").exists()


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [("ws_eps", math.nan), ("ws_eps", 0.0), ("ws_eps", -1e-8), ("ws_eps", math.inf)])
def test_a_non_finite_or_non_positive_eps_is_refused_at_load(ckpt, photos, tmp_path, field, value):
    model = edited(ckpt, tmp_path, config={field: value})
    result = bit("classify", photos / "img00.png", "-m", model, cwd=tmp_path)
    assert_one_error_line(result, 3, field)


def _overflowing_head(tensors):
    """Finite weights whose logits overflow float32 for any input: inf - inf gives NaN scores."""
    key = next(k for k in sorted(tensors) if k.startswith("classifier") and k.endswith("weight"))
    tensors[key] = tensors[key].sign() * 3e38
    return tensors


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_non_finite_scores_are_a_failed_input_and_the_output_stays_valid(ckpt, photos, tmp_path, fmt):
    model = edited(ckpt, tmp_path, weights=_overflowing_head)
    result = bit("classify", photos / "img00.png", photos / "img01.png", "-m", model, "-f", fmt, cwd=tmp_path)
    assert result.returncode == 1
    out = text(result.stdout)
    if fmt == "jsonl":
        records = [strict_json(line) for line in out.splitlines()]
        assert [("error" in r) for r in records] == [True, True]
    elif fmt == "json":
        assert all("error" in r for r in strict_json(out))
    else:
        assert out.splitlines() == ["path,rank,index,label,score"]
    assert [line for line in error_lines(result) if "non-finite" in line or "NaN" in line]


@pytest.mark.slow
def test_non_finite_embeddings_are_failed_inputs(ckpt, photos, tmp_path):
    def overflow(tensors):
        key = next(k for k in sorted(tensors) if k.startswith("bit.norm") and k.endswith("weight"))
        tensors[key] = tensors[key].clone().fill_(3e38)  # finite, but x * 3e38 overflows for |x| > 1.14
        return tensors

    model = edited(ckpt, tmp_path, weights=overflow)
    result = bit("embed", photos / "img00.png", photos / "img01.png", "-o", "o.npy", "-m", model, cwd=tmp_path)
    assert result.returncode == 1
    rows = np.load(tmp_path / "o.npy")
    assert np.isfinite(rows).all()
    assert len((tmp_path / "o.errors.txt").read_text().splitlines()) == 2 - len(rows)


# -- 13. weights of a type that cannot be converted without loss ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "bool", "complex64"])
def test_weights_of_a_non_float_type_are_refused_in_one_line(ckpt, photos, tmp_path, dtype):
    import torch

    def convert(tensors):
        key = next(k for k in sorted(tensors) if "conv" in k)
        tensors[key] = tensors[key].to(getattr(torch, dtype))
        return tensors

    model = edited(ckpt, tmp_path, weights=convert)
    result = bit("classify", photos / "img00.png", "-m", model, cwd=tmp_path)
    assert_one_error_line(result, 3, dtype)  # one line: no library warning before it


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_weights_of_other_float_types_still_load(ckpt, photos, tmp_path, dtype):
    import torch

    model = edited(ckpt, tmp_path, weights=lambda t: {k: v.to(getattr(torch, dtype)) for k, v in t.items()})
    result = bit("classify", photos / "img00.png", "-m", model, cwd=tmp_path)
    assert result.returncode == 0, error_lines(result)
    assert error_lines(result) == []


@pytest.mark.slow
def test_an_empty_input_list_succeeds_with_a_warning(ckpt, tmp_path):
    result = bit("classify", "-", "-m", ckpt, "-f", "jsonl", cwd=tmp_path, input=b"")
    assert result.returncode == 0
    assert result.stdout == b""
    assert [line for line in error_lines(result) if line.startswith("warning:") and "no inputs" in line]
    quiet = bit("embed", "-", "-o", "o.npy", "-q", "-m", ckpt, cwd=tmp_path, input=b"")
    assert quiet.returncode == 0 and error_lines(quiet) == []
    assert np.load(tmp_path / "o.npy").shape == (0, 32)


@pytest.mark.slow
def test_python_warnings_never_add_lines_to_the_output(ckpt, photos, tmp_path):
    """A library warning (here numpy's, from a preprocessing config that divides by zero) is not a
    bitcli message: the run prints its one error line, nothing else."""
    model = tmp_path / "model"
    shutil.copytree(ckpt, model)
    config = json.loads((model / "preprocessor_config.json").read_text())
    config["image_std"] = [0.0, 0.5, 0.5]
    (model / "preprocessor_config.json").write_text(json.dumps(config))
    result = bit("classify", photos / "img00.png", "-m", model, cwd=tmp_path)
    assert_one_error_line(result, 3, "image_std")
