"""The zoo table: every entry's numbers agree with the model bitcli builds for it."""

from __future__ import annotations

import pytest
import torch

from bitcli.hub import zoo
from bitcli.model.config import BitConfig
from bitcli.model import BiT
from bitcli.checkpoint.timm import bit_config_from_timm, parse_architecture


def parameter_count(config: BitConfig) -> int:
    with torch.device("meta"):  # shapes only: a 1.1B-parameter model costs no memory
        model = BiT(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("entry", zoo.KNOWN_MODELS, ids=lambda e: e.alias)
def test_parameter_count_is_the_built_models(entry):
    config = bit_config_from_timm({"architecture": entry.architecture, "num_classes": entry.num_classes})
    assert parameter_count(config) == entry.num_parameters
    assert entry.download_bytes == 4 * entry.num_parameters


@pytest.mark.parametrize("entry", zoo.KNOWN_MODELS, ids=lambda e: e.alias)
def test_architecture_matches_the_repository(entry):
    parse_architecture(entry.architecture)  # a BiT architecture bitcli can build
    if entry.repo_id.startswith("timm/"):
        assert entry.repo_id.split("/")[1].split(".")[0] == entry.architecture
    assert "params" not in entry.description  # the count lives in num_parameters


def test_bit_50_count_from_its_transformers_config():
    # google/bit-50's config.json is the default BitConfig with 1000 ImageNet labels.
    config = BitConfig(num_labels=1000)
    assert parameter_count(config) == zoo.find_alias("bit-50").num_parameters == 25_549_352


def test_aliases_are_unique():
    aliases = [entry.alias.lower() for entry in zoo.KNOWN_MODELS]
    assert len(aliases) == len(set(aliases))


@pytest.mark.parametrize("alias", zoo.BUNDLED)
def test_bundled_parameter_count_is_the_loaded_models(alias):
    from bitcli.checkpoint import load_model

    loaded = load_model(zoo.bundled_path(alias), optimize=False)
    assert sum(p.numel() for p in loaded.model.parameters()) == zoo.BUNDLED[alias][2]
