"""Model references through the real huggingface_hub client against a fake hub on 127.0.0.1.

Nothing is mocked: `tests/hubserver.py` answers the HTTP calls huggingface_hub makes, and every
test gets an empty cache (conftest sets HF_HOME) with HF_ENDPOINT pointed at the fake hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bitcli import hub as hubmod
from bitcli.errors import CheckpointError, ModelError, ModelNotFoundError, OfflineError
from bitcli.hub import ResolvedModel, list_known_models, resolve_model
from bitcli.hub.zoo import find_alias
from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor, tiny_raw_weights, write_npz
from hubserver import FakeHub

REPO = "acme/tiny-bit"
BIT50_PIN = "9e9a281aa096247270860f9cda4f68daacca33d0"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> dict:
    """Tiny checkpoints on disk (same weights as safetensors and as pickle) and reference logits."""
    root = tmp_path_factory.mktemp("ckpt")
    reference = save_reference_checkpoint(
        root / "safetensors", num_labels=3, preprocessor=tiny_preprocessor(32), **TINY
    )
    save_reference_checkpoint(
        root / "pickle", num_labels=3, weights="pickle", preprocessor=tiny_preprocessor(32), **TINY
    )
    no_weights = root / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((root / "safetensors" / "config.json").read_text())
    (no_weights / "README.md").write_text("weights elsewhere")
    torch.manual_seed(7)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = reference(pixels).logits
    return {
        "safetensors": root / "safetensors",
        "pickle": _pickle_only(root),
        "no_weights": no_weights,
        "pixels": pixels,
        "logits": logits,
    }


def _pickle_only(root: Path) -> Path:
    """The pickle checkpoint directory, minus anything that is not config/preprocessor/pickle."""
    directory = root / "pickle"
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "preprocessor_config.json", "pytorch_model.bin"]
    return directory


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.stop()


def logits_of(resolved: ResolvedModel, pixels: torch.Tensor) -> torch.Tensor:
    from bitcli.checkpoint import load_model

    loaded = load_model(resolved.path)
    with torch.no_grad():
        return loaded.model(pixels).logits


def cache_root() -> Path:
    return Path(os.environ["HF_HOME"]) / "hub"


def assert_one_line(error: Exception, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert error.exit_code == 3
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------- download, cache, offline


@pytest.mark.slow
def test_first_run_downloads_into_standard_cache_then_classifies(fake_hub, ckpt):
    sha = fake_hub.add_commit(REPO, ckpt["safetensors"])
    resolved = resolve_model(REPO)
    assert resolved.source == "download"
    assert (resolved.repo_id, resolved.revision, resolved.commit) == (REPO, "main", sha)
    assert resolved.weights_file == "model.safetensors" and resolved.notice is None
    assert resolved.path == cache_root() / "models--acme--tiny-bit" / "snapshots" / sha
    assert {p.name for p in resolved.path.iterdir()} == {"config.json", "preprocessor_config.json",
                                                           "model.safetensors"}
    torch.testing.assert_close(logits_of(resolved, ckpt["pixels"]), ckpt["logits"])

    # Online again: one metadata request to see whether main moved, nothing downloaded.
    before = len(fake_hub.requests)
    again = resolve_model(REPO)
    assert again.source == "cache" and again.path == resolved.path
    assert [r.path for r in fake_hub.requests[before:]] == [f"/api/models/{REPO}/revision/main"]


def test_hf_hub_cache_is_honoured(fake_hub, ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    resolved = resolve_model(REPO)
    assert resolved.path.is_relative_to(tmp_path / "elsewhere")
    assert not (cache_root() / "models--acme--tiny-bit").exists()


def test_offline_run_makes_no_request_and_gives_the_same_answer(fake_hub, ckpt, monkeypatch):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    first = resolve_model(REPO)
    expected = logits_of(first, ckpt["pixels"])

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(fake_hub.requests)
    second = resolve_model(REPO)
    assert fake_hub.requests[before:] == []  # the server is up and counting: nothing reached it
    fake_hub.stop()
    third = resolve_model(REPO)
    assert second.path == third.path == first.path and second.source == third.source == "cache"
    torch.testing.assert_close(logits_of(third, ckpt["pixels"]), expected)


def test_offline_argument_overrides_environment(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    with pytest.raises(OfflineError):
        resolve_model(REPO, offline=True)
    assert fake_hub.requests == []


def test_offline_and_not_cached_says_how_to_fix_it(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as caught:
        resolve_model("acme/never-downloaded@v2")
    assert_one_line(caught.value, "acme/never-downloaded@v2", "HF_HUB_OFFLINE",
                    "bit download acme/never-downloaded@v2", "--model PATH")
    assert fake_hub.requests == []


def test_unreachable_hub_falls_back_to_cache_and_fails_fast_when_not_cached(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    cached = resolve_model(REPO)
    fake_hub.stop()  # connection refused from now on

    started = time.monotonic()
    assert resolve_model(REPO).path == cached.path
    with pytest.raises(OfflineError) as caught:
        resolve_model("acme/other-model")
    assert time.monotonic() - started < 5  # no retry loop with back-off
    assert_one_line(caught.value, "acme/other-model", "unreachable", "bit download acme/other-model")


# --------------------------------------------------------------------------- revisions and weights


def add_bit50_layout(fake_hub: FakeHub, ckpt: dict) -> str:
    """google/bit-50 as on the hub: main has only the pickle; refs/pr/1 (the pin) adds safetensors."""
    pickle_files = {p.name: p.read_bytes() for p in ckpt["pickle"].iterdir()}
    main = fake_hub.add_commit("google/bit-50", pickle_files, refs=("main",))
    both = {**pickle_files, "model.safetensors": (ckpt["safetensors"] / "model.safetensors").read_bytes()}
    fake_hub.add_commit("google/bit-50", both, refs=("refs/pr/1",), sha=BIT50_PIN)
    return main


@pytest.mark.parametrize("ref", ["bit-50", "google/bit-50", "google/bit-50@refs/pr/1"])
def test_bit50_resolves_to_the_safetensors_at_the_pinned_commit(fake_hub, ckpt, ref):
    add_bit50_layout(fake_hub, ckpt)
    resolved = resolve_model(ref)
    assert resolved.commit == BIT50_PIN and resolved.weights_file == "model.safetensors"
    assert resolved.notice is None
    assert fake_hub.count("GET", "pytorch_model.bin") == 0  # the 100 MB pickle is never fetched
    torch.testing.assert_close(logits_of(resolved, ckpt["pixels"]), ckpt["logits"])


def test_pinned_commit_in_cache_needs_no_request_even_online(fake_hub, ckpt):
    add_bit50_layout(fake_hub, ckpt)
    resolve_model("bit-50")
    before = len(fake_hub.requests)
    assert resolve_model("bit-50").source == "cache"
    assert fake_hub.requests[before:] == []


def test_naming_a_revision_overrides_the_pin(fake_hub, ckpt):
    main = add_bit50_layout(fake_hub, ckpt)
    resolved = resolve_model("bit-50@main")
    assert (resolved.repo_id, resolved.revision, resolved.commit) == ("google/bit-50", "main", main)
    assert resolved.weights_file == "pytorch_model.bin"
    assert "weights_only=True" in resolved.notice and "\n" not in resolved.notice


def test_pickle_only_repo_loads_through_weights_only(fake_hub, ckpt, monkeypatch):
    fake_hub.add_commit(REPO, ckpt["pickle"])
    resolved = resolve_model(REPO)
    assert resolved.weights_file == "pytorch_model.bin"
    assert resolved.notice == (f"note: '{REPO}' has no model.safetensors; "
                               "loading pytorch_model.bin with torch.load(weights_only=True)")
    torch.testing.assert_close(logits_of(resolved, ckpt["pixels"]), ckpt["logits"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = resolve_model(REPO)
    assert offline.weights_file == "pytorch_model.bin" and offline.notice == resolved.notice


def test_sharded_safetensors_download_every_shard(fake_hub, ckpt, tmp_path):
    save_reference_checkpoint(tmp_path / "sharded", num_labels=3, weights="sharded", **TINY)
    fake_hub.add_commit(REPO, tmp_path / "sharded")
    resolved = resolve_model(REPO)
    assert resolved.weights_file == "model.safetensors.index.json"
    index = json.loads((resolved.path / resolved.weights_file).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((resolved.path / shard).is_file() for shard in shards)
    torch.testing.assert_close(logits_of(resolved, ckpt["pixels"]), ckpt["logits"])


def test_moved_branch_gets_the_new_commit(fake_hub, ckpt):
    first = fake_hub.add_commit(REPO, ckpt["pickle"])
    assert resolve_model(REPO).commit == first
    second = fake_hub.add_commit(REPO, ckpt["safetensors"])
    moved = resolve_model(REPO)
    assert (moved.commit, moved.weights_file, moved.source) == (second, "model.safetensors", "download")


# --------------------------------------------------------------------------- errors


def test_unknown_repository(fake_hub):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("acme/does-not-exist")
    assert_one_line(caught.value, "acme/does-not-exist", "not found", "HF_TOKEN")


def test_unknown_revision(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(f"{REPO}@no-such-branch")
    assert_one_line(caught.value, "no-such-branch", REPO)


def test_repository_without_bit_weights(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["no_weights"])
    with pytest.raises(CheckpointError) as caught:
        resolve_model(REPO)
    assert_one_line(caught.value, REPO, "no BiT weights")
    assert fake_hub.count("GET", "/resolve/") == 0


def test_gated_repository_mentions_hf_token_and_works_with_it(fake_hub, ckpt, monkeypatch):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    fake_hub.repos[REPO].gated, fake_hub.repos[REPO].token = True, "hf_good"
    with pytest.raises(ModelError) as caught:
        resolve_model(REPO)
    assert_one_line(caught.value, REPO, "gated", "HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(ModelError, match="gated"):
        resolve_model(REPO)
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert resolve_model(REPO).source == "download"
    assert fake_hub.requests[-1].authorization == "Bearer hf_good"


def test_private_repository_looks_missing_and_mentions_hf_token(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    fake_hub.repos[REPO].private = True
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(REPO)
    assert_one_line(caught.value, REPO, "HF_TOKEN")


@pytest.mark.slow
def test_dropped_connection_is_retried_within_the_run(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    fake_hub.scripts["model.safetensors"] = ["drop"]
    resolved = resolve_model(REPO)
    assert fake_hub.count("GET", "model.safetensors") == 2
    torch.testing.assert_close(logits_of(resolved, ckpt["pixels"]), ckpt["logits"])


@pytest.mark.slow
def test_large_download_cut_half_way_resumes_from_a_range(fake_hub, ckpt):
    # huggingface_hub writes 10 MiB chunks: past the first chunk, a cut resumes with `Range`.
    weights = torch.randint(0, 256, (24 * 2**20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    files = {"config.json": (ckpt["safetensors"] / "config.json").read_bytes(),
             "model.safetensors": weights.numpy().tobytes()}
    fake_hub.add_commit(REPO, files)
    fake_hub.scripts["model.safetensors"] = ["drop"]
    resolved = resolve_model(REPO)
    ranges = [r.range for r in fake_hub.requests if r.method == "GET" and r.path.endswith("model.safetensors")]
    assert ranges[0] is None and ranges[1] == f"bytes={10 * 2**20}-"
    assert (resolved.path / "model.safetensors").read_bytes() == files["model.safetensors"]


@pytest.mark.slow
def test_failed_download_leaves_nothing_loadable_and_next_run_restarts(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    fake_hub.scripts["model.safetensors"] = ["drop", 503]  # cut half-way, then the hub is down
    with pytest.raises(ModelError) as caught:
        resolve_model(REPO)
    assert_one_line(caught.value, "model.safetensors", REPO, "again")
    storage = cache_root() / "models--acme--tiny-bit"
    blobs = [p.name for p in (storage / "blobs").iterdir()]
    assert not any(name.endswith(".incomplete") for name in blobs)
    assert not list(storage.glob("snapshots/*/model.safetensors"))
    assert not (storage / "refs" / "main").exists()  # the ref only ever names complete snapshots
    with pytest.raises(OfflineError):
        resolve_model(REPO, offline=True)  # a half download is never offered as a cached model

    resolved = resolve_model(REPO)  # the hub is back: the next run downloads it all again
    assert resolved.source == "download"
    weights = (resolved.path / "model.safetensors").read_bytes()
    assert weights == (ckpt["safetensors"] / "model.safetensors").read_bytes()


def test_two_processes_downloading_at_once_both_get_a_good_copy(fake_hub, ckpt):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    # Hold the weights until both processes asked for them, so the downloads truly overlap.
    fake_hub.hold["model.safetensors"] = 2
    code = ("import json, sys; from bitcli.hub import resolve_model; r = resolve_model(sys.argv[1]); "
            "print(json.dumps({'path': str(r.path), 'weights': r.weights_file}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, REPO], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    paths = {json.loads(out)["path"] for out, _ in results}
    assert len(paths) == 1
    expected = hashlib.sha256((ckpt["safetensors"] / "model.safetensors").read_bytes()).hexdigest()
    got = hashlib.sha256((Path(paths.pop()) / "model.safetensors").read_bytes()).hexdigest()
    assert got == expected
    assert fake_hub.count("HEAD", "model.safetensors") == 2


# --------------------------------------------------------------------------- references, listing


def test_local_directory_is_used_as_is_without_requests(fake_hub, ckpt):
    resolved = resolve_model(str(ckpt["safetensors"]))
    assert (resolved.source, resolved.path, resolved.weights_file) == ("local", ckpt["safetensors"],
                                                                       "model.safetensors")
    assert resolved.repo_id is None and fake_hub.requests == []


def test_directory_with_only_one_npz_resolves_to_that_file(fake_hub, tmp_path):
    write_npz(tmp_path / "BiT-M-R50x1.npz", tiny_raw_weights())
    resolved = resolve_model(str(tmp_path))
    assert (resolved.source, resolved.path, resolved.weights_file) == ("local", tmp_path / "BiT-M-R50x1.npz",
                                                                       "BiT-M-R50x1.npz")
    assert fake_hub.requests == []


def test_directory_with_several_npz_names_them(fake_hub, tmp_path):
    for name in ("BiT-S-R50x1.npz", "BiT-M-R50x1.npz"):
        write_npz(tmp_path / name, tiny_raw_weights())
    with pytest.raises(CheckpointError) as caught:
        resolve_model(str(tmp_path))
    assert_one_line(caught.value, "BiT-M-R50x1.npz, BiT-S-R50x1.npz", "no config.json", "2 .npz")
    assert caught.value.exit_code == 3 and fake_hub.requests == []


def test_directory_with_a_config_is_a_checkpoint_directory_even_beside_an_npz(fake_hub, ckpt):
    directory = ckpt["safetensors"]
    write_npz(directory / "stray.npz", tiny_raw_weights())
    try:
        resolved = resolve_model(str(directory))
    finally:
        (directory / "stray.npz").unlink()
    assert (resolved.path, resolved.weights_file) == (directory, "model.safetensors")


def test_cli_classifies_with_a_directory_holding_one_npz(tmp_path):
    from clihelpers import jsonl, run
    from images import rgb

    (tmp_path / "npz").mkdir()
    write_npz(tmp_path / "npz" / "BiT-M-R50x1.npz", tiny_raw_weights())
    rgb().save(tmp_path / "x.png")
    by_dir = run(["classify", tmp_path / "x.png", "-m", tmp_path / "npz", "--format", "jsonl"])
    by_file = run(["classify", tmp_path / "x.png", "-m", tmp_path / "npz" / "BiT-M-R50x1.npz", "--format", "jsonl"])
    assert by_dir.exit_code == 0, by_dir.stderr
    assert jsonl(by_dir.stdout) == jsonl(by_file.stdout)
    write_npz(tmp_path / "npz" / "BiT-S-R50x1.npz", tiny_raw_weights(seed=1))
    several = run(["classify", tmp_path / "x.png", "-m", tmp_path / "npz", "--format", "jsonl"])
    assert several.exit_code == 3 and several.stdout == ""
    assert len(several.stderr.strip().splitlines()) == 1 and "BiT-M-R50x1.npz, BiT-S-R50x1.npz" in several.stderr


@pytest.mark.parametrize("ref", ["./no/such/dir", "/no/such/dir", "models/a/b", "weights.safetensors"])
def test_missing_local_path_is_an_error_not_a_hub_lookup(fake_hub, ref):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(ref)
    assert_one_line(caught.value, ref, "does not exist")
    assert fake_hub.requests == []


@pytest.mark.parametrize("ref", ["no-such-alias", "acme/x@"])
def test_malformed_reference(fake_hub, ref):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(ref)
    assert_one_line(caught.value, ref)
    assert fake_hub.requests == []


def test_list_known_models_reports_cache_state_and_size(fake_hub, ckpt):
    rows = {row["alias"]: row for row in list_known_models()}
    assert rows["bit-50"]["repo_id"] == "google/bit-50" and rows["bit-50"]["revision"] == BIT50_PIN
    assert rows["bit-50"]["cached"] is False and rows["bit-50"]["size_bytes"] == 0
    add_bit50_layout(fake_hub, ckpt)
    resolved = resolve_model("bit-50")
    row = {row["alias"]: row for row in list_known_models()}["bit-50"]
    expected = sum((resolved.path / name).stat().st_size
                   for name in ("config.json", "preprocessor_config.json", "model.safetensors"))
    assert row["cached"] is True and row["size_bytes"] == expected > 0
    assert find_alias("BIT-50").repo_id == "google/bit-50"


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bars_only_when_asked_and_stderr_is_a_terminal(fake_hub, ckpt, monkeypatch, progress):
    fcntl, termios = pytest.importorskip("fcntl"), pytest.importorskip("termios")  # POSIX terminals
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    master, replica = os.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 0-column tty shows nothing
    os.set_blocking(master, False)
    terminal = os.fdopen(replica, "w")
    try:
        monkeypatch.setattr(sys, "stderr", terminal)
        resolve_model(REPO, progress=progress)
        terminal.flush()
        shown = _drain(master).decode(errors="replace")
    finally:
        terminal.close()
        os.close(master)
    assert ("model.safetensors" in shown) is progress, shown


def _drain(fd: int, quiet_s: float = 0.3) -> bytes:
    """Everything readable from `fd` until it stays quiet for `quiet_s` seconds."""
    chunks = []
    while select.select([fd], [], [], quiet_s)[0]:
        try:
            chunks.append(os.read(fd, 65536))
        except (BlockingIOError, OSError):
            break
    return b"".join(chunks)


def test_no_progress_output_when_stderr_is_not_a_terminal(fake_hub, ckpt, capfd):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    resolve_model(REPO, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_environment_is_read_at_call_time(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    settings = hubmod.HubSettings.from_env()
    assert settings == hubmod.HubSettings(fake_hub.url, tmp_path / "home" / "hub", True)


# --------------------------------------------------------------------------- the `bit` command


@pytest.fixture
def bit():
    """Run `bit ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from bitcli.cli import app

    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    return run


IMAGE = str(ROOT / "sample_images" / "camera.png")


def test_cli_classify_downloads_once_then_works_offline(fake_hub, ckpt, bit, monkeypatch):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    code, out, err = bit("classify", "--model", REPO, IMAGE, "--format", "jsonl", "-k", "2")
    assert code == 0, err
    first = json.loads(out)
    assert [p["label"] for p in first["predictions"]] and len(first["predictions"]) == 2

    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = bit("classify", "--model", REPO, IMAGE, "--format", "jsonl", "-k", "2")
    assert code == 0, err
    assert json.loads(out) == first


@pytest.mark.parametrize("model, fragment", [("acme/does-not-exist", "not found"),
                                             (f"{REPO}@nope", "revision 'nope'"),
                                             ("./missing-dir", "does not exist")])
def test_cli_model_errors_exit_3_with_one_line(fake_hub, ckpt, bit, model, fragment):
    fake_hub.add_commit(REPO, ckpt["safetensors"])
    code, out, err = bit("classify", "--model", model, IMAGE, "--format", "jsonl")
    assert code == 3 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_cli_offline_not_cached_exit_3(bit, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = bit("classify", "--model", "bit-50", IMAGE)
    assert code == 3 and out == ""
    assert len(err.strip().splitlines()) == 1 and "bit download bit-50" in err, err


def test_cli_download_then_models_shows_it_cached(fake_hub, ckpt, bit):
    add_bit50_layout(fake_hub, ckpt)
    code, out, err = bit("models", "--format", "json")
    assert code == 0 and {r["alias"]: r for r in json.loads(out)}["bit-50"]["cached"] is False
    code, out, err = bit("download", "bit-50", "acme/does-not-exist")
    assert code == 3 and "acme/does-not-exist" in err  # one bad model does not stop the others
    path = Path(out.strip())
    assert path.name == BIT50_PIN and (path / "model.safetensors").is_file()
    code, out, err = bit("models", "--format", "json")
    row = {r["alias"]: r for r in json.loads(out)}["bit-50"]
    assert code == 0 and row["cached"] is True and row["size_bytes"] > 0


@pytest.fixture
def hub_log_records():
    """Records reaching huggingface_hub's loggers (its own handler wrote to the real stderr)."""
    import logging

    from huggingface_hub.utils import logging as hf_logging

    class ListHandler(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    records: list[str] = []
    root = logging.getLogger("huggingface_hub")
    level, handler = hf_logging.get_verbosity(), ListHandler()
    hf_logging.set_verbosity_warning()  # the default; an earlier in-process `-q` run raised it
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)
    hf_logging.set_verbosity(level)


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_the_hubs_resume_warning(ckpt, bit, monkeypatch, hub_log_records, tmp_path, quiet):
    import logging

    from images import rgb

    real_resolve = hubmod.resolve_model

    def flaky_resolve(ref, **kwargs):  # what hf_hub_download logs when a connection drops
        logging.getLogger("huggingface_hub.file_download").warning(
            "Error while downloading from %s: %s\nTrying to resume download...", "http://hub/x", "reset"
        )
        return real_resolve(ref, **kwargs)

    monkeypatch.setattr(hubmod, "resolve_model", flaky_resolve)
    rgb().save(tmp_path / "x.png")
    flags = ["-q"] if quiet else []
    code, out, err = bit("classify", str(tmp_path / "x.png"), "-m", str(ckpt["safetensors"]), "-f", "jsonl", *flags)
    assert code == 0, err
    assert len(hub_log_records) == (0 if quiet else 1)


# --------------------------------------------------------------------------- preprocessing in the cache


def test_repo_without_preprocessor_config_is_remembered_for_offline_use(fake_hub, ckpt, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((ckpt["safetensors"] / name).read_bytes())
    fake_hub.add_commit(REPO, bare)
    assert resolve_model(REPO).source == "download"
    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(fake_hub.requests)
    assert resolve_model(REPO).source == "cache"  # the cache knows the repo has no preprocessor config
    assert len(fake_hub.requests) == before


def test_snapshot_missing_its_preprocessor_config_is_not_used_with_default_preprocessing(fake_hub, ckpt, monkeypatch):
    """Another tool (transformers' from_pretrained) may cache only config and weights."""
    from huggingface_hub import hf_hub_download

    sha = fake_hub.add_commit(REPO, ckpt["safetensors"])
    for name in ("config.json", "model.safetensors"):
        hf_hub_download(REPO, name, revision=sha, cache_dir=str(cache_root()), endpoint=fake_hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError):
        resolve_model(f"{REPO}@{sha}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    resolved = resolve_model(f"{REPO}@{sha}")
    assert (resolved.path / "preprocessor_config.json").is_file()
    assert fake_hub.count("GET", "preprocessor_config.json") == 1


@pytest.mark.slow
def test_download_local_dir_is_a_folder_to_carry_offline(fake_hub, ckpt, tmp_path):
    """`bit download MODEL --local-dir DIR` writes the checkpoint's files into DIR; `-m DIR` then
    works with no network and an empty cache; a file DIR holds with other bytes is refused."""
    from relhelpers import bit, bit_env, text

    fake_hub.add_commit(REPO, ckpt["safetensors"])
    target = tmp_path / "carried"
    done = bit("download", REPO, "--local-dir", target)
    assert done.returncode == 0, text(done.stderr)
    assert text(done.stdout).strip() == str(target)
    names = sorted(p.name for p in target.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    for name in names:
        assert (target / name).read_bytes() == (ckpt["safetensors"] / name).read_bytes()
    again = bit("download", REPO, "--local-dir", target)  # the same files: nothing to do, exit 0
    assert again.returncode == 0, text(again.stderr)
    offline = bit_env(HF_HOME=str(tmp_path / "empty-home"), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    image = tmp_path / "x.png"
    from images import rgb

    rgb(width=40, height=40, seed=1).save(image)
    done = bit("classify", image, "-m", target, "--format", "jsonl", env=offline)
    assert done.returncode == 0, text(done.stderr)
    (target / "config.json").write_text("{}")
    clash = bit("download", REPO, "--local-dir", target)
    assert clash.returncode == 2 and "config.json: exists with other content" in text(clash.stderr)
    assert (target / "config.json").read_text() == "{}"  # never replaced
    two = bit("download", REPO, "bit-digits", "--local-dir", tmp_path / "two")
    assert two.returncode == 2 and "one MODEL" in text(two.stderr)


def test_download_local_dir_of_the_bundled_model(tmp_path):
    from relhelpers import bit, text

    done = bit("download", "bit-digits", "--local-dir", tmp_path / "digits")
    assert done.returncode == 0, text(done.stderr)
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]


def test_download_local_dir_files_are_readable_as_any_written_file(tmp_path):
    """The copied files get the modes the user's umask gives new files (0644 under umask 022), as
    `hf download --local-dir` and `cp` do: not a temporary file's private 0600, which another account
    (or the offline machine's service user) could not read."""
    import os
    import stat

    from relhelpers import bit, text

    mask = os.umask(0o022)
    os.umask(mask)
    done = bit("download", "bit-digits", "--local-dir", tmp_path / "digits")
    assert done.returncode == 0, text(done.stderr)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "digits").iterdir()}
    assert set(modes.values()) == {0o666 & ~mask}, modes
