"""What `--engine ray` costs on one machine: 500 images, the tests' tiny model, local vs Ray.

    python bench/ray_overhead.py                 # 500 images, 3 rounds, shard size 64
    python bench/ray_overhead.py --images 200 --rounds 1

Everything lives under `.bench/ray/` (gitignored). Three ways to embed the same folder:
  local      `python -m bitcli embed DIR -o OUT.npy` (the whole process), with 2 threads (the
             default here) and with --threads 1 (the thread count of each Ray worker below)
  ray cold   a fresh process that imports Ray, starts a local 2-CPU cluster, runs the shards on
             2 single-thread workers, combines, and stops the cluster
  ray warm   the same run on a cluster that is already up (the process imported Ray and
             connected before the clock starts): what each run pays beyond the cluster itself
and, inside the cold run, where the time goes (import, cluster start, listing, worker start +
model load + shards, combine, shutdown). Wall-clock medians, and the CPU seconds the process
and the children it waited for used (getrusage), which a busy machine inflates less; the load
average is printed because this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench" / "ray"

DRIVER = r"""
import json, sys, time
t0 = time.perf_counter()
marks = {}
import ray
marks["import ray"] = time.perf_counter() - t0
warm = sys.argv[4] == "warm"
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
marks["start the cluster"] = time.perf_counter() - t0
from pathlib import Path
from bitcli.distributed import EmbedJob, RayOptions, embed_on_ray
from bitcli.store import EmbedPaths
from bitcli.inputs import expand_inputs
from bitcli.pipeline import RunOptions
if warm:
    t0 = time.perf_counter()
    marks = {}
seen = []
def progress(state):
    now = time.perf_counter() - t0
    if not seen:
        marks["list the inputs"] = now
    if state.shards_done == state.shards_total:
        marks["workers start, load the model, run the shards"] = now
    seen.append(now)
job = EmbedJob(sys.argv[2], RunOptions(batch_size=8), threads=1)
embed_on_ray(expand_inputs([sys.argv[1]]), EmbedPaths.for_output(Path(sys.argv[3])), job,
             RayOptions(workers=2, shard_size=int(sys.argv[5])), overwrite=True, progress=progress)
marks["combine"] = time.perf_counter() - t0
ray.shutdown()
marks["stop the cluster"] = time.perf_counter() - t0
print(json.dumps(marks))
"""


def prepare(images: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor
    from clihelpers import make_images

    ckpt, photos = WORK / "tiny", WORK / f"photos{images}"
    if not ckpt.exists():
        save_reference_checkpoint(ckpt, preprocessor=tiny_preprocessor(32), **TINY)
    if not photos.exists():
        make_images(photos, images)
    return ckpt, photos


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, the process and the children it waited for), stdout."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=64)
    args = parser.parse_args()
    ckpt, photos = prepare(args.images)
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    runs: dict[str, list[tuple[float, float]]] = {"local, 2 threads": [], "local, 1 thread": [], "ray, cold": [], "ray, warm": []}
    marks = []
    for _ in range(args.rounds):  # alternate, so a change in the machine's load hits all alike
        cmd = [sys.executable, "-m", "bitcli", "embed", str(photos), "-o", str(out / "local.npy"), "-m", str(ckpt), "-q", "--overwrite"]
        runs["local, 2 threads"].append(timed(cmd)[:2])
        runs["local, 1 thread"].append(timed([*cmd, "--threads", "1"])[:2])
        for mode in ("cold", "warm"):
            wall, cpu, stdout = timed([sys.executable, "-c", DRIVER, str(photos), str(ckpt), str(out / f"{mode}.npy"), mode, str(args.shard_size)])
            if mode == "cold":
                marks.append(json.loads(stdout))
            else:  # the run only, without the cluster's start and stop
                wall = json.loads(stdout)["combine"]
            runs[f"ray, {mode}"].append((wall, cpu))
    load_after = os.getloadavg()
    med = statistics.median
    base = med(w for w, _ in runs["local, 1 thread"])
    print(f"{args.images} images, tiny model (32 px), batch 8, shards of {args.shard_size}; medians of {args.rounds} rounds")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min), on {os.cpu_count()} CPUs")
    print(f"{'':34s} {'wall':>8s} {'vs local 1 thread':>18s} {'CPU s':>8s}")
    for name, values in runs.items():
        wall = med(w for w, _ in values)
        print(f"{name:34s} {wall:7.1f}s {wall / base:17.1f}x {med(c for _, c in values):7.1f}s")
    print("(ray, warm: the run on a cluster already up, wall of the run only; its CPU column is the whole process)")
    previous = 0.0
    print("where a cold run's time goes (median of the cumulative marks):")
    for key in marks[0]:
        at = med(m[key] for m in marks)
        print(f"  {key:48s} {at - previous:6.1f} s")
        previous = at


if __name__ == "__main__":
    main()
