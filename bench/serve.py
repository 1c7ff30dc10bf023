"""`bit serve` against the commands, side by side in one run, on the same weights and images.

    python bench/serve.py [--rounds 5] [--clients 16] [--per-client 4]

Uses bench/run.py's random google/bit-50 checkpoint (cached as google/bit-50 in `.bench/hf_home`,
offline) and its photos. Reports, as JSON on stdout:
- one image: a cold `bit classify photo.jpg` (whole process) against `bit classify photo.jpg
  --server URL` with the server warm (whole client process): medians over the rounds, alternated;
- concurrency: `bit embed` over clients x per-client photos (whole process) against `locust
  --headless` with `clients` users, each POSTing its `per-client` photos to /v1/embed once:
  total wall (first request to last answer, from locust's own stats) and its p50 / p99 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import run as benchrun  # noqa: E402

LOCUSTFILE = '''
import json
import os
import time
from pathlib import Path
from locust import HttpUser, task, constant
from locust.exception import StopUser

PHOTOS = sorted(Path(os.environ["BENCH_PHOTOS"]).glob("*.jpg"))
PER = int(os.environ["BENCH_PER_CLIENT"])
NEXT = iter(range(10**6))
SPAN = {"first": None, "last": None, "done": 0}


class Client(HttpUser):
    wait_time = constant(0)

    @task
    def embed(self):
        start = next(NEXT) * PER
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in PHOTOS[start:start + PER]]
        began = time.time()
        SPAN["first"] = began if SPAN["first"] is None else min(SPAN["first"], began)
        with self.client.post("/v1/embed", files=files, catch_response=True, name="/v1/embed") as r:
            if r.status_code != 200 or len(r.json()["results"]) != PER:
                r.failure(f"status {r.status_code}")
        SPAN["last"] = time.time()
        SPAN["done"] += 1
        if SPAN["done"] >= self.environment.parsed_options.num_users:
            Path(os.environ["BENCH_SPAN"]).write_text(json.dumps(SPAN))
            self.environment.runner.quit()
        raise StopUser()
'''


def percentiles(text: str) -> dict:
    """The /v1/embed row of locust's printed percentile table: {"50%": ms, ..., "requests": n}."""
    header = next(line for line in text.splitlines() if line.lstrip().startswith("Type") and "50%" in line)
    names = header.split()[2:]
    row = [line for line in text.splitlines() if "/v1/embed" in line][-1].split()
    values = row[2:]
    table = dict(zip(names, values))
    return {"50%": float(table["50%"]), "99%": float(table["99%"]), "requests": int(table["# reqs"] if "# reqs" in table else values[-1])}


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=4)
    args = parser.parse_args()

    benchrun.make_checkpoint()
    env = {**os.environ, "HF_HOME": str(benchrun.make_hf_cache()), "HF_HUB_OFFLINE": "1"}
    env.pop("BIT_MODEL", None)
    total = args.clients * args.per_client
    photos = benchrun.make_photos(total)
    one = sorted(photos.glob("*.jpg"))[0]
    bit = [sys.executable, "-m", "bitcli"]

    server = subprocess.Popen([*bit, "serve", "-m", "google/bit-50", "--port", "0", "--max-batch", "16"],
                              env=env, stderr=subprocess.PIPE, text=True)
    url = None
    while url is None:
        line = server.stderr.readline()
        if not line:
            raise SystemExit("bit serve ended before it was ready")
        found = re.search(r"on (http://\S+) ", line)
        url = found.group(1) if found else None
    figures: dict = {"machine": os.uname().machine, "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        subprocess.run([*bit, "classify", str(one), "--server", url, "-f", "jsonl"], env=env, check=True, capture_output=True)
        cold, warm = [], []
        for _ in range(args.rounds):
            cold.append(timed([*bit, "classify", str(one), "-f", "jsonl"], env))
            warm.append(timed([*bit, "classify", str(one), "--server", url, "-f", "jsonl"], env))
        figures["one_image"] = {"cold_classify_s": round(statistics.median(cold), 3),
                                "server_client_s": round(statistics.median(warm), 3),
                                "speedup": round(statistics.median(cold) / statistics.median(warm), 1)}

        with tempfile.TemporaryDirectory() as work:
            out = Path(work)
            embed_s = timed([*bit, "embed", str(photos), "-o", str(out / "e.npy")], env)
            (out / "locustfile.py").write_text(LOCUSTFILE)
            locust_env = {**env, "BENCH_PHOTOS": str(photos), "BENCH_PER_CLIENT": str(args.per_client),
                          "BENCH_SPAN": str(out / "span.json")}
            start = time.perf_counter()
            done = subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(out / "locustfile.py"), "--headless",
                                   "-u", str(args.clients), "-r", "1000", "--host", url, "--only-summary", "-t", "600s"],
                                  env=locust_env, check=False, capture_output=True, text=True, cwd=work)
            locust_wall = time.perf_counter() - start
            summary = percentiles(done.stdout + done.stderr)
            span = json.loads((out / "span.json").read_text())
            figures["concurrency"] = {
                "clients": args.clients, "images": total, "bit_embed_s": round(embed_s, 2),
                "requests": summary["requests"], "p50_ms": summary["50%"], "p99_ms": summary["99%"],
                "served_wall_s": round(span["last"] - span["first"], 2), "locust_process_s": round(locust_wall, 2),
            }
            figures["concurrency"]["served_over_embed"] = round(figures["concurrency"]["served_wall_s"] / embed_s, 2)
        figures["load_after"] = os.getloadavg()
        status = json.loads(subprocess.run(["curl", "-s", url + "/healthz"], capture_output=True, text=True).stdout)
        figures["server_batches"] = status["batches"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
