"""`bit serve`: checks first (the extra, a token off loopback, the port), then the model loads
(exit 3), then uvicorn serves until SIGTERM (exit 0) or Ctrl-C (130), finishing requests in flight."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from bitcli.cli.combine import Engine
from bitcli.cli.common import (
    EXIT_OK,
    Runtime,
    Ui,
    check_settings,
    epilog,
    load_model,
    takes,
)
from bitcli.errors import UsageError
from bitcli.serve import is_loopback, sendable

EPILOG = epilog(
    "bit serve -m bit-digits",
    "BIT_TOKEN=\"$(openssl rand -hex 16)\" bit serve --host 0.0.0.0  # the token in the environment, not in ps",
    "curl -F file=@cat.jpg 'http://127.0.0.1:8765/v1/classify?top_k=3'",
    "bit classify cat.jpg --server http://127.0.0.1:8765",
)

MAX_CONNECTIONS = 1024  # open connections at once; past it uvicorn answers 503 (slow clients cannot pile up)
INSTALL_HINT = "bit serve needs its extra: pip install 'bitcli[serve]'"
RAY_HINT = "bit serve --engine ray needs Ray Serve: pip install 'bitcli[serve,ray]'"


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'100MB' -> 100000000; '512KiB', '2GB', '1.5MB', '1000' (bytes); at least one byte."""
    found = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([A-Z]*)", text.strip().upper().replace(" ", ""))
    value = float(found.group(1)) * _SIZE_UNITS[found.group(2)] if found and found.group(2) in _SIZE_UNITS else 0.0
    if not 1 <= value < 2**63:
        raise UsageError(f"--max-body {text!r}: give a size such as 100MB, 512KiB or 1000000")
    return int(value)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a one-line usage error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "in use" if exc.errno == 98 else (exc.strerror or str(exc)).lower()
        raise UsageError(f"cannot listen on {host}:{port} ({reason}); pass another --port") from None
    sock.set_inheritable(True)
    return sock


@takes("model", "device", "precision", "threads", "max_pixels")
def serve(
    runtime: Runtime = Runtime(),
    index: Annotated[
        Optional[list[Path]], typer.Option("--index", metavar="OUT.npy", help="A collection (bit embed's output) to search over /v1/search; repeat for more.")
    ] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="N", min=0, max=65535, help="Port (0: any free port).")] = 8765,
    token: Annotated[
        Optional[str], typer.Option("--token", metavar="TOKEN", envvar="BIT_TOKEN", show_envvar=True, help="Require Authorization: Bearer TOKEN on every request.")
    ] = None,
    max_body: Annotated[str, typer.Option("--max-body", metavar="SIZE", help="Largest request body (413 past it).")] = "100MB",
    max_batch: Annotated[int, typer.Option("--max-batch", metavar="N", min=1, help="Most images per forward pass, gathered across requests.")] = 16,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", metavar="MS", min=0, help="How long a batch waits for more images.")] = 10.0,
    max_queue: Annotated[int, typer.Option("--max-queue", metavar="N", min=1, help="Most images waiting at once (503 past it).")] = 256,
    engine: Annotated[Engine, typer.Option("--engine", metavar="ENGINE", help="local: this process; ray: replicas on Ray Serve.")] = Engine.local,
    replicas: Annotated[int, typer.Option("--replicas", metavar="N", min=1, help="ray: how many copies of the model serve.")] = 1,
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", metavar="ADDR", help="ray: the cluster (default: a private local one).")
    ] = None,
    ui: Ui = Ui(),
) -> int:
    """Serve a warm model over HTTP: a JSON API, a web page, batching across requests."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    if token is not None and not token.strip():
        raise UsageError("--token is empty: give a secret, e.g. --token \"$(openssl rand -hex 16)\"")
    if token is not None and not sendable(token):
        raise UsageError("--token: use letters, digits and punctuation only (an HTTP header cannot carry spaces or other "
                         "characters unchanged), e.g. --token \"$(openssl rand -hex 16)\"")
    if not is_loopback(host) and token is None:
        raise UsageError(f"--host {host} would let anyone on the network use this server: add --token TOKEN (or BIT_TOKEN)")
    from bitcli.serve.app import ServeSettings, create_app
    from bitcli.serve.service import open_collections

    settings = ServeSettings(max_body=parse_size(max_body), max_batch=max_batch, max_wait_s=max_wait_ms / 1000,
                             max_queue=max_queue, token=token)
    if engine is Engine.ray:
        try:
            from ray import serve as _  # noqa: F401
        except ImportError:
            raise UsageError(RAY_HINT) from None
        if port == 0:
            raise UsageError("--engine ray needs a fixed --port (Ray Serve's proxy binds it)")
        bind(host, port).close()  # free now: say so before the cluster starts
        open_collections(index or [])  # a bad --index fails here, not in a replica
        return _serve_on_ray(runtime, host, port, replicas, ray_address, settings, [str(p.resolve()) for p in index or []], ui)
    collections = open_collections(index or [])
    listener = bind(host, port)

    from bitcli.serve.service import Service

    model = runtime.model
    options = replace(runtime, batch_size=max_batch).options()
    check_settings(options.device, model)  # a malformed reference fails now, before the port opens
    def load() -> Service:  # at startup, while /healthz answers 503
        loaded = load_model(model, options, ui, runtime.threads)
        return Service(loaded, settings, max_pixels=options.max_pixels, indexes=collections)

    app = create_app(load, settings, model_name=model)
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical" if not ui.debug else "info", access_log=ui.debug,
                                           lifespan="on", timeout_graceful_shutdown=30, limit_concurrency=MAX_CONNECTIONS))
    bound_host, bound_port = listener.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    terminated: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: terminated.append(sig))
    state = app.state.bit

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[listener]))
        while not (server.started and state["service"] is not None) and not task.done() and not state["error"]:
            await asyncio.sleep(0.02)
        if state["error"]:
            server.should_exit = True
        elif not task.done():
            ui.info(f"serving {state['service'].report['model']} on http://{shown}:{bound_port} (web page: /, API docs: /docs)")
        await task

    try:
        asyncio.run(run())
    finally:
        signal.signal(signal.SIGTERM, previous)
        listener.close()
    if state.get("exception") is not None:
        raise state["exception"]  # the load's own one-line error and exit code (3 for a model)
    return EXIT_OK


def _serve_on_ray(runtime, host, port, replicas, address, settings, indexes, ui) -> int:
    from bitcli.hub import resolve_model
    from bitcli.serve.app import serve_on_ray

    import logging

    if not ui.debug:  # Ray Serve's INFO lines are not bitcli's messages (--debug shows them)
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
    model, options = runtime.model, replace(runtime, batch_size=settings.max_batch, threads=None).options()
    resolve_model(model, offline=options.offline)  # a wrong reference fails here (exit 3), not in a replica
    return serve_on_ray(
        model, options, settings, host=host, port=port, replicas=replicas,
        address=address, indexes=indexes, on_ready=lambda url: ui.info(f"serving {model} on {url} (web page: /, API docs: /docs)"),
    )
