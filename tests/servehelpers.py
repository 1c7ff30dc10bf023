"""A real `bit serve` for the tests: started as a subprocess on a free port, stopped afterwards."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from relhelpers import bit_env

READY = re.compile(r"serving (.+) on (http://\S+) \(web page: /, API docs: /docs\)")


class Server:
    def __init__(self, *args: str, env: dict | None = None, timeout: float = 120):
        command = [sys.executable, "-m", "bitcli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(command, env=env or bit_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stderr.readline()
            if not line:
                self.proc.wait(timeout=10)
                pytest.fail(f"bit serve ended before it was ready (exit {self.proc.returncode}): {''.join(self.lines)}")
            self.lines.append(line)
            found = READY.search(line)
            if found:
                self.model, self.url = found.group(1), found.group(2)
                break
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("bit serve was not ready in time")

    def request(self, path: str, *, body: bytes | None = None, headers: dict | None = None, method: str | None = None):
        """(status, headers, body bytes) of one request; HTTP errors are answers, not exceptions."""
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def json(self, path: str, **kw):
        status, headers, body = self.request(path, **kw)
        return status, headers, json.loads(body)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.rest = self.proc.stderr.read()
        return self.proc.returncode


def upload(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    from bitcli.serve.client import multipart

    body, content_type = multipart(files)
    return body, {"Content-Type": content_type}


def read(path: Path) -> bytes:
    return Path(path).read_bytes()
