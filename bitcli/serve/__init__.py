"""`bit serve`: a warm model behind an HTTP API and a web page (docs/serve.md).

`app.py`: the FastAPI app (routes, limits, token); `batcher.py`: batching across requests;
`service.py`: the model side (uploads through the commands' classifier and embedder);
`client.py`: `--server` for `bit classify` (no torch); `page.html`: the web page.
"""

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
