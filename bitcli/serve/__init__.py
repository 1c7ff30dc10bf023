"""`bit serve`: a warm model behind an HTTP API and a web page (docs/serve.md).

`app.py`: the FastAPI app (routes, limits, token; on Ray Serve too); `service.py`: the model
side and batching across requests; `client.py`: `--server` (no torch); `page.html`: the page."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether a host name or address (no port) names this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sendable(token: str) -> bool:
    """A token an HTTP header carries unchanged: visible ASCII, no spaces."""
    return bool(token) and all(0x21 <= ord(c) <= 0x7E for c in token)
