"""The client side of `bit serve`: `--server URL` sends the files, the answers become the records
the local command renders. Standard library only (no torch): as cheap to start as `bit --help`.
A file that cannot be read here fails here, with the local command's reason."""

from __future__ import annotations

import itertools
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from bitcli.errors import BitError, InputError, ModelError, UsageError
from bitcli.results import ClassifyResult, Prediction
from bitcli.serve import sendable
from bitcli.util import NotRegularFile, first_line, open_regular, os_error_reason

TIMEOUT_S = 300.0  # one request: upload, queue and model time for up to a batch of images
BUSY_S = 120.0  # how long a busy server (503 with Retry-After) is waited for, in all, per request


class Client:
    """A `bit serve` at `url` (http://host:port), with an optional bearer token."""

    def __init__(self, url: str, *, token: str | None = None, max_file_bytes: int = 100_000_000) -> None:
        if not _server_address(url):
            raise UsageError(f"--server {url!r}: give the server's address, e.g. http://127.0.0.1:8765")
        if token is not None and not sendable(token):
            raise UsageError("BIT_TOKEN: a token is letters, digits and punctuation only (no spaces, no other characters)")
        self.url = url.rstrip("/")
        self.token = token
        self.max_file_bytes = max_file_bytes
        self.max_files: int | None = None  # the server's limits, once /v1/models said them

    def _request(self, path: str, *, body: bytes | None = None, content_type: str | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST" if body is not None else "GET")
        waited = 0.0
        while True:
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                pause = _retry_after(exc)
                if exc.code != 503 or pause is None or waited + pause > BUSY_S:
                    raise _http_error(self.url, exc, sent_token=bool(self.token)) from None
                exc.close()
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ModelError(f"cannot reach the server at {self.url} ({first_line(reason) if isinstance(reason, BaseException) else reason}); is `bit serve` running?") from None
            except ValueError:
                raise ModelError(f"the server at {self.url} did not answer with JSON; is it `bit serve`?") from None
            time.sleep(pause)  # a busy server: wait as it asks, then send again
            waited += pause

    def model(self) -> dict[str, Any]:
        answer = self._request("/v1/models")
        try:
            model = dict(answer["models"][0])
            int(model["num_labels"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise self._not_bit("/v1/models") from None
        limits = answer.get("limits") if isinstance(answer.get("limits"), dict) else {}
        body, files = (limits.get(name) if isinstance(limits.get(name), int) and limits[name] > 0 else None
                       for name in ("max_body", "max_files"))
        self.max_file_bytes, self.max_files = min(self.max_file_bytes, body or self.max_file_bytes), files
        return model

    def labels(self) -> list[str]:
        answer = self._request("/v1/labels")
        try:
            return [str(name) for name in answer["labels"]]
        except (KeyError, TypeError):
            raise self._not_bit("/v1/labels") from None

    def _not_bit(self, path: str) -> ModelError:
        return ModelError(f"the server at {self.url} answered {path} in a form bit does not know; is it `bit serve`?")

    def classify_groups(self, items: Iterable[Any], *, top_k: int, batch_size: int) -> Iterator[list[ClassifyResult]]:
        """One list of results per request of up to `batch_size` inputs, in input order."""
        for group in _batches(items, batch_size):
            yield self._ask(group, f"/v1/classify?top_k={top_k}", ClassifyResult, from_records)

    def search_groups(self, index: str, items: Iterable[Any], *, top_k: int, batch_size: int) -> Iterator[list[Any]]:
        """`bit search` results (QueryResult) per request of up to `batch_size` query images."""
        from bitcli.collection.queries import QueryResult

        query = urllib.parse.urlencode({"index": index, "top_k": top_k})
        for group in _batches(items, batch_size):
            yield self._ask(group, f"/v1/search?{query}", lambda path, error: QueryResult(path, error=error), search_records)

    def _ask(self, group: list[Any], endpoint: str, failed: Any, parse: Any) -> list[Any]:
        """One result per input of `group`, in order: `failed(path, reason)` for a file that cannot
        be sent, else what `parse(answer, paths)` makes of the answers to the requests it takes."""
        results: list[Any] = [None] * len(group)
        parts: list[tuple[int, str, bytes]] = []
        for i, item in enumerate(group):
            data, error = self._read(item)
            if error is not None:
                results[i] = failed(path=item.path, error=error)
            else:
                parts.append((i, item.path, data))
        for request in self._requests(parts):
            body, content_type = multipart([(path, data) for _, path, data in request])
            answer = self._request(endpoint, body=body, content_type=content_type)
            try:
                parsed = parse(answer, [path for _, path, _ in request])
            except (AttributeError, KeyError, TypeError, ValueError):
                raise self._not_bit(endpoint.partition("?")[0]) from None
            for (i, _, _), result in zip(request, parsed):
                results[i] = result
        return results

    def _requests(self, parts: list[tuple[int, str, bytes]]) -> Iterator[list[tuple[int, str, bytes]]]:
        """`parts` in input order, cut into requests that fit the server's body and file limits."""
        request: list[tuple[int, str, bytes]] = []
        size = EMPTY_BODY
        for part in parts:
            grows = part_size(part[1], part[2])
            full = self.max_files is not None and len(request) >= self.max_files
            if request and (full or size + grows > self.max_file_bytes):
                yield request
                request, size = [], EMPTY_BODY
            request.append(part)
            size += grows
        if request:
            yield request

    def _read(self, item: Any) -> tuple[bytes | None, str | None]:
        """(bytes, None) for a file to send, (None, reason) for one that fails here, as the local command says."""
        if isinstance(item, InputError):
            return None, item.reason
        try:
            with open_regular(item.path) as fh:
                data = fh.read(self.max_file_bytes + 1)
        except NotRegularFile:  # a FIFO, a device: the reason the local command gives
            return None, "not a regular file"
        except OSError as exc:
            return None, os_error_reason(exc)
        if EMPTY_BODY + part_size(item.path, data) > self.max_file_bytes:
            return None, f"larger than the server takes ({self.max_file_bytes} bytes a request)"
        return data, None


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """`items` in lists of `size` (the last one shorter), in order."""
    stream = iter(items)
    return iter(lambda: list(itertools.islice(stream, size)), [])


def shown_path(recorded: str, base: str | None) -> str:
    """A row's path as recorded when it resolves from here, else joined to the folder it was
    recorded in (`base`, absolute), as local `bit search` prints it (`EmbeddingIndex.paths`)."""
    if os.path.isabs(recorded) or not base or os.path.abspath(base) == os.path.abspath(os.getcwd()):
        return recorded
    return os.path.join(base, recorded)


def from_records(answer: Any, paths: list[str]) -> list[ClassifyResult]:
    """`ClassifyResult`s from /v1/classify's answer, one per path given on this command line."""
    records, results = answer["results"], []
    if not isinstance(records, list) or len(records) != len(paths):
        raise ValueError("one record per file")
    for path, record in zip(paths, records):
        if "error" in record:
            results.append(ClassifyResult(path=path, error=str(record["error"])))
            continue
        predictions = [Prediction(rank=int(p["rank"]), index=int(p["index"]), label=str(p["label"]), score=float(p["score"]))
                       for p in record["predictions"]]
        results.append(ClassifyResult(path=path, predictions=predictions))
    return results


def search_records(answer: Any, paths: list[str]) -> list[Any]:
    """`QueryResult`s from /v1/search's answer, one per query path given on this command line."""
    from bitcli.collection.queries import QueryResult
    from bitcli.collection.exact import Match

    base, records, rows = answer.get("base"), answer["results"], answer["rows"]
    if len(records) != len(paths) or len(rows) != len(paths):
        raise ValueError("one record per query")
    results = []
    for path, record, found in zip(paths, records, rows):
        if "error" in record:
            results.append(QueryResult(path, error=str(record["error"])))
            continue
        matches = [Match(rank=int(m["rank"]), row=int(r["row"]), path=shown_path(str(r["recorded"]), base), score=float(m["score"]))
                   for m, r in zip(record["matches"], found)]
        results.append(QueryResult(path, matches, method=record.get("method")))
    return results


BOUNDARY_SIZED = "0" * 32  # as long as the real ones (uuid4 hex): to measure a body's size
EMPTY_BODY = len(f"--{BOUNDARY_SIZED}--\r\n")


def multipart(files: list[tuple[str, bytes]], *, boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with one part named `file` per (name, bytes)."""
    boundary = boundary or uuid.uuid4().hex
    chunks = [chunk for name, data in files for chunk in (part_head(name, boundary), data, b"\r\n")]
    return b"".join([*chunks, f"--{boundary}--\r\n".encode()]), f"multipart/form-data; boundary={boundary}"


def part_head(name: str, boundary: str) -> bytes:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "%0D").replace("\n", "%0A")
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode("utf-8", "surrogateescape")


def part_size(name: str, data: bytes) -> int:
    """The bytes one file adds to a request's body."""
    return len(part_head(name, BOUNDARY_SIZED)) + len(data) + 2


def _http_error(url: str, exc: urllib.error.HTTPError, *, sent_token: bool = False) -> BitError:
    try:
        message = json.loads(exc.read()).get("error") or exc.reason
    except (ValueError, OSError, AttributeError):
        message = exc.reason
    if exc.code == 401 and sent_token:
        return UsageError(f"the server at {url} refused the token in BIT_TOKEN: set the one it was started with")
    if exc.code == 401:
        return UsageError(f"the server at {url} needs a token: set BIT_TOKEN")
    if exc.code in (400, 413, 415, 422):
        return UsageError(f"the server refused the request ({exc.code}: {message})")
    return ModelError(f"the server at {url} failed ({exc.code}: {message})")


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """The seconds a 503's Retry-After asks for (at most 30), or None."""
    value = (exc.headers or {}).get("Retry-After", "")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.1), 30.0)


def _server_address(url: str) -> bool:
    """Whether `url` names a server http.client takes: http(s), a host, a valid port, no space or control character."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # ValueError: "http://host:abc", "http://host:99999"
    except ValueError:  # "http://[::1"
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname) and not any(c <= " " or c == "\x7f" for c in parsed.netloc)


def token_from_env() -> str | None:
    return os.environ.get("BIT_TOKEN") or None
