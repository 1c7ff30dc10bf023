"""Fine-tuning the whole network with the BiT-HyperRule (`hyperrule.py`).

SGD with momentum 0.9, no weight decay, the rule's learning rate set before every step, a
zero-initialized head, cross-entropy, MixUp when the rule turns it on, random crops and flips. A
batch that does not fit runs as micro-batches whose gradients add up (sized from the activations
and the memory at hand, halved after a GPU out-of-memory error). Checkpoints go to `state_dir`
every `checkpoint_seconds` and on Ctrl-C.

Every random choice is a function of (seed, step, position), so a resumed run draws the batches
an uninterrupted one would: epoch order from (seed, epoch), augmentation from (seed, step, j),
an unreadable image replaced by one drawn from (seed, step, j, attempt), MixUp from (seed, step).
The augmentation: shortest edge to `resize` (aspect kept), a random `crop` window, a flip, the
base's normalization. Images load on `workers` threads, one micro-batch ahead of the model."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bitcli.decode import open_image
from bitcli.errors import InputError, UsageError
from bitcli.preprocess import preprocess
from bitcli.util import held_interrupt, open_regular

from .backbone import Base, raw_weights, trainable_model
from .data import DataError, Dataset
from .hyperrule import BASE_BATCH, MOMENTUM, Resolution, make_rule, resolution
from .export import Session, has_checkpoint, restore, save

_AREA_SAMPLE = 200
_ORDER, _AUGMENT, _REPLACE, _MIXUP = 100, 200, 400, 300  # the random streams
_MAX_REPLACEMENTS = 50
_TRAINING_MEMORY_FACTOR = 10  # stored activations per block, relative to its output (an estimate)


@dataclass
class FinetuneOptions:
    steps: int | None = None  # None: the rule's schedule
    batch_size: int = BASE_BATCH
    micro_batch: int | None = None  # None: as large as memory allows
    base_lr: float | None = None  # None: the rule's 0.003
    mixup: float | None = None  # None: the rule's alpha
    resolution: Resolution | None = None  # None: by image size
    seed: int = 0
    workers: int = 4
    checkpoint_seconds: float = 300.0
    checkpoint_every: int | None = None
    measure_steps: int = 3


@dataclass
class Plan:
    steps: int
    boundaries: list[int]
    batch_size: int
    micro_batch: int
    accumulation: int  # micro-batches per step
    base_lr: float
    mixup_alpha: float
    resolution: dict[str, Any]
    device: str
    dataset_size: int
    num_classes: int
    start_step: int = 0  # > 0 when resumed
    step_seconds: float | None = None  # measured on the first steps of this session
    estimated_seconds: float | None = None  # for the steps still to run


@dataclass
class Progress:
    step: int  # steps done
    steps: int
    loss: float
    lr: float
    elapsed: float  # seconds in this session
    eta: float | None
    skipped: int  # unreadable training images so far


@dataclass
class FinetuneResult:
    weights: dict[str, torch.Tensor]  # raw weights (canonical names), on the CPU
    losses: list[float]  # mean training loss of every step
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable training images
    plan: Plan
    seconds: float  # training time, all sessions together


def typical_image_area(dataset: Dataset, seed: int = 0) -> float:
    """The median pixel area of up to 200 training images, read from their headers."""
    rng = np.random.default_rng([seed, 500])
    picks = rng.permutation(len(dataset))[:_AREA_SAMPLE]
    areas = []
    for index in picks:
        try:
            # open_regular: a FIFO or device named in a list is skipped, never waited on
            with open_regular(dataset.examples[int(index)].path) as file, Image.open(file) as image:
                areas.append(image.width * image.height)
        except (OSError, ValueError, SyntaxError):
            continue
    if not areas:
        raise DataError(f"{dataset.source}: none of the training images could be read")
    return float(statistics.median(areas))


def auto_micro_batch(model: torch.nn.Module, crop: int, batch: int, device: torch.device) -> int:
    """The largest micro-batch whose estimated training activations fit in the memory at hand."""
    from bitcli.engine.slicing import step_activation_bytes

    per_step = step_activation_bytes(model.config, crop, crop, 4)
    depths = [1] + list(model.config.depths) + [1] * (len(per_step) - len(model.config.depths) - 1)
    per_image = sum(size * depth for size, depth in zip(per_step, depths)) * _TRAINING_MEMORY_FACTOR
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.6 * free
    else:
        budget = 0.4 * _available_memory()
    return int(max(1, min(batch, budget // max(per_image, 1))))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30  # unknown: assume 4 GiB


class Finetuner:
    """One fine-tuning run: build with the data, read `plan()`, then `run()`."""

    def __init__(
        self,
        base: Base,
        train: Dataset,
        *,
        device: str | torch.device = "cpu",
        options: FinetuneOptions | None = None,
        state_dir: Path | None = None,
    ):
        self.options = options = options or FinetuneOptions()
        if options.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        self.base, self.train = base, train
        self.rule = make_rule(
            len(train), steps=options.steps, batch_size=options.batch_size, lr=options.base_lr, mixup=options.mixup
        )
        base_input = int(max(base.preprocess.input_size))  # its evaluation crop, e.g. 448 for google/bit-50
        self.resolution = options.resolution or resolution(typical_image_area(train, options.seed), base_input)
        self.device = torch.device(device)
        self.model = trainable_model(base, train.classes).to(self.device)
        self.micro = options.micro_batch or auto_micro_batch(
            self.model, self.resolution.crop, options.batch_size, self.device
        )
        self.micro = min(self.micro, options.batch_size)
        self.state_dir = state_dir
        self._order: tuple[int, np.ndarray | None] = (-1, None)  # (epoch, its shuffled order)
        # Only the base's value mapping (rescale, normalize): the sizes are the augmentation's.
        self._values = replace(base.preprocess, do_resize=False, do_center_crop=False)

    def plan(self, start_step: int = 0) -> Plan:
        return Plan(
            steps=self.rule.steps,
            boundaries=list(self.rule.boundaries),
            batch_size=self.rule.batch_size,
            micro_batch=self.micro,
            accumulation=-(-self.rule.batch_size // self.micro),
            base_lr=self.rule.base_lr,
            mixup_alpha=self.rule.mixup_alpha,
            resolution={"resize": self.resolution.resize, "crop": self.resolution.crop,
                        "small_images": self.resolution.small_images, "augmentation": self.resolution.describe()},
            device=str(self.device),
            dataset_size=len(self.train),
            num_classes=len(self.train.classes),
            start_step=start_step,
        )

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: base, data, classes and the rule."""
        listing = "\n".join(f"{e.path}\t{e.label}" for e in self.train.examples)
        return {
            "base": self.base.identity(),
            "classes": list(self.train.classes),
            "data": hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest(),
            "boundaries": list(self.rule.boundaries),
            "batch_size": self.rule.batch_size,
            "base_lr": self.rule.base_lr,
            "mixup": self.rule.mixup_alpha,
            "resolution": [self.resolution.resize, self.resolution.crop],
            "seed": self.options.seed,
        }

    def run(
        self,
        *,
        resume: bool = False,
        on_plan: Callable[[Plan], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> FinetuneResult:
        """Train to the end of the schedule; `resume` continues from `state_dir`'s checkpoint."""
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=MOMENTUM, weight_decay=0.0)
        session = Session()
        if resume:
            if self.state_dir is None or not has_checkpoint(self.state_dir):
                raise UsageError(f"{self.state_dir}: no interrupted run to resume; run without --resume")
            session = restore(self.state_dir, self.model, optimizer, self.fingerprint(), self.device)
        plan = self.plan(start_step=session.step)
        pool = ThreadPoolExecutor(max_workers=max(1, self.options.workers), thread_name_prefix="bit-train")
        try:
            while True:
                try:
                    self._loop(optimizer, pool, session, plan, on_plan, on_progress)
                    break
                except torch.cuda.OutOfMemoryError:
                    if self.micro == 1:
                        raise UsageError(f"out of memory on {self.device} even one image at a time; use a smaller model") from None
                    # Redo the current step in smaller micro-batches (its partial gradients are dropped).
                    self.micro = plan.micro_batch = self.micro // 2
                    plan.accumulation = -(-self.rule.batch_size // self.micro)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self.model.eval()
        weights = {k: v.cpu() for k, v in raw_weights(self.model).items()}
        skipped = [(self.train.examples[i].path, why) for i, why in sorted(session.bad.items())]
        return FinetuneResult(weights, session.losses, skipped, plan, session.seconds)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, optimizer, pool, session, plan, on_plan, on_progress) -> None:
        start, started = session.step, time.monotonic()
        base_seconds, last_save = session.seconds, started
        durations: list[float] = []
        try:
            step_started, loss_sum = time.monotonic(), 0.0
            for step, micro, offsets, (x, y) in self._units(pool, session):
                if micro == 0:
                    step_started, loss_sum = time.monotonic(), 0.0
                    optimizer.zero_grad(set_to_none=True)
                    for group in optimizer.param_groups:
                        group["lr"] = self.rule.lr(step)
                loss_sum += self._micro_step(x, y, step, micro, len(offsets))
                if offsets.stop < self.rule.batch_size:
                    continue
                with held_interrupt():  # weights, momentum and step change together or not at all
                    optimizer.step()
                    session.step = step + 1
                    session.losses.append(loss_sum / self.rule.batch_size)
                durations.append(time.monotonic() - step_started)
                now = time.monotonic()
                session.seconds = base_seconds + (now - started)
                if plan.step_seconds is None and (len(durations) >= self.options.measure_steps or session.step == self.rule.steps):
                    measured = durations[1:] or durations  # the first step pays for start-up
                    plan.step_seconds = sum(measured) / len(measured)
                    plan.estimated_seconds = plan.step_seconds * (self.rule.steps - start)
                    if on_plan is not None:
                        on_plan(plan)
                if self._checkpoint_due(session.step, now - last_save):
                    self._save(optimizer, session)
                    last_save = now
                if on_progress is not None:
                    done = session.step - start
                    eta = (now - started) / done * (self.rule.steps - session.step)
                    on_progress(Progress(session.step, self.rule.steps, session.losses[-1],
                                         float(optimizer.param_groups[0]["lr"]), now - started, eta, len(session.bad)))
        except KeyboardInterrupt:
            # Consistent: an interrupt during the update is delivered after it (util.held_interrupt).
            if self.state_dir is not None and session.step > start:
                self._save(optimizer, session)
            raise

    def _save(self, optimizer, session: Session) -> None:
        assert self.state_dir is not None
        save(self.state_dir, self.model, optimizer, session, self.fingerprint())

    def _checkpoint_due(self, step: int, since_save: float) -> bool:
        if self.state_dir is None or step >= self.rule.steps:
            return False
        every = self.options.checkpoint_every
        return since_save >= self.options.checkpoint_seconds or (every is not None and step % every == 0)

    def _micro_step(self, x, y, step: int, micro: int, size: int) -> float:
        """Forward and backward of one micro-batch; returns its summed loss."""
        x, y = x.to(self.device), y.to(self.device)
        lam, perm = mixup(self.options.seed, step, self.rule.mixup_alpha, micro, size)
        logits = None
        if perm is None:
            logits = self.model(x).logits
            loss = F.cross_entropy(logits, y)
        else:
            p = torch.from_numpy(perm).to(self.device)
            logits = self.model(lam * x + (1.0 - lam) * x[p]).logits
            loss = lam * F.cross_entropy(logits, y) + (1.0 - lam) * F.cross_entropy(logits, y[p])
        (loss * (size / self.rule.batch_size)).backward()
        return float(loss.detach()) * size

    # -- the batches ---------------------------------------------------------------------------

    def _units(self, pool: ThreadPoolExecutor, session: Session) -> Iterator[tuple[int, int, range, tuple]]:
        """(step, micro index, offsets, (images, labels)) from the session's step on, one unit loading ahead."""
        batch, micro = self.rule.batch_size, self.micro
        units = (
            (step, m, range(a, min(batch, a + micro)))
            for step in range(session.step, self.rule.steps)
            for m, a in enumerate(range(0, batch, micro))
        )
        pending = None
        for step, m, offsets in units:
            # The examples are chosen here, in order; the images load on the pool's threads.
            jobs = [
                pool.submit(self._load_one, step, j, self._example_at(step * batch + j), session.bad)
                for j in offsets
            ]
            if pending is not None:
                yield (*pending[0], _stacked(pending[1]))
            pending = ((step, m, offsets), jobs)
        if pending is not None:
            yield (*pending[0], _stacked(pending[1]))

    def _example_at(self, position: int) -> int:
        """The example index at a global position of the endless, epoch-wise shuffled stream."""
        n = len(self.train)
        epoch = position // n
        if self._order[0] != epoch:  # the stream only moves forward
            self._order = (epoch, np.random.default_rng([self.options.seed, _ORDER, epoch]).permutation(n))
        return int(self._order[1][position % n])

    def _load_one(self, step: int, offset: int, index: int, bad: dict[int, str]) -> tuple[torch.Tensor, int]:
        """One augmented image and its label; an unreadable one is noted in `bad` and replaced."""
        rng = np.random.default_rng([self.options.seed, _AUGMENT, step, offset])
        for attempt in range(_MAX_REPLACEMENTS):
            if index not in bad:
                example = self.train.examples[index]
                try:
                    return self._augment(open_image(example.path), rng), example.label
                except InputError as exc:
                    bad[index] = exc.reason
            if len(bad) >= len(self.train):
                raise DataError(f"{self.train.source}: none of the training images could be read")
            index = int(np.random.default_rng([self.options.seed, _REPLACE, step, offset, attempt]).integers(len(self.train)))
        raise DataError(f"{self.train.source}: too many training images cannot be read ({len(bad)})")

    def _augment(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """Resize the shortest edge, random crop, random flip, normalize: float32 [3, crop, crop]."""
        size, crop = self.resolution.resize, self.resolution.crop
        width, height = image.size
        if width <= height:
            new = (size, max(size, int(size * height / width)))
        else:
            new = (max(size, int(size * width / height)), size)
        image = image.resize(new, resample=self.base.preprocess.resample)
        left = int(rng.integers(0, new[0] - crop + 1))
        top = int(rng.integers(0, new[1] - crop + 1))
        image = image.crop((left, top, left + crop, top + crop))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return preprocess(image, self._values)


def _stacked(jobs: list[Future]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [M, 3, crop, crop] and labels [M] of one micro-batch's loading jobs."""
    pairs = [job.result() for job in jobs]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.int64)


def mixup(seed: int, step: int, alpha: float, micro: int, size: int) -> tuple[float, np.ndarray | None]:
    """(lambda, permutation) for one micro-batch: one lambda per step, as the release."""
    if alpha <= 0:
        return 1.0, None
    lam = float(np.random.default_rng([seed, _MIXUP, step]).beta(alpha, alpha))
    return lam, np.random.default_rng([seed, _MIXUP, step, micro]).permutation(size)
