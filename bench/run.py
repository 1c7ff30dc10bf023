"""bitcli against the transformers reference, side by side in one run, on the same weights.

    python bench/run.py              # everything (about 10 minutes on 2 cores)
    python bench/run.py --quick      # fewer rounds and images (a few minutes)
    python bench/run.py --parts forward --compile

Everything it makes lives under `.bench/` (gitignored): a random checkpoint with the
`google/bit-50` architecture built by transformers (both sides load the same files), a
Hugging Face cache holding it as `google/bit-50` (for the start-up timings, offline), and folders
of JPEG photos made from `sample_images/` by random crops, resizes and flips (all > 448 px).

Parts (`--parts`, comma-separated):
  forward  model forward pass, fp32, 448x448, batch 1 and 8: images/s, max |logits difference|,
           fp32 matmul GFLOP/s of the machine and what bitcli achieves; bf16 (and with --compile,
           torch.compile) reported beside it
  e2e      `bit embed` over a folder vs a straightforward transformers loop (BitImageProcessor +
           BitModel, batch 8, PIL decoding): whole-process wall time, images/s
  startup  `bit --help`; `bit classify one.jpg --format jsonl` with the model cached vs a script
           doing the same with transformers.pipeline("image-classification")
  memory   peak RSS of `bit embed` over N and 10 N images
  accuracy hard images (flat, tiny, faint, dark, text on white) against transformers in float64
           for transformers fp32, bitcli fp32 and bf16; bf16 against fp32 on photos (bench/accuracy.py)

Before timing, what the engine picks on this machine (threads, the slicing budget from the L2
cache, bitcli/engine/machine.py) is printed.

Timings are wall-clock medians over rounds that alternate the two sides, so a change in the
machine's load hits both alike; the table prints the load average too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
CHECKPOINT = WORK / "bit-50-random"
HF_HOME = WORK / "hf_home"
# The commit bitcli pins for google/bit-50 (bitcli/hub/zoo.py): the cache holds the checkpoint under it.
BIT50_COMMIT = "9e9a281aa096247270860f9cda4f68daacca33d0"
BIN = Path(sys.executable).parent
PREPROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 448},
    "resample": 2,
    "do_center_crop": True,
    "crop_size": {"height": 448, "width": 448},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
    "image_processor_type": "BitImageProcessor",
}
HELPERS = Path(__file__).resolve().parent
ROWS: list[tuple[str, str, str, str]] = []  # (measure, bitcli, transformers, ratio) for the table


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def row(measure: str, ours: str, reference: str = "", ratio: str = "") -> None:
    ROWS.append((measure, ours, reference, ratio))
    log(f"  {measure}: {ours} | {reference} | {ratio}")


# ------------------------------------------------------------------------------------- setup


def make_checkpoint() -> Path:
    """A random google/bit-50 (transformers' default BitConfig, 1000 classes), saved once."""
    if (CHECKPOINT / "model.safetensors").is_file():
        return CHECKPOINT
    import torch
    from transformers import BitConfig, BitForImageClassification

    log("making a random bit-50 checkpoint with transformers ...")
    torch.manual_seed(0)
    id2label = {i: f"class {i}" for i in range(1000)}
    config = BitConfig(num_labels=1000, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = BitForImageClassification(config).eval()
    with torch.no_grad():  # move the norms off their identity init, as trained weights are
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    tmp = CHECKPOINT.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    tmp.rename(CHECKPOINT)
    return CHECKPOINT


def make_hf_cache() -> Path:
    """HF_HOME with the checkpoint cached as google/bit-50 (at bitcli's pinned commit and `main`)."""
    repo = HF_HOME / "hub" / "models--google--bit-50"
    snapshot = repo / "snapshots" / BIT50_COMMIT
    if not (snapshot / "model.safetensors").exists():
        snapshot.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
            target = snapshot / name
            if not target.exists():
                os.link(CHECKPOINT / name, target)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(BIT50_COMMIT)
    return HF_HOME


def make_photos(count: int) -> Path:
    """`count` JPEG photos (shorter side 480-960 px) from random crops/resizes/flips of the samples."""
    from PIL import Image, ImageOps

    folder = WORK / f"photos-{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    log(f"making {count} photos in {folder} ...")
    shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = [
        Image.open(p).convert("RGB")
        for p in sorted((ROOT / "sample_images").iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    rng = random.Random(count)
    for index in range(count):
        image = sources[index % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        short = rng.randint(480, 960)
        scale = short / min(cw, ch)
        crop = crop.resize((max(449, round(cw * scale)), max(449, round(ch * scale))), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop.save(tmp / f"photo{index:05d}.jpg", quality=rng.randint(80, 95))
    tmp.rename(folder)
    return folder


# ------------------------------------------------------------------------------------- forward


def time_calls(functions: dict[str, object], rounds: int) -> dict[str, float]:
    """Median wall seconds per call of each function, calling them in turn each round."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for name, fn in functions.items():
        fn()  # warm-up (oneDNN primitive creation, allocator)
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    log("    seconds per call: " + ", ".join(f"{n} {' '.join(f'{t:.2f}' for t in v)}" for n, v in times.items()))
    return {name: statistics.median(values) for name, values in times.items()}


def model_flops(model, height: int, width: int) -> float:
    """Multiply-adds x 2 of every convolution and linear layer for one image."""
    import torch

    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2.0 * k * output.numel()
        elif isinstance(module, torch.nn.Linear):
            total += 2.0 * module.in_features * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, 3, height, width))
    for h in handles:
        h.remove()
    return total


def matmul_gflops() -> tuple[float, float]:
    """(torch.mm fp32 GFLOP/s, oneDNN 1x1-convolution fp32 GFLOP/s) on this machine, best of a few."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = min(_timed(lambda: a @ b) for _ in range(8))
    mm = 2 * n**3 / best / 1e9
    # The same GEMM as a 1x1 convolution on channels-last input: what oneDNN's kernels reach.
    x = torch.randn(1, 1024, 64, 64).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(1024, 1024, 1, bias=False).to(memory_format=torch.channels_last).requires_grad_(False)
    with torch.inference_mode():
        conv(x)
        best = min(_timed(lambda: conv(x)) for _ in range(8))
    onednn = 2 * 1024 * 1024 * 64 * 64 / best / 1e9
    return mm, onednn


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_accuracy(args) -> None:
    from accuracy import bench_bf16_agreement, bench_hard_images

    bench_hard_images(CHECKPOINT, row)
    samples = [p for p in sorted((ROOT / "sample_images").iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    photos = sorted(make_photos(args.images).glob("*.jpg"))[: 24 if args.quick else 48]
    bench_bf16_agreement(CHECKPOINT, samples + photos, row)


def bench_forward(args) -> None:
    import torch
    from transformers import BitForImageClassification

    from bitcli.checkpoint import load_model
    from bitcli.cli.process import before_the_model

    # The process settings the `bit` command makes for itself (thread cap, the allocator keeping
    # freed memory: cli/process.py); the library leaves them to its caller. Both sides get them.
    before_the_model()
    log(f"forward: torch {torch.__version__}, {torch.get_num_threads()} threads")
    reference = BitForImageClassification.from_pretrained(CHECKPOINT).eval()
    variants = {
        "bitcli": load_model(CHECKPOINT).model,
        "bitcli plain": load_model(CHECKPOINT, optimize=False).model,
        "bitcli bf16": load_model(CHECKPOINT, precision="bf16").model,
    }
    compile_seconds = None
    flops = model_flops(variants["bitcli plain"], 448, 448)
    mm, onednn = matmul_gflops()
    row("fp32 matmul, torch.mm 2048^2 (MKL) / oneDNN 1x1 conv", f"{mm:.0f} / {onednn:.0f} GFLOP/s")
    for batch in (1, 8):
        pixels = torch.randn(batch, 3, 448, 448, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            expected = reference(pixels).logits
            if args.compile and compile_seconds is None:
                variants["bitcli compile"] = load_model(CHECKPOINT, compile=True).model
                start = time.perf_counter()
                variants["bitcli compile"](pixels)
                compile_seconds = time.perf_counter() - start
                row("torch.compile: first call (compile) time", f"{compile_seconds:.0f} s")
            diffs = {name: (m(pixels).logits.float() - expected).abs().max().item() for name, m in variants.items()}
            calls = {"transformers": lambda: reference(pixels)}
            calls.update({name: (lambda m=m: m(pixels)) for name, m in variants.items()})
            seconds = time_calls(calls, args.rounds)
        ref_rate = batch / seconds["transformers"]
        row(f"forward 448, batch {batch}: largest abs logit of the reference (scale of the diffs)", "", f"{expected.abs().max().item():.2f}")
        for name in variants:
            rate = batch / seconds[name]
            label = name.replace("bitcli", "").strip() or "fp32 (default)"
            row(
                f"forward 448, batch {batch}, {label}: images/s (max abs logit diff)",
                f"{rate:.2f} ({diffs[name]:.1e})",
                f"{ref_rate:.2f}",
                f"{rate / ref_rate:.2f}x",
            )
        rate = batch / seconds["bitcli"]
        row(f"forward 448, batch {batch}: bitcli achieved GFLOP/s", f"{rate * flops / 1e9:.0f}", f"{ref_rate * flops / 1e9:.0f}")
    row("model GFLOPs per 448x448 image (2 x multiply-adds)", f"{flops / 1e9:.1f}")


# ------------------------------------------------------------------------------------- processes


def run_process(command: list[str], env: dict | None = None, rss: bool = False) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB or nan, stdout) of a child process; raises if it fails.

    rss=True runs it under bench/peak_rss.py (about 30 ms more wall time).
    """
    environment = {**os.environ, **(env or {})}
    environment.pop("BIT_MODEL", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "peak_rss.py"), *command] if rss else command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=environment,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    if not rss:
        return wall, float("nan"), proc.stdout
    peak_kib = int(proc.stderr.strip().splitlines()[-1].partition("=")[2])
    return wall, peak_kib / 1024, proc.stdout


def bit(*arguments: str) -> list[str]:
    return [str(BIN / "bit"), *arguments]


def bench_e2e(args) -> None:
    photos = make_photos(args.images)
    out = WORK / "out"
    out.mkdir(exist_ok=True)
    ours_cmd = bit("embed", str(photos), "-o", str(out / "bit.npy"), "--model", str(CHECKPOINT), "--overwrite", "--quiet")
    ref_cmd = [sys.executable, str(HELPERS / "hf_embed.py"), str(CHECKPOINT), str(photos), str(out / "hf.npy")]
    walls: dict[str, list[float]] = {"bit": [], "hf": []}
    rss, ref_rss = [], []
    for _ in range(args.e2e_rounds):
        wall, peak, _ = run_process(ours_cmd, rss=True)
        walls["bit"].append(wall)
        rss.append(peak)
        wall, peak, _ = run_process(ref_cmd, rss=True)
        walls["hf"].append(wall)
        ref_rss.append(peak)
    ours, ref = statistics.median(walls["bit"]), statistics.median(walls["hf"])
    import numpy as np

    a, b = np.load(out / "bit.npy"), np.load(out / "hf.npy")
    diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("nan")
    scale = float(np.abs(b).max())
    row(
        f"end to end, {args.images} JPEGs, batch 8: images/s (whole process)",
        f"{args.images / ours:.2f} ({ours:.0f} s)",
        f"{args.images / ref:.2f} ({ref:.0f} s)",
        f"{ref / ours:.2f}x",
    )
    row("end to end: max abs difference of the embeddings (largest abs value)", f"{diff:.1e}", f"({scale:.2f})")
    row(f"peak RSS over {args.images} images", f"{max(rss):.0f} MiB", f"{max(ref_rss):.0f} MiB")
    args.rss_small = max(rss)


def bench_startup(args) -> None:
    make_hf_cache()
    # As a wheel install does (and as `./dev` does for the editable one): without bytecode, and
    # with PYTHONDONTWRITEBYTECODE set as on this workplace's machines, every start compiles
    # bitcli's sources again (~0.3 s). transformers' files were compiled by pip.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "bitcli")], check=True, capture_output=True)
    one = make_photos(args.images) / "photo00000.jpg"
    env = {"HF_HOME": str(HF_HOME), "HF_HUB_OFFLINE": "1"}
    help_times = [run_process(bit("--help"), env)[0] for _ in range(5)]
    row("start-up: bit --help, wall", f"{statistics.median(help_times):.2f} s")
    ours_cmd = bit("classify", str(one), "--format", "jsonl")
    ref_cmd = [sys.executable, str(HELPERS / "hf_classify.py"), str(one)]
    ours_t, ref_t = [], []
    for _ in range(args.startup_rounds):
        ours_t.append(run_process(ours_cmd, env)[0])
        ref_t.append(run_process(ref_cmd, env)[0])
    ours, ref = statistics.median(ours_t), statistics.median(ref_t)
    row(
        "start-up: classify one JPEG, model cached, wall (incl. interpreter)",
        f"{ours:.2f} s",
        f"{ref:.2f} s (pipeline)",
        f"{ref / ours:.2f}x",
    )


def bench_memory(args) -> None:
    large = make_photos(args.images * 10)
    out = WORK / "out"
    out.mkdir(exist_ok=True)
    if getattr(args, "rss_small", None) is None:
        small = make_photos(args.images)
        _, args.rss_small, _ = run_process(
            bit("embed", str(small), "-o", str(out / "small.npy"), "--model", str(CHECKPOINT), "--overwrite", "--quiet"),
            rss=True,
        )
    wall, peak, _ = run_process(
        bit("embed", str(large), "-o", str(out / "large.npy"), "--model", str(CHECKPOINT), "--overwrite", "--quiet"),
        rss=True,
    )
    row(
        f"peak RSS, bit embed over {args.images * 10} vs {args.images} images",
        f"{peak:.0f} vs {args.rss_small:.0f} MiB",
        "",
        f"{peak / args.rss_small:.2f}x ({args.images * 10 / wall:.2f} img/s)",
    )


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and images (50 / 500)")
    parser.add_argument("--parts", default="forward,e2e,startup,memory,accuracy")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (about a minute to compile)")
    args = parser.parse_args()
    args.rounds = 3 if args.quick else 5
    args.e2e_rounds = 1 if args.quick else 2
    args.startup_rounds = 3 if args.quick else 5
    args.images = 50 if args.quick else 200
    args.rss_small = None
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    WORK.mkdir(exist_ok=True)
    make_checkpoint()
    load_before = os.getloadavg()
    started = time.time()
    if {"forward", "e2e", "memory"} & set(parts):
        from accuracy import bench_engine_settings

        log("== engine settings")
        bench_engine_settings(CHECKPOINT, row)
    for part in parts:
        log(f"== {part}")
        {
            "forward": bench_forward,
            "e2e": bench_e2e,
            "startup": bench_startup,
            "memory": bench_memory,
            "accuracy": bench_accuracy,
        }[part](args)
    print_table(args, load_before, time.time() - started)


def print_table(args, load_before, seconds) -> None:
    import torch

    load_after = os.getloadavg()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"python bench/run.py{' --quick' if args.quick else ''} --parts {args.parts}{' --compile' if args.compile else ''}")
    print(
        f"{platform.processor() or platform.machine()}, {cpus} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; {seconds / 60:.0f} min"
    )
    print()
    print("| measure | bitcli | transformers | bitcli advantage |")
    print("|---|---|---|---|")
    for measure, ours, reference, ratio in ROWS:
        print(f"| {measure} | {ours} | {reference} | {ratio} |")


if __name__ == "__main__":
    main()
