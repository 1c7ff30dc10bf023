"""The BiT-HyperRule's pure functions against the table of the release (REFERENCE.md)."""

from __future__ import annotations

import pytest

from bitcli.transfer import hyperrule as hr

SMALL = [100, 200, 300, 400, 500]
MEDIUM = [500, 3000, 6000, 9000, 10000]
LARGE = [500, 6000, 12000, 18000, 20000]


@pytest.mark.parametrize(
    "size, expected",
    [(1, SMALL), (19_999, SMALL), (20_000, MEDIUM), (499_999, MEDIUM), (500_000, LARGE), (10**7, LARGE)],
)
def test_schedule_by_dataset_size(size, expected):
    assert hr.schedule(size) == expected


def test_empty_training_set_has_no_schedule():
    with pytest.raises(ValueError):
        hr.schedule(0)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # the release's warmup starts at rate 0
        (50, 0.0015),
        (99, 0.003 * 99 / 100),
        (100, 0.003),
        (200, 0.003),  # a boundary divides only once the step is past it (`boundary < step`)
        (201, 0.0003),
        (300, 0.0003),
        (301, 0.00003),
        (401, 0.000003),
        (499, 0.000003),
        (500, None),  # stop
        (700, None),
    ],
)
def test_lr_at_each_step_small_schedule(step, expected):
    lr = hr.lr_at(step, SMALL)
    assert lr == pytest.approx(expected, rel=1e-12) if expected is not None else lr is None


@pytest.mark.parametrize(
    "step, expected",
    [(250, 0.0015), (500, 0.003), (3000, 0.003), (3001, 0.0003), (6001, 0.00003), (9001, 0.000003), (10000, None)],
)
def test_lr_at_each_step_medium_schedule(step, expected):
    lr = hr.lr_at(step, MEDIUM)
    assert lr == pytest.approx(expected, rel=1e-12) if expected is not None else lr is None


def test_mixup_only_from_20k_images():
    assert hr.mixup_alpha(19_999) == 0.0
    assert hr.mixup_alpha(20_000) == 0.1
    assert hr.mixup_alpha(2_000_000) == 0.1


def test_resolution_by_image_area():
    small = hr.resolution(95 * 96, base_input_size=448)
    assert (small.resize, small.crop, small.small_images) == (160, 128, True)
    large = hr.resolution(96 * 96, base_input_size=448)
    # The base's own input size, resized first by the release's 512/480 margin.
    assert (large.resize, large.crop, large.small_images) == (478, 448, False)
    assert hr.resolution(500 * 375, base_input_size=224).crop == 224


def test_base_lr_does_not_scale_with_batch():
    rates = {hr.make_rule(1000, batch_size=batch).base_lr for batch in (512, 128, 8)}
    assert rates == {0.003}


@pytest.mark.parametrize(
    "steps, expected",
    [(500, SMALL), (50, [10, 20, 30, 40, 50]), (1000, [200, 400, 600, 800, 1000]), (3, [1, 2, 3]), (1, [1])],
)
def test_steps_override_scales_the_schedule(steps, expected):
    assert hr.scaled_schedule(SMALL, steps) == expected


def test_rule_with_overrides():
    rule = hr.make_rule(25_000, steps=100, batch_size=64)
    assert rule.steps == 100 and rule.boundaries == [5, 30, 60, 90, 100]
    assert rule.mixup_alpha == 0.1 and rule.base_lr == 0.003
    assert rule.lr(0) == 0.0 and rule.lr(100) is None
    assert hr.make_rule(100, lr=0.01, mixup=0.2).base_lr == 0.01
