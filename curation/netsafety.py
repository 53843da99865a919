"""Fetching from the web safely: which URLs may be fetched, and an opener that enforces it on the connection.

The policy: a fetch may only connect to a globally routable address (``ipaddress``'s ``is_global``, not
multicast; an IPv4 address embedded in IPv6 is judged as IPv4), unless its host is listed in ``allow_hosts``
(by name or, for an IP address, by address). Only ``http`` and ``https`` are fetched, at every redirect hop.

Two layers:
- ``url_rejection`` is the syntactic check on a URL (scheme, credentials, a literal or numeric host,
  ``localhost``-style names), run at extraction on every link. Hosts are canonicalised the way a browser's URL
  parser (WHATWG URL standard) does first: percent-decoding, UTS #46 mapping (case, full-width characters,
  ideographic dots), IDNA, a trailing dot, and the IPv4 number forms ``2130706433``, ``0x7f000001``,
  ``0177.0.0.1``, ``127.1``, ``0``.
- ``guarded_opener`` is the enforcement: a ``urllib`` opener whose connections resolve the host once, check
  every address the name resolves to, and connect to exactly that checked address (no second lookup, so no
  DNS rebinding between check and connect). Resolution failure fails closed. Redirects are re-checked at each
  hop by the same connection code; redirects to any other scheme, and any non-http(s) URL, are refused. There
  is no file://, ftp://, data: or proxy handler.

A refused fetch raises ``PolicyBlocked`` ("blocked by policy"), wrapped in ``URLError`` by urllib, with no
detail of what lay behind it (whether a host resolves, refuses, or times out is not reported): a URL list must
not be a way to scan internal networks.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import urllib.request
from collections.abc import Iterable
from urllib.error import URLError
from urllib.parse import unquote, urljoin, urlsplit

import idna

SAFE_SCHEMES = ("http", "https")
BLOCKED = "blocked by policy"

# WHATWG "forbidden host code points" (after percent-decoding, for domains).
_FORBIDDEN_HOST_CHARS = frozenset("\x00\t\n\r #/:<>?@[\\]^|%\x7f") | frozenset(map(chr, range(0x20)))
_INTERNAL_NAMES = ("localhost",)
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class PolicyBlocked(OSError):
    """A fetch the URL policy refuses. Its message is always just ``BLOCKED``."""

    def __init__(self) -> None:
        super().__init__(BLOCKED)

    def __str__(self) -> str:
        return BLOCKED


def _parse_ipv4_number(part: str) -> int | None:
    """One part of a WHATWG IPv4 host: decimal, 0x-hex or 0-octal; None if it is not a number."""
    base = 10
    if part[:2] in ("0x", "0X"):
        part, base = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, base = part[1:], 8
    if part == "":
        return 0
    try:
        return int(part, base) if all(c.isascii() and c.isalnum() for c in part) else None
    except ValueError:
        return None


def _parse_ipv4(host: str) -> str | None:
    """WHATWG IPv4 parser: '127.1', '0x7f000001', '2130706433', '0177.0.0.1' -> dotted quad. None if the
    host does not end in a number (a domain); ValueError if it does but is invalid (browsers fail it)."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if not (last.isascii() and (last.isdigit() or last[:2].lower() == "0x" and
                                all(c in "0123456789abcdefABCDEF" for c in last[2:]))):
        return None
    if len(parts) > 4:
        raise ValueError("too many IPv4 parts")
    numbers = [_parse_ipv4_number(p) if p else None for p in parts]
    if any(n is None for n in numbers):
        raise ValueError("bad IPv4 part")
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError("IPv4 part out of range")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


def canonical_host(host: str) -> str:
    """The host as a browser would connect to it: lower-case ASCII (IDNA), no trailing dot, IPv4 numbers as a
    dotted quad, IPv6 compressed without brackets. ValueError for a host a browser would refuse."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("unterminated IPv6 host")
        return str(ipaddress.IPv6Address(host[1:-1].split("%")[0]))
    host = unquote(host)
    if not host:
        raise ValueError("empty host")
    if host.isascii():
        mapped = host.lower()
    else:
        try:
            mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise ValueError(f"invalid host ({exc})") from None
    labels = mapped.split(".")
    try:
        ascii_labels = [lab if lab.isascii() else idna.alabel(lab).decode("ascii") for lab in labels]
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValueError(f"invalid host ({exc})") from None
    name = ".".join(ascii_labels)
    if not name or _FORBIDDEN_HOST_CHARS.intersection(name):
        raise ValueError("forbidden character in host")
    ipv4 = _parse_ipv4(name)
    if ipv4 is not None:
        return ipv4
    return name.removesuffix(".")


@functools.lru_cache(maxsize=64)
def _canonical_allowed(allow_hosts: tuple[str, ...]) -> frozenset[str]:
    out = set()
    for h in allow_hosts:
        try:
            out.add(canonical_host(h.strip()))
        except ValueError:
            continue
    return frozenset(out)


def address_is_global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast. IPv4 inside IPv6 (mapped, 6to4, NAT64, Teredo client) is judged as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not address_is_global(embedded):
            return False
    return ip.is_global and not ip.is_multicast


def _raw_host(netloc: str, port: int | None) -> str:
    """The host part of a netloc as written (IPv6 in brackets), without userinfo and port."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[: host.find("]") + 1]
    if port is not None or host.endswith(":"):
        return host.rpartition(":")[0]
    return host


def url_rejection(url: str, allow_hosts: Iterable[str] = ()) -> str | None:
    """Why ``url`` must not be fetched (a short reason), or None if it may be as far as its text tells.

    No name is resolved here: that happens, once and pinned, when the connection is made (``guarded_opener``).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "malformed url"
    scheme = parts.scheme.lower()
    if scheme not in SAFE_SCHEMES:
        return f"scheme {scheme or 'none'} not allowed"
    if parts.username is not None or parts.password is not None:
        return "credentials in url"
    netloc_host = _raw_host(parts.netloc, port)
    if not netloc_host:
        return "no host"
    try:
        host = canonical_host(netloc_host)
    except ValueError:
        return "malformed host"
    if host in _canonical_allowed(tuple(allow_hosts)):
        return None
    if host in _INTERNAL_NAMES or host.endswith(_INTERNAL_SUFFIXES):
        return f"internal host {host}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if address_is_global(ip) else f"internal address {host}"


def is_safe_url(url: str, allow_hosts: Iterable[str] = ()) -> bool:
    return url_rejection(url, tuple(allow_hosts)) is None


def checked_addresses(host: str, port: int, allow_hosts: frozenset[str]) -> list[tuple]:
    """Resolve ``host`` once and return getaddrinfo entries to connect to, or raise PolicyBlocked.

    Every address the name resolves to must be allowed (one internal answer blocks the host: a name that
    mixes public and private answers is an attack, not a CDN). Resolution failure is a refusal too.
    """
    try:
        name = canonical_host(host)
    except ValueError:
        raise PolicyBlocked() from None
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise PolicyBlocked() from None
    if not infos:
        raise PolicyBlocked()
    if name in allow_hosts:
        return infos
    for info in infos:
        addr = info[4][0].split("%")[0]
        if addr in allow_hosts:
            continue
        if not address_is_global(ipaddress.ip_address(addr)):
            raise PolicyBlocked()
    return infos


def connect_checked(host: str, port: int, timeout: float | None, allow_hosts: frozenset[str],
                    source_address: tuple[str, int] | None = None) -> socket.socket:
    """A TCP connection to a checked address of ``host`` (see ``checked_addresses``), never to another."""
    last_error: OSError | None = None
    for family, socktype, proto, _, sockaddr in checked_addresses(host, port, allow_hosts):
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error if last_error else PolicyBlocked()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, allow_hosts: frozenset[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if allow_hosts is not None:
            self._allow_hosts = allow_hosts

    def connect(self) -> None:
        # http.client.HTTPConnection.connect, with the lookup and the check pinned together.
        self.sock = connect_checked(self.host, self.port, self.timeout, self._allow_hosts,
                                    self.source_address)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self._tunnel_host:
            self._tunnel()


class _PinnedHTTPSConnection(http.client.HTTPSConnection, _PinnedHTTPConnection):
    """HTTPSConnection.connect calls super().connect() (here: the pinned one), then wraps TLS for the name."""

    def __init__(self, *args, allow_hosts: frozenset[str], **kwargs) -> None:
        self._allow_hosts = allow_hosts
        http.client.HTTPSConnection.__init__(self, *args, **kwargs)


def _canonical_request(req: urllib.request.Request, allow_hosts: frozenset[str]) -> urllib.request.Request:
    """Every hop's URL, textually checked, with its host in canonical ASCII form (what a browser sends)."""
    if url_rejection(req.full_url, allow_hosts):
        raise URLError(PolicyBlocked())
    parts = urlsplit(req.full_url)
    host = canonical_host(_raw_host(parts.netloc, parts.port))
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    if netloc != parts.netloc:
        req.full_url = parts._replace(netloc=netloc).geturl()
    return req


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow_hosts: frozenset[str]) -> None:
        super().__init__()
        self.allow_hosts = allow_hosts

    def http_request(self, req):
        return super().http_request(_canonical_request(req, self.allow_hosts))

    def http_open(self, req):
        return self.do_open(functools.partial(_PinnedHTTPConnection, allow_hosts=self.allow_hosts), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow_hosts: frozenset[str]) -> None:
        super().__init__()
        self.allow_hosts = allow_hosts

    def https_request(self, req):
        return super().https_request(_canonical_request(req, self.allow_hosts))

    def https_open(self, req):
        return self.do_open(functools.partial(_PinnedHTTPSConnection, allow_hosts=self.allow_hosts), req,
                            context=self._context)


class _GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Refuses a redirect to anything but http(s) (urllib itself would follow ftp://). The target host is
    checked when the next hop connects."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri")
        if target:
            scheme = urlsplit(urljoin(req.full_url, target)).scheme.lower()
            if scheme not in SAFE_SCHEMES:
                fp.close()
                raise URLError(PolicyBlocked())
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _RefuseOtherSchemes(urllib.request.BaseHandler):
    def unknown_open(self, req):
        raise URLError(PolicyBlocked())


def guarded_opener(allow_hosts: Iterable[str] = ()) -> urllib.request.OpenerDirector:
    """A urllib opener that enforces the policy on every connection (see the module docstring)."""
    allowed = _canonical_allowed(tuple(allow_hosts))
    opener = urllib.request.OpenerDirector()
    for handler in (_RefuseOtherSchemes(), _GuardedHTTPHandler(allowed), _GuardedHTTPSHandler(allowed),
                    urllib.request.HTTPDefaultErrorHandler(), _GuardedRedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def is_policy_block(exc: BaseException) -> bool:
    """Whether ``exc`` (possibly urllib's URLError around it) is a policy refusal."""
    return isinstance(exc, PolicyBlocked) or isinstance(getattr(exc, "reason", None), PolicyBlocked)
