"""The HTTP API and web page of `bit serve` (FastAPI; docs/serve.md lists routes and statuses).

Every error is `{"error": "one line"}` with its status. The request never names a server-side
path; a token, when set, is required on every request but the page (constant-time compare)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import os
import signal
import threading
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as ApiError

from bitcli.serve import is_loopback
from bitcli.serve.service import QueueFull, Service, ServeSettings

MAX_FILES = 1000  # parts per request


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: the token and the body limit (413: a declared length at once, a streamed body
    as soon as it passes), before any route reads anything."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = self.settings.token
        if token is None and not _loopback_name(headers.get("host", "")):
            # without a token the server listens on loopback only; a page of another site whose name
            # was rebound to 127.0.0.1 (DNS rebinding) still sends its own name: refuse it
            return await error_response(400, "this server answers only to 127.0.0.1 or localhost without a token: "
                                             "start it with --token to reach it by another name")(scope, receive, send)
        if token is not None and not (scope["method"] == "GET" and scope["path"] == "/"):
            scheme, _, given = headers.get("authorization", "").strip().partition(" ")
            # the scheme is case-insensitive (RFC 7235); the token is compared in constant time
            right = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))
            if not (right and scheme.lower() == "bearer"):
                return await error_response(401, "missing or wrong token: send Authorization: Bearer TOKEN", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        limit = self.settings.max_body
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await error_response(413, f"request body over the server's limit of {limit} bytes")(scope, receive, send)
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await error_response(413, f"request body over the server's limit of {limit} bytes")(scope, receive, send)


def _loopback_name(host: str) -> bool:
    """Whether a Host header names this machine's loopback: localhost, 127.x.y.z or [::1], any port."""
    host = host.strip().lower()
    name = host[1:host.find("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    return name == "localhost." or is_loopback(name)


def create_app(service_factory: Callable[[], Service], settings: ServeSettings, *, model_name: str) -> FastAPI:
    """The app; `service_factory()` loads the model (in a thread, at startup) and returns a Service."""
    state: dict[str, Any] = {"service": None, "error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()

        async def load() -> None:
            try:
                service = await loop.run_in_executor(None, service_factory)
            except Exception as exc:  # /healthz reports it; `bit serve` stops with its message
                state["error"], state["exception"] = str(exc), exc
                return
            service.start()
            state["service"] = service

        loading = loop.create_task(load())
        try:
            yield
        finally:
            loading.cancel()
            if state["service"] is not None:
                await state["service"].stop()

    app = FastAPI(title="bit serve", summary="BiT image classification and embeddings", lifespan=lifespan)
    app.add_middleware(Guard, settings=settings)
    app.state.bit = state

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_response(422, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # the model failed (memory, device)
        detail = str(exc).strip().splitlines()
        return error_response(500, f"the server failed on this request ({type(exc).__name__}: {detail[0] if detail else 'no detail'})")

    @app.exception_handler(ApiError)
    async def http_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    files_per_request = min(MAX_FILES, settings.max_queue)  # more could never fit the queue at once

    def ready() -> Service:
        if state["service"] is None:
            message = f"model failed to load: {state['error']}" if state["error"] else "the model is still loading"
            raise ApiError(503, message, {"Retry-After": "5"})
        return state["service"]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("bitcli.serve").joinpath("page.html").read_text("utf-8"))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        service = ready()
        return JSONResponse({"status": "ok", "model": model_name, "batches": service.stats,
                             "waiting": service.waiting, "pid": os.getpid()})

    @app.get("/v1/models")
    async def models() -> dict:
        service = ready()
        indexes = [{"name": name, "rows": ix.rows, "dim": ix.dim, "path": str(ix.array_path)} for name, ix in sorted(service.indexes.items())]
        return {"models": [service.report], "indexes": indexes,
                "limits": {"max_body": settings.max_body, "max_files": files_per_request}}

    @app.post("/v1/search")
    async def search(request: Request, index: str = Query(..., min_length=1), top_k: int = Query(10, ge=1, le=10_000)) -> dict:
        service = ready()
        if index not in service.indexes:
            known = ", ".join(sorted(service.indexes)) or "none (start bit serve with --index OUT.npy)"
            raise ApiError(404, f"no collection named {index!r}; loaded: {known}")
        collection = service.indexes[index]
        normalize = bool(collection.meta.settings.normalize) if collection.meta is not None else False
        embedded = await submit(service, ("embed", normalize), await uploads(request, service))
        vectors = [r.vector if r.error is None else None for r in embedded]
        loop = asyncio.get_running_loop()
        found, method = await loop.run_in_executor(None, service.search, index, vectors, top_k)
        results, recorded = [], []
        for r, matches in zip(embedded, found):
            if matches is None:
                results.append({"query": r.path, "error": r.error})
                recorded.append([])
            else:
                results.append({"query": r.path, "matches": [m.to_dict() for m in matches], "method": method})
                recorded.append([{"row": m.row, "recorded": collection.recorded[m.row]} for m in matches])
        base = collection.base_dir
        return {"results": results, "index": index,
                "rows": recorded, "base": os.path.abspath(base) if base else None}

    @app.get("/v1/thumbnail")
    async def thumbnail(index: str = Query(...), row: int = Query(..., ge=0)) -> Response:
        service = ready()
        if index not in service.indexes or row >= service.indexes[index].rows:
            raise ApiError(404, f"no row {row} in a collection named {index!r}")
        data = await asyncio.get_running_loop().run_in_executor(None, service.thumbnail, index, row)
        if data is None:
            raise ApiError(404, f"row {row}'s file is gone or is not an image")
        return Response(data, media_type="image/jpeg")

    @app.get("/v1/labels")
    async def labels() -> dict:
        service = ready()
        return {"labels": list(service.labels.names) if service.labels is not None else []}

    async def uploads(request: Request, service: Service) -> list[Any]:
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith("multipart/form-data"):
            raise ApiError(415, "send the images as multipart/form-data, one part named 'file' per image")
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
        except _BodyTooLarge:
            raise
        except Exception as exc:  # a malformed multipart body
            raise ApiError(400, f"malformed multipart body ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        try:
            files = [part for part in form.getlist("file") if isinstance(part, UploadFile)]
            if not files:
                raise ApiError(400, "no image: send one or more parts named 'file' (with a filename)")
            if len(files) > files_per_request:
                raise ApiError(413, f"{len(files)} files in one request: this server takes at most {files_per_request} per request")
            loop = asyncio.get_running_loop()
            saved = []
            for index, part in enumerate(files):
                data = await part.read()
                name = part.filename or f"file{index}"
                saved.append(await loop.run_in_executor(None, service.save, name, data))
            return saved
        finally:
            await form.close()

    async def submit(service: Service, key: tuple, saved: list[Any]) -> list[Any]:
        try:
            return await service.submit(key, saved)
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy: {exc}", {"Retry-After": "1"})

    @app.post("/v1/classify")
    async def classify(request: Request, top_k: int = Query(5, ge=1, le=100_000)) -> dict:
        service = ready()
        if service.labels is None:
            raise ApiError(422, "the model has no classifier head (features only): use /v1/embed")
        results = await submit(service, ("classify", top_k), await uploads(request, service))
        return {"results": [r.to_dict() for r in results]}

    @app.post("/v1/embed")
    async def embed(request: Request, normalize: bool = Query(False)) -> Response:
        service = ready()
        results = await submit(service, ("embed", normalize), await uploads(request, service))
        if "application/x-npy" in request.headers.get("accept", ""):
            return _npy(results, service.model.feature_dim)
        return JSONResponse({"results": [r.to_dict() for r in results]})

    return app


def _npy(results: list[Any], dim: int) -> Response:
    """One float32 [N, D] .npy; a failed file is a row of NaN, its index in the `X-Bit-Failed` header."""
    import numpy as np

    rows = np.full((len(results), dim), np.nan, dtype=np.float32)
    failed = []
    for i, r in enumerate(results):
        if r.error is None:
            rows[i] = r.vector
        else:
            failed.append(str(i))
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    return Response(buf.getvalue(), media_type="application/x-npy", headers={"X-Bit-Failed": ",".join(failed)})


# -- `bit serve --engine ray`: the same app on Ray Serve replicas -----------------------------------
# Each replica builds the app itself (`serve.ingress` with a builder): it loads the model and serves
# this very app; Ray Serve's proxy listens on --host/--port. With no address, a private local cluster
# (127.0.0.1, no dashboard) lives as long as `bit serve`.

APP_NAME = "bit"
SHUTDOWN_S = 20.0


def build_app(model_ref: str, run_options: Any, settings: Any, indexes: list[str]) -> Any:
    """On a replica: load the model (and open the collections) and return the app."""
    from pathlib import Path

    from bitcli.pipeline import load
    from bitcli.serve.service import open_collections

    loaded = load(model_ref, device=run_options.device, precision=run_options.precision, offline=run_options.offline)
    collections = open_collections([Path(p) for p in indexes])
    service = Service(loaded, settings, max_pixels=run_options.max_pixels, indexes=collections)
    return create_app(lambda: service, settings, model_name=service.report["model"])


def serve_on_ray(
    model_ref: str,
    run_options: Any,
    settings: Any,
    *,
    host: str,
    port: int,
    replicas: int,
    address: str | None,
    indexes: list[str],
    on_ready: Callable[[str], None],
) -> int:
    """Deploy, call `on_ready(url)`, serve until SIGTERM (returns 0) or Ctrl-C (KeyboardInterrupt)."""
    import ray
    from ray import serve

    from bitcli.hub.deadline import Deadline, bounded

    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "ERROR"})
        def builder() -> Any:  # a plain function: Ray Serve calls it on each replica
            return build_app(model_ref, run_options, settings, indexes)

        deployment = serve.deployment(serve.ingress(builder)(), name="bit", num_replicas=replicas,
                                      ray_actor_options={"num_cpus": 0})
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
        on_ready(f"http://{host}:{port}")
        while not stop.wait(0.2):  # a wait with a timeout: signals are handled
            pass
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(Exception):  # Ray's shutdown can wait forever: the process exits without it
            bounded(lambda: (serve.shutdown(), ray.shutdown()), Deadline(SHUTDOWN_S))
