"""What `--engine ray` costs on one machine: 500 images, the tests' tiny model, local vs Ray.

    python bench/ray_overhead.py                 # 500 images, 3 rounds, shard size 64
    python bench/ray_overhead.py --images 200 --rounds 1

Everything lives under `.bench/ray/` (gitignored). Three ways to embed the same folder:
  local      `python -m bitcli embed DIR -o OUT.npy` (the whole process, 2 threads)
  ray cold   a fresh process that imports Ray, starts a local 2-CPU cluster, runs the shards on
             2 single-thread workers, combines, and stops the cluster
  ray warm   the same run on a cluster that is already up (the process imported Ray and
             connected before the clock starts): what each run pays beyond the cluster itself
and, inside the cold run, where the time goes (import, cluster start, listing, worker start +
model load + shards, combine, shutdown). Wall-clock medians; the load average is printed
because this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
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


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


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
    local, cold, warm, marks = [], [], [], []
    for _ in range(args.rounds):  # alternate, so a change in the machine's load hits all alike
        cmd = [sys.executable, "-m", "bitcli", "embed", str(photos), "-o", str(out / "local.npy"), "-m", str(ckpt), "-q", "--overwrite"]
        local.append(timed(cmd)[0])
        for mode, into in (("cold", cold), ("warm", warm)):
            seconds, stdout = timed([sys.executable, "-c", DRIVER, str(photos), str(ckpt), str(out / f"{mode}.npy"), mode, str(args.shard_size)])
            into.append(seconds if mode == "cold" else json.loads(stdout)["combine"])
            if mode == "cold":
                marks.append(json.loads(stdout))
    load_after = os.getloadavg()
    med = statistics.median
    print(f"{args.images} images, tiny model (32 px), batch 8, shards of {args.shard_size}; medians of {args.rounds} rounds")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min), on {os.cpu_count()} CPUs")
    print(f"local (whole process):            {med(local):6.1f} s")
    print(f"ray, cold (whole process):        {med(cold):6.1f} s   ({med(cold) / med(local):.1f}x local)")
    print(f"ray, warm (cluster already up):   {med(warm):6.1f} s   ({med(warm) / med(local):.1f}x local)")
    previous = 0.0
    print("where a cold run's time goes (median of the cumulative marks):")
    for key in marks[0]:
        at = med(m[key] for m in marks)
        print(f"  {key:48s} {at - previous:6.1f} s")
        previous = at


if __name__ == "__main__":
    main()
