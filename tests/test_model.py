"""Oracle tests: bitcli's BiT against transformers' BitForImageClassification on the same weights."""

from __future__ import annotations

import pytest
import torch

from bitcli.checkpoint import load_model
from checkpoints import TINY, save_reference_checkpoint

TOLERANCE = 1e-4  # logits and pooled features, as the issue asks
# Single elements of the last feature map (values up to ~10) differ a little more: the
# channels-last convolutions sum in another order than transformers' contiguous ones.
FEATURE_MAP_TOLERANCE = 1e-3

# (name, transformers config, input height and width)
CONFIGS = [
    ("bit-50 default", dict(), (448, 448)),
    ("tiny pre-activation", dict(TINY), (64, 64)),
    (
        "bottleneck SAME dynamic-pad odd size",
        dict(TINY, layer_type="bottleneck", global_padding="SAME", embedding_dynamic_padding=True),
        (67, 93),
    ),
    ("num_groups 4, wider stem", dict(embedding_size=16, hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 1, 1], num_groups=4), (64, 64)),
    ("output_stride 16", dict(TINY, output_stride=16), (64, 64)),
    ("output_stride 8, bottleneck", dict(TINY, output_stride=8, layer_type="bottleneck"), (64, 64)),
    ("gelu activation, 3 stages", dict(TINY, hidden_sizes=[16, 32, 32], depths=[1, 2, 1], hidden_act="gelu"), (48, 40)),
]


def reference_outputs(reference, pixels: torch.Tensor):
    with torch.no_grad():
        logits = reference(pixels).logits
        base = reference.bit(pixels)
    return logits, base.pooler_output.flatten(1), base.last_hidden_state


def assert_matches_reference(loaded, reference, pixels: torch.Tensor) -> None:
    logits, pooled, feature_map = reference_outputs(reference, pixels)
    with torch.inference_mode():
        ours = loaded.model(pixels)
    assert ours.logits.shape == logits.shape
    assert (ours.logits - logits).abs().max().item() <= TOLERANCE
    assert (ours.pooled - pooled).abs().max().item() <= TOLERANCE
    assert (ours.last_hidden_state - feature_map).abs().max().item() <= FEATURE_MAP_TOLERANCE


@pytest.fixture(scope="module", params=CONFIGS, ids=[c[0] for c in CONFIGS])
def checkpoint_pair(request, tmp_path_factory):
    name, config, size = request.param
    directory = tmp_path_factory.mktemp("ckpt")
    num_labels = 1000 if name.startswith("bit-50") else 10
    reference = save_reference_checkpoint(directory, num_labels=num_labels, **config)
    return directory, reference, size


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_matches_transformers(checkpoint_pair, batch_size):
    directory, reference, (height, width) = checkpoint_pair
    loaded = load_model(directory)
    pixels = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(batch_size))
    assert_matches_reference(loaded, reference, pixels)


@pytest.mark.parametrize("weights", ["pickle", "sharded"])
def test_other_weight_files_load_the_same_numbers(tmp_path, weights):
    reference = save_reference_checkpoint(tmp_path, weights=weights, **TINY)
    loaded = load_model(tmp_path)
    expected_format = {"pickle": "pytorch pickle (weights_only)", "sharded": "safetensors"}[weights]
    assert loaded.weights_format.startswith(expected_format)
    assert_matches_reference(loaded, reference, torch.randn(2, 3, 64, 64))


def test_safetensors_preferred_over_pickle(tmp_path):
    reference = save_reference_checkpoint(tmp_path, **TINY)
    other = save_reference_checkpoint(tmp_path / "other", seed=7, **TINY)
    torch.save(other.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_model(tmp_path)
    assert loaded.weights_format == "safetensors"
    assert_matches_reference(loaded, reference, torch.randn(1, 3, 64, 64))


def test_headless_bitmodel_checkpoint_gives_features(tmp_path):
    from transformers import BitConfig, BitModel

    torch.manual_seed(0)
    # width_factor > 1 only runs in transformers with the bottleneck layer and no head.
    reference = BitModel(BitConfig(**TINY, width_factor=2, layer_type="bottleneck")).eval()
    reference.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert not loaded.model.has_head
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixels).pooler_output.flatten(1)
    with torch.inference_mode():
        ours = loaded.model(pixels)
    assert ours.logits is None
    assert ours.pooled.shape == (2, 64)
    assert (ours.pooled - expected).abs().max().item() <= TOLERANCE


def test_conv_weights_are_standardized_once_at_load(tmp_path):
    from safetensors.torch import load_file

    save_reference_checkpoint(tmp_path, **TINY)
    raw = load_file(tmp_path / "model.safetensors")["bit.embedder.convolution.weight"].reshape(8, -1)
    # The test checkpoint's weights are small, so the eps (1e-8) visibly shrinks the variance.
    expected = (raw - raw.mean(1, keepdim=True)) / torch.sqrt(raw.var(1, unbiased=False, keepdim=True) + 1e-8)
    loaded = load_model(tmp_path)
    weight = loaded.model.bit.embedder.convolution.weight.reshape(8, -1)
    assert torch.allclose(weight, expected, atol=1e-6)
    assert weight.var(1, unbiased=False).max() < 0.9  # eps really mattered in this checkpoint
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_standardization_runs_in_float32_for_half_checkpoints(tmp_path):
    """1e-8 underflows to 0 in float16: standardizing in half precision would give inf/nan."""
    from bitcli.model import standardize_conv_weight

    weight = torch.full((4, 2, 1, 1), 1e-3, dtype=torch.float16)  # zero variance: only eps keeps it finite
    standardized = standardize_conv_weight(weight, 1e-8)
    assert standardized.dtype == torch.float16
    assert torch.isfinite(standardized).all()


@pytest.mark.slow
def test_parameter_count_matches_transformers(tmp_path):
    reference = save_reference_checkpoint(tmp_path, num_labels=1000)
    loaded = load_model(tmp_path)
    assert loaded.num_parameters == sum(p.numel() for p in reference.parameters())
    assert loaded.config.feature_dim == 2048
    assert loaded.config.variant_name == "BiT R50x1, pre-activation"


def test_matches_transformers_on_faint_input(tmp_path):
    """A faint image gives GroupNorm inputs of tiny variance, where its eps (1e-5) shows."""
    reference = save_reference_checkpoint(tmp_path, **TINY)
    loaded = load_model(tmp_path)
    pixels = 1e-3 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_matches_reference(loaded, reference, pixels)


@pytest.mark.parametrize("size", [(8, 8), (9, 7), (7, 10), (224, 224)])
def test_stem_pool_without_the_padded_copy_is_exact(size):
    from bitcli.model.architecture import zero_padded_max_pool

    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(0)) - 1  # mostly negative
    x = x.contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, [1, 1, 1, 1]), kernel_size=3, stride=2)
    assert torch.equal(zero_padded_max_pool(x), expected)
