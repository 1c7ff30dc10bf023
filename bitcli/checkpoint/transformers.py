"""transformers-format BiT checkpoints (`google/bit-50`): the canonical key names; a `BitModel`
save (no head) gets the `bit.` prefix and no head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bitcli.checkpoint.files import CONFIG, PREPROCESSOR_CONFIG, RawCheckpoint, read_weights
from bitcli.model.config import BitConfig


def read_transformers_checkpoint(directory: Path, config_data: dict[str, Any], *, header_only: bool = False) -> RawCheckpoint:
    from bitcli.preprocess import PreprocessConfig

    config = BitConfig.from_dict(config_data)
    state_dict, weights_format, weight_files = read_weights(directory, header_only=header_only)
    if not any(key.startswith("bit.") for key in state_dict):
        # A `BitModel` (no head) save: keys lack the `bit.` prefix of the classification model.
        state_dict = {f"bit.{key}": value for key, value in state_dict.items()}
        config.num_labels = 0
    preprocess_path = directory / PREPROCESSOR_CONFIG
    files = [directory / CONFIG] + ([preprocess_path] if preprocess_path.is_file() else []) + weight_files
    return RawCheckpoint(
        config=config,
        state_dict=state_dict,
        preprocess=PreprocessConfig.load(directory),
        source_format="transformers",
        weights_format=weights_format,
        files=files,
    )
