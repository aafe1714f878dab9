"""Reachability of the Hugging Face hub, checked once per process.

When the hub's host does not resolve or answer, loading goes straight to the local cache
(``local_files_only``) instead of spending ~30 s in huggingface_hub's retry loop.
"""
from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@lru_cache(maxsize=None)
def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if ``url``'s host resolves and accepts a TCP connection within ``timeout``."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo itself has no timeout
    t.start()
    t.join(timeout * 2)
    return result["ok"]


def hub_reachable() -> bool:
    return host_reachable(hub_endpoint())
