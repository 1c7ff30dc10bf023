"""Make `bit-digits`, the small real BiT that ships inside bitcli (`bitcli/data/bit-digits/`).

    python tools/make_digits_model.py [--out bitcli/data/bit-digits] [--work DIR]

A compact BiT (ResNet-v2, GroupNorm, weight-standardized convolutions; the same code path as
every other checkpoint) trained from scratch by bitcli's own fine-tuning (`bitcli.transfer.train`,
`--method finetune`) on scikit-learn's `load_digits`: 1,797 real 8x8 handwritten digits.

The split is fixed and documented: image i of `load_digits()` is held out when i % 5 == 0
(360 images), the other 1,437 train. `digit_images(split)` below writes either split as an
ImageFolder; the tests use it to check the shipped model through `bit eval`.

Deterministic on a CPU: the initial weights come from a seeded generator, every random choice of
the training is a function of (seed, step), torch runs single-threaded with deterministic
algorithms, and the safetensors file is written with sorted keys; two runs on the same machine give
the same bytes (the script prints the sha256 of model.safetensors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = [str(d) for d in range(10)]
# The architecture: BiT's pre-activation bottleneck units, one per stage, widths 32-256.
CONFIG = dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_groups=8)
INPUT = 32  # the digits are drawn at 8x8; the network sees them at 32x32
SEED = 0
STEPS = 1500
BATCH = 64
LR = 0.1


def held_out(index: int) -> bool:
    """The fixed split: every fifth image of `load_digits()` is held out."""
    return index % 5 == 0


def digit_images(root: Path, split: str) -> Path:
    """Write `load_digits()`'s `split` ("train", "test" or "all") as `root/<digit>/dNNNN.png` (8x8 L)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        if split != "all" and held_out(index) != (split == "test"):
            continue
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * 16, 0, 255).astype(np.uint8)  # values 0..16 -> 0..255
        Image.fromarray(pixels, mode="L").save(folder / f"d{index:04d}.png")
    return root


def random_base(directory: Path) -> Path:
    """A randomly initialized BiT checkpoint (transformers layout), seeded, written by bitcli."""
    import torch

    from bitcli.model import BiT, BitConfig
    from bitcli.preprocess import PreprocessConfig
    from bitcli.transfer.export import write_checkpoint

    torch.manual_seed(SEED)
    config = BitConfig(**CONFIG, num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)))
    model = BiT(config)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    preprocess = PreprocessConfig(shortest_edge=INPUT, crop_size=(INPUT, INPUT),
                                  image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    directory.mkdir(parents=True, exist_ok=True)
    write_checkpoint(directory, base=config, classes=CLASSES, weights=weights, preprocess=preprocess)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bitcli" / "data" / "bit-digits")
    parser.add_argument("--work", type=Path, default=None, help="keep the work folder here")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from bitcli.transfer import FinetuneOptions, TrainOptions, train
    from bitcli.transfer.hyperrule import Resolution

    work = args.work or Path(tempfile.mkdtemp(prefix="bit-digits-"))
    train_dir = digit_images(work / "train", "train")
    base = random_base(work / "random-init")
    started = time.monotonic()
    options = TrainOptions(
        method="finetune", steps=args.steps, batch_size=BATCH, seed=SEED, device="cpu",
        cache_dir=work / "cache", overwrite=True,
        finetune=FinetuneOptions(base_lr=LR, mixup=0.0, workers=1, checkpoint_seconds=1e9,
                                 resolution=Resolution(resize=INPUT + 4, crop=INPUT, small_images=True)),
    )
    result = train(train_dir, work / "trained", base=str(base), options=options)
    seconds = time.monotonic() - started

    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        shutil.copyfile(work / "trained" / name, args.out / name)
    digest = hashlib.sha256((args.out / "model.safetensors").read_bytes()).hexdigest()
    losses = result.report["results"]
    print(json.dumps({"out": str(args.out), "training_s": round(seconds, 1), "steps": args.steps,
                      "first_loss": losses.get("first_loss"), "final_loss": losses.get("final_loss"),
                      "model_sha256": digest}, indent=1))


if __name__ == "__main__":
    main()
