"""`bitcli.transfer.train`: options, the interrupted-run state next to OUTDIR, and the report."""

from __future__ import annotations

import json

import pytest

from bitcli.errors import UsageError
from bitcli.transfer import Callbacks, FinetuneOptions, TrainOptions, train
from bitcli.transfer.export import REPORT
from bitcli.transfer.hyperrule import Resolution, fixed_resolution
from bitcli.transfer.run import state_dir_for
from transferdata import make_trainable_checkpoint, shared, transfer_env, write_folder  # noqa: F401


def _options(**kw):
    fine = FinetuneOptions(resolution=Resolution(34, 32, True), checkpoint_every=2)
    return TrainOptions(method="finetune", device="cpu", batch_size=4, steps=6, finetune=fine, **kw)


@pytest.fixture
def setup(tmp_path, tmp_path_factory):
    base = str(shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint))
    return base, write_folder(tmp_path / "photos", {"a": 5, "b": 5}, size=30), tmp_path / "out"


@pytest.mark.slow
def test_finetune_writes_report_and_cleans_its_state(setup):
    base, photos, out = setup
    stages = []
    result = train(photos, out, base=base, options=_options(val_split=0.2), callbacks=Callbacks(stage=stages.append))
    report = json.loads((out / REPORT).read_text())
    assert report["method"] == "finetune" and report["hyperparameters"]["steps"] == 6
    assert report["hyperparameters"]["boundaries"] == [1, 2, 4, 5, 6]  # the rule's shape, scaled to 6 steps
    assert report["results"]["val_n"] == 2 and len(report["results"]["losses"]) == 6
    assert report["data"]["train_counts"] == {"a": 4, "b": 4} and report["data"]["val_counts"] == {"a": 1, "b": 1}
    assert result.report == report and not state_dir_for(out).exists()
    assert stages[0] == "reading the data" and any(s.startswith("evaluating 2") for s in stages)


def test_interrupted_run_needs_resume_or_overwrite(setup):
    base, photos, out = setup

    def stop_at_3(progress):
        if progress.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(photos, out, base=base, options=_options(), callbacks=Callbacks(step=stop_at_3))
    assert not out.exists() and state_dir_for(out).is_dir()
    with pytest.raises(UsageError, match="pass --resume, or --overwrite to start again"):
        train(photos, out, base=base, options=_options())
    steps = []
    train(photos, out, base=base, options=_options(resume=True), callbacks=Callbacks(step=lambda p: steps.append(p.step)))
    assert steps == [4, 5, 6] and (out / REPORT).is_file() and not state_dir_for(out).exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (TrainOptions(method="svm"), "choose linear or finetune"),
        (TrainOptions(resume=True), "--resume applies to --method finetune"),
        (TrainOptions(steps=5), "--steps applies to --method finetune"),
        (TrainOptions(finetune=FinetuneOptions(resolution=fixed_resolution(64))), "--resolution applies to --method finetune"),
        (TrainOptions(val="x", val_split=0.2), "--val and --val-split exclude each other"),
    ],
)
def test_option_errors(setup, options, message):
    base, photos, out = setup
    with pytest.raises(UsageError, match=message):
        train(photos, out, base=base, options=options)
