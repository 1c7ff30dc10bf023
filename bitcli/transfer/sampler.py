"""Training batches for fine-tuning: a seeded order, random crops and flips, unreadable images skipped.

Everything random is a function of (seed, step, position), so a resumed run draws the batches an
uninterrupted one would: epoch order from (seed, epoch), augmentation from (seed, step, j), and
an unreadable image (`bad`) replaced by one drawn from (seed, step, j, attempt). The transform:
shortest edge to `resize` (aspect kept), a random `crop` window, a flip, the base's normalization."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from bitcli.decode import open_image
from bitcli.errors import InputError
from bitcli.preprocess import preprocess

from .data import DataError, Dataset
from .hyperrule import Resolution

_ORDER, _AUGMENT, _REPLACE, _MIXUP = 100, 200, 400, 300
_MAX_REPLACEMENTS = 50


class Sampler:
    """Micro-batches of augmented training images for given steps."""

    def __init__(
        self,
        dataset: Dataset,
        resolution: Resolution,
        preprocess_config,  # bitcli.preprocess.PreprocessConfig of the base model
        *,
        batch_size: int,
        seed: int,
        workers: int = 4,
        bad: dict[int, str] | None = None,
    ):
        self.dataset = dataset
        self.resolution = resolution
        self.resample = preprocess_config.resample
        # Only the value mapping (rescale, normalize): sizes are the sampler's.
        self.values = replace(preprocess_config, do_resize=False, do_center_crop=False)
        self.batch_size = batch_size
        self.seed = seed
        self.bad: dict[int, str] = dict(bad or {})  # example index -> why it could not be read
        self._orders: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="bit-train")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def example_at(self, position: int) -> int:
        """The example index at a global position of the endless, epoch-wise shuffled stream."""
        n = len(self.dataset)
        epoch = position // n
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, _ORDER, epoch]).permutation(n)
            self._orders = {epoch: order}  # the stream only moves forward
        return int(order[position % n])

    def mixup(self, step: int, alpha: float, micro: int, size: int) -> tuple[float, np.ndarray | None]:
        """(lambda, permutation) for one micro-batch: one lambda per step, as the release."""
        if alpha <= 0:
            return 1.0, None
        lam = float(np.random.default_rng([self.seed, _MIXUP, step]).beta(alpha, alpha))
        return lam, np.random.default_rng([self.seed, _MIXUP, step, micro]).permutation(size)

    def load(self, step: int, offsets: range) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [M, 3, crop, crop] and labels [M] for the examples at `offsets` within `step`."""
        indices = [self.example_at(step * self.batch_size + j) for j in offsets]  # here, not in threads
        jobs = [self._pool.submit(self._load_one, step, j, i) for j, i in zip(offsets, indices)]
        pairs = [job.result() for job in jobs]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.int64)

    def _load_one(self, step: int, offset: int, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, _AUGMENT, step, offset])
        for attempt in range(_MAX_REPLACEMENTS):
            if index not in self.bad:
                example = self.dataset.examples[index]
                try:
                    return self.transform(open_image(example.path), rng), example.label
                except InputError as exc:
                    self.bad[index] = exc.reason
            if len(self.bad) >= len(self.dataset):
                raise DataError(f"{self.dataset.source}: none of the training images could be read")
            index = int(np.random.default_rng([self.seed, _REPLACE, step, offset, attempt]).integers(len(self.dataset)))
        raise DataError(f"{self.dataset.source}: too many training images cannot be read ({len(self.bad)})")

    def transform(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """Resize the shortest edge, random crop, random flip, normalize: float32 [3, crop, crop]."""
        size, crop = self.resolution.resize, self.resolution.crop
        width, height = image.size
        if width <= height:
            new = (size, max(size, int(size * height / width)))
        else:
            new = (max(size, int(size * width / height)), size)
        image = image.resize(new, resample=self.resample)
        left = int(rng.integers(0, new[0] - crop + 1))
        top = int(rng.integers(0, new[1] - crop + 1))
        image = image.crop((left, top, left + crop, top + crop))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return preprocess(image, self.values)
