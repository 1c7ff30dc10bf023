"""`bit serve --engine ray`: the same app on Ray Serve (replicas, its router, its HTTP proxy).

Each replica builds the app itself (`serve.ingress` with a builder): it resolves and loads the
model, then serves the very FastAPI app `bit serve` runs locally (its batching, limits and token
included). Ray Serve's proxy listens on --host/--port and spreads requests over the replicas.
With no address, a private local cluster is started on 127.0.0.1 without the dashboard, and shut
down when `bit serve` ends.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

APP_NAME = "bit"
SHUTDOWN_S = 20.0


def build_app(model_ref: str, run_options: Any, settings: Any, max_pixels: int | None, indexes: list[str]) -> Any:
    """On a replica: load the model (and open the collections) and return the app."""
    from pathlib import Path

    from bitcli.pipeline import load
    from bitcli.serve.app import create_app
    from bitcli.serve.service import Service, open_collections

    loaded = load(model_ref, device=run_options.device, precision=run_options.precision, offline=run_options.offline)
    collections = open_collections([Path(p) for p in indexes])
    service = Service(loaded, max_batch=settings.max_batch, max_pixels=max_pixels, indexes=collections)
    return create_app(lambda: service, settings, model_name=service.report["model"])


def serve_on_ray(
    model_ref: str,
    run_options: Any,
    settings: Any,
    *,
    max_pixels: int | None,
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

    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "ERROR"})
        def builder() -> Any:  # a plain function: Ray Serve calls it on each replica
            return build_app(model_ref, run_options, settings, max_pixels, indexes)

        deployment = serve.deployment(serve.ingress(builder)(), name="bit", num_replicas=replicas,
                                      ray_actor_options={"num_cpus": 0})
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
        on_ready(f"http://{host}:{port}")
        while not stop.wait(0.2):
            pass
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _bounded(lambda: (serve.shutdown(), ray.shutdown()), SHUTDOWN_S)


def _bounded(work: Callable[[], Any], seconds: float) -> None:
    """Run `work` for at most `seconds` (a cluster whose processes a terminal's Ctrl-C also reached
    can leave Ray's shutdown waiting forever); after that the process exits without it."""
    done = threading.Thread(target=work, daemon=True, name="bit-ray-shutdown")
    done.start()
    done.join(seconds)
