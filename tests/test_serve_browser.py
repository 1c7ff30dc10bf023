"""`bit serve`'s web page in a real browser: Debian's chromium, headless, driven by Playwright.

The page is uploaded an image through its file input, and the rendered table must show the
API's answer for that image. Skipped where chromium or Playwright is missing (`.ci/run` installs
both).
"""

from __future__ import annotations

import json
import shutil

import pytest

from relhelpers import ROOT
from servehelpers import Server, read, upload

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")]

# The flags a closed network needs (background networking would try to reach Google's hosts).
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_page_classifies_an_uploaded_image(browser, token, tmp_path):
    from relhelpers import bit_env

    digit = sorted((ROOT / "sample_digits" / "7").glob("*.png"))[0]
    server = Server("-m", "bit-digits", env=bit_env(**({"BIT_TOKEN": token} if token else {})))
    try:
        body, headers = upload([(digit.name, read(digit))])
        if token:
            headers["Authorization"] = f"Bearer {token}"
        _, _, expected = server.json("/v1/classify?top_k=3", body=body, headers=headers)
        expected = expected["results"][0]["predictions"]
        page = browser.new_page()
        page.goto(server.url + "/")
        if token:
            page.wait_for_selector("#token-row:not([hidden])")
            page.fill("#token", token)
            page.click("#token-save")
        page.wait_for_function("document.getElementById('model').textContent.startsWith('model: bit-digits')")
        page.fill("#topk", "3")
        page.set_input_files("#files", str(digit))
        page.wait_for_selector(".result tr.prediction")
        assert page.inner_text(".result .name") == digit.name
        rows = page.query_selector_all(".result tr.prediction")
        shown = [(r.query_selector(".label").inner_text(), r.query_selector(".probability").inner_text()) for r in rows]
        assert shown == [(p["label"], f"{100 * p['score']:.2f}%") for p in expected]
        page.close()
    finally:
        server.stop()


def test_page_shows_a_broken_file_as_an_error(browser, tmp_path):
    broken = tmp_path / "broken <i>x.png"
    broken.write_bytes(b"not an image")
    server = Server("-m", "bit-digits")
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.set_input_files("#files", str(broken))
        page.wait_for_selector(".result .error")
        assert page.inner_text(".result .name") == broken.name  # a name is text, never markup
        assert page.inner_text(".result .error") == "error: not an image"
        assert page.query_selector(".result i") is None
        page.close()
    finally:
        server.stop()


def test_page_sends_many_and_large_files_in_requests_the_server_takes(browser, tmp_path):
    """Dropping more files than one request may carry (here 2 files, 2 MB) still classifies them
    all, request by request; a file over the body limit alone gets its own error card."""
    import numpy as np
    from PIL import Image

    digits = sorted((ROOT / "sample_digits").glob("*/*.png"))[:5]
    big = tmp_path / "big.png"
    Image.fromarray((np.random.RandomState(0).rand(1000, 1000, 3) * 255).astype("uint8")).save(big)
    server = Server("-m", "bit-digits", "--max-queue", "2", "--max-body", "2MB")
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.startsWith('model: bit-digits')")
        page.set_input_files("#files", [str(p) for p in digits] + [str(big)])
        page.wait_for_function("document.querySelectorAll('.result').length === 6 && !document.querySelector('.busy')")
        assert page.query_selector("#results > p.error") is None
        cards = {c.query_selector(".name").inner_text(): c for c in page.query_selector_all(".result")}
        assert "larger than the server takes" in cards["big.png"].query_selector(".error").inner_text()
        for p in digits:
            assert cards[p.name].query_selector("tr.prediction .label").inner_text() == p.parent.name
        page.close()
    finally:
        server.stop()
