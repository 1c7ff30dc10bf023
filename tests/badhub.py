"""A misbehaving Hugging Face Hub on 127.0.0.1, for the deadline and garbage-answer tests.

It serves one repository, and answers the metadata API (`/api/models/...`) and file requests
(`/{repo}/resolve/{rev}/{file}`) in a chosen way:

- "ok":       what the hub sends (`tests/hubserver.py` has the full fake hub; this is the minimum).
- "trickle":  the status line and headers at once, then the body one byte per second, forever.
- "garbage":  200 with a body that is not JSON (an HTML error page from a proxy, say).
- "no-sha":   200 with JSON that lacks the commit (`sha`) and the file list.
- "redirect": 302 to the same resource under another query string, forever.

Every trickling connection stops when the server is stopped, so a test never leaves one behind.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class BadHub:
    def __init__(self, repo_id: str, files: Path, *, api: str = "ok", download: str = "ok"):
        self.repo_id = repo_id
        self.files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        self.sha = hashlib.sha1("\0".join([repo_id, *sorted(self.files)]).encode()).hexdigest()
        self.api = api
        self.download = download
        self.stopped = threading.Event()
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]  # type: ignore[union-attr]
        return f"http://{host}:{port}"

    def start(self) -> "BadHub":
        hub = self

        class Handler(_Handler):
            bad = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    bad: BadHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet tests
        pass

    def do_GET(self):
        self._route(body=True)

    def do_HEAD(self):
        self._route(body=False)

    def _route(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        self.bad.requests.append(f"{self.command} {self.path}")
        if path.startswith("/api/models/"):
            self._answer(self.bad.api, self._model_info(), "application/json", body=body)
        elif "/resolve/" in path:
            name = unquote(path.rsplit("/", 1)[-1])
            content = self.bad.files.get(name)
            if content is None:
                self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.bad.sha}, body=body)
                return
            mode = self.bad.download if body or self.bad.download == "redirect" else "ok"
            headers = {"X-Repo-Commit": self.bad.sha, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'}
            self._answer(mode, content, "application/octet-stream", body=body, headers=headers)
        else:
            self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body=body)

    def _model_info(self) -> bytes:
        return json.dumps({
            "id": self.bad.repo_id,
            "sha": self.bad.sha,
            "siblings": [{"rfilename": name} for name in sorted(self.bad.files)],
        }).encode()

    def _answer(self, mode: str, content: bytes, kind: str, *, body: bool, headers: dict | None = None) -> None:
        headers = {"Content-Type": kind, **(headers or {})}
        if mode == "ok":
            self._send(200, content, headers, body=body)
        elif mode == "garbage":
            self._send(200, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"}, body=body)
        elif mode == "no-sha":
            self._send(200, json.dumps({"id": self.bad.repo_id}).encode(), headers, body=body)
        elif mode == "redirect":
            query = urlsplit(self.path).query
            hop = int(query.rpartition("=")[2] or 0) + 1 if query.startswith("hop=") else 1
            location = f"{urlsplit(self.path).path}?hop={hop}"
            self._send(302, b"", {"Location": location}, body=body)
        elif mode == "trickle":
            self._trickle(content, headers, body=body)
        else:
            raise ValueError(mode)

    def _send(self, status: int, content: bytes, headers: dict, *, body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def _trickle(self, content: bytes, headers: dict, *, body: bool) -> None:
        """Headers now, then one byte a second (padding a short body), until the server stops."""
        payload = content + b" " * max(0, 4096 - len(content))
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.flush()
        if not body:
            return
        for byte in payload:
            if self.bad.stopped.wait(1.0):
                break
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                break
        self.close_connection = True
