"""Issue 12, the hub: every network operation ends in bounded time; garbage answers are model errors.

A misbehaving hub (`tests/badhub.py`) on 127.0.0.1 trickles its answers one byte a second, answers
HTML instead of JSON, leaves out the commit, or redirects forever. `bit classify -m org/name` must
then use the cached model when there is one (exit 0), and otherwise stop within the deadline
(`BIT_HUB_TIMEOUT`, 2 s here) with exit 3 and one line. Each child runs under a wall-clock bound,
so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import pytest

from badhub import BadHub
from clihelpers import make_images
from hubserver import FakeHub
from relhelpers import assert_one_error_line, bit, bit_env, error_lines

REPO = "acme/tiny-bit"
DEADLINE = "2"
BOUND = 120  # seconds a child may take before the test calls it a hang


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("photos"), 1)[0]


def cache_the_model(ckpt, tmp_path) -> None:
    """`bit download` from a well-behaved hub into this test's cache (HF_HOME from conftest)."""
    good = FakeHub().start()
    try:
        good.add_commit(REPO, ckpt)
        done = bit("download", REPO, cwd=tmp_path, env=bit_env(HF_ENDPOINT=good.url))
        assert done.returncode == 0, error_lines(done)
    finally:
        good.stop()


def classify(photo, tmp_path, hub: BadHub):
    env = bit_env(HF_ENDPOINT=hub.url, BIT_HUB_TIMEOUT=DEADLINE)
    return bit("classify", photo, "-m", REPO, "-f", "jsonl", cwd=tmp_path, env=env, timeout=BOUND)


CASES = [
    pytest.param("trickle", "ok", id="metadata-trickles"),
    pytest.param("garbage", "ok", id="metadata-not-json"),
    pytest.param("no-sha", "ok", id="metadata-without-commit"),
    pytest.param("redirect", "ok", id="metadata-redirects-forever"),
    pytest.param("ok", "trickle", id="download-trickles"),
    pytest.param("ok", "redirect", id="download-redirects-forever"),
]


@pytest.mark.slow
@pytest.mark.parametrize("api, download", CASES)
def test_a_misbehaving_hub_is_a_model_error_when_nothing_is_cached(ckpt, photo, tmp_path, api, download):
    hub = BadHub(REPO, ckpt, api=api, download=download).start()
    try:
        result = classify(photo, tmp_path, hub)
    finally:
        hub.stop()
    assert_one_error_line(result, 3, "tiny-bit")
    assert result.stdout == b""


@pytest.mark.slow
@pytest.mark.parametrize("api", ["trickle", "garbage", "no-sha", "redirect"])
def test_a_misbehaving_hub_falls_back_to_the_cached_model(ckpt, photo, tmp_path, api):
    cache_the_model(ckpt, tmp_path)
    hub = BadHub(REPO, ckpt, api=api).start()
    try:
        result = classify(photo, tmp_path, hub)
    finally:
        hub.stop()
    assert result.returncode == 0, error_lines(result)
    assert b'"predictions"' in result.stdout


@pytest.mark.slow
def test_the_deadline_is_named_in_the_message(ckpt, photo, tmp_path):
    hub = BadHub(REPO, ckpt, api="trickle").start()
    try:
        result = classify(photo, tmp_path, hub)
    finally:
        hub.stop()
    assert_one_error_line(result, 3, "BIT_HUB_TIMEOUT")


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_deadline_is_a_usage_error(photo, tmp_path, value):
    result = bit("classify", photo, "-m", REPO, cwd=tmp_path, env=bit_env(BIT_HUB_TIMEOUT=value))
    assert_one_error_line(result, 2, "BIT_HUB_TIMEOUT")


# -- the deadline itself (bitcli/hub/deadline.py) -------------------------------------------------------


def test_an_operation_that_keeps_moving_outlives_the_deadline():
    import time

    from bitcli.hub.deadline import Deadline, bounded

    deadline = Deadline(1.0)

    def download() -> str:
        for _ in range(8):  # 2 s in all, two periods, moving every 0.25 s
            time.sleep(0.25)
            deadline.moved()
        return "done"

    assert bounded(download, deadline) == "done"


def test_an_operation_that_stalls_ends_in_hub_timeout_and_errors_reach_the_caller():
    import threading

    from bitcli.hub.deadline import Deadline, HubTimeout, bounded

    never = threading.Event()
    with pytest.raises(HubTimeout, match="BIT_HUB_TIMEOUT"):
        bounded(lambda: never.wait(60), Deadline(0.2))
    never.set()

    def broken() -> None:
        raise ValueError("not JSON")

    with pytest.raises(ValueError, match="not JSON"):
        bounded(broken, Deadline(30))
