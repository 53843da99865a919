"""URL lists from the web are untrusted: only http(s), and no private/loopback/link-local targets
unless a host is allowed by name. Checked at extraction and again right before download, because
img2dataset fetches whatever it is given (`file://` included)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

SAFE_SCHEMES = ("http", "https")


def _is_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified)


@lru_cache(maxsize=65536)
def _resolve(host: str) -> tuple[str, ...]:
    try:
        return tuple({info[4][0] for info in socket.getaddrinfo(host, None)})
    except (socket.gaierror, UnicodeError, OSError):
        return ()


def url_rejection(url: str, allow_hosts: Iterable[str] = (), resolve: bool = False) -> str | None:
    """Why ``url`` must not be fetched, or None if it may be.

    Literal IPs are checked always; host names like ``localhost`` or ``*.internal`` too. With
    ``resolve=True`` a name is also resolved and every address it maps to must be public (or allowed).
    """
    allowed = {h.lower() for h in allow_hosts}
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "malformed url"
    scheme = parts.scheme.lower()
    if scheme not in SAFE_SCHEMES:
        return f"scheme {scheme or 'none'} not allowed"
    try:
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "malformed url"
    if not host:
        return "no host"
    if parts.username or parts.password:
        return "credentials in url"
    if host in allowed:
        return None
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"internal host {host}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return f"internal address {host}" if _is_internal(ip) else None
    if resolve:
        for addr in _resolve(host):
            if addr.lower() not in allowed and _is_internal(ipaddress.ip_address(addr.split("%")[0])):
                return f"{host} resolves to internal address {addr}"
    return None


def is_safe_url(url: str, allow_hosts: Iterable[str] = (), resolve: bool = False) -> bool:
    return url_rejection(url, tuple(allow_hosts), resolve) is None
