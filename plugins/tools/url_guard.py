"""SSRF guard for tools that fetch URLs a model chose.

A model can be talked (by a web page, a document, a user) into fetching
``http://169.254.169.254/`` or an admin page on the local network. So before
each request, and again for every redirect hop, the guard:

- accepts only ``http`` and ``https`` URLs with a host;
- resolves the host with ``getaddrinfo`` (which also decodes the decimal,
  octal and hex spellings such as ``0x7f000001`` or ``2130706433``) and
  refuses if *any* address is loopback, private, link-local, reserved,
  multicast, unspecified or otherwise not globally routable, looking inside
  IPv4-mapped and NAT64 IPv6 addresses for the IPv4 address they carry.

Checking the name and then letting the HTTP client resolve it again would
leave a window (DNS rebinding: the second answer differs). ``pinned_backend``
closes it: it is an httpcore network backend that connects only to addresses
the guard has just checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from hanlin import ConfigurationError, ToolInputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> IP address strings
ALLOWED_SCHEMES = ("http", "https")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class URLRefused(ToolInputError):
    """A URL the guard will not fetch; the message says why, for the model to read."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as the OS resolver answers (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))  # drop IPv6 scope ids, keep order


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped ``::ffff:a.b.c.d`` or NAT64 ``64:ff9b::a.b.c.d``)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_blocked(ip: IPAddress) -> str | None:
    """Which kind of non-public address ``ip`` is, or None if it is a public unicast address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = why_blocked(inner)
        return f"{reason} (inside the IPv6 address {ip})" if reason else None
    for flag, name in (
        ("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
        ("is_private", "a private-network address"), ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, flag):
            return name
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:  # shared address space 100.64/10, documentation ranges, ...
        return "an address that is not publicly routable"
    return None


def _parse_networks(networks: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for net in networks:
        try:
            out.append(ipaddress.ip_network(net, strict=False))
        except ValueError as exc:
            raise ConfigurationError(f"allow_networks: {net!r} is not an IP network ({exc}); write e.g. '10.1.0.0/16'") from None
    return tuple(out)


class URLGuard:
    """Decides whether a URL may be fetched; one instance per fetcher.

    ``allow_private=True`` turns the address check off (a trusted intranet, tests); ``allow_networks`` instead
    opens only the listed networks (e.g. ``["10.1.2.0/24"]`` for one docs server) and keeps the rest closed.
    ``resolver`` replaces the OS resolver (tests inject one to simulate DNS answers).
    """

    def __init__(self, *, allow_private: bool = False, allow_networks: Iterable[str] = (),
                 resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.allow_networks = _parse_networks(allow_networks)
        self.resolver: Resolver = resolver or system_resolver

    @property
    def checks_addresses(self) -> bool:
        return not self.allow_private

    def check_url(self, url: str) -> tuple[str, int]:
        """Validate the URL's form and every address of its host; return (host, port) or raise URLRefused."""
        if not isinstance(url, str) or not url.strip():
            raise URLRefused("the URL is empty; give a full http(s) URL such as https://example.org/page")
        url = url.strip()
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise URLRefused(f"{url!r} is not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            if not scheme:
                raise URLRefused(f"{url!r} has no scheme; write the full address, e.g. 'https://{url.lstrip('/')}'")
            raise URLRefused(
                f"refused {url!r}: the scheme '{scheme}:' is not allowed; only http:// and https:// URLs can be fetched"
            )
        host = parts.hostname
        if not host:
            raise URLRefused(f"refused {url!r}: the URL has no host name")
        port = port or (443 if scheme == "https" else 80)
        self.check_host(host, port, url=url)
        return host, port

    def check_host(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        """Resolve ``host`` and return its addresses if every one is allowed, else raise URLRefused."""
        if not self.checks_addresses:
            return []
        what = url or host
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
            literal = True
        except ValueError:
            literal = False
            try:
                addresses = list(self.resolver(host, port))
            except (OSError, UnicodeError) as exc:
                raise URLRefused(f"cannot fetch {what!r}: the host name {host!r} does not resolve ({exc})") from None
        if not addresses:
            raise URLRefused(f"cannot fetch {what!r}: the host name {host!r} resolved to no address")
        for address in addresses:
            reason = self._refusal(address)
            if reason:
                via = "" if literal else f" (it resolves to {address})"
                raise URLRefused(
                    f"refused {what!r}: the host {host!r}{via} is {reason}. Only public web addresses "
                    "can be fetched; an operator can allow private ones with allow_private=True or allow_networks"
                )
        return addresses

    def _refusal(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return f"not a valid IP address ({address!r})"
        if any(ip in net for net in self.allow_networks):
            return None
        inner = embedded_ipv4(ip)
        if inner is not None and any(inner in net for net in self.allow_networks):
            return None
        return why_blocked(ip)


@lru_cache(maxsize=1)
def _pinned_backend_class() -> type:
    import httpcore

    class PinnedBackend(httpcore.NetworkBackend):
        """Connects only to addresses the guard approved in this very call: no second DNS answer is ever used."""

        def __init__(self, guard: URLGuard) -> None:
            self.guard = guard
            self.inner = httpcore.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                        socket_options: Iterable[Any] | None = None) -> Any:
            addresses = self.guard.check_host(host, port)
            last: Exception | None = None
            for address in addresses:
                try:
                    return self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                  socket_options=socket_options)
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                    last = exc
            raise last or httpcore.ConnectError(f"no address to connect to for {host}")

        def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
            raise httpcore.ConnectError("unix sockets are not allowed")

        def sleep(self, seconds: float) -> None:
            self.inner.sleep(seconds)

    return PinnedBackend


def pin_transport(transport: Any, guard: URLGuard) -> bool:
    """Make an ``httpx.HTTPTransport`` connect through the guard; False if this httpx version hides its pool."""
    import httpcore

    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        return False
    pool._network_backend = _pinned_backend_class()(guard)
    return True
