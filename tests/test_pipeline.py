"""The library API: numbers against transformers, input order with failures in place, batching."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import bitcli
from bitcli.errors import InputError, UsageError
from bitcli.preprocess import PreprocessConfig, preprocess
from bitcli.decode import open_image
from clihelpers import make_checkpoint, make_images


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos") / "photos"
    make_images(directory, 6, bad=("bad.png",))
    return directory


@pytest.fixture(scope="module")
def model(ckpt):
    return bitcli.load(str(ckpt), device="cpu")


def reference_outputs(ckpt, paths):
    """(softmax probabilities, pooled features) from transformers on bitcli's preprocessed pixels."""
    from transformers import BitForImageClassification

    ref = BitForImageClassification.from_pretrained(ckpt).eval()
    cfg = PreprocessConfig.load(ckpt)
    pixels = torch.stack([preprocess(open_image(p), cfg) for p in paths])
    with torch.no_grad():
        out = ref(pixel_values=pixels, output_hidden_states=False)
        pooled = ref.bit(pixel_values=pixels).pooler_output.flatten(1)
    return out.logits.softmax(-1).numpy(), pooled.numpy()


@pytest.mark.slow
def test_classify_matches_transformers(ckpt, photos, model):
    paths = [str(p) for p in sorted(photos.glob("img*.png"))]
    probs, _ = reference_outputs(ckpt, paths)
    results = bitcli.classify(paths, model=model, top_k=3)
    for result, p in zip(results, probs):
        want = np.argsort(-p)[:3]
        assert [pred.index for pred in result.predictions] == list(want)
        np.testing.assert_allclose([pred.score for pred in result.predictions], p[want], rtol=1e-4, atol=1e-6)
        assert [pred.label for pred in result.predictions] == [f"class {i}" for i in want]


def test_embed_matches_transformers_pooled_output(ckpt, photos, model):
    paths = [str(p) for p in sorted(photos.glob("img*.png"))]
    _, pooled = reference_outputs(ckpt, paths)
    emb = bitcli.embed(paths, model=model)
    assert emb.paths == paths and emb.errors == []
    np.testing.assert_allclose(emb.vectors, pooled, rtol=1e-4, atol=1e-5)
    normed = bitcli.embed(paths, model=model, normalize=True).vectors
    np.testing.assert_allclose(normed, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_order_and_failures_in_place(photos, model):
    inputs = [photos / "img03.png", "missing.png", photos / "bad.png", photos / "img00.png", InputError("x", "given")]
    results = list(bitcli.Classifier(model, top_k=1, batch_size=1).classify(inputs))
    assert [r.path for r in results] == [str(photos / "img03.png"), "missing.png", str(photos / "bad.png"), str(photos / "img00.png"), "x"]
    assert [r.ok for r in results] == [True, False, False, True, False]
    assert results[4].error == "given"


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_groups_hold_at_most_a_batch_and_cover_every_input(photos, model, batch_size):
    embedder = bitcli.Embedder(model, batch_size=batch_size)
    groups = list(embedder.embed_groups([photos]))
    assert all(sum(r.ok for r in g) <= batch_size for g in groups)
    flat = [r.path for g in groups for r in g]
    assert flat == [str(photos / "bad.png")] + [str(photos / f"img{i:02d}.png") for i in range(6)]
    one = np.stack([r.vector for g in bitcli.Embedder(model, batch_size=1).embed_groups([photos]) for r in g if r.ok])
    np.testing.assert_allclose(np.stack([r.vector for g in groups for r in g if r.ok]), one, rtol=1e-5, atol=1e-6)


def test_images_of_different_shapes_without_crop(tmp_path, photos):
    ckpt = make_checkpoint(tmp_path / "nocrop")
    cfg = json.loads((ckpt / "preprocessor_config.json").read_text())
    cfg["do_center_crop"] = False
    (ckpt / "preprocessor_config.json").write_text(json.dumps(cfg))
    model = bitcli.load(str(ckpt), device="cpu")
    batched = bitcli.embed([photos], model=model, batch_size=4).vectors  # sizes differ: batches split
    single = bitcli.embed([photos], model=model, batch_size=1).vectors
    assert batched.shape == (6, 32)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_labels_list_and_top_k_clamp(photos, model):
    names = [f"n{i}" for i in range(10)]
    classifier = bitcli.Classifier(model, top_k=99, labels=names)
    assert classifier.top_k == 10
    (result,) = classifier.classify([photos / "img00.png"])
    assert [p.label for p in result.predictions] == [names[p.index] for p in result.predictions]
    with pytest.raises(UsageError):
        bitcli.Classifier(model, labels=["too", "few"])


def test_model_without_head_cannot_classify(tmp_path, photos):
    from transformers import BitConfig, BitModel

    from checkpoints import TINY

    ckpt = tmp_path / "headless"
    BitModel(BitConfig(**TINY)).save_pretrained(ckpt)  # a backbone save: no classifier weights
    with pytest.raises(UsageError, match="bit embed"):
        bitcli.Classifier(str(ckpt), device="cpu")
    assert bitcli.embed([photos / "img00.png"], model=str(ckpt), device="cpu").vectors.shape == (1, 32)


def test_import_bitcli_does_not_import_torch():
    code = "import sys, bitcli; assert 'torch' not in sys.modules; bitcli.Classifier; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_embed_fingerprint_tells_single_thread_convolutions_apart(model):
    """On one thread convolutions call oneDNN directly: other last bits, so --resume must refuse."""
    from bitcli.pipeline import Embedder

    threads = torch.get_num_threads()
    try:  # the engine picks the convolution path when it prepares the model: load under each setting
        torch.set_num_threads(2)
        many = Embedder(model.path, device="cpu").fingerprint()
        torch.set_num_threads(1)
        one = Embedder(model.path, device="cpu").fingerprint()
    finally:
        torch.set_num_threads(threads)
    assert many != one
