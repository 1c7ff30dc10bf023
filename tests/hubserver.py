"""A small fake Hugging Face Hub on 127.0.0.1 for tests, speaking what huggingface_hub 2.x calls.

Served (read from huggingface_hub's `model_info`, `hf_hub_download`, `http_get`):
- `GET /api/models/{repo}` and `GET /api/models/{repo}/revision/{rev}`: `{"id", "sha", "siblings"}`.
- `HEAD|GET /{repo}/resolve/{rev}/{file}` with `X-Repo-Commit`, `ETag`, `Content-Length`,
  `Accept-Ranges`; `Range: bytes=N-` gives 206 with `Content-Range` (used to resume).
- Errors as the hub sends them, in headers (HEAD has no body): 404 `X-Error-Code: RepoNotFound`,
  `RevisionNotFound`, `EntryNotFound` (with `X-Repo-Commit`); a private repo answers 401
  `RepoNotFound`; a gated repo lists its files openly but answers file requests with 401
  (no token) / 403 (wrong token) `GatedRepo`, as the hub does.
No xet headers are ever sent, so the client always takes the plain HTTP download path.

Each repository holds commits (a dict of file name -> bytes) and refs (branch/tag/`refs/pr/N` ->
commit), so `main` and a pinned commit can hold different files. Every request is logged, and a
per-file script of actions ("drop": send half the body then cut the connection; an int: answer
with that status) shapes the next GET responses of that file.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    """One repository: commits (sha -> files) and refs (name -> sha)."""

    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False
    gated: bool = False
    token: str | None = None  # the bearer token that opens a private or gated repo

    def commit_for(self, revision: str) -> str | None:
        """The commit a revision names (a ref or a full commit sha), or None."""
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass
class LoggedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    authorization: str | None


class FakeHub:
    """The fake hub: add repositories, start, point HF_ENDPOINT at `url`, inspect `requests`."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[LoggedRequest] = []
        self.scripts: dict[str, list[str | int]] = defaultdict(list)  # file name -> actions for next GETs
        self.hold: dict[str, int] = {}  # file name -> hold its GETs until this many HEADs of it arrived
        self._heads: dict[str, int] = defaultdict(int)
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- set-up

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes] | Path,
        *,
        refs: tuple[str, ...] = ("main",),
        sha: str | None = None,
    ) -> str:
        """Add a commit with `files` (a dict or a directory whose files are read) and point `refs` at it."""
        if isinstance(files, Path):
            files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        repo = self.repos.setdefault(repo_id, FakeRepo(repo_id))
        if sha is None:
            digest = hashlib.sha1(repo_id.encode())
            for name in sorted(files):
                digest.update(name.encode() + b"\0" + files[name])
            sha = digest.hexdigest()
        repo.commits[sha] = dict(files)
        for ref in refs:
            repo.refs[ref] = sha
        return sha

    def count(self, method: str | None = None, contains: str = "") -> int:
        """How many logged requests match a method (None: any) and contain `contains` in their path."""
        return sum(1 for r in self.requests if (method is None or r.method == method) and contains in r.path)

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            fake = hub

        self._server = _Server(("127.0.0.1", 0), Handler)
        serve = {"poll_interval": 0.05}  # stop() returns quickly
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections: from now on, connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None

    # ---------------------------------------------------------------- used by the handler

    def note_head(self, filename: str) -> None:
        with self._cond:
            self._heads[filename] += 1
            self._cond.notify_all()

    def wait_for_heads(self, filename: str, timeout: float = 20.0) -> None:
        wanted = self.hold.get(filename)
        if wanted is None:
            return
        with self._cond:
            self._cond.wait_for(lambda: self._heads[filename] >= wanted, timeout=timeout)

    def next_action(self, filename: str) -> str | int | None:
        with self._cond:
            script = self.scripts.get(filename)
            return script.pop(0) if script else None


class _Server(ThreadingHTTPServer):
    """A threaded server that remembers its connections, so stopping it also cuts keep-alive ones."""

    daemon_threads = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _HubHandler(BaseHTTPRequestHandler):
    """Request handler; `fake` is set on a per-server subclass."""

    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def do_GET(self) -> None:
        self._dispatch(body=True)

    # ---------------------------------------------------------------- routing

    def _dispatch(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        self.fake.requests.append(
            LoggedRequest(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        if path.startswith("/api/models/"):
            self._api_model(path[len("/api/models/") :], body=body)
        elif "/resolve/" in path:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            revision, _, filename = rest.partition("/")
            self._resolve(unquote(repo_id), unquote(revision), unquote(filename), body=body)
        else:
            self._error(404, "RepoNotFound", "Repository not found", body=body)

    def _api_model(self, rest: str, *, body: bool) -> None:
        parts = rest.split("/")
        repo_id = unquote("/".join(parts[:2]))
        revision = unquote("/".join(parts[3:])) if len(parts) > 3 and parts[2] == "revision" else "main"
        repo = self._repo_or_error(repo_id, body=body, listing=True)
        if repo is None:
            return
        commit = repo.commit_for(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body=body)
            return
        payload = {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": commit,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "siblings": [{"rfilename": name} for name in sorted(repo.commits[commit])],
        }
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, body=body)

    def _resolve(self, repo_id: str, revision: str, filename: str, *, body: bool) -> None:
        repo = self._repo_or_error(repo_id, body=body)
        if repo is None:
            return
        commit = repo.commit_for(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id", body=body)
            return
        content = repo.commits[commit].get(filename)
        if content is None:
            self._error(404, "EntryNotFound", "Entry not found", body=body, extra={"X-Repo-Commit": commit})
            return
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if not body:
            self.fake.note_head(filename)
            self._send(200, content, headers, body=False)
            return
        self.fake.wait_for_heads(filename)
        action = self.fake.next_action(filename)
        if isinstance(action, int):
            self._error(action, None, "scripted failure", body=True)
            return
        start = _range_start(self.headers.get("Range"))
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        if action == "drop":
            self._send_and_drop(status, content[start:], headers)
            return
        self._send(status, content[start:], headers, body=True)

    def _repo_or_error(self, repo_id: str, *, body: bool, listing: bool = False) -> FakeRepo | None:
        """The repo, or None after answering with the hub's error (a gated repo's listing is public)."""
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", body=body)
            return None
        if repo.private or (repo.gated and not listing):
            auth = self.headers.get("Authorization")
            if auth == f"Bearer {repo.token}" and repo.token:
                return repo
            if repo.gated:
                status = 403 if auth else 401
                self._error(status, "GatedRepo", "Access to model is restricted", body=body)
            else:
                self._error(401, "RepoNotFound", "Invalid username or password.", body=body)
            return None
        return repo

    # ---------------------------------------------------------------- responses

    def _error(
        self, status: int, code: str | None, message: str, *, body: bool, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, body=body)

    def _send(self, status: int, content: bytes, headers: dict[str, str], *, body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def _send_and_drop(self, status: int, content: bytes, headers: dict[str, str]) -> None:
        """Announce the full body, send half of it, then cut the connection."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _range_start(header: str | None) -> int:
    """The start offset of a `Range: bytes=N-` header (0 when absent)."""
    if not header or not header.startswith("bytes="):
        return 0
    first = header[len("bytes=") :].split(",")[0]
    return int(first.split("-")[0] or 0)
