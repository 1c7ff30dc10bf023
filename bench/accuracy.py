"""The bench's accuracy part (`python bench/run.py --parts accuracy`): numbers, not speed.

- Hard images (tests/flat_images.py: solid colours, tiny, faint, +/-1-level noise, dark, text
  on white, a photo on a white canvas) against transformers run in float64, with the head
  scaled x40 so the softmax is peaked (as issue 11 measures): transformers float32, bitcli
  fp32 and bitcli bf16. Largest |probability difference|, largest |logit difference| over the
  largest |logit|, largest |pooled difference| over the largest |pooled value|.
- bf16 against fp32 on photos (the sample images and the bench's JPEGs): top-1 agreement and
  largest |probability difference| with the x40 head, largest |logit difference| with the
  checkpoint's own head.
"""

from __future__ import annotations

import copy
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD_SCALE = 40.0


def scaled(model, attribute: str = "classifier"):
    """A copy of `model` with its head's weight and bias multiplied by HEAD_SCALE."""
    import torch

    model = copy.deepcopy(model)
    head = getattr(model, attribute)[1]
    with torch.no_grad():
        head.weight.mul_(HEAD_SCALE)
        head.bias.mul_(HEAD_SCALE)
    return model


def run_batches(model, pixels, batch: int = 8):
    """(logits float64, pooled float64) of a bitcli model, batch by batch."""
    import torch

    logits, pooled = [], []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            out = model(pixels[start : start + batch])
            logits.append(out.logits.double())
            pooled.append(out.pooled.double())
    return torch.cat(logits), torch.cat(pooled)


def errors(logits, pooled, expected_logits, expected_pooled) -> str:
    probabilities = logits.float().softmax(dim=-1).double()
    dprob = (probabilities - expected_logits.softmax(dim=-1)).abs().max().item()
    dlogit = ((logits - expected_logits).abs().max() / expected_logits.abs().max()).item()
    dpooled = ((pooled - expected_pooled).abs().max() / expected_pooled.abs().max()).item()
    return f"{dprob:.1e} / {dlogit:.1e} / {dpooled:.1e}"


def bench_hard_images(checkpoint: Path, row) -> None:
    import torch
    from transformers import BitForImageClassification

    from bitcli.checkpoint import load_model

    sys.path.insert(0, str(ROOT / "tests"))
    import flat_images

    images = flat_images.battery()
    fp32 = load_model(checkpoint)
    pixels = torch.stack([fp32.preprocess(image) for image in images.values()])
    reference = scaled(BitForImageClassification.from_pretrained(checkpoint).eval())
    with torch.no_grad():
        reference64 = copy.deepcopy(reference).double()
        expected_logits = reference64(pixels.double()).logits
        expected_pooled = reference64.bit(pixels.double()).pooler_output.flatten(1)
        ref_logits = reference(pixels).logits.double()
        ref_pooled = reference.bit(pixels).pooler_output.flatten(1).double()
    what = f"{len(images)} hard images vs float64, head x{HEAD_SCALE:.0f}: max abs diff, probs / logits / pooled (rel.)"
    row(f"{what}, fp32", errors(*run_batches(scaled(fp32.model), pixels), expected_logits, expected_pooled),
        errors(ref_logits, ref_pooled, expected_logits, expected_pooled))
    bf16 = load_model(checkpoint, precision="bf16").model
    row(f"{what}, bf16", errors(*run_batches(scaled(bf16), pixels), expected_logits, expected_pooled))


def bench_bf16_agreement(checkpoint: Path, photos: list[Path], row) -> None:
    import torch
    from PIL import Image

    from bitcli.checkpoint import load_model

    fp32 = load_model(checkpoint)
    bf16 = load_model(checkpoint, precision="bf16").model
    pixels = torch.stack([fp32.preprocess(Image.open(path).convert("RGB")) for path in photos])
    logits32, _ = run_batches(fp32.model, pixels)
    logits16, _ = run_batches(bf16, pixels)
    peaked32, peaked16 = (HEAD_SCALE * logits32).softmax(-1), (HEAD_SCALE * logits16).softmax(-1)
    agreement = (peaked32.argmax(1) == peaked16.argmax(1)).double().mean().item()
    row(
        f"bf16 vs fp32 on {len(photos)} photos: top-1 agreement, max abs prob diff (head x{HEAD_SCALE:.0f}); "
        "max abs logit diff (own head)",
        f"{agreement:.1%}, {(peaked32 - peaked16).abs().max().item():.3f}; "
        f"{(logits32 - logits16).abs().max().item():.1e}",
    )


def bench_engine_settings(checkpoint: Path, row) -> None:
    """What the engine picks on this machine (bitcli/engine/machine.py)."""
    import torch

    from bitcli.checkpoint import load_model
    from bitcli.engine.machine import read_caches, usable_cpus

    record = load_model(checkpoint).engine
    caches = ", ".join(f"{name} {c['bytes'] // 1024} KiB x{c['shared_by']}" for name, c in read_caches().items())
    row("machine (as the engine reads it)", f"{platform.processor() or platform.machine()}, {usable_cpus()} CPUs, {caches}")
    budget = record.chunk_bytes or 0
    row("engine: slicing budget, threads", f"{budget / 2**20:.0f} MB, {torch.get_num_threads()} threads")
