"""`bit serve`: the API answers as the commands do, its limits, its client, its shutdown.

A real `bit serve` subprocess (tests/servehelpers.py) with the bundled bit-digits model, driven over
HTTP on 127.0.0.1; the command's own answers are the reference.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from relhelpers import ROOT, bit, bit_env, text
from servehelpers import Server, read, upload

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

DIGITS = sorted((ROOT / "sample_digits").glob("*/*.png"))[:6]


@pytest.fixture(scope="module")
def server():
    srv = Server("-m", "bit-digits", "--max-body", "2MB")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Six digits and one file that is not an image, under short names."""
    root = tmp_path_factory.mktemp("upload")
    paths = []
    for p in DIGITS:
        target = root / f"{p.parent.name}-{p.name}"
        target.write_bytes(p.read_bytes())
        paths.append(target)
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return paths + [broken]


def _local_jsonl(paths, *args):
    done = bit("classify", *paths, "-m", "bit-digits", "--format", "jsonl", *args, cwd=paths[0].parent)
    return done.returncode, [json.loads(line) for line in text(done.stdout).splitlines()]


def _same_records(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a["path"] == b["path"]
        assert ("error" in a) == ("error" in b)
        if "error" in a:
            assert a["error"] == b["error"]
            continue
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert np.allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]], atol=1e-6, rtol=0)


def test_health_and_model(server):
    status, _, body = server.json("/healthz")
    assert status == 200 and body["status"] == "ok" and body["model"] == "bit-digits"
    status, _, body = server.json("/v1/models")
    assert status == 200 and body["models"][0]["num_labels"] == 10 and body["models"][0]["input_size"] == [32, 32]


def test_classify_equals_the_command_broken_files_included(server, files):
    code, expected = _local_jsonl(files, "-k", "3")
    expected = [{**r, "path": files[i].name} for i, r in enumerate(expected)]
    body, headers = upload([(p.name, read(p)) for p in files])
    status, _, answer = server.json("/v1/classify?top_k=3", body=body, headers=headers)
    assert status == 200
    _same_records(answer["results"], expected)
    assert answer["results"][-1] == {"path": "broken.png", "error": expected[-1]["error"]}


def test_embed_equals_the_command(server, files, tmp_path):
    out = tmp_path / "e.npy"
    done = bit("embed", *files[:-1], "-m", "bit-digits", "-o", out, "--normalize")
    assert done.returncode == 0, text(done.stderr)
    rows = np.load(out)
    body, headers = upload([(p.name, read(p)) for p in files])
    status, _, answer = server.json("/v1/embed?normalize=true", body=body, headers=headers)
    assert status == 200
    got = np.array([r["embedding"] for r in answer["results"][:-1]], dtype=np.float32)
    assert np.allclose(got, rows, atol=1e-6, rtol=0)
    assert "error" in answer["results"][-1]
    status, head, raw = server.request("/v1/embed?normalize=true", body=body, headers={**headers, "Accept": "application/x-npy"})
    assert status == 200 and head["Content-Type"] == "application/x-npy"
    array = np.load(io.BytesIO(raw), allow_pickle=False)
    assert array.shape == (len(files), rows.shape[1]) and np.allclose(array[:-1], rows, atol=1e-6, rtol=0)
    assert np.isnan(array[-1]).all() and head["X-Bit-Failed"] == str(len(files) - 1)


def test_a_filename_never_names_a_server_file(server):
    """The part's filename is only a label: the bytes classified are the uploaded ones."""
    digit = DIGITS[0]
    body, headers = upload([("/etc/passwd", read(digit))])
    _, _, answer = server.json("/v1/classify?top_k=1", body=body, headers=headers)
    record = answer["results"][0]
    assert record["path"] == "/etc/passwd" and record["predictions"][0]["label"] == digit.parent.name


@pytest.mark.parametrize(
    "path, body, headers, status",
    [
        ("/v1/classify", b'{"file": "x"}', {"Content-Type": "application/json"}, 415),
        ("/v1/classify", None, {}, 415),
        ("/v1/classify?top_k=0", "DIGIT", None, 422),
        ("/v1/classify?top_k=abc", "DIGIT", None, 422),
        ("/v1/embed?normalize=perhaps", "DIGIT", None, 422),
        ("/v1/classify", b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\n1\r\n--x--\r\n",
         {"Content-Type": "multipart/form-data; boundary=x"}, 400),
        ("/v1/classify", b"--x\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=x"}, 400),
        ("/nowhere", None, {}, 404),
    ],
)
def test_bad_requests_get_a_status_and_one_line(server, path, body, headers, status):
    if body == "DIGIT":
        body, headers = upload([("d.png", read(DIGITS[0]))])
    got, _, answer = server.json(path, body=body, headers=headers, method="POST" if path != "/nowhere" else "GET")
    assert got == status, answer
    assert set(answer) == {"error"} and answer["error"] and "\n" not in answer["error"]
    assert server.json("/healthz")[0] == 200


def read_answer(sock: socket.socket) -> bytes:
    """What the server sent back, up to the end of its one-line JSON body (or until it closed)."""
    answer = b""
    while not answer.endswith(b"}"):
        data = sock.recv(4096)
        if not data:
            break
        answer += data
    return answer


def test_body_over_the_limit_is_refused_before_it_is_read(server):
    """413 on the declared length, while the client still holds most of the body."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     b"Content-Length: 50000000\r\n\r\n" + b"x" * 1000)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"over the server's limit" in answer
    assert server.json("/healthz")[0] == 200


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(server):
    """No Content-Length (chunked): the server answers 413 as soon as 2 MB have arrived."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
        try:
            for _ in range(100):  # 6.5 MB offered; the limit is 2 MB
                sock.sendall(chunk)
        except OSError:  # the server stopped reading and closed: fine, its answer is waiting
            pass
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"over the server's limit" in answer
    assert server.json("/healthz")[0] == 200


def test_a_client_that_leaves_mid_upload_costs_nothing(server):
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(5):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                         b"Content-Length: 1000000\r\n\r\n--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
                         + b"y" * 5000)
    status, _, health = server.json("/healthz")
    assert status == 200 and health["waiting"] == 0
    body, headers = upload([("d.png", read(DIGITS[0]))])
    assert server.json("/v1/classify", body=body, headers=headers)[0] == 200


def test_concurrent_requests_run_as_batches(tmp_path):
    srv = Server("-m", "bit-digits", "--max-batch", "16", "--max-wait-ms", "200")
    try:
        body, headers = upload([("d.png", read(DIGITS[0]))])
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: srv.json("/v1/classify?top_k=1", body=body, headers=headers), range(16)))
        assert all(status == 200 for status, _, _ in answers)
        labels = {a["results"][0]["predictions"][0]["label"] for _, _, a in answers}
        assert labels == {DIGITS[0].parent.name}
        stats = srv.json("/healthz")[2]["batches"]
        assert stats["images"] == 16 and stats["batches"] < 16 and stats["largest_batch"] > 1, stats
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
def test_full_queue_answers_503_with_retry_after():
    srv = Server("-m", "bit-digits", "--max-queue", "1", "--max-wait-ms", "3000", "--max-batch", "4")
    try:
        body, headers = upload([("d.png", read(DIGITS[0]))])
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(srv.json, "/v1/classify", body=body, headers=headers)
            import time

            time.sleep(1.0)  # the first image now waits in the queue for its batch
            second = srv.json("/v1/classify", body=body, headers=headers)
            assert second[0] == 503 and second[1]["Retry-After"] == "1" and "busy" in second[2]["error"]
            assert first.result()[0] == 200
    finally:
        srv.stop()


@pytest.mark.slow
def test_token_is_required_when_set():
    env = bit_env(BIT_TOKEN="s3cret")
    srv = Server("-m", "bit-digits", env=env)
    try:
        assert srv.json("/healthz")[0] == 401
        assert srv.json("/healthz", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert srv.json("/healthz", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert srv.json("/healthz", headers={"Authorization": "bearer s3cret"})[0] == 200  # the scheme is case-insensitive
        assert srv.json("/healthz", headers={"Authorization": "Basic s3cret"})[0] == 401
        assert srv.json("/healthz", headers={"Authorization": "Bearer s3cre"})[0] == 401
        assert srv.json("/healthz", headers={"Authorization": "Bearer s3cret2"})[0] == 401
        assert srv.json("/healthz", headers={"Authorization": "s3cret"})[0] == 401
        assert srv.request("/")[0] == 200  # the static page asks for the token itself
        done = bit("classify", DIGITS[0], "--server", srv.url, "--format", "jsonl")
        assert done.returncode == 2 and "needs a token" in text(done.stderr)
        done = bit("classify", DIGITS[0], "--server", srv.url, "--format", "jsonl", env=bit_env(BIT_TOKEN="wrong"))
        assert done.returncode == 2 and "refused the token in BIT_TOKEN" in text(done.stderr)
        done = bit("classify", DIGITS[0], "--server", srv.url, "--format", "jsonl", env=env)
        assert done.returncode == 0, text(done.stderr)
    finally:
        srv.stop()


def test_other_hosts_need_a_token():
    done = bit("serve", "-m", "bit-digits", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    lines = text(done.stderr).strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0]


def test_without_the_extra_it_says_how_to_install():
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['bit', 'serve', '-m', 'bit-digits'];"
            "from bitcli.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], env=bit_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pip install 'bitcli[serve]'" in done.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_sigterm_and_ctrl_c_end_the_server(sig, code):
    srv = Server("-m", "bit-digits")
    assert srv.stop(sig) == code


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table", "json"])
@pytest.mark.slow
def test_client_prints_what_the_command_prints(server, files, fmt):
    names = [p.name for p in files] + ["missing.png"]
    env = bit_env(COLUMNS="120")
    local = bit("classify", *names, "-m", "bit-digits", "-f", fmt, "-k", "2", cwd=files[0].parent, env=env)
    remote = bit("classify", *names, "--server", server.url, "-f", fmt, "-k", "2", cwd=files[0].parent, env=env)
    assert remote.returncode == local.returncode == 1
    if fmt in ("jsonl", "json"):
        load = (lambda s: [json.loads(x) for x in s.splitlines()]) if fmt == "jsonl" else json.loads
        _same_records(load(text(remote.stdout)), load(text(local.stdout)))
    else:
        assert text(remote.stdout) == text(local.stdout)
    assert text(remote.stderr) == text(local.stderr)


def test_client_imports_no_torch(server):
    """Nor anything else a client start need not pay for: numpy, pydantic (Typer's conversion of
    values), rich (nothing drawn into a pipe), another command's file."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bitcli", "classify", str(DIGITS[0]), "--server", server.url,
                           "-f", "jsonl"], env=bit_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    heavy = {name for name in imported if name.split(".")[0] in ("torch", "PIL", "safetensors", "numpy", "pydantic", "rich")
             or name.startswith(("bitcli.model", "bitcli.checkpoint", "bitcli.pipeline.", "bitcli.cli.embed", "bitcli.cli.serve"))}
    assert not heavy, f"the client imported what it does not use: {sorted(heavy)[:5]}"
    assert "bitcli.cli.classify" in imported and "bitcli.serve.client" in imported


def _noise_png(path, side, seed):
    from PIL import Image

    Image.fromarray((np.random.RandomState(seed).rand(side, side, 3) * 255).astype("uint8")).save(path)
    return path


@pytest.mark.slow
def test_client_fits_its_requests_to_the_servers_body_limit(server, tmp_path):
    """Files that together pass --max-body (2 MB here) go in several requests, not one that the
    server cuts off; one file over the limit alone fails alone, as a record, and the rest go on."""
    small = [_noise_png(tmp_path / f"n{i}.png", 600, i) for i in range(3)]  # about 1.1 MB each
    big = _noise_png(tmp_path / "big.png", 1000, 9)  # about 3 MB
    names = [small[0].name, small[1].name, big.name, small[2].name]
    local = bit("classify", *names, "-m", "bit-digits", "-f", "jsonl", "-k", "2", cwd=tmp_path)
    remote = bit("classify", *names, "--server", server.url, "-f", "jsonl", "-k", "2", cwd=tmp_path)
    assert local.returncode == 0, text(local.stderr)
    assert remote.returncode == 1, text(remote.stderr)
    expected = [json.loads(x) for x in text(local.stdout).splitlines()]
    got = [json.loads(x) for x in text(remote.stdout).splitlines()]
    assert [r["path"] for r in got] == names
    assert "larger than the server takes" in got[2]["error"]
    _same_records([got[i] for i in (0, 1, 3)], [expected[i] for i in (0, 1, 3)])
    lines = text(remote.stderr).strip().splitlines()
    assert any(line.startswith("error: big.png: larger than the server takes") for line in lines), lines
    assert server.json("/healthz")[0] == 200


@pytest.mark.slow
def test_more_files_than_the_queue_holds_is_413_and_the_client_splits_and_waits(tmp_path):
    """A request that could never fit the queue is refused for good (413, not 'busy, retry');
    the client sends at most what the server takes per request and waits out a busy server."""
    srv = Server("-m", "bit-digits", "--max-queue", "2", "--max-batch", "4", "--max-wait-ms", "2000")
    try:
        status, limits = srv.json("/v1/models")[0], srv.json("/v1/models")[2]["limits"]
        assert status == 200 and limits["max_files"] == 2
        body, headers = upload([(f"d{i}.png", read(DIGITS[i])) for i in range(3)])
        got, _, answer = srv.json("/v1/classify", body=body, headers=headers)
        assert got == 413 and "at most 2 per request" in answer["error"] and "\n" not in answer["error"]
        two, headers2 = upload([(f"d{i}.png", read(DIGITS[i])) for i in range(2)])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(srv.json, "/v1/classify", body=two, headers=headers2)
            import time

            time.sleep(0.7)  # the queue is full now, for about 2 s
            done = bit("classify", *DIGITS[:5], "--server", srv.url, "-f", "jsonl", "-k", "1", "--batch-size", "5")
            assert first.result()[0] == 200
        assert done.returncode == 0, text(done.stderr)
        records = [json.loads(x) for x in text(done.stdout).splitlines()]
        assert [r["predictions"][0]["label"] for r in records] == [p.parent.name for p in DIGITS[:5]]
    finally:
        srv.stop()


def test_a_token_a_header_cannot_carry_is_refused_up_front():
    done = bit("serve", "-m", "bit-digits", "--port", "0", "--token", "pass word")
    assert done.returncode == 2 and len(text(done.stderr).strip().splitlines()) == 1 and "--token" in text(done.stderr)
    done = bit("serve", "-m", "bit-digits", "--port", "0", env=bit_env(BIT_TOKEN="pa\u20acss"))
    assert done.returncode == 2 and "--token" in text(done.stderr)
    done = bit("classify", DIGITS[0], "--server", "http://127.0.0.1:9", env=bit_env(BIT_TOKEN="pa\u20acss"))
    assert done.returncode == 2 and "BIT_TOKEN" in text(done.stderr) and "JSON" not in text(done.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ray_serve_two_replicas_answer_as_the_command(files):
    pytest.importorskip("ray.serve")
    port = _free_port()
    srv = Server("-m", "bit-digits", "--engine", "ray", "--replicas", "2", "--port", str(port), timeout=300)
    try:
        assert srv.url == f"http://127.0.0.1:{port}"
        _, expected = _local_jsonl(files, "-k", "3")
        expected = [{**r, "path": files[i].name} for i, r in enumerate(expected)]
        body, headers = upload([(p.name, read(p)) for p in files])
        status, _, answer = srv.json("/v1/classify?top_k=3", body=body, headers=headers)
        assert status == 200
        _same_records(answer["results"], expected)
        pids = {srv.json("/healthz")[2]["pid"] for _ in range(30)}
        assert len(pids) == 2, pids  # Ray Serve's router spread the requests over both replicas
        done = bit("classify", *files, "--server", srv.url, "-f", "jsonl", "-k", "3")
        _same_records([json.loads(x) for x in text(done.stdout).splitlines()],
                      [{**r, "path": str(files[i])} for i, r in enumerate(expected)])
    finally:
        assert srv.stop() == 0


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """The sample digits embedded with bit-digits (a collection), and query images not in it."""
    root = tmp_path_factory.mktemp("collection")
    digits = root / "digits"
    for p in sorted((ROOT / "sample_digits").glob("*/*.png")):
        (digits / p.parent.name).mkdir(parents=True, exist_ok=True)
        (digits / p.parent.name / p.name).write_bytes(p.read_bytes())
    done = bit("embed", "digits", "-m", "bit-digits", "-o", "digits.npy", cwd=root)
    assert done.returncode == 0, text(done.stderr)
    queries = root / "queries"
    queries.mkdir()
    for i, p in enumerate(DIGITS[:3]):
        (queries / f"q{i}.png").write_bytes(p.read_bytes())
    (queries / "z-broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def search_server(collection):
    srv = Server("-m", "bit-digits", "--index", str(collection / "digits.npy"))
    yield srv
    srv.stop()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table"])
@pytest.mark.slow
def test_search_through_the_server_prints_what_the_command_prints(search_server, collection, fmt):
    env = bit_env(COLUMNS="120")
    local = bit("search", "digits.npy", "queries", "-k", "4", "-f", fmt, cwd=collection, env=env)
    remote = bit("search", "digits", "queries", "-k", "4", "-f", fmt, "--server", search_server.url, cwd=collection, env=env)
    assert remote.returncode == local.returncode == 1  # the broken query
    if fmt == "jsonl":
        ours = [json.loads(x) for x in text(remote.stdout).splitlines()]
        theirs = [json.loads(x) for x in text(local.stdout).splitlines()]
        assert [r["query"] for r in ours] == [r["query"] for r in theirs]
        for a, b in zip(ours, theirs):
            assert ("error" in a) == ("error" in b)
            if "matches" in a:
                assert [m["path"] for m in a["matches"]] == [m["path"] for m in b["matches"]]
                assert np.allclose([m["score"] for m in a["matches"]], [m["score"] for m in b["matches"]], atol=1e-6, rtol=0)
    else:
        assert text(remote.stdout) == text(local.stdout)
    assert text(remote.stderr) == text(local.stderr)


@pytest.mark.slow
def test_search_through_the_server_prints_the_paths_local_search_prints_from_another_directory(search_server, collection, tmp_path):
    """Issue 20: every printed path resolves from the caller's directory, the same way in every
    command: from elsewhere, `bit search --server` names the rows as local `bit search` does."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ask = ("-k", "3", "-f", "jsonl")
    local = bit("search", collection / "digits.npy", collection / "queries" / "q0.png", *ask, cwd=elsewhere)
    remote = bit("search", "digits", collection / "queries" / "q0.png", *ask, "--server", search_server.url, cwd=elsewhere)
    assert local.returncode == remote.returncode == 0, text(remote.stderr)
    mine = [m["path"] for m in json.loads(text(remote.stdout))["matches"]]
    assert mine == [m["path"] for m in json.loads(text(local.stdout))["matches"]]
    assert all((elsewhere / path).is_file() for path in mine)


def test_search_through_the_server_honours_min_score(search_server, collection):
    ask = ("search", "digits", "queries/q0.png", "queries/q1.png", "-k", "5", "-f", "jsonl", "--server", search_server.url)
    every = [json.loads(x) for x in text(bit(*ask, cwd=collection).stdout).splitlines()]
    cut = sorted(m["score"] for r in every for m in r["matches"])[4]
    done = bit(*ask, "--min-score", str(cut), cwd=collection)
    assert done.returncode == 0, text(done.stderr)
    kept = [json.loads(x) for x in text(done.stdout).splitlines()]
    assert kept == [{**r, "matches": [m for m in r["matches"] if m["score"] >= cut]} for r in every]
    assert sum(len(r["matches"]) for r in kept) == sum(len(r["matches"]) for r in every) - 4


def test_search_api_and_thumbnails(search_server, collection):
    status, _, models = search_server.json("/v1/models")
    assert models["indexes"] == [{"name": "digits", "rows": 20, "dim": 256, "path": str(collection / "digits.npy")}]
    body, headers = upload([("q.png", read(DIGITS[0]))])
    status, _, answer = search_server.json("/v1/search?index=digits&top_k=2", body=body, headers=headers)
    assert status == 200 and answer["results"][0]["query"] == "q.png"
    best = answer["results"][0]["matches"][0]
    assert best["score"] == pytest.approx(1.0, abs=1e-6) and best["path"].endswith(DIGITS[0].name)
    row = answer["rows"][0][0]["row"]
    status, head, jpeg = search_server.request(f"/v1/thumbnail?index=digits&row={row}")
    assert status == 200 and head["Content-Type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    assert search_server.json("/v1/search?index=nope", body=body, headers=headers)[0] == 404
    assert search_server.json("/v1/thumbnail?index=digits&row=20")[0] == 404
    assert search_server.json("/v1/thumbnail?index=digits&row=-1")[0] == 422


@pytest.mark.slow
def test_an_index_of_another_model_is_refused(collection, tmp_path):
    from clihelpers import make_checkpoint

    other = make_checkpoint(tmp_path / "other")
    done = bit("serve", "-m", other, "--index", collection / "digits.npy", "--port", "0")
    assert done.returncode == 2
    lines = text(done.stderr).strip().splitlines()
    assert len(lines) == 1 and "--index" in lines[0] and "other settings" in lines[0]


@pytest.mark.parametrize("size", ["nan", "inf", "1e400", "9" * 400, "0.5", "-5"])
def test_a_max_body_that_is_no_size_is_one_line_and_exit_2(size):
    done = bit("serve", "-m", "bit-digits", "--port", "0", "--max-body", size, timeout=60)
    lines = text(done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "--max-body" in lines[0] and "unexpected" not in lines[0], lines


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:1", "http://[::1", "http://127.0.0.1:abc", "http://127.0.0.1:99999",
                                 "http://a b:1", "http://127.0.0.1:1@", "http://:1"])
@pytest.mark.parametrize("command", [["classify", "x.png"], ["search", "i.npy", "x.png"]])
def test_a_server_address_that_is_no_address_is_one_line_and_exit_2(command, url):
    done = bit(*command, "--server", url, timeout=60)
    assert done.returncode == 2 and text(done.stderr) == f"error: --server {url!r}: give the server's address, e.g. http://127.0.0.1:8765\n"


@pytest.mark.parametrize("answers", [
    {"/v1/models": {"hello": 1}},
    {"/v1/models": {"models": [{"num_labels": 10}]}, "/v1/labels": {"labels": list("0123456789")},
     "/v1/classify": {"results": [{"path": "x", "predictions": [{"rank": 1}]}]}},
    {"/v1/models": {"models": [{"num_labels": 10}]}, "/v1/classify": {"results": []}},
])
def test_a_server_that_is_not_bit_serve_is_one_line_and_exit_3(answers):
    """JSON of another shape (another service on that port, another version) is the server's fault:
    one line naming it, exit 3; never a traceback or an 'unexpected' error."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            if "Content-Length" in self.headers:
                self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(answers.get(self.path.split("?")[0], {})).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for fmt in ("jsonl", "table"):
            done = bit("classify", DIGITS[0], "--server", f"http://127.0.0.1:{httpd.server_port}", "-f", fmt)
            lines = text(done.stderr).strip().splitlines()
            assert done.returncode == 3, lines
            assert "is it `bit serve`?" in lines[-1] and not any("unexpected" in line for line in lines), lines
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_client_reports_special_and_odd_files_as_the_command_does(server, tmp_path):
    import os

    (tmp_path / "ok.png").write_bytes(read(DIGITS[0]))
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "short.gif").write_bytes(b"GIF89a")
    names = ["ok.png", "fifo.png", "dangling.png", "empty.png", "short.gif"]
    local = bit("classify", *names, "-m", "bit-digits", "-f", "jsonl", "-k", "1", cwd=tmp_path, timeout=60)
    remote = bit("classify", *names, "--server", server.url, "-f", "jsonl", "-k", "1", cwd=tmp_path, timeout=60)
    assert remote.returncode == local.returncode == 1
    _same_records([json.loads(x) for x in text(remote.stdout).splitlines()], [json.loads(x) for x in text(local.stdout).splitlines()])
    assert text(remote.stderr) == text(local.stderr)


def test_a_model_failure_is_a_json_500_and_the_server_goes_on():
    """A batch the model cannot run (out of memory, a device error) answers each of its requests
    with 500 and one JSON line, not Starlette's plain-text page; the next request is served."""
    from fastapi.testclient import TestClient

    from bitcli.pipeline import load
    from bitcli.serve.app import ServeSettings, create_app
    from bitcli.serve.service import Service

    service = Service(load("bit-digits", device="cpu", offline=True), ServeSettings(max_batch=4), max_pixels=None)
    real_run, calls = service.run, []

    def run(key, uploads):
        calls.append(len(uploads))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return real_run(key, uploads)

    service.run = run
    app = create_app(lambda: service, ServeSettings(max_batch=4), model_name="bit-digits")
    body, headers = upload([("d.png", read(DIGITS[0]))])
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as client:
        for _ in range(600):  # the model loads in a thread at startup
            if client.get("/healthz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        first = client.post("/v1/classify", content=body, headers=headers)
        assert first.status_code == 500
        assert first.json() == {"error": "the server failed on this request (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB)"}
        second = client.post("/v1/classify?top_k=1", content=body, headers=headers)
        assert second.status_code == 200 and second.json()["results"][0]["predictions"][0]["label"] == DIGITS[0].parent.name


def test_client_refuses_a_model_other_than_the_servers(server, tmp_path):
    """With BIT_SERVER in the environment, `-m OTHER` must not quietly print the server's model's
    answers as if they were OTHER's: one line, exit 2. `-m` naming the served model is fine."""
    env = bit_env(BIT_SERVER=server.url)
    done = bit("classify", DIGITS[0], "-m", str(tmp_path / "my-model"), "-f", "jsonl", env=env)
    lines = text(done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "runs bit-digits" in lines[0] and text(done.stdout) == "", lines
    same = bit("classify", DIGITS[0], "-m", "bit-digits", "-f", "jsonl", env=env)
    assert same.returncode == 0, text(same.stderr)


@pytest.mark.parametrize("host, status", [("evil.example:8765", 400), ("127.0.0.1.evil.example", 400), ("", 400),
                                          ("localhost:1", 200), ("127.0.0.1", 200), ("[::1]:8765", 200)])
def test_without_a_token_only_loopback_names_are_answered(server, host, status):
    """DNS rebinding: a web page of evil.example whose name now resolves to 127.0.0.1 sends
    `Host: evil.example`; a server without a token must not answer it (it could read the model's
    answers, and the paths it reports). With a token any name is fine (the page lacks the token)."""
    host_port = server.url.removeprefix("http://")
    with socket.create_connection(tuple([host_port.split(":")[0], int(host_port.split(":")[1])]), timeout=30) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    if status == 400:
        assert "--token" in json.loads(body)["error"]


def test_healthz_is_503_until_the_model_is_loaded():
    """The app answers while the model loads: /healthz 503 with Retry-After, then 200."""
    import threading

    from fastapi.testclient import TestClient

    from bitcli.serve.app import ServeSettings, create_app

    release = threading.Event()

    class Loaded:  # what the app asks of a loaded Service before any request
        indexes: dict = {}
        labels = None
        report = {"model": "slow"}
        stats: dict = {}
        waiting = 0

        def start(self):
            pass

        async def stop(self):
            pass

    def load():
        release.wait(30)
        return Loaded()

    app = create_app(load, ServeSettings(), model_name="slow")
    with TestClient(app, headers={"Host": "127.0.0.1"}) as client:
        early = client.get("/healthz")
        assert early.status_code == 503 and early.headers["Retry-After"] == "5" and "loading" in early.json()["error"]
        assert client.get("/v1/models").status_code == 503
        release.set()
        for _ in range(100):
            if client.get("/healthz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        assert client.get("/healthz").json()["status"] == "ok"


@pytest.mark.slow
def test_a_model_that_fails_to_load_ends_the_server_with_its_line(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bit", "depths": "three"}')
    (broken / "model.safetensors").write_bytes(b"\0" * 16)
    done = bit("serve", "-m", broken, "--port", "0", timeout=120)
    assert done.returncode == 3
    lines = text(done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "depths" in lines[0]
