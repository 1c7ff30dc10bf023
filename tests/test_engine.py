"""The inference engine's fast paths compute the same numbers as the plain model (no timings here)."""

from __future__ import annotations

import shutil

import pytest
import torch

from bitcli.checkpoint import load_model
from bitcli.engine.machine import DEFAULT_BUDGET, slicing_budget
from bitcli.engine.runtime import prepare
from bitcli.engine.slicing import slice_size, step_activation_bytes
from checkpoints import TINY, save_reference_checkpoint

TOLERANCE = 1e-4  # logits and pooled features, as against transformers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    reference = save_reference_checkpoint(directory, **TINY)
    return directory, reference


def outputs(model, pixels):
    with torch.inference_mode():
        out = model(pixels)
    return out.logits, out.pooled, out.last_hidden_state


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("chunk_bytes", [1, 40_000, 10**12])
def test_sliced_batches_match_the_plain_model_and_transformers(tiny, chunk_bytes):
    directory, reference = tiny
    plain = load_model(directory, optimize=False).model
    sliced = load_model(directory).model
    sliced.bit.chunk_bytes = chunk_bytes  # 1: one image per slice everywhere; 40 kB: mixed sizes
    pixels = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits, pooled, feature_map = outputs(plain, pixels)
    s_logits, s_pooled, s_feature_map = outputs(sliced, pixels)
    assert max_diff(s_logits, logits) <= TOLERANCE
    assert max_diff(s_pooled, pooled) <= TOLERANCE
    assert max_diff(s_feature_map, feature_map) <= 1e-3
    assert s_feature_map.shape == feature_map.shape
    with torch.no_grad():
        assert max_diff(s_logits, reference(pixels).logits) <= TOLERANCE


def test_mixed_slice_sizes_really_happen_for_the_tiny_model(tiny):
    directory, _ = tiny
    backbone = load_model(directory).model.bit
    per_image = step_activation_bytes(backbone.config, 64, 64, 4)
    sizes = {slice_size(5, size, 40_000) for size in per_image}
    assert len(sizes) > 1  # the 40 kB case above slices early steps finer than late ones


def test_bit50_at_448_runs_early_steps_per_image_and_late_steps_in_bigger_slices(tmp_path):
    from bitcli.model.config import BitConfig
    config = BitConfig.from_dict({"model_type": "bit", "num_labels": 1000})
    per_image = step_activation_bytes(config, 448, 448, 4)  # stem, 4 stages, final norm
    assert per_image[0] == 64 * 224 * 224 * 4
    assert per_image[1:5] == [256 * 112 * 112 * 4, 512 * 56 * 56 * 4, 1024 * 28 * 28 * 4, 2048 * 14 * 14 * 4]
    sizes = [slice_size(8, size, DEFAULT_BUDGET) for size in per_image]
    assert sizes[:3] == [1, 1, 1] and sizes[-1] > 1


@pytest.mark.parametrize(
    "batch, per_image, budget, expected",
    [(8, 10, 1000, 8), (8, 10, 5, 1), (8, 10, 50, 4), (7, 10, 50, 4), (8, 10, 30, 3), (1, 10, 5, 1)],
)
def test_slice_size_fits_the_budget_and_spreads_evenly(batch, per_image, budget, expected):
    assert slice_size(batch, per_image, budget) == expected


def test_default_load_is_optimized_and_keeps_state_dict_names(tiny):
    directory, _ = tiny
    fast = load_model(directory).model
    plain = load_model(directory, optimize=False).model
    assert fast.bit.chunk_bytes == slicing_budget() == load_model(directory).engine.chunk_bytes
    assert getattr(plain.bit, "chunk_bytes", None) is None
    assert list(fast.state_dict()) == list(plain.state_dict())
    weight = fast.bit.encoder.stages[0].layers[0].conv2.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_bf16_is_close_but_opt_in(tiny):
    directory, reference = tiny
    model = load_model(directory, precision="bf16").model
    # The convolutions after the stem in bfloat16; the stem, norms and head stay float32.
    assert model.bit.encoder.stages[0].layers[0].conv1.weight.dtype == torch.bfloat16
    assert model.bit.embedder.convolution.weight.dtype == torch.float32
    assert model.bit.norm.weight.dtype == torch.float32
    assert model.classifier[1].weight.dtype == torch.float32
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    logits, pooled, feature_map = outputs(model, pixels)
    assert logits.dtype == torch.float32 and pooled.dtype == torch.float32
    assert feature_map.dtype == torch.float32
    with torch.no_grad():
        expected = reference(pixels).logits
    # bfloat16 keeps 8 bits of mantissa: close, not within the fp32 tolerance.
    assert max_diff(logits, expected) <= 0.05 * expected.abs().max().item() + 0.05


def test_unknown_precision_is_refused(tiny):
    directory, _ = tiny
    with pytest.raises(ValueError, match="precision"):
        load_model(directory, precision="int4")
    with pytest.raises(ValueError, match="optimize=True"):
        load_model(directory, precision="bf16", optimize=False)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile needs a C++ compiler")
def test_compiled_model_matches_the_plain_model(tiny):
    directory, _ = tiny
    plain = load_model(directory, optimize=False).model
    compiled = load_model(directory, optimize=False).model
    prepare(compiled, compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    logits, pooled, _ = outputs(plain, pixels)
    c_logits, c_pooled, _ = outputs(compiled, pixels)
    assert max_diff(c_logits, logits) <= TOLERANCE
    assert max_diff(c_pooled, pooled) <= TOLERANCE


def test_direct_onednn_convolutions_on_one_thread_match_pytorch_dispatch(tiny):
    from bitcli.model import StdConv2d

    directory, _ = tiny
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the only case where the engine takes the direct call
    try:
        model = load_model(directory).model
        model.bit.chunk_bytes = None
        convs = [m for m in model.modules() if isinstance(m, StdConv2d)]
        assert convs and all(m.onednn for m in convs)
        pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        direct = outputs(model, pixels)
        for m in convs:
            m.onednn = False
        dispatched = outputs(model, pixels)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(direct, dispatched):
        assert max_diff(a, b) <= TOLERANCE


def test_missing_private_onednn_op_falls_back_to_pytorch_dispatch(tiny, monkeypatch):
    import bitcli.engine.native
    from bitcli.model import StdConv2d

    def broken(x, conv):
        raise RuntimeError("no such op")

    monkeypatch.setattr(bitcli.engine.native, "onednn_conv", broken)
    directory, _ = tiny
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # where the engine would take the direct call
    try:
        model = load_model(directory).model
    finally:
        torch.set_num_threads(threads)
    assert not any(m.onednn for m in model.modules() if isinstance(m, StdConv2d))
    assert model.bit.chunk_bytes == slicing_budget()


def test_the_off_switch_keeps_every_private_op_unused(tiny, monkeypatch):
    import bitcli.engine.native
    from bitcli.engine.native import bf16_supported
    from bitcli.model import StdConv2d

    def private(*args, **kwargs):
        raise AssertionError("a private torch op was called")

    monkeypatch.setenv("BIT_TORCH_PRIVATE_OPS", "0")
    monkeypatch.setattr(bitcli.engine.native, "onednn_conv", private)
    directory, reference = tiny
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model(directory).model
        assert not any(m.onednn for m in model.modules() if isinstance(m, StdConv2d))
        outputs(model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    finally:
        torch.set_num_threads(threads)
    assert bf16_supported() is False


@pytest.mark.parametrize(
    "config, size",
    [
        (dict(TINY, layer_type="bottleneck", global_padding="SAME", embedding_dynamic_padding=True), (67, 93)),
        (dict(TINY, layer_type="bottleneck", output_stride=8), (64, 64)),
    ],
    ids=["bottleneck SAME dynamic padding", "bottleneck dilated"],
)
@pytest.mark.parametrize("threads", [1, None], ids=["direct oneDNN", "default threads"])
def test_fast_paths_match_transformers_on_padded_and_dilated_models(tmp_path, config, size, threads):
    reference = save_reference_checkpoint(tmp_path, **config)
    pixels = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1))
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)  # before loading: the engine reads it once
    try:
        model = load_model(tmp_path).model
        model.bit.chunk_bytes = 1  # one image per slice at every step
        logits, pooled, _ = outputs(model, pixels)
    finally:
        torch.set_num_threads(default_threads)
    with torch.no_grad():
        expected = reference(pixels)
        expected_pooled = reference.bit(pixels).pooler_output.flatten(1)
    assert max_diff(logits, expected.logits) <= TOLERANCE
    assert max_diff(pooled, expected_pooled) <= TOLERANCE
