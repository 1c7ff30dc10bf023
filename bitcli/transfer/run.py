"""`bit train` as a library call: data -> linear probe or fine-tune -> checkpoint folder + report.

OUTDIR is checked first, then the data read and split, the base loaded, the model trained and
written into a staging folder, validated, and renamed into place. Nothing is printed; callbacks
report. An interrupted fine-tune's state lives in `.OUTDIR.bit-train/` beside OUTDIR."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bitcli.errors import BitError, UsageError

from . import data as data_mod
from .backbone import load_base
from .data import Dataset
from .export import Staging, WriteFailed, check_outdir, discard_empty, eval_preprocess, has_checkpoint, write_checkpoint, write_report
from .finetune import FinetuneOptions, Finetuner, Plan, Progress

METHODS = ("linear", "finetune")
DEFAULT_EMBED_BATCH = 8
_SHOW_SKIPPED = 20


@dataclass
class TrainOptions:
    method: str = "linear"
    val: str | Path | None = None  # a second DATA for validation
    val_split: float | None = None  # or this fraction of DATA, stratified
    shots: int | None = None  # keep this many training examples per class
    seed: int = 0
    steps: int | None = None  # fine-tune: override the rule's schedule length
    batch_size: int | None = None  # fine-tune: the rule's 512; linear: the embedding batch (8)
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    offline: bool | None = None
    cache_dir: Path | None = None  # linear: the feature cache (default: features.default_cache_dir())
    l2: float | None = None  # linear: fix the regularization instead of choosing it
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)  # micro-batch, resolution, checkpoints


@dataclass
class Callbacks:
    stage: Callable[[str], None] | None = None  # one line about what starts now
    embed: Callable[[int, int], None] | None = None  # (done, total) images embedded
    plan: Callable[[Plan], None] | None = None  # fine-tune plan, once the first steps are timed
    step: Callable[[Progress], None] | None = None  # after every fine-tuning step
    notice: Callable[[str], None] | None = None  # a one-line warning (a base without preprocessor_config.json)

    def say(self, text: str) -> None:
        if self.stage is not None:
            self.stage(text)


@dataclass
class TrainResult:
    outdir: Path
    report: dict[str, Any]
    skipped: list[tuple[str, str]]  # unreadable images (training and validation)


def state_dir_for(outdir: Path) -> Path:
    return outdir.parent / f".{outdir.name}.bit-train"


def prepare_data(
    data: str | Path, *, val: str | Path | None = None, val_split: float | None = None,
    shots: int | None = None, seed: int = 0,
) -> tuple[Dataset, Dataset | None]:
    """(training set, validation set or None) after the split and the few-shot subset."""
    if val is not None and val_split is not None:
        raise UsageError("--val and --val-split exclude each other; give one")
    train = data_mod.load_dataset(data)
    data_mod.check_trainable(train)
    validation = None
    if val is not None:
        validation = data_mod.load_dataset(val, classes=train.classes)
    elif val_split is not None:
        train, validation = data_mod.stratified_split(train, val_split, seed)
    if shots is not None:
        train = data_mod.few_shot(train, shots, seed)
    data_mod.check_trainable(train)
    return train, validation


def train(
    data: str | Path,
    outdir: str | Path,
    *,
    base: str | Path = "google/bit-50",
    options: TrainOptions | None = None,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train a classifier for DATA's classes on `base` and write it to `outdir` (see the module docstring)."""
    options = options or TrainOptions()
    callbacks = callbacks or Callbacks()
    outdir = Path(outdir)
    started = time.monotonic()
    _check_options(options, outdir)
    callbacks.say("reading the data")
    train_set, val_set = prepare_data(
        data, val=options.val, val_split=options.val_split, shots=options.shots, seed=options.seed
    )
    for dataset in (train_set, val_set if options.val is not None else None):  # a split shares the count
        if dataset is not None and dataset.duplicates:
            rows = "row" if dataset.duplicates == 1 else "rows"
            callbacks.say(f"{dataset.source}: dropped {dataset.duplicates} duplicate {rows} (a file listed again with its label)")
    callbacks.say(f"loading {base}")
    base_model = load_base(base, offline=options.offline)
    notice = base_model.preprocess.missing_notice(str(base))
    if notice and callbacks.notice is not None:
        callbacks.notice(notice)
    with _write_failures(outdir, options), Staging(outdir, overwrite=options.overwrite) as staging:
        if options.method == "linear":
            details = _linear(base, base_model, train_set, val_set, staging.path, options, callbacks)
        else:
            details = _finetune(base_model, train_set, val_set, staging.path, outdir, options, callbacks)
        report = _report(base_model, train_set, val_set, options, details, time.monotonic() - started, data)
        report = write_report(staging.path, report)
        staging.commit()
    if options.method == "finetune":
        shutil.rmtree(state_dir_for(outdir), ignore_errors=True)
    return TrainResult(outdir, report, list(train_set.unreadable) + details["skipped"])


@contextlib.contextmanager
def _write_failures(outdir: Path, options: TrainOptions) -> Iterator[None]:
    """A failed write (disk full): one line naming OUTDIR, the reason, and the rerun that works."""
    try:
        yield
    except WriteFailed as exc:
        state = state_dir_for(outdir)
        discard_empty(state)
        again = "rerun with --resume" if options.method == "finetune" and has_checkpoint(state) else "rerun"
        reason = (exc.strerror or "write failed").lower()
        if exc.filename == str(state):
            raise BitError(f"{outdir}: cannot save the fine-tune's checkpoint in {state} ({reason}); make room, then {again}") from exc
        raise BitError(f"{outdir}: cannot write the trained model ({reason}); nothing was written: make room, then {again}") from exc


def _check_options(options: TrainOptions, outdir: Path) -> None:
    if options.method not in METHODS:
        raise UsageError(f"--method {options.method}: choose linear or finetune")
    if options.resume and options.method != "finetune":
        raise UsageError("--resume applies to --method finetune (the linear probe's features are cached: rerun it)")
    if options.steps is not None and options.method != "finetune":
        raise UsageError("--steps applies to --method finetune")
    if options.finetune.resolution is not None and options.method != "finetune":
        raise UsageError("--resolution applies to --method finetune (the linear probe uses the base's own input size)")
    check_outdir(outdir, overwrite=options.overwrite)
    state = state_dir_for(outdir)
    discard_empty(state)  # a first checkpoint that failed (disk full) left nothing to resume
    if options.method == "finetune" and state.exists() and not options.resume:
        if not options.overwrite:
            raise UsageError(
                f"{outdir}: an interrupted training run can be continued; pass --resume, or --overwrite to start again"
            )
        shutil.rmtree(state)


def _linear(base_ref, base_model, train_set, val_set, staging: Path, options, callbacks) -> dict[str, Any]:
    import torch

    import bitcli

    from . import features, linear

    embedder = bitcli.Embedder(
        bitcli.load(base_ref, device=options.device, offline=options.offline),
        batch_size=options.batch_size or DEFAULT_EMBED_BATCH,
    )
    timer = time.monotonic()
    callbacks.say(f"embedding {len(train_set)} training images")
    tr = features.extract(train_set.paths, embedder, cache_dir=options.cache_dir, progress=callbacks.embed)
    va = None
    if val_set is not None:
        callbacks.say(f"embedding {len(val_set)} validation images")
        va = features.extract(val_set.paths, embedder, cache_dir=options.cache_dir, progress=callbacks.embed)
    feature_seconds = time.monotonic() - timer
    y = train_set.labels[tr.rows]
    if len(np.unique(y)) < len(train_set.classes):
        raise data_mod.DataError(f"{train_set.source}: every image of some class failed to decode")
    callbacks.say("fitting the linear head")
    timer = time.monotonic()
    probe = linear.train_probe(tr.vectors, y, len(train_set.classes), seed=options.seed, l2=options.l2)
    fit_seconds = time.monotonic() - timer
    val_accuracy = None
    if va is not None and len(va.rows):
        val_accuracy = float((probe.head.predict(va.vectors) == val_set.labels[va.rows]).mean())
    head = {"classifier.1.weight": torch.from_numpy(probe.head.weight), "classifier.1.bias": torch.from_numpy(probe.head.bias)}
    write_checkpoint(
        staging, base=base_model.config, classes=train_set.classes,
        weights={**base_model.backbone, **head}, preprocess=eval_preprocess(base_model.preprocess, None),
    )
    return {
        "hyperparameters": {
            "l2": probe.l2, "sklearn_C": probe.sklearn_c, "selection": probe.selection,
            "selection_accuracy": {f"{k:g}": v for k, v in probe.scores.items()},
            "feature_standardization": "folded into the head",
        },
        "results": {
            "train_accuracy": probe.train_accuracy, "val_accuracy": val_accuracy,
            "val_n": len(va.rows) if va is not None else 0,
            "features_cached": tr.cached + (va.cached if va else 0),
        },
        "time": {"features_s": round(feature_seconds, 3), "fit_s": round(fit_seconds, 3)},
        "skipped": tr.failed + (va.failed if va else []),
        "train_used": len(tr.rows),
    }


def _finetune(base_model, train_set, val_set, staging: Path, outdir: Path, options, callbacks) -> dict[str, Any]:
    import bitcli

    from .evaluate import evaluate

    given = {"steps": options.steps, "batch_size": options.batch_size}  # TrainOptions' own, when set
    ft_options = replace(options.finetune, seed=options.seed, **{k: v for k, v in given.items() if v is not None})
    device = bitcli.resolve_device(options.device)
    tuner = Finetuner(base_model, train_set, device=device, options=ft_options, state_dir=state_dir_for(outdir))
    callbacks.say("fine-tuning" + (" (resuming)" if options.resume else ""))
    result = tuner.run(resume=options.resume, on_plan=callbacks.plan, on_progress=callbacks.step)
    write_checkpoint(
        staging, base=base_model.config, classes=train_set.classes,
        weights=result.weights, preprocess=eval_preprocess(base_model.preprocess, tuner.resolution),
    )
    val_accuracy, val_n, val_failed = None, 0, []
    if val_set is not None:
        callbacks.say(f"evaluating {len(val_set)} validation images")
        evaluation = evaluate(val_set, str(staging), device=str(device), progress=callbacks.embed)
        val_accuracy, val_n, val_failed = evaluation.accuracy, evaluation.n, evaluation.failed
    losses = result.losses
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "hyperparameters": {**asdict(result.plan), "optimizer": "SGD momentum 0.9, no weight decay",
                            "head_init": "zeros", "seed": options.seed},
        "results": {
            "first_loss": losses[0] if losses else None, "final_loss": float(np.mean(tail)) if tail else None,
            "losses": [round(v, 5) for v in losses], "val_accuracy": val_accuracy, "val_n": val_n,
        },
        "time": {"training_s": round(result.seconds, 3)},
        "skipped": result.skipped + val_failed,
        "train_used": len(train_set) - len(result.skipped),
    }


def _report(base_model, train_set, val_set, options, details, seconds, data) -> dict[str, Any]:
    import bitcli

    skipped = list(train_set.unreadable) + details["skipped"]
    return {
        "bitcli_version": bitcli.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": options.method,
        "base": {"ref": base_model.ref, **base_model.identity()},
        "data": {
            "train": str(data), "val": str(options.val) if options.val is not None else None,
            "val_split": options.val_split, "shots": options.shots, "seed": options.seed,
            "classes": list(train_set.classes),
            "train_counts": train_set.counts(), "val_counts": val_set.counts() if val_set is not None else None,
            "train_images": len(train_set), "train_used": details["train_used"],
            "skipped": len(skipped),
            "duplicates_dropped": {"train": train_set.duplicates, "val": val_set.duplicates if options.val is not None and val_set is not None else 0},
            "ignored_files": len(train_set.ignored),  # files in DATA outside the class folders
            "skipped_examples": [{"path": p, "reason": r} for p, r in skipped[:_SHOW_SKIPPED]],
        },
        "hyperparameters": details["hyperparameters"],
        "results": details["results"],
        "time": {**details["time"], "total_s": round(seconds, 3)},
    }
