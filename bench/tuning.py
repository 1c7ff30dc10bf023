"""The engine's two tuning choices, measured side by side in one run on this machine.

    python bench/tuning.py               # both parts (about 15 minutes on 2 cores)
    python bench/tuning.py --parts budget
    python bench/tuning.py --parts openmp --images 16

budget   The batch-slicing budget: the fixed one bitcli uses (8x one core's L2,
         bitcli/engine/machine.py) against the one a per-machine calibration would choose (every
         step of the backbone timed on slices of 1, 2 and 4 images, the budget whose slices add up
         fastest; the rule bitcli used before the fixed budget). R50x1 at 448 px, batch 8,
         forward images/s, rounds alternating the two.
openmp   OMP_WAIT_POLICY: OpenMP's default (idle threads spin) against PASSIVE (they sleep) and a
         short spin before sleeping (GOMP_SPINCOUNT=10000), for
         the library (`bitcli.load` + `classify`, batch 1, one process) and the command (`bit
         classify` over a folder, batch 1), each alone, beside one busy process running from the
         start, and beside one that starts after the model has loaded. "command: bit's choice"
         is what `bit` picks itself (no OMP_WAIT_POLICY set).

Run it on a quiet machine: it starts its own busy process where it needs one. It uses the random
google/bit-50 checkpoint and the photos of bench/run.py (under .bench/, made on first use).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CHECKPOINT, ROOT, log, make_checkpoint, make_photos  # noqa: E402

MB = 1024 * 1024
CANDIDATES = (1 * MB, 2 * MB, 4 * MB, 8 * MB, 16 * MB, 32 * MB)
SLICES = (1, 2, 4)
BUSY = [sys.executable, "-c", "while True: pass"]


# -- (a) the slicing budget --------------------------------------------------------------------


def measure_steps(steps, sample) -> list[dict[int, float]]:
    """Seconds per image of each backbone step on slices of 1, 2 and 4 images (after a warm-up)."""
    import torch

    table, x = [], sample
    with torch.inference_mode():
        for step in steps:
            row, out = {}, None
            for size in SLICES:
                step(x[:size])
                start = time.perf_counter()
                out = [step(part) for part in x.split(size)]
                row[size] = (time.perf_counter() - start) / x.shape[0]
            table.append(row)
            x = torch.cat(out)
    return table


def calibrated_budget(backbone, batch: int, side: int, fixed: int) -> int:
    """The candidate budget whose slice sizes at `batch` images add up to the least measured time
    (`fixed` when it is within 2% of that: the timings are noisy)."""
    import torch

    from bitcli.engine.slicing import slice_size, step_activation_bytes

    sample = torch.randn(max(SLICES), 3, side, side, generator=torch.Generator().manual_seed(0))
    table = measure_steps(backbone.steps(), sample.contiguous(memory_format=torch.channels_last))
    per_image = step_activation_bytes(backbone.config, side, side, 4)

    def predicted(budget: int) -> float:
        total = 0.0
        for size, row in zip(per_image, table):
            images = min(slice_size(batch, size, budget), max(row))
            total += row[max(k for k in row if k <= images)]
        return total

    scores = {budget: predicted(budget) for budget in sorted({*CANDIDATES, fixed})}
    for budget, score in scores.items():
        log(f"    predicted seconds per image at {budget / MB:g} MB: {score:.4f}")
    best = min(scores.values())
    return fixed if scores[fixed] <= best * 1.02 else min(scores, key=scores.get)


def bench_budget(args) -> None:
    import torch

    from bitcli.checkpoint import load_model
    from bitcli.engine.machine import slicing_budget

    model = load_model(CHECKPOINT).model
    fixed = slicing_budget()
    chosen = calibrated_budget(model.bit, args.batch, args.side, fixed)
    x = torch.randn(args.batch, 3, args.side, args.side).contiguous(memory_format=torch.channels_last)
    times: dict[int, list[float]] = {fixed: [], chosen: []}
    with torch.inference_mode():
        for budget in times:  # warm-up
            model.bit.chunk_bytes = budget
            model(x)
        for _ in range(args.rounds):
            for budget in times:
                model.bit.chunk_bytes = budget
                start = time.perf_counter()
                model(x)
                times[budget].append(time.perf_counter() - start)
    rate = {budget: args.batch / statistics.median(values) for budget, values in times.items()}
    print(f"| slicing budget, batch {args.batch}, {args.side} px | images/s |")
    print("|---|---|")
    print(f"| fixed (8x L2): {fixed // MB} MB | {rate[fixed]:.2f} |")
    print(f"| calibrated: {chosen // MB} MB | {rate[chosen]:.2f} |")
    print(f"calibrated / fixed: {rate[chosen] / rate[fixed]:.3f} (same budget: 1.000)\n")


# -- (b) OMP_WAIT_POLICY -----------------------------------------------------------------------

LIBRARY = """
import sys, time
import bitcli
paths = sys.argv[2:]
classifier = bitcli.Classifier(bitcli.load(sys.argv[1]), batch_size=1)
list(classifier.classify(paths[:1]))
print("loaded", flush=True)
sys.stdin.readline()
start = time.perf_counter()
list(classifier.classify(paths))
print(len(paths) / (time.perf_counter() - start), flush=True)
"""


def run_library(env: dict, photos: list[str], neighbour: str) -> float:
    """Images/s of the library classifying one photo at a time, with the neighbour as asked."""
    busy = subprocess.Popen(BUSY) if neighbour == "from the start" else None
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", LIBRARY, str(CHECKPOINT), *photos],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert child.stdout.readline().strip() == "loaded"
        if neighbour == "after loading":
            busy = subprocess.Popen(BUSY)
        child.stdin.write("go\n")
        child.stdin.flush()
        rate = float(child.stdout.readline())
        child.wait()
        return rate
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def run_command(env: dict, folder: Path, count: int, neighbour: str) -> float:
    """Images/s of `bit classify FOLDER --batch-size 1` (as `python -m bitcli`), whole process,
    with the neighbour as asked."""
    busy = subprocess.Popen(BUSY) if neighbour == "from the start" else None
    try:
        command = [sys.executable, "-m", "bitcli", "classify", str(folder), "-m", str(CHECKPOINT), "--batch-size", "1", "-q"]
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if neighbour == "after loading":
            time.sleep(3.0)  # about when the model has loaded on the development machine
            busy = subprocess.Popen(BUSY)
        _, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"bit classify exited {child.returncode}: {err[-500:]}")
        return count / (time.perf_counter() - start)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def bench_openmp(args) -> None:
    folder = make_photos(args.images)
    photos = sorted(str(p) for p in folder.glob("*.jpg"))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "BIT_MODEL")}
    base["PYTHONPATH"] = str(ROOT)
    policies = {
        "OpenMP default": {},
        "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
        "short spin (GOMP_SPINCOUNT=10000)": {"GOMP_SPINCOUNT": "10000"},
    }
    neighbours = ("alone", "from the start", "after loading")
    print(f"| OMP_WAIT_POLICY, {args.images} photos, batch 1 | " + " | ".join(neighbours) + " |")
    print("|---|" + "---|" * len(neighbours))
    for policy, extra in policies.items():
        rates = {n: [run_library({**base, **extra}, photos, n) for _ in range(args.repeats)] for n in neighbours}
        print(f"| library, {policy} | " + " | ".join(f"{statistics.median(rates[n]):.2f}" for n in neighbours) + " |")
    # The command: what bit picks itself (alone: OpenMP's default), and PASSIVE always.
    commands = {
        "command: bit's choice": {},
        "command: PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
        "command: short spin": {"GOMP_SPINCOUNT": "10000"},
    }
    for label, extra in commands.items():
        rates = {n: [run_command({**base, **extra}, folder, len(photos), n) for _ in range(args.repeats)] for n in neighbours}
        print(f"| {label} | " + " | ".join(f"{statistics.median(rates[n]):.2f}" for n in neighbours) + " |")
    print("\nimages/s, median of", args.repeats, "runs each; the command's figure includes start-up and loading.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="budget,openmp")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--rounds", type=int, default=7, help="budget: timed rounds of each")
    parser.add_argument("--images", type=int, default=24, help="openmp: photos per run")
    parser.add_argument("--repeats", type=int, default=3, help="openmp: runs per cell")
    args = parser.parse_args()
    make_checkpoint()
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    for part in (p.strip() for p in args.parts.split(",")):
        log(f"== {part}")
        {"budget": bench_budget, "openmp": bench_openmp}[part](args)


if __name__ == "__main__":
    main()
