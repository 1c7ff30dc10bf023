"""Fine-tuning: it learns, gradient accumulation is exact, resume continues where it stopped, bad images are skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bitcli.decode import open_image
from bitcli.errors import UsageError
from bitcli.preprocess import preprocess
from bitcli.transfer.backbone import load_base
from bitcli.transfer.data import load_dataset, stratified_split
from bitcli.transfer.export import eval_preprocess
from bitcli.transfer.finetune import FinetuneOptions, Finetuner
from bitcli.transfer.export import STATE_INFO
from bitcli.transfer.hyperrule import Resolution
from transferdata import WIDE, make_trainable_checkpoint, shared, transfer_env, write_digits, write_folder  # noqa: F401

SMALL = Resolution(36, 32, True)  # the tiny models' own 32 px input, not the rule's 128: fast


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return load_base(str(shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint)))


@pytest.fixture
def two_classes(tmp_path):
    return load_dataset(write_folder(tmp_path / "d", {"a": 6, "b": 6}, size=24))


def _run(base, data, state_dir=None, **options):
    options.setdefault("resolution", SMALL)
    tuner = Finetuner(base, data, options=FinetuneOptions(**options), state_dir=state_dir)
    return tuner, tuner.run


@pytest.mark.slow
def test_finetuning_lowers_the_loss_and_beats_chance_on_digits(tmp_path_factory):
    root = shared(tmp_path_factory, "digits60", lambda p: write_digits(p, per_class=60))
    base = load_base(str(shared(tmp_path_factory, "trainable-wide", lambda p: make_trainable_checkpoint(p, hidden_sizes=WIDE))))
    train, val = stratified_split(load_dataset(root), 0.3, seed=0)
    tuner, run = _run(base, train, steps=40, batch_size=32)  # the rule's lr 0.003, warmup and decay
    result = run()
    losses = result.losses
    assert len(losses) == 40 and losses[0] == pytest.approx(np.log(10), abs=1e-4)  # zero-initialized head
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.1
    cfg = eval_preprocess(base.preprocess, SMALL)
    x = torch.stack([preprocess(open_image(p), cfg) for p in val.paths])
    with torch.no_grad():
        accuracy = (tuner.model.eval()(x).logits.argmax(1).numpy() == val.labels).mean()
    assert accuracy > 0.2  # chance is 0.1


def test_gradient_accumulation_gives_the_full_batch_update(tiny_base, two_classes):
    weights = []
    for micro in (8, 3):  # 8 at once, or 3 + 3 + 2
        _, run = _run(tiny_base, two_classes, steps=4, batch_size=8, micro_batch=micro, base_lr=0.05)
        weights.append(run().weights)
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-6)


def test_mixup_draws_one_lambda_per_step(tiny_base, two_classes):
    from bitcli.transfer.finetune import mixup

    lam0, perm0 = mixup(seed=0, step=3, alpha=0.1, micro=0, size=4)
    lam1, perm1 = mixup(seed=0, step=3, alpha=0.1, micro=1, size=4)
    assert lam0 == lam1 and 0.0 <= lam0 <= 1.0 and sorted(perm0) == [0, 1, 2, 3]
    assert mixup(seed=0, step=4, alpha=0.1, micro=0, size=4)[0] != lam0
    assert mixup(seed=0, step=3, alpha=0.0, micro=0, size=4) == (1.0, None)  # the rule under 20k images
    # With mixup on, a run trains and its loss is finite.
    _, run = _run(tiny_base, two_classes, steps=3, batch_size=4, mixup=0.1)
    assert np.isfinite(run().losses).all()


def test_resume_after_a_kill_continues_from_the_last_checkpoint(tiny_base, two_classes, tmp_path):
    _, run = _run(tiny_base, two_classes, steps=10, batch_size=4, base_lr=0.05)
    uninterrupted = run()

    def kill_at_7(progress):
        if progress.step == 7:
            raise RuntimeError("killed")  # like a kill: no chance to save

    state = tmp_path / "state"
    _, run = _run(tiny_base, two_classes, state, steps=10, batch_size=4, base_lr=0.05, checkpoint_every=3)
    with pytest.raises(RuntimeError, match="killed"):
        run(on_progress=kill_at_7)
    assert json.loads((state / STATE_INFO).read_text())["step"] == 6  # the last checkpoint

    tuner, run = _run(tiny_base, two_classes, state, steps=10, batch_size=4, base_lr=0.05, checkpoint_every=3)
    seen = []
    resumed = run(resume=True, on_progress=lambda p: seen.append(p.step))
    assert seen == [7, 8, 9, 10] and resumed.plan.start_step == 6
    assert resumed.losses == pytest.approx(uninterrupted.losses, rel=1e-5)
    for key, value in uninterrupted.weights.items():
        torch.testing.assert_close(resumed.weights[key], value, rtol=1e-5, atol=1e-7)


def test_ctrl_c_saves_the_step_it_reached(tiny_base, two_classes, tmp_path):
    def interrupt_at_5(progress):
        if progress.step == 5:
            raise KeyboardInterrupt

    _, run = _run(tiny_base, two_classes, tmp_path / "s", steps=10, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        run(on_progress=interrupt_at_5)
    assert json.loads((tmp_path / "s" / STATE_INFO).read_text())["step"] == 5


def test_resume_refuses_other_settings_or_no_checkpoint(tiny_base, two_classes, tmp_path):
    _, run = _run(tiny_base, two_classes, tmp_path / "s", steps=6, batch_size=4, checkpoint_every=2)
    with pytest.raises(RuntimeError):
        run(on_progress=lambda p: (_ for _ in ()).throw(RuntimeError("stop")) if p.step == 3 else None)
    _, run = _run(tiny_base, two_classes, tmp_path / "s", steps=6, batch_size=4, seed=1)
    with pytest.raises(UsageError, match="used other data, base model or settings"):
        run(resume=True)
    _, run = _run(tiny_base, two_classes, tmp_path / "none", steps=6, batch_size=4)
    with pytest.raises(UsageError, match="no interrupted run to resume"):
        run(resume=True)


def test_an_unreadable_image_is_skipped_and_counted(tiny_base, tmp_path):
    root = write_folder(tmp_path / "d", {"a": 4, "b": 4}, size=24)
    good = (root / "a" / "img00.png").read_bytes()
    (root / "a" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    data = load_dataset(root)
    _, run = _run(tiny_base, data, steps=6, batch_size=9)  # every step sees every image
    result = run()
    assert len(result.losses) == 6
    assert [p for p, _ in result.skipped] == [str(root / "a" / "broken.png")]
    assert "truncated" in result.skipped[0][1] or "corrupt" in result.skipped[0][1]


def test_plan_is_reported_with_a_measured_estimate(tiny_base, two_classes):
    plans = []
    tuner, run = _run(tiny_base, two_classes, steps=5, batch_size=6, micro_batch=4)
    run(on_plan=plans.append)
    (plan,) = plans
    assert (plan.steps, plan.batch_size, plan.micro_batch, plan.accumulation) == (5, 6, 4, 2)
    assert plan.boundaries == [1, 2, 3, 4, 5] and plan.base_lr == 0.003 and plan.mixup_alpha == 0.0
    assert plan.resolution["crop"] == 32 and plan.device == "cpu"
    assert plan.step_seconds > 0 and plan.estimated_seconds == pytest.approx(plan.step_seconds * 5)


def test_resolution_follows_the_image_size(tiny_base, tmp_path):
    small = load_dataset(write_folder(tmp_path / "s", {"a": 2, "b": 2}, size=40))
    tuner = Finetuner(tiny_base, small, options=FinetuneOptions(steps=1, batch_size=2))
    assert (tuner.resolution.resize, tuner.resolution.crop) == (160, 128)  # under 96x96 px
    large = load_dataset(write_folder(tmp_path / "l", {"a": 2, "b": 2}, size=100))
    tuner = Finetuner(tiny_base, large, options=FinetuneOptions(steps=1, batch_size=2))
    assert (tuner.resolution.resize, tuner.resolution.crop) == (34, 32)  # the base's own 32 px input
