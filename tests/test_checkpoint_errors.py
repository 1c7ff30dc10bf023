"""Bad checkpoints and configs give one clear, typed error, never a traceback from deep in torch."""

from __future__ import annotations

import json

import pytest
import torch

from bitcli.checkpoint import load_model
from bitcli.model.config import BitConfig
from bitcli.errors import CheckpointError, ConfigError, ModelError
from checkpoints import TINY, save_reference_checkpoint


@pytest.fixture
def tiny_checkpoint(tmp_path):
    save_reference_checkpoint(tmp_path, **TINY)
    return tmp_path


@pytest.mark.slow
def test_directory_without_weights(tiny_checkpoint):
    (tiny_checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_model(tiny_checkpoint)


def test_directory_without_config(tiny_checkpoint):
    (tiny_checkpoint / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(tiny_checkpoint)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_model(tmp_path / "nope")


def test_truncated_safetensors(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors"):
        load_model(tiny_checkpoint)


def test_garbage_pickle_is_refused(tmp_path):
    save_reference_checkpoint(tmp_path, weights="pickle", **TINY)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(tmp_path)


def test_state_dict_from_another_architecture(tmp_path):
    save_reference_checkpoint(tmp_path, **TINY)
    other = save_reference_checkpoint(tmp_path / "other", **dict(TINY, depths=[1, 1, 1, 1], hidden_sizes=[16, 16, 32, 64]))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "missing (bit.encoder.stages.2.layers.1" in message
    assert "mis-shaped (" in message and "expected [8, 8, 3, 3], found [16, 16, 3, 3]" in message


def test_unexpected_keys_are_named(tmp_path):
    reference = save_reference_checkpoint(tmp_path, **TINY)
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state["extra.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 unexpected \(extra.weight\)"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layer_type": "resnext"}, "unsupported layer_type 'resnext'"),
        ({"global_padding": "REFLECT"}, "unsupported global_padding"),
        ({"global_padding": "valid"}, "VALID cannot run"),
        ({"model_type": "vit"}, "not BiT"),
        ({"depths": [1, 1]}, "equal length"),
    ],
)
def test_unsupported_config(tiny_checkpoint, change, message):
    config_path = tiny_checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config.update(change)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        load_model(tiny_checkpoint)


def test_malformed_config_json(tiny_checkpoint):
    (tiny_checkpoint / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(tiny_checkpoint)


def test_all_model_errors_share_exit_code_3():
    assert CheckpointError.exit_code == ConfigError.exit_code == ModelError.exit_code == 3


@pytest.mark.parametrize("dtype_key", ["torch_dtype", "dtype"])
def test_config_reads_real_files_and_ignores_unknown_keys(dtype_key):
    config = BitConfig.from_dict(
        {
            "model_type": "bit",
            dtype_key: "float32",
            "architectures": ["BitForImageClassification"],
            "global_padding": "same",
            "some_future_key": {"nested": True},
            "id2label": {"0": "tench", "1": "goldfish"},
        }
    )
    assert config.global_padding == "SAME"
    assert config.num_labels == 2
    assert config.id2label == {0: "tench", 1: "goldfish"}


def test_classifier_saved_with_no_labels_loads_headless(tmp_path):
    from transformers import BitConfig as ReferenceConfig
    from transformers import BitForImageClassification

    torch.manual_seed(0)
    BitForImageClassification(ReferenceConfig(**TINY, num_labels=0)).save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config.num_labels == 0 and not loaded.model.has_head


def test_config_without_labels_has_transformers_default_of_two():
    assert BitConfig.from_dict({"model_type": "bit"}).num_labels == 2
