"""Trained folders: transformers layout read by bitcli and transformers alike (also from timm and .npz bases), atomic, never over foreign folders."""

from __future__ import annotations

import json

import pytest
import torch

import bitcli
from bitcli.errors import UsageError
from bitcli.preprocess import PreprocessConfig
from bitcli.transfer import TrainOptions, train
from bitcli.transfer.backbone import load_base
from bitcli.transfer.data import load_dataset
from bitcli.transfer.export import REPORT, eval_preprocess, preprocessor_dict, write_checkpoint
from bitcli.transfer.finetune import FinetuneOptions, Finetuner
from bitcli.transfer.hyperrule import Resolution
from clihelpers import make_checkpoint
from transferdata import (  # noqa: F401  (transfer_env: autouse fixture)
    make_npz_checkpoint,
    make_timm_checkpoint,
    make_trainable_checkpoint,
    shared,
    transfer_env,
    write_folder,
)

CLASSES = {"cat": 5, "dog": 4, "owl": 5}


@pytest.fixture
def photos(tmp_path):
    return write_folder(tmp_path / "photos", CLASSES, size=36)


def _logits_agree(outdir, x):
    """bitcli's and transformers' logits for pixel tensor `x` from OUTDIR; returns bitcli's."""
    from transformers import BitForImageClassification

    ours = bitcli.load(str(outdir), device="cpu").model
    with torch.no_grad():
        got = ours.forward_head(ours.forward_features(x)[1])
        reference = BitForImageClassification.from_pretrained(outdir).eval()(x).logits
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-4)
    return got


@pytest.mark.slow
def test_linear_outdir_is_a_classifier_of_the_users_classes(photos, tmp_path, tmp_path_factory):
    base = shared(tmp_path_factory, "tiny-ckpt", make_checkpoint)
    result = train(photos, tmp_path / "out", base=str(base), options=TrainOptions(device="cpu", val=photos))
    out = result.outdir
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", REPORT,
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "owl"} and config["label2id"]["owl"] == 2
    report = json.loads((out / REPORT).read_text())
    assert report["method"] == "linear" and report["data"]["train_counts"] == CLASSES
    assert report["results"]["val_n"] == 14 and report["hyperparameters"]["selection"].endswith("cross-validation")
    _logits_agree(out, torch.randn(3, 3, 32, 32))
    predictions = bitcli.classify([str(photos)], model=str(out), device="cpu", top_k=1)
    assert {r.predictions[0].label for r in predictions} <= set(CLASSES)
    # The base's evaluation preprocessing.
    assert bitcli.load(str(out), device="cpu").preprocess == PreprocessConfig.load(base)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "npz", "transformers"])
def test_finetuned_weights_export_exactly(kind, photos, tmp_path):
    if kind == "timm":
        base_ref = make_timm_checkpoint(tmp_path / "timm")
    elif kind == "npz":
        base_ref = make_npz_checkpoint(tmp_path / "BiT-M-R50x1.npz")  # eps 1e-10, rescaled on export
    else:
        base_ref = make_trainable_checkpoint(tmp_path / "hf")
    base = load_base(str(base_ref))
    data = load_dataset(photos)
    options = FinetuneOptions(steps=3, batch_size=4, base_lr=0.05, resolution=Resolution(34, 32, True))
    tuner = Finetuner(base, data, options=options)
    result = tuner.run()
    out = tmp_path / "out"
    out.mkdir()
    write_checkpoint(out, base=base.config, classes=data.classes,
                     weights=result.weights, preprocess=eval_preprocess(base.preprocess, tuner.resolution))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        trained = tuner.model.eval()(x).logits  # standardizes raw weights with the base's own eps
    assert trained.abs().max() > 1e-3  # the head moved away from zero
    torch.testing.assert_close(_logits_agree(out, x), trained, rtol=0, atol=1e-4)


def test_small_images_export_their_training_resolution():
    base = PreprocessConfig(shortest_edge=448, crop_size=(448, 448), resample=2, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    small = eval_preprocess(base, Resolution(160, 128, True))
    assert small.shortest_edge == 128 and small.crop_size == (128, 128) and small.image_mean == (0.5,) * 3
    assert eval_preprocess(base, Resolution(478, 448, False)) is base
    assert PreprocessConfig.from_dict(preprocessor_dict(small)) == small
    squash = PreprocessConfig(resize_mode="exact", shortest_edge=None, size=(224, 224), do_center_crop=False)
    assert PreprocessConfig.from_dict(preprocessor_dict(squash)) == squash


def test_outdir_rules(photos, tmp_path, tmp_path_factory):
    base = str(shared(tmp_path_factory, "tiny-ckpt", make_checkpoint))
    out = tmp_path / "out"
    train(photos, out, base=base, options=TrainOptions(device="cpu"))
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        train(photos, out, base=base, options=TrainOptions(device="cpu"))
    first = (out / "model.safetensors").read_bytes()
    chosen = json.loads((out / REPORT).read_text())["hyperparameters"]["l2"]
    train(photos, out, base=base, options=TrainOptions(device="cpu", overwrite=True, l2=chosen / 100))
    assert (out / "model.safetensors").read_bytes() != first  # replaced (another regularization)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary or old folder

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError, match="was not written by bit train"):
        train(photos, foreign, base=base, options=TrainOptions(device="cpu", overwrite=True))
    assert (foreign / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        train(photos, tmp_path / "file", base=base, options=TrainOptions(device="cpu", overwrite=True))


def test_a_failed_run_leaves_nothing_behind(photos, tmp_path, tmp_path_factory, monkeypatch):
    import bitcli.transfer.run as run_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_module, "write_checkpoint", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        train(photos, tmp_path / "out", base=str(shared(tmp_path_factory, "tiny-ckpt", make_checkpoint)),
              options=TrainOptions(device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bit-cache", "photos"]
