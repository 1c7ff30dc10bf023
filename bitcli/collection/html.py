"""A self-contained HTML page of search results or duplicate groups (`--html FILE`): thumbnails
embedded once each as base64 JPEGs, each linking to its file; everything HTML-escaped, no script.
Written atomically, and only over a page bitcli wrote (its `generator` meta tag).
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from html import escape
from pathlib import Path
from typing import Callable, Iterable, Sequence

from bitcli.collection.dedup import DuplicateGroup
from bitcli.collection.queries import QueryResult
from bitcli.output import escapes
from bitcli.output.records import check_own_file
from bitcli.util import DEFAULT_MAX_PIXELS, write_atomic

THUMB_PX = 160
MAX_ENTRIES = 1000  # queries or groups shown; the page says how many more there were
GENERATOR_TAG = '<meta name="generator" content="bitcli'
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em}h2{font-size:1.05em;margin:1.4em 0 .4em}
.about{color:#666}.row{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px;background:#fff;border:1px solid #ddd;border-radius:4px;padding:5px}
figure.lead{border-color:#4a7fd4;box-shadow:0 0 0 1px #4a7fd4}
.thumb{display:block;width:160px;height:160px;background:#eee center/contain no-repeat}
.none{display:flex;align-items:center;justify-content:center;color:#999;font-size:.9em}
figcaption{font-size:.85em;margin-top:4px;word-break:normal;overflow-wrap:normal}
.path{display:block;overflow:hidden;text-overflow:ellipsis}.seg{white-space:nowrap}
figure.kept{border-color:#2a8a3e;box-shadow:0 0 0 2px #2a8a3e}
.badge{display:inline-block;font-size:.8em;font-weight:600;padding:0 .4em;border-radius:3px;margin-right:.3em}
.keep{background:#2a8a3e;color:#fff}
.score{font-weight:600;font-variant-numeric:tabular-nums}.error{color:#b00}
"""


def search_page(entries: Sequence[QueryResult], locate: Callable[[str], str | None], *, title: str, about: str = "", version: str = "") -> str:
    """Each query beside its matches, scores under the pictures."""
    shown = list(entries[:MAX_ENTRIES])
    files = [locate(e.query) for e in shown] + [locate(m.path) for e in shown for m in e.matches]
    thumbs = _Thumbnails(f for f in files if f)
    sections = []
    for entry in shown:
        head = f"<h2>Query: {_text(entry.query)}</h2>"
        if entry.error is not None:
            sections.append(f'<section>{head}<p class="error">{_text(entry.error)}</p></section>')
            continue
        cards = [_card(entry.query, locate(entry.query), thumbs, "query", lead=True)]
        cards += [_card(m.path, locate(m.path), thumbs, f"#{m.rank} {_score(m.score)}") for m in entry.matches]
        if not entry.matches:
            cards.append("<p>no match</p>")
        sections.append(f'<section>{head}<div class="row">{"".join(cards)}</div></section>')
    return _page(title, about, sections, len(entries) - len(shown), "queries", thumbs, version)


def dedup_page(
    groups: Sequence[DuplicateGroup],
    locate: Callable[[str], str | None],
    *,
    title: str,
    about: str = "",
    version: str = "",
    kept: Iterable[str] = (),
) -> str:
    """Each group side by side, the first member marked, each with its similarity to the first;
    the members in `kept` (what `--keep` keeps) carry a "keep" badge."""
    kept = set(kept)
    shown = list(groups[:MAX_ENTRIES])
    thumbs = _Thumbnails(f for g in shown for f in map(locate, g.paths) if f)
    sections = []
    for group in shown:
        head = (
            f"<h2>Group {group.group}: {len(group.paths)} images, similarity "
            f"{_score(group.min_score)} to {_score(group.max_score)}</h2>"
        )
        cards = [
            _card(
                path, locate(path), thumbs,
                ('<span class="badge keep">keep</span>' if path in kept else "") + ("first" if i == 0 else f"{_score(score)} to first"),
                lead=i == 0, kept=path in kept,
            )
            for i, (path, score) in enumerate(zip(group.paths, group.scores_to_first))
        ]
        sections.append(f'<section>{head}<div class="row">{"".join(cards)}</div></section>')
    return _page(title, about, sections, len(groups) - len(shown), "groups", thumbs, version)


def write_page(path: str | os.PathLike[str], page: str) -> None:
    """Write atomically; refuse (UsageError) to replace anything but a page bitcli wrote."""
    path = check_target(path)
    write_atomic(path, page.encode("utf-8"))


def check_target(path: str | os.PathLike[str]) -> Path:
    """`path` if a page may be written there (UsageError otherwise): new, or a page bitcli wrote."""
    return check_own_file(path, "--html", "bitcli", lambda head: GENERATOR_TAG.encode() in head[:4096])


# -- pieces ------------------------------------------------------------------------------------


class _Thumbnails:
    """Distinct files -> CSS class names holding their embedded JPEG (made in a thread pool)."""

    def __init__(self, files: Iterable[str]):
        unique = list(dict.fromkeys(files))
        workers = min(8, os.cpu_count() or 1, max(1, len(unique)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            made = list(pool.map(thumbnail_jpeg, unique))
        self.classes = {f: f"i{n}" for n, (f, data) in enumerate(zip(unique, made)) if data}
        self.data = {self.classes[f]: data for f, data in zip(unique, made) if data}

    def css(self) -> str:
        return "".join(
            f".{name}{{background-image:url(data:image/jpeg;base64,{base64.b64encode(data).decode('ascii')})}}\n"
            for name, data in self.data.items()
        )


def thumbnail_jpeg(path: str, size: int = THUMB_PX, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes | None:
    """A JPEG at most `size` on its long side (the pages' and `bit serve`'s), or None when the image cannot be read."""
    from bitcli.decode import open_image
    from bitcli.errors import InputError

    try:
        image = open_image(path, max_pixels=max_pixels, draft_size=(size * 2, size * 2))
        image.thumbnail((size, size))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=80)
        return buf.getvalue()
    except (InputError, OSError, ValueError):
        return None


def _card(path: str, found: str | None, thumbs: _Thumbnails, caption: str, lead: bool = False, kept: bool = False) -> str:
    name = _text(path)
    css = thumbs.classes.get(found) if found else None
    picture = f'<span class="thumb {css}" role="img" aria-label="{name}"></span>' if css else '<span class="thumb none">no preview</span>'
    if found:
        picture = f'<a href="{escape(Path(os.path.abspath(found)).as_uri())}">{picture}</a>'
    classes = " ".join(c for c, on in (("lead", lead), ("kept", kept)) if on)
    cls = f' class="{classes}"' if classes else ""
    return f'<figure{cls}>{picture}<figcaption>{caption}<span class="path" title="{name}">{_path_text(path)}</span></figcaption></figure>'


def _path_text(path: str) -> str:
    """The path, breakable only after a separator: each part a no-wrap span (a part longer than
    the card ends in an ellipsis; the full path is the caption's title)."""
    parts = path.replace(os.sep, "/").split("/") if os.sep != "/" else path.split("/")
    return "/<wbr>".join(f'<span class="seg">{_text(part)}</span>' for part in parts)


def _score(value: float) -> str:
    """A score to 4 decimals, its full value (the shortest float32 decimal) as the title."""
    return f'<span class="score" title="{escape(repr(float(value)))}">{float(value):.4f}</span>'


def _text(value: str) -> str:
    """HTML-escaped, with undecodable file-name bytes (surrogates) shown as U+FFFD."""
    clean = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return escape(clean, quote=True)


def _page(title: str, about: str, sections: list[str], omitted: int, noun: str, thumbs: _Thumbnails, version: str) -> str:
    more = f'<p class="about">{omitted} more {noun} not shown (the page shows the first {MAX_ENTRIES}).</p>' if omitted else ""
    empty = "" if sections else f"<p>No {noun}.</p>"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{GENERATOR_TAG} {escape(version)}">\n'
        f"<title>{_text(escapes.shown(title))}</title>\n<style>{_STYLE}{thumbs.css()}</style></head>\n"
        f'<body><h1>{_text(escapes.shown(title))}</h1><p class="about">{_text(about)}</p>\n'
        + "\n".join(sections)
        + f"\n{empty}{more}</body></html>\n"
    )
