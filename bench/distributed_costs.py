"""Per-image costs behind docs/distributed.md's estimate for 10 million images on N workers.

    python bench/distributed_costs.py            # about a minute on 2 cores

Measures CPU time (not wall time: the machine is shared), on this machine, one thread each:
  decode   open_image + preprocess to 448x448 (google/bit-50's preprocessing) of JPEG photos,
           shorter side 480-960 px (bench/run.py's photos), exact and with --fast-jpeg
  listing  expand_inputs over a folder (stat + 32-byte sniff per file) and over a path list
           (stat only), then spooling the list to disk (the driver's share per input)
  shards   writing one shard folder of 1024 rows x 2048 float32 (4 fsyncs and a rename), wall
  combine  assembling shard files of 2048-wide float32 rows into one .npy (bytes per second)
The model's forward pass is in docs/speed.md (bench/run.py). Load average printed: the machine
is shared.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))


def per_item(fn, items, rounds: int = 3) -> float:
    """Median over rounds of CPU seconds per item: on a shared machine the CPU time a task takes
    moves far less than its wall time (the work is single-threaded, so CPU time is its cost)."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for item in items:
            fn(item)
        times.append((time.process_time() - start) / len(items))
    return statistics.median(times)


def decode_costs(photos: list[Path]) -> dict[str, float]:
    import torch

    from bitcli.decode import open_image
    from bitcli.preprocess import PreprocessConfig, preprocess
    from checkpoints import BIT_50_PREPROCESSOR

    torch.set_num_threads(1)
    cfg = PreprocessConfig.from_dict(BIT_50_PREPROCESSOR)
    exact = per_item(lambda p: preprocess(open_image(p), cfg), photos)
    fast = per_item(lambda p: preprocess(open_image(p, draft_size=cfg.draft_size()), cfg), photos)
    sizes = [p.stat().st_size for p in photos]
    return {"decode exact, CPU ms": 1000 * exact, "decode fast-jpeg, CPU ms": 1000 * fast, "mean JPEG kB": statistics.mean(sizes) / 1000}


def listing_costs(folder: Path) -> dict[str, float]:
    from bitcli.distributed.shards import spool_inputs
    from bitcli.inputs import expand_inputs

    files = sorted(str(p) for p in folder.iterdir())
    walk = per_item(lambda _: list(expand_inputs([str(folder)])), [None]) / len(files)
    listed = per_item(lambda _: list(expand_inputs(["-"], stdin=io.StringIO("\n".join(files)))), [None]) / len(files)
    with tempfile.TemporaryDirectory() as tmp:
        entries = list(expand_inputs([str(folder)])) * 50
        spool = per_item(lambda _: spool_inputs(entries, Path(tmp) / "in.jsonl", batch_size=8, shard_size=1024), [None]) / len(entries)
    return {"list a folder, CPU us": 1e6 * walk, "list a path list, CPU us": 1e6 * listed, "spool, CPU us": 1e6 * spool}


def write_shard(directory: Path, index: int, split, *, dim: int, paths: list[str], block) -> None:
    """One finished shard, as a `--shard` job's worker writes it (the store's writer, one commit)."""
    from bitcli.distributed.shards import shard_paths
    from bitcli.store import EmbedWriter

    directory.mkdir(parents=True, exist_ok=True)
    extra = {"split": split.to_json(), "shard": index}
    with EmbedWriter(shard_paths(directory, index), dim=dim, fingerprint={}, extra=extra, resume=True) as writer:
        writer.commit(paths, block)
        writer.finish()


def shard_write_seconds(count: int = 20) -> float:
    import numpy as np

    from bitcli.distributed.shards import Split

    rows = 1024
    split = Split(batch_size=8, shard_size=rows, entries=rows * count, inputs="x")
    block, paths = np.ones((rows, 2048), np.float32), [f"/data/photos/img{j:08d}.jpg" for j in range(rows)]
    with tempfile.TemporaryDirectory(dir=ROOT / ".bench") as tmp:
        start = time.perf_counter()
        for i in range(count):
            write_shard(Path(tmp), i, split, dim=2048, paths=paths, block=block)
        return (time.perf_counter() - start) / count


def combine_rate() -> float:
    import numpy as np

    from bitcli.distributed.combine import combine
    from bitcli.distributed.shards import Split
    from bitcli.store import EmbedPaths

    rows, dim, shards = 4096, 2048, 6  # 6 x 32 MiB
    with tempfile.TemporaryDirectory(dir=ROOT / ".bench") as tmp:
        split = Split(batch_size=8, shard_size=rows, entries=rows * shards, inputs="x")
        block = np.ones((rows, dim), np.float32)
        for i in range(shards):
            paths = [f"img{i}_{j}.jpg" for j in range(rows)]
            write_shard(Path(tmp) / "s", i, split, dim=dim, paths=paths, block=block)
        start = time.perf_counter()
        combine([Path(tmp) / "s"], EmbedPaths.for_output(Path(tmp) / "out.npy"))
        seconds = time.perf_counter() - start
    return rows * shards * dim * 4 / seconds


def main() -> None:
    from run import make_photos  # bench/run.py: JPEG photos, shorter side 480-960 px

    folder = make_photos(200)
    photos = sorted(folder.glob("*.jpg"))
    load = os.getloadavg()[0]
    results = {
        **decode_costs(photos),
        **listing_costs(folder),
        "write a shard, wall ms": 1000 * shard_write_seconds(),
        "combine, wall MB/s": combine_rate() / 1e6,
    }
    print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after (1 min), {os.cpu_count()} CPUs")
    for key, value in results.items():
        print(f"  {key:28s} {value:10.2f}")


if __name__ == "__main__":
    main()
