"""Helpers for the collection tests: write an embedding as `bit embed` lays it out, and the
straightforward all-pairs computations the blocked code is checked against."""

from __future__ import annotations

from html.parser import HTMLParser

from pathlib import Path

import numpy as np

from bitcli.store.metadata import EmbeddingMetadata, FileIdentity, SidecarPaths, stage_metadata
from bitcli.store.settings import EmbedSettings


def write_metadata(paths: SidecarPaths, meta: EmbeddingMetadata, rows) -> EmbeddingMetadata:
    """The sidecar on its own, as a run publishes it (`stage_metadata`, then the row file and the
    header renamed into place, the header last)."""
    import os

    staged = stage_metadata(paths, meta, rows)
    os.replace(staged["files"], paths.files)
    os.replace(staged["meta"], paths.meta)
    return meta


def write_embedding(
    directory: Path, vectors: np.ndarray, paths: list[str] | None = None, *, name: str = "e", meta: bool = True, cwd: str | None = None
) -> Path:
    """`NAME.npy`, `NAME.paths.txt` and (with `meta`) the metadata sidecar; the `.npy` path."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.npy"
    np.save(out, vectors)
    paths = paths if paths is not None else [f"img{i:05d}.jpg" for i in range(len(vectors))]
    manifest = directory / f"{name}.paths.txt"
    manifest.write_text("".join(p + "\n" for p in paths), encoding="utf-8", errors="surrogateescape")
    if meta:
        header = EmbeddingMetadata(
            rows=len(vectors),
            feature_dim=vectors.shape[1],
            settings=EmbedSettings(
                model={"reference": "tiny", "commit": None, "weights": ["model.safetensors"], "precision": "fp32"},
                preprocessing={"resize": 32}, decode={}, dtype=vectors.dtype.name, normalize=False,
            ),
            cwd=cwd,
            array=out.name,
            manifest=manifest.name,
        )
        rows = [(p, _identity(p, cwd, i)) for i, p in enumerate(paths)]
        write_metadata(SidecarPaths.for_output(out), header, rows)
    return out


def _identity(path: str, cwd: str | None, i: int) -> FileIdentity:
    """A file's real identity when it exists (as `bit embed` records it), else a made-up one."""
    import os

    full = os.path.join(cwd or "", path)
    if os.path.isfile(full):
        info = os.stat(full)
        return FileIdentity(size=info.st_size, mtime_ns=info.st_mtime_ns)
    return FileIdentity(size=100 + i, mtime_ns=10**18 + i)


def clustered(rows: int, dim: int, *, seed: int = 0, clusters: int = 50, dtype=np.float32) -> np.ndarray:
    """Rows around a few centres (embeddings have structure; pure noise has no near neighbours)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, rows)] + 0.6 * rng.standard_normal((rows, dim))
    return x.astype(dtype)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 cosine similarity, zero rows scoring 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    na[na == 0] = 1
    nb[nb == 0] = 1
    return (a / na) @ (b / nb).T


def brute_force_top_k(vectors: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> list[int]:
    """Rows by float64 cosine, highest first, ties by row."""
    scores = cosine_matrix(query[None, :], vectors)[0]
    order = sorted(range(len(vectors)), key=lambda r: (-scores[r], r))
    return [r for r in order if r != exclude][:k]


def all_pairs_groups(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components (size >= 2) of the full similarity matrix, by depth-first search."""
    sims = cosine_matrix(vectors, vectors)
    n = len(vectors)
    seen = [False] * n
    groups = []
    for start in range(n):
        if seen[start]:
            continue
        stack, members = [start], []
        seen[start] = True
        while stack:
            row = stack.pop()
            members.append(row)
            for other in np.flatnonzero(sims[row] >= threshold):
                if not seen[other]:
                    seen[other] = True
                    stack.append(int(other))
        if len(members) > 1:
            groups.append(sorted(members))
    return sorted(groups, key=lambda g: (-len(g), g[0]))


SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def make_duplicates(directory: Path) -> dict[str, str]:
    """The six sample photos plus real near-duplicates of them: a byte-identical copy, JPEG
    re-encodes at quality 10 and 30, a copy resized to half, and two 1% crops. The copy -> original
    names (with the tests' tiny random model each copy's nearest row is its original)."""
    import shutil

    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for source in sorted(SAMPLES.iterdir()):
        if source.suffix in (".jpg", ".png"):
            shutil.copyfile(source, directory / source.name)

    def rgb(name: str) -> Image.Image:
        return Image.open(directory / name).convert("RGB")

    def crop(name: str, share: float = 0.01) -> Image.Image:
        image = rgb(name)
        dx, dy = int(image.width * share), int(image.height * share)
        return image.crop((dx, dy, image.width - dx, image.height - dy))

    shutil.copyfile(directory / "astronaut.jpg", directory / "astronaut_copy.jpg")
    rgb("chelsea.png").save(directory / "chelsea_q10.jpg", quality=10)
    rgb("camera.png").save(directory / "camera_q30.jpg", quality=30)
    half = rgb("coffee.png")
    half.resize((half.width // 2, half.height // 2)).save(directory / "coffee_half.png")
    crop("retina.jpg").save(directory / "retina_crop.png")
    crop("rocket.jpg").save(directory / "rocket_crop.png")
    return {
        "astronaut_copy.jpg": "astronaut.jpg",
        "chelsea_q10.jpg": "chelsea.png",
        "camera_q30.jpg": "camera.png",
        "coffee_half.png": "coffee.png",
        "retina_crop.png": "retina.jpg",
        "rocket_crop.png": "rocket.jpg",
    }


class Cards(HTMLParser):
    """Each figure of a page: its path (the joined parts), the parts, its scores, its badges."""

    def __init__(self):
        super().__init__()
        self.cards: list[dict] = []
        self.scores: list[tuple[str, str]] = []  # (text, title) of every score on the page
        self.css = ""
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        cls = attrs.get("class") or ""
        if tag == "figure":
            self.cards.append({"path": "", "parts": [], "badges": [], "classes": cls.split(), "title": None})
        if tag == "span":
            if cls == "path":
                self.cards[-1]["title"] = attrs.get("title")
            if cls == "seg":
                self.cards[-1]["parts"].append("")
            if cls == "score":
                self.scores.append(("", attrs.get("title")))
            if cls.startswith("badge"):
                self.cards[-1]["badges"].append("")
        self._stack.append(cls if tag == "span" else tag)

    def handle_endtag(self, tag):
        self._stack.pop()

    def handle_data(self, data):
        where = self._stack[-1] if self._stack else ""
        if where == "style":
            self.css += data
        if "path" in self._stack:
            self.cards[-1]["path"] += data
            if where == "seg":
                self.cards[-1]["parts"][-1] += data
        if where == "score":
            self.scores[-1] = (self.scores[-1][0] + data, self.scores[-1][1])
        if where.startswith("badge"):
            self.cards[-1]["badges"][-1] += data


def read_cards(text: str) -> list[dict]:
    reader = Cards()
    reader.feed(text)
    reader.close()
    return reader.cards

