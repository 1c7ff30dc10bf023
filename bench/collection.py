"""Figures for `bit search` / `bit dedup` on synthetic embeddings (issue 14).

    python bench/collection.py                          # everything: ~4 GB on disk, ~15 minutes on 2 cores
    python bench/collection.py --parts search,dedup     # a subset
    python bench/collection.py --rows 50000 --dedup-rows 5000 --parts search,dedup,ann   # a quick check

Parts (`--parts`, comma-separated):
  search  exact search of 10 queries in ROWS x DIM float16 on disk (default 1,000,000 x 2048, 4 GB):
          wall time and peak RSS, once with the file in the page cache and once after dropping
          it from the cache (posix_fadvise DONTNEED), so the second run reads from disk
  dedup   DEDUP_ROWS x DIM float32 (default 100,000 x 2048) with PLANTED near-duplicate pairs
          (cosine 0.92-0.99) among rows whose pairwise cosine is about 0.5: wall time, peak RSS,
          the share of planted pairs found in one group at the default threshold, extra groups;
          once per --dedup-methods (auto: the bf16 pre-filter where the CPU has bf16; float32)
  ann     the approximate index over the search array (faiss IVF + 4-bit PQ): build time and peak
          RSS, query latency (one query at a time, exact re-scoring included), recall@10 against
          exact search on 100 queries
  update  `bit embed --update` of a 10,000-image embedding after adding 100 photos, against
          `bit embed` of the 100 photos alone (a random google/bit-50 checkpoint, as bench/run.py
          makes it; 448 px photos). The 10,000 old images are small files that are only stat'ed;
          their embedding is written by the store itself with random rows (what --update reads is
          the files, the manifest and the sidecar, not the values). Whole-process wall times,
          alternating, medians of --rounds.

Rows are drawn around 1,000 random centres (unit-variance noise around unit-variance centres),
so that neighbours are meaningful; queries are new draws from the same distribution. Each
measurement runs in a fresh process and reports that process's peak resident set (VmHWM),
which counts only what the process holds, not the kernel's page cache. Everything lives under
`.bench/collection/` (gitignored) and is deleted at the end unless `--keep`. The load average
is printed before and after each part: the machine is shared, timings move with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench" / "collection"
CHUNK = 16384  # rows generated at a time
CENTRES = 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# -- data ------------------------------------------------------------------------------------


def write_array(path: Path, rows: int, dim: int, dtype: str, seed: int, planted: int = 0) -> None:
    """A clustered [rows, dim] array streamed to a .npy (memory: one chunk), and its manifest.

    With `planted`, rows 2i+1 (i < planted) are near-copies of rows 2i at cosine 0.92-0.99."""
    if path.exists() and path.with_suffix(".paths.txt").exists():
        return
    log(f"writing {path.name}: {rows:,} x {dim} {dtype} ...")
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((CENTRES, dim), dtype=np.float32)
    # Written by `write` calls, as bitcli writes its arrays: the kernel then caches the file in large
    # folios. (A memory-mapped write leaves it in 4 KiB pages, which makes a pass over it ~3x slower.)
    with open(path.with_suffix(".tmp.npy"), "wb") as out:
        np.lib.format.write_array_header_2_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (rows, dim)})
        for first in range(0, rows, CHUNK):
            n = min(CHUNK, rows - first)
            block = centres[rng.integers(0, CENTRES, n)] + rng.standard_normal((n, dim), dtype=np.float32)
            if planted:
                block = _plant(block, first, planted, rng)
            out.write(block.astype(dtype).tobytes())
    os.replace(path.with_suffix(".tmp.npy"), path)
    path.with_suffix(".paths.txt").write_text("".join(f"photos/{i:07d}.jpg\n" for i in range(rows)))


def _plant(block: np.ndarray, first: int, planted: int, rng: np.random.Generator) -> np.ndarray:
    """y = x + s * noise with s in [0.2, 0.6]: cosine ~ 1 / sqrt(1 + s^2 / 2), 0.99 ... 0.92."""
    for local in range(0 if first % 2 == 0 else 1, len(block) - 1, 2):
        row = first + local
        if row // 2 >= planted:
            break
        s = rng.uniform(0.2, 0.6)
        block[local + 1] = block[local] + s * rng.standard_normal(block.shape[1], dtype=np.float32)
    return block


def queries(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((CENTRES, dim), dtype=np.float32)
    return centres[rng.integers(0, CENTRES, count)] + rng.standard_normal((count, dim), dtype=np.float32)


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- measurements (each in a fresh process: `bench/collection.py _child PART ARGS`) -----------


def child(part: str, args: list[str], code: Path = ROOT) -> dict:
    """Run one measurement in a new process (with bitcli from `code`: a checkout); its JSON result."""
    cmd = ["nice", "-n", "5", sys.executable, __file__, "_child", part, *args]
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout)
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child_search(array: str, nqueries: str) -> dict:
    from bitcli.collection import open_index, search

    index = open_index(array)
    q = queries(int(nqueries), index.dim, seed=7)
    started = time.perf_counter()
    try:  # imported by the first search of a big collection: timed apart (the whole process counts it)
        import torch  # noqa: F401
    except ImportError:
        pass
    torch_import_s = time.perf_counter() - started
    started = time.perf_counter()
    outcome = search(index, q, 10, exact=True)
    wall = time.perf_counter() - started
    rows = [[m.row for m in found] for found in outcome.matches]
    return {"search_s": round(wall, 3), "torch_import_s": round(torch_import_s, 2), "peak_rss_mib": peak_rss_mib(),
            "method": outcome.method, "rows": rows}


def child_faiss_flat(array: str, nqueries: str) -> dict:
    """faiss IndexFlatIP (exact inner product) on the same rows, normalised float32 in RAM."""
    import faiss

    started = time.perf_counter()
    rows = np.load(array, mmap_mode="r")
    flat = faiss.IndexFlatIP(rows.shape[1])
    for first in range(0, len(rows), CHUNK):
        block = np.asarray(rows[first : first + CHUNK], dtype=np.float32)
        faiss.normalize_L2(block)
        flat.add(block)
    load_s = time.perf_counter() - started
    q = queries(int(nqueries), rows.shape[1], seed=7).astype(np.float32)
    faiss.normalize_L2(q)
    started = time.perf_counter()
    _, found = flat.search(q, 10)
    return {"search_s": round(time.perf_counter() - started, 3), "load_and_normalise_s": round(load_s, 1),
            "peak_rss_mib": peak_rss_mib(), "rows": found.tolist()}


def child_dedup(array: str, planted: str, method: str) -> dict:
    from bitcli.collection import DEFAULT_THRESHOLD, find_groups, open_index
    from bitcli.collection.dedup import chosen_method

    index = open_index(array)
    started = time.perf_counter()
    groups = find_groups(index, DEFAULT_THRESHOLD, method=method)
    wall = time.perf_counter() - started
    digest = hashlib.sha256(json.dumps([g.rows for g in groups]).encode()).hexdigest()[:16]
    group_of = {row: g.group for g in groups for row in g.rows}
    found = sum(1 for i in range(int(planted)) if group_of.get(2 * i) is not None and group_of.get(2 * i) == group_of.get(2 * i + 1))
    extra = sum(1 for g in groups if not any(r < 2 * int(planted) for r in g.rows))
    return {
        "dedup_s": round(wall, 1),
        "peak_rss_mib": peak_rss_mib(),
        "planted_found": found,
        "planted": int(planted),
        "groups": len(groups),
        "groups_without_planted_pair": extra,
        "largest_group": max((len(g.rows) for g in groups), default=0),
        "threshold": DEFAULT_THRESHOLD,
        "method": chosen_method(index, method),
        "groups_sha256": digest,  # equal digests: the same groups
    }


def child_ann_build(array: str) -> dict:
    from bitcli.collection import ann, open_index

    index = open_index(array)
    started = time.perf_counter()
    built = ann.build(index)
    return {"build_s": round(time.perf_counter() - started, 1), "peak_rss_mib": peak_rss_mib(), "factory": built.info["factory"]}


def child_ann_query(array: str, nqueries: str) -> dict:
    from bitcli.collection import ann, exact_search, open_index

    index = open_index(array)
    q = queries(int(nqueries), index.dim, seed=11)
    found, notice = ann.load_fresh(index)
    assert found is not None, notice
    found.search(index, q[:1], 10)  # first touch of the mapped lists
    latencies, approx = [], []
    for j in range(len(q)):
        started = time.perf_counter()
        approx += found.search(index, q[j : j + 1], 10)
        latencies.append(time.perf_counter() - started)
    peak = peak_rss_mib()
    started = time.perf_counter()
    exact = exact_search(index, q, 10)
    exact_s = time.perf_counter() - started
    return {
        "query_ms_median": round(1000 * float(np.median(latencies)), 2),
        "query_ms_p90": round(1000 * float(np.percentile(latencies, 90)), 2),
        "recall_at_10": round(ann.recall_at_k(exact, approx), 4),
        "peak_rss_mib_ann_queries": peak,
        "exact_s_for_all_queries": round(exact_s, 1),
        "queries": len(q),
        "name": found.name,
    }


def child_update_seed(folder: str, checkpoint: str) -> dict:
    """photos.npy & co. for photos/old, as `bit embed` writes them, with random rows (cwd: the folder's parent)."""
    from bitcli.inputs import expand_inputs
    from bitcli.pipeline import Embedder
    from bitcli.store import EmbedPaths, EmbedWriter
    from bitcli.store.metadata import identify_all

    embedder = Embedder(checkpoint, device="cpu")
    items = [item.path for item in expand_inputs([folder])]
    identities = identify_all(items)
    writer = EmbedWriter(
        EmbedPaths.for_output(Path("photos.npy")), dim=embedder.feature_dim,
        fingerprint={**embedder.fingerprint(), "dtype": "float32"}, inputs=items, overwrite=True,
    )
    rng = np.random.default_rng(0)
    for first in range(0, len(items), 1000):
        batch = items[first : first + 1000]
        writer.commit(batch, rng.random((len(batch), embedder.feature_dim), dtype=np.float32), identities=[identities[p] for p in batch])
    writer.finish()
    return {"rows": len(items)}


CHILDREN = {
    "faiss_flat": child_faiss_flat,
    "search": child_search, "dedup": child_dedup, "ann_build": child_ann_build, "ann_query": child_ann_query,
    "update_seed": child_update_seed,
}


def bench_update(args: argparse.Namespace) -> dict:
    """Wall time of `bit embed --update` (old + new) against `bit embed` of the new images alone."""
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as benchrun  # bench/run.py: the random google/bit-50 checkpoint and the photos

    checkpoint = benchrun.make_checkpoint()
    photos = benchrun.make_photos(args.new)
    base = WORK / "update"
    old, new = base / "photos" / "old", base / "photos" / "new"
    old.mkdir(parents=True, exist_ok=True)
    new.mkdir(parents=True, exist_ok=True)
    tiny = _tiny_jpeg()
    for i in range(args.old):
        (old / f"{i:05d}.jpg").write_bytes(tiny)
    for photo in sorted(photos.glob("*.jpg")):
        if not (new / photo.name).exists():
            os.link(photo, new / photo.name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    seed = [sys.executable, __file__, "_child", "update_seed", "photos/old", str(checkpoint)]
    subprocess.run(["nice", "-n", "5", *seed], check=True, cwd=base, env=env, capture_output=True)
    pristine = base / "pristine"
    pristine.mkdir(exist_ok=True)
    for name in ("photos.npy", "photos.paths.txt", "photos.meta.json", "photos.files.jsonl"):
        shutil.copy2(base / name, pristine / name)
    bit = ["nice", "-n", "5", sys.executable, "-m", "bitcli", "embed", "-m", str(checkpoint), "-q"]
    times: dict[str, list[float]] = {"fresh": [], "update": []}
    for _ in range(args.rounds):
        started = time.perf_counter()
        subprocess.run([*bit, "photos/new", "-o", "fresh.npy", "--overwrite"], check=True, cwd=base, env=env)
        times["fresh"].append(time.perf_counter() - started)
        for name in os.listdir(pristine):
            shutil.copy2(pristine / name, base / name)
        started = time.perf_counter()
        subprocess.run([*bit, "photos", "-o", "photos.npy", "--update"], check=True, cwd=base, env=env)
        times["update"].append(time.perf_counter() - started)
    rows = len((base / "photos.paths.txt").read_text().splitlines())
    # What the rest costs: one old file gone, nothing to embed (the model still loads), and
    # nothing changed at all (`is up to date`: the plan only).
    for name in os.listdir(pristine):
        shutil.copy2(pristine / name, base / name)
    (old / "00000.jpg").rename(base / "aside.jpg")
    started = time.perf_counter()
    subprocess.run([*bit, "photos/old", "-o", "photos.npy", "--update"], check=True, cwd=base, env=env)
    removed_only = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*bit, "photos/old", "-o", "photos.npy", "--update"], check=True, cwd=base, env=env)
    up_to_date = time.perf_counter() - started
    fresh, update = statistics.median(times["fresh"]), statistics.median(times["update"])
    return {
        "old": args.old, "new": args.new, "rows_after": rows, "fresh_s": round(fresh, 1), "update_s": round(update, 1),
        "ratio": round(update / fresh, 3), "rounds": {k: [round(t, 1) for t in v] for k, v in times.items()},
        "one_removed_nothing_embedded_s": round(removed_only, 1), "up_to_date_s": round(up_to_date, 1),
    }


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 80, 40)).save(buf, format="JPEG")
    return buf.getvalue()


# -- driver -----------------------------------------------------------------------------------


def bench_search(args: argparse.Namespace, array: Path) -> dict:
    """First use (computes and writes the row norms), then warm runs side by side: bitcli's exact
    search in-process and as a whole `bit search` process, faiss IndexFlatIP, bitcli before."""
    first = child("search", [str(array), "10"])
    out: dict = {"first_use": {k: v for k, v in first.items() if k != "rows"}}
    runs: dict[str, list[dict]] = {"bitcli": [], "bit_search_process": [], "faiss_flat": [], "before": []}
    manifest = array.with_suffix(".paths.txt").read_text().splitlines()
    by_path = [manifest[i] for i in range(0, len(manifest), len(manifest) // 10)][:10]
    for _ in range(args.repeats):
        runs["bitcli"].append(child("search", [str(array), "10"]))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from bitcli.cli import main; sys.exit(main())", "search", str(array), *by_path, "-k", "10", "-f", "jsonl", "--exact"],
                       check=True, capture_output=True, cwd=array.parent, env={**os.environ, "PYTHONPATH": str(ROOT)})
        runs["bit_search_process"].append({"process_wall_s": round(time.perf_counter() - started, 2)})
        if args.before:
            runs["before"].append(child("search", [str(array), "10"], code=args.before))
    try:
        import faiss  # noqa: F401

        runs["faiss_flat"].append(child("faiss_flat", [str(array), "10"]))
    except ImportError:
        pass
    reference = runs["bitcli"][0]["rows"]
    for name, measured in runs.items():
        if not measured:
            continue
        best = min(measured, key=lambda r: r.get("search_s", r["process_wall_s"]))
        if "rows" in best:
            best["same_top10_as_bitcli"] = sum(len(set(a) & set(b)) for a, b in zip(best.pop("rows"), reference)) / (10 * len(reference))
        best["runs"] = [r.get("search_s", r["process_wall_s"]) for r in measured]
        out[name] = best
    out["load_after"] = load()
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(json.dumps(CHILDREN[sys.argv[2]](*sys.argv[3:])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="search,dedup,ann,update")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dedup-rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--planted", type=int, default=1000, help="near-duplicate pairs planted in the dedup array")
    parser.add_argument("--dedup-methods", default="auto,float32", help="auto (bf16 pre-filter where native), float32")
    parser.add_argument("--keep", action="store_true", help="keep the arrays under .bench/collection/")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier bitcli to measure side by side (search, dedup)")
    parser.add_argument("--repeats", type=int, default=3, help="search: warm runs of each (the best is reported)")
    parser.add_argument("--old", type=int, default=10_000, help="update: images already embedded")
    parser.add_argument("--new", type=int, default=100, help="update: images added")
    parser.add_argument("--rounds", type=int, default=2, help="update: rounds of the two runs")
    args = parser.parse_args()
    parts = args.parts.split(",")
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_start": load()}, "args": vars(args)}
    search_array = WORK / f"search-{args.rows}x{args.dim}.npy"
    try:
        if "search" in parts or "ann" in parts:
            write_array(search_array, args.rows, args.dim, "float16", seed=1)
        if "search" in parts:
            log(f"search (load {load()}) ...")
            results["search"] = bench_search(args, search_array)
            log(json.dumps(results["search"]))
        if "dedup" in parts:
            dedup_array = WORK / f"dedup-{args.dedup_rows}x{args.dim}.npy"
            write_array(dedup_array, args.dedup_rows, args.dim, "float32", seed=2, planted=args.planted)
            log(f"dedup (load {load()}) ...")
            norms_first_use = child("dedup", [str(dedup_array), "0", "float32"])  # writes the row norms
            results["dedup_first_use_s"] = norms_first_use["dedup_s"]
            for method in args.dedup_methods.split(","):
                results[f"dedup_{method}"] = {**child("dedup", [str(dedup_array), str(args.planted), method]), "load_after": load()}
                log(json.dumps(results[f"dedup_{method}"]))
            if args.before:
                results["dedup_before"] = {**child("dedup", [str(dedup_array), str(args.planted), "auto"], code=args.before), "load_after": load()}
                log(json.dumps(results["dedup_before"]))
        if "ann" in parts:
            log(f"ann build (load {load()}) ...")
            build = child("ann_build", [str(search_array)])
            query = child("ann_query", [str(search_array), "100"])
            results["ann"] = {"build": build, "query": query, "load_after": load()}
            log(json.dumps(results["ann"]))
        if "update" in parts:
            log(f"update (load {load()}) ...")
            results["update"] = {**bench_update(args), "load_after": load()}
            log(json.dumps(results["update"]))
    finally:
        results["machine"]["load_end"] = load()
        print(json.dumps(results, indent=1, default=str))
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
