"""The client side of `bit serve`: `bit classify --server URL` sends the files, prints the answers.

Standard library only (no torch, no model code, no HTTP library to import): one image through a
warm server costs about what `bit --help` costs. Requests carry `batch_size` files each, in input
order; the answers become the same `ClassifyResult`s the local command renders. A file that
cannot be read here fails here, with the reason the local command gives.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from bitcli.errors import BitError, InputError, ModelError, UsageError
from bitcli.results import ClassifyResult, Prediction
from bitcli.util import first_line, open_regular, os_error_reason

TIMEOUT_S = 300.0  # one request: upload, queue and model time for up to a batch of images


class Client:
    """A `bit serve` at `url` (http://host:port), with an optional bearer token."""

    def __init__(self, url: str, *, token: str | None = None, max_file_bytes: int = 100_000_000) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"--server {url!r}: give the server's address, e.g. http://127.0.0.1:8765")
        self.url = url.rstrip("/")
        self.token = token
        self.max_file_bytes = max_file_bytes

    def _request(self, path: str, *, body: bytes | None = None, content_type: str | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(self.url, exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelError(f"cannot reach the server at {self.url} ({first_line(reason) if isinstance(reason, BaseException) else reason}); is `bit serve` running?") from None
        except ValueError:
            raise ModelError(f"the server at {self.url} did not answer with JSON; is it `bit serve`?") from None

    def model(self) -> dict[str, Any]:
        return self._request("/v1/models")["models"][0]

    def labels(self) -> list[str]:
        return list(self._request("/v1/labels")["labels"])

    def classify_groups(self, items: Iterable[Any], *, top_k: int, batch_size: int) -> Iterator[list[ClassifyResult]]:
        """One list of results per request of up to `batch_size` inputs, in input order."""
        group: list[Any] = []
        for item in items:
            group.append(item)
            if len(group) == batch_size:
                yield self._classify(group, top_k)
                group = []
        if group:
            yield self._classify(group, top_k)

    def _classify(self, group: list[Any], top_k: int) -> list[ClassifyResult]:
        results: list[ClassifyResult | None] = [None] * len(group)
        parts: list[tuple[int, str, bytes]] = []
        for i, item in enumerate(group):
            data, error = self._read(item)
            if error is not None:
                results[i] = ClassifyResult(path=item.path, error=error)
                continue
            parts.append((i, item.path, data))
        if parts:
            body, content_type = multipart([(path, data) for _, path, data in parts])
            answer = self._request(f"/v1/classify?top_k={top_k}", body=body, content_type=content_type)
            for (i, path, _), record in zip(parts, answer["results"]):
                results[i] = from_record(path, record)
        return [r for r in results if r is not None]


    def search_groups(self, index: str, items: Iterable[Any], *, top_k: int, batch_size: int) -> Iterator[list[Any]]:
        """`bit search` results (QueryResult) per request of up to `batch_size` query images."""
        group: list[Any] = []
        for item in items:
            group.append(item)
            if len(group) == batch_size:
                yield self._search(index, group, top_k)
                group = []
        if group:
            yield self._search(index, group, top_k)

    def _search(self, index: str, group: list[Any], top_k: int) -> list[Any]:
        from bitcli.collection.queries import QueryResult
        from bitcli.collection.scoring import Match

        results: list[Any] = [None] * len(group)
        parts = []
        for i, item in enumerate(group):
            data, error = self._read(item)
            if error is not None:
                results[i] = QueryResult(getattr(item, "path", str(item)), error=error)
            else:
                parts.append((i, item.path, data))
        if parts:
            body, content_type = multipart([(path, data) for _, path, data in parts])
            query = urllib.parse.urlencode({"index": index, "top_k": top_k})
            answer = self._request(f"/v1/search?{query}", body=body, content_type=content_type)
            base = answer.get("base")
            for (i, path, _), record, rows in zip(parts, answer["results"], answer["rows"]):
                if "error" in record:
                    results[i] = QueryResult(path, error=str(record["error"]))
                    continue
                matches = [Match(rank=int(m["rank"]), row=int(r["row"]), path=shown_path(r["recorded"], base), score=float(m["score"]))
                           for m, r in zip(record["matches"], rows)]
                results[i] = QueryResult(path, matches)
        return results

    def _read(self, item: Any) -> tuple[bytes | None, str | None]:
        if isinstance(item, InputError):
            return None, item.reason
        try:
            with open_regular(item.path) as fh:
                data = fh.read(self.max_file_bytes + 1)
        except OSError as exc:
            return None, os_error_reason(exc)
        if len(data) > self.max_file_bytes:
            return None, "larger than the server takes"
        return data, None


def shown_path(recorded: str, base: str | None) -> str:
    """A row's path as `bit search` prints it here: as recorded when that resolves from this
    directory (absolute, or this is the directory `bit embed` ran in), else from here to it."""
    if os.path.isabs(recorded) or not base or os.path.abspath(base) == os.path.abspath(os.getcwd()):
        return recorded
    return os.path.join(os.path.relpath(base), recorded)


def from_record(path: str, record: dict[str, Any]) -> ClassifyResult:
    """A `ClassifyResult` from the API's record (the path is the one given on this command line)."""
    if "error" in record:
        return ClassifyResult(path=path, error=str(record["error"]))
    predictions = [Prediction(rank=int(p["rank"]), index=int(p["index"]), label=str(p["label"]), score=float(p["score"]))
                   for p in record["predictions"]]
    return ClassifyResult(path=path, predictions=predictions)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one part named `file` per (name, bytes)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data in files:
        quoted = name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "%0D").replace("\n", "%0A")
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode("utf-8", "surrogateescape")
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _http_error(url: str, exc: urllib.error.HTTPError) -> BitError:
    try:
        message = json.loads(exc.read()).get("error") or exc.reason
    except (ValueError, OSError, AttributeError):
        message = exc.reason
    if exc.code == 401:
        return UsageError(f"the server at {url} needs a token: set BIT_TOKEN (or --token)")
    if exc.code in (400, 413, 415, 422):
        return UsageError(f"the server refused the request ({exc.code}: {message})")
    return ModelError(f"the server at {url} failed ({exc.code}: {message})")


def token_from_env() -> str | None:
    return os.environ.get("BIT_TOKEN") or None
