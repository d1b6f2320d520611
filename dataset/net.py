"""Fail-fast network helpers for optional downloads.

torchvision's downloaders call ``urlopen`` without a timeout, so on a machine
whose network silently drops packets a download can hang. Before downloading we
probe the host (DNS in a helper thread with a deadline, then a TCP connect with a
timeout) and run the download itself under a temporary socket default timeout.
"""

import contextlib
import socket
import threading
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


def _resolve(host, port, timeout):
    result = {}

    def work():
        try:
            result["addr"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:  # gaierror is an OSError
            result["err"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    return result.get("addr")


def can_reach(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``url``'s host resolves and accepts a TCP connection within ``timeout`` s."""
    parts = urlparse(url)
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addrs = _resolve(host, port, timeout)
    if not addrs:
        return False
    family, socktype, proto, _, sockaddr = addrs[0]
    try:
        with socket.socket(family, socktype, proto) as s:
            s.settimeout(timeout)
            s.connect(sockaddr)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def socket_timeout(seconds: float = DOWNLOAD_SOCKET_TIMEOUT_S):
    """Temporarily set the process-wide default socket timeout (restored afterwards)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)
