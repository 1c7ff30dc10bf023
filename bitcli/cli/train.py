"""`bit train`: labelled photos -> a BiT classifier folder; the library's callbacks become stderr
lines and progress bars. Nothing goes to stdout."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bitcli.cli.common import EXIT_OK, EXIT_SOME_FAILED, Runtime, Ui, before_loading, check_settings, epilog, takes
from bitcli.cli.screen import Bar, duration
from bitcli.output.escapes import shown

EPILOG = epilog(
    "bit train photos/ -o my-model --val-split 0.2  # linear probe: seconds once embedded",
    "bit train photos/ -o my-model --method finetune --batch-size 64",
    "bit train photos/ -o my-model --method finetune --resume  # after an interruption",
    "bit train labels.csv -o my-model --shots 5 --seed 1 --val val/",
    "bit classify new.jpg -m my-model",
    note=(
        "DATA: a folder with one sub-folder per class (class = folder name), or a CSV/JSONL file of "
        "path,label. OUTDIR: a transformers checkpoint folder (config.json with your classes, "
        "preprocessor_config.json, model.safetensors) plus training_report.json. Images that cannot "
        "be read are skipped and counted (exit code 1, OUTDIR still complete)."
    ),
)
_SHOW_SKIPPED = 10


class Method(str, Enum):
    linear = "linear"
    finetune = "finetune"


@takes("model", "device", "threads")
def train(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Class folders, or a .csv/.jsonl of path,label.", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", metavar="OUTDIR", help="Folder to write the classifier to.")],
    runtime: Runtime = Runtime(),
    method: Annotated[Method, typer.Option("--method", help="linear: frozen backbone + logistic regression; finetune: BiT-HyperRule.")] = Method.linear,
    val: Annotated[Optional[str], typer.Option("--val", metavar="DATA2", help="Validation data (same forms as DATA).")] = None,
    val_split: Annotated[Optional[float], typer.Option("--val-split", metavar="F", help="Hold out this fraction of DATA, stratified.")] = None,
    shots: Annotated[Optional[int], typer.Option("--shots", metavar="K", help="Keep K training images per class (few-shot).")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the split, --shots, the data order and augmentation.")] = 0,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, metavar="N", help="finetune: steps instead of the rule's 500/10k/20k.")] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", min=1, metavar="N", help="finetune: images per step (rule: 512, accumulated when it does not fit); linear: per forward pass (8)."),
    ] = None,
    resolution: Annotated[
        Optional[int],
        typer.Option("--resolution", min=8, max=1024, metavar="PX", help="finetune: train and evaluate at PX x PX (rule: 128 for images under 96x96, else the base's input size)."),
    ] = None,
    checkpoint_minutes: Annotated[
        float, typer.Option("--checkpoint-minutes", min=0, metavar="M", help="finetune: save a resumable checkpoint every M minutes (0: every step).")
    ] = 5.0,
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="finetune: continue an interrupted run into the same OUTDIR.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an OUTDIR bit train wrote (or discard an interrupted run).")] = False,
    ui: Ui = Ui(),
) -> int:
    """Train a classifier for your own classes on a BiT model (linear probe or fine-tuning)."""
    check_settings(runtime.device, runtime.model)  # before the transfer package imports torch
    from bitcli.transfer import Callbacks, FinetuneOptions, TrainOptions
    from bitcli.transfer import train as run_training
    from bitcli.transfer.hyperrule import fixed_resolution

    before_loading(ui, runtime.threads)
    finetune = FinetuneOptions(
        workers=runtime.threads or FinetuneOptions.workers, checkpoint_seconds=60 * checkpoint_minutes,
        resolution=None if resolution is None else fixed_resolution(resolution),
    )
    options = TrainOptions(
        method=method.value, val=val, val_split=val_split, shots=shots, seed=seed, steps=steps,
        batch_size=batch_size, device=runtime.device, resume=resume, overwrite=overwrite, finetune=finetune,
    )
    bars = _Bars(ui)  # the library's callbacks: stderr lines and one bar per phase (terminal only)
    callbacks = Callbacks(
        stage=bars.stage,
        embed=bars.images,
        plan=lambda plan: bars.say(plan_text(plan)),
        step=bars.step,
        notice=ui.warn,
    )
    try:
        result = run_training(data, output, base=runtime.model, options=options, callbacks=callbacks)
    except KeyboardInterrupt:
        if method is Method.finetune:
            ui.info(f"the fine-tune can continue: rerun the same command with --resume (OUTDIR {output})")
        raise
    finally:
        bars.close()
    _summary(ui, result)
    return EXIT_SOME_FAILED if result.skipped else EXIT_OK


class _Bars:
    """The progress display: one bar at a time, for images (embedding, evaluating) or steps (fine-tuning)."""

    def __init__(self, ui: Ui):
        self.ui = ui
        self.bar: Bar | None = None
        self.kind = ""

    def say(self, text: Any) -> None:
        if not self.ui.quiet:
            self.ui.console.print(text, highlight=False)  # above a bar that is showing

    def stage(self, text: str) -> None:
        self.close()
        from rich.text import Text

        self.say(Text(shown(text), style="dim"))

    def _bar(self, kind: str, done: int, total: int, unit: str) -> Bar | None:
        """This phase's bar, opened at its first call (a resumed fine-tune starts part way); None unwatched."""
        if kind != self.kind:
            self.close()
            self.kind = kind
            if self.ui.show_progress:  # the same columns as every bar, then loss and lr
                self.bar = Bar(self.ui.console, total, kind, show=True, unit=unit, info=True, done=done).__enter__()
        return self.bar

    def images(self, done: int, total: int) -> None:
        bar = self._bar("images", done, total, "img/s")
        if bar is not None:
            bar.advance(done - bar.done, "")

    def step(self, progress: Any) -> None:
        bar = self._bar("steps", progress.step, progress.steps, "steps/s")
        if bar is not None:
            skipped = f"  {progress.skipped} unreadable" if progress.skipped else ""
            bar.advance(progress.step - bar.done, f"loss {progress.loss:.4f}  lr {progress.lr:.2g}{skipped}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__()
        self.bar, self.kind = None, ""


def plan_text(plan: Any) -> str:
    """The fine-tuning plan as a few stderr lines."""
    accumulation = (
        f" = {plan.accumulation} x {plan.micro_batch} (gradient accumulation)" if plan.accumulation > 1 else ""
    )
    later = ", ".join(str(b) for b in plan.boundaries[1:-1])
    schedule = f"warmup to step {plan.boundaries[0]}" + (f", lr / 10 after {later}" if later else "")
    mixup = f"mixup alpha {plan.mixup_alpha:g}" if plan.mixup_alpha > 0 else "no mixup (under 20k images)"
    estimate = ""
    if plan.estimated_seconds is not None:
        estimate = f"\n  time: about {duration(plan.estimated_seconds)} ({plan.step_seconds:.2f} s per step, measured)"
    resumed = f" (resuming at step {plan.start_step})" if plan.start_step else ""
    return (
        f"[bold]plan[/bold]: {plan.steps} steps{resumed} on {plan.dataset_size:,} images, {plan.num_classes} classes, "
        f"device {plan.device}\n"
        f"  batch {plan.batch_size}{accumulation}; SGD momentum 0.9, lr {plan.base_lr:g}, {schedule}; {mixup}\n"
        f"  images: {plan.resolution['augmentation']}" + estimate
    )


def _summary(ui: Ui, result: Any) -> None:
    report = result.report
    data, results, hyper = report["data"], report["results"], report["hyperparameters"]
    for path, reason in result.skipped[:_SHOW_SKIPPED]:
        ui.error(f"{path}: {reason}")
    if len(result.skipped) > _SHOW_SKIPPED:
        ui.error(f"... and {len(result.skipped) - _SHOW_SKIPPED} more unreadable images (skipped)")
    if data.get("ignored_files"):
        ui.warn(f"{data['ignored_files']} files directly in DATA are not in a class folder and were not used")
    if report["method"] == "linear":
        how = f"linear probe, L2 {hyper['l2']:g} chosen by {hyper['selection']}"
    else:
        how = f"fine-tuned {hyper['steps']} steps, final training loss {results['final_loss']:.4f}"
    ui.info(
        f"wrote {result.outdir}: {len(data['classes'])} classes, {data['train_used']:,} training images; {how}; "
        f"{report['time']['total_s']:.1f} s"
    )
    if results.get("val_accuracy") is not None:
        ui.info(f"validation accuracy {results['val_accuracy'] * 100:.2f}% on {results['val_n']:,} images")
    ui.info(f"use it: bit classify IMAGES -m {Path(result.outdir)}")
