"""HTML pages: they parse, reference every match, embed thumbnails, escape names, never clobber."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bitcli.collection.dedup import find_groups
from bitcli.collection.html import dedup_page, search_page, write_page
from bitcli.collection.queries import QueryResult
from bitcli.collection.index import open_index
from bitcli.collection.exact import exact_search
from bitcli.errors import UsageError
from collectionfiles import write_embedding

EVIL = '<b onclick="alert(1)">&x.png'


class PageReader(HTMLParser):
    """Collects the text of `class="path"` spans, link targets, aria labels and CSS."""

    def __init__(self):
        super().__init__()
        self.paths, self.hrefs, self.labels, self.styles, self.h2 = [], [], [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.hrefs.append(attrs["href"])
        if attrs.get("aria-label"):
            self.labels.append(attrs["aria-label"])
        if self._in == "path" and tag == "span":
            self._depth += 1  # a part of the path (the page breaks names only between parts)
            return
        if tag in ("style", "h2") or attrs.get("class") == "path":
            self._in = tag if tag in ("style", "h2") else "path"
            self._depth = 1
            {"style": self.styles, "h2": self.h2, "path": self.paths}[self._in].append("")

    def handle_endtag(self, tag):
        if self._in == "path" and tag == "span":
            self._depth -= 1
            self._in = None if self._depth == 0 else "path"
        elif tag in ("style", "h2"):
            self._in = None

    def handle_data(self, data):
        if self._in:
            {"style": self.styles, "h2": self.h2, "path": self.paths}[self._in][-1] += data


def read_page(text: str) -> PageReader:
    reader = PageReader()
    reader.feed(text)
    reader.close()
    return reader


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """Five small images, one with a hostile name, and an index over them (plus a missing file)."""
    monkeypatch.chdir(tmp_path)
    names = ["a.png", "b.png", "c.png", EVIL, "d.jpg"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((30 + i, 40, 3), 40 * i, dtype=np.uint8)).save(name, format="PNG" if name.endswith("png") else "JPEG")
    names.append("missing.png")
    vectors = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    vectors[1] = vectors[0] + 0.01
    vectors[3] = vectors[0] + 0.02
    return open_index(write_embedding(tmp_path / "out", vectors, names, cwd=str(tmp_path)))


def test_search_page_parses_and_references_every_match(photos):
    results = exact_search(photos, photos.take([0, 2]), 5, exclude=[0, 2])
    entries = [QueryResult("a.png", results[0]), QueryResult("c.png", results[1]), QueryResult("broken.jpg", error="not an image")]
    page = search_page(entries, photos.locate, title="bit search out/e.npy", about="6 rows", version="0.1.0")
    reader = read_page(page)
    for entry in entries[:2]:
        for match in entry.matches:
            assert match.path in reader.paths
            assert str(match.score) in page
    assert reader.h2 == ["Query: a.png", "Query: c.png", "Query: broken.jpg"]
    assert "not an image" in page
    hrefs = {Path(h.removeprefix("file://")).name for h in reader.hrefs}
    assert {"a.png", "b.png", "c.png"} <= hrefs and "missing.png" not in hrefs
    assert page.count("no preview") >= 1  # the missing file has no picture but is listed
    assert "missing.png" in reader.paths


def test_thumbnails_are_embedded_once_each_as_jpeg(photos):
    results = exact_search(photos, photos.take([0, 1]), 5)
    page = search_page([QueryResult("a.png", results[0]), QueryResult("b.png", results[1])], photos.locate, title="t")
    css = read_page(page).styles[0]
    blobs = re.findall(r"\.(i\d+)\{background-image:url\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)\}", css)
    shown = {"a.png", "b.png"} | {m.path for r in results for m in r}
    assert len(blobs) == len(shown - {"missing.png"})  # each once, though most appear twice
    for _, blob in blobs:
        image = Image.open(io.BytesIO(base64.b64decode(blob)))
        assert image.format == "JPEG" and max(image.size) <= 160
    assert "src=" not in page and "http" not in page  # nothing outside the page


def test_names_are_escaped(photos):
    groups = find_groups(photos, 0.99)
    page = dedup_page(groups, photos.locate, title=EVIL, about="threshold 0.99")
    assert "<b " not in page and "<script" not in page
    reader = read_page(page)
    assert EVIL in reader.paths and EVIL in reader.labels


def test_dedup_page_shows_every_group_member_with_its_score(photos):
    groups = find_groups(photos, 0.99)
    assert [g.paths for g in groups] == [["a.png", "b.png", EVIL]]
    page = dedup_page(groups, photos.locate, title="bit dedup", version="0.1.0")
    reader = read_page(page)
    assert reader.paths == ["a.png", "b.png", EVIL]
    assert reader.h2[0].startswith("Group 1: 3 images")
    for score in groups[0].scores_to_first[1:]:
        assert f'title="{score}">{score:.4f}</span> to first' in page


def test_an_empty_result_still_makes_a_page():
    assert "No groups." in dedup_page([], lambda p: None, title="bit dedup")


def test_undecodable_file_names_are_shown_with_a_replacement_character(tmp_path):
    page = search_page([QueryResult("caf\udce9.jpg", [])], lambda p: None, title="t")
    page.encode("utf-8")  # no lone surrogate left
    assert "caf\ufffd.jpg" in page


def test_write_page_replaces_only_its_own_pages(tmp_path):
    target = tmp_path / "report.html"
    write_page(target, dedup_page([], lambda p: None, title="one"))
    write_page(target, dedup_page([], lambda p: None, title="two"))  # its own page: replaced
    assert "two" in target.read_text()
    foreign = tmp_path / "notes.html"
    foreign.write_text("<html>my notes</html>")
    with pytest.raises(UsageError, match="not written by bitcli"):
        write_page(foreign, "<html></html>")
    assert foreign.read_text() == "<html>my notes</html>"
    with pytest.raises(UsageError, match="not a regular file"):
        write_page(tmp_path, "<html></html>")
    with pytest.raises(UsageError, match="does not exist"):
        write_page(tmp_path / "no" / "where.html", "<html></html>")


def test_a_symbolic_link_is_never_replaced_even_to_a_page_bitcli_wrote(tmp_path):
    page = tmp_path / "page.html"
    write_page(page, dedup_page([], lambda p: None, title="mine"))
    link = tmp_path / "link.html"
    link.symlink_to(page)
    with pytest.raises(UsageError, match="symbolic link"):
        write_page(link, dedup_page([], lambda p: None, title="other"))
    assert link.is_symlink() and "mine" in page.read_text()
